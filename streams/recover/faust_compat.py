"""Everything the recovery writer needs from faust-streaming and aiokafka beyond their
public API, in one place.

faust asks aiokafka for read_committed only under its own exactly_once mode; the writer
acknowledges after the database commit instead, but must still never see aborted or
open transactions of the join. So four private members are overridden:

* `faust.App._new_transport` -> a transport whose consumer is ours;
* `faust...aiokafka.Consumer._new_consumer_thread` -> our consumer thread;
* `faust...aiokafka.AIOKafkaConsumerThread._create_worker_consumer` -> the same
  consumer, with the next one set;
* `aiokafka.AIOKafkaConsumer._isolation_level` -> "read_committed", which aiokafka reads
  in start() to build its fetcher.

And one for speed: faust's fetch loop (`Consumer._drain_messages`) hands each record to
the streams with `wait_first(callback(message), self.suspend_flow.wait())`, which makes
four tasks and an `asyncio.wait` per record: a third of the writer's CPU. The consumer's
`wait_first` (mode's `Service.wait_first`) takes that one call and, while the flow is not
suspended, runs the callback's first step in place. A callback that does not block (the
usual case: the stream's queue has room) is then done with no task at all; one that
blocks (a full queue, a suspended flow, a busy producer) goes on in a task raced against
`suspend_flow` exactly as faust does it. The callback's first step runs in the fetch
loop's task rather than a task of its own; faust's delivery does not look at the current
task or set context variables.

And one so that a record cannot stop the reading: Kafka allows any bytes in a header name,
and aiokafka decodes each name as strict UTF-8 while it unpacks a fetched batch, so one
name that is not UTF-8 raised out of the fetch, the fetcher crashed and the writer exited
1 a second after it started, each time it was restarted, writing nothing of any of its
partitions (seen on the real broker). The fetcher
reads batches through `aiokafka.consumer.fetcher.MemoryRecords`; `_LenientRecords` takes
its place (install_lenient_reader()). Each batch is still read by aiokafka's own reader
(the C one; the wrapping costs ~0.06 us a record); only a batch that reader refuses for
a header name is read again, from the record it stopped at, by aiokafka's pure-Python reader with that name decoded with
surrogateescape: lossless, and told apart from any name that was UTF-8 by its lone
surrogates (writer.py sends such a record to the DLQ). No aiokafka code is copied: the
Python reader is handed a buffer whose slices decode leniently.

And the offsets it commits. faust commits the end of the longest run of acknowledged
offsets, and fills the offsets it was never given (a read_committed consumer is never
given a transaction's marker, nor an aborted transaction's records) from gaps it notes
in its fetch loop (`Consumer._add_gap`, `_new_offset`). In faust-streaming 0.15 a noted
gap also holds the offset of the record after it, which is acknowledged as well: the
offset is then twice in the run, the run breaks there, and each commit (one a second)
moves a partition only to the next transaction's marker. With the join's many small
transactions the group's offsets fell ever further behind (seen on the real broker: the
rows all written, the lag standing). And the marker that ends a partition's last
transaction was never passed. So the consumer keeps its own account, by offset:
delivered and not yet acknowledged (`_pending`), the last delivered (`_last`), and
where each fetch left the partition's position (`_fetched`: taken in the consumer
thread, as the records are handed over). The offset committed is the lowest delivered
one not yet acknowledged; with none, the position after the last fetch whose records
have all been delivered (past markers and aborted records, up to the last stable
offset), else the last delivered plus one (`_new_offset`).

Written for the versions in WRITTEN_FOR (pinned in pyproject.toml). `missing()` lists
what an upgrade removed; a test fails on it, and on a version outside these.
"""

from __future__ import annotations

import asyncio
import inspect
import types
from collections.abc import Coroutine, Generator
from importlib.metadata import version
from typing import Any

import aiokafka
import faust
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record import default_records, memory_records
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.services import Service, WaitResults

WRITTEN_FOR = {"faust-streaming": "0.15.", "aiokafka": "0.14."}
OVERRIDDEN = (
    (faust.App, "_new_transport"),
    (faust_aiokafka.Consumer, "_new_consumer_thread"),
    (faust_aiokafka.AIOKafkaConsumerThread, "_create_worker_consumer"),
    (faust_aiokafka, "Transport"),
    (Service, "wait_first"),
    (faust_consumer.Consumer, "_new_offset"),
    (faust_consumer.Consumer, "_filter_tps_with_pending_acks"),
    (faust_consumer.Consumer, "perform_seek"),
    (faust_aiokafka.AIOKafkaConsumerThread, "_fetch_records"),
    (aiokafka_fetcher, "MemoryRecords"),
    (memory_records, "_MemoryRecordsPy"),
    (default_records, "_DefaultRecordBatchPy"),
)
# What the fetcher reads a partition's batches with (spaces removed).
FETCH_RECORDS = "records=MemoryRecords(part_data[-1])"
# The one call whose wait_first is taken in place (spaces removed).
DRAIN_CALL = "awaitself.wait_first(callback(message),self.suspend_flow.wait())"
_EVENT_WAIT = asyncio.Event.wait.__code__


class _ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._isolation_level = "read_committed"  # aiokafka builds its Fetcher from this in start()
        install_lenient_reader()
        return consumer

    async def _fetch_records(self, consumer: Any, active_partitions: Any, timeout: Any = None,
                             max_records: Any = None) -> Any:
        """faust's, noting for each assigned partition its position once these records are
        taken (aiokafka moves it past markers and aborted records) and their last offset."""
        records = await super()._fetch_records(consumer, active_partitions, timeout=timeout, max_records=max_records)
        fetched: dict[Any, tuple[int, int]] = self.consumer._fetched  # type: ignore[attr-defined]  # (ours)
        subscription = consumer._subscription.subscription
        assignment: Any = subscription.assignment if subscription is not None else None
        for tp in consumer.assignment() if assignment is not None else ():
            state = assignment.state_value(tp)
            if state is None or not state.has_valid_position:
                continue
            got = records.get(tp) if records else None
            before = fetched.get(tp)
            last = got[-1].offset if got else (before[1] if before else -1)
            fetched[tp] = (state.position, last)
        return records


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], awaiting: Any) -> Generator[Any, Any, Any]:
    """Run the rest of `coro`, whose first step was taken outside any task of its own and
    which now waits on `awaiting` (what that step yielded). Inside a task this is that
    task running `coro` from the start: it waits on what `coro` awaits, and a cancellation
    is thrown in at the await."""
    try:
        while True:
            try:
                sent = yield awaiting
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 (a cancellation, or the awaited future's error)
                awaiting = coro.throw(exc)
            else:
                awaiting = coro.send(sent)
    except StopIteration as done:
        return done.value


def _waits_on(coro: Any, event: asyncio.Event) -> bool:
    """Whether `coro` is `event.wait()`, not yet started."""
    return (type(coro) is types.CoroutineType and coro.cr_code is _EVENT_WAIT and coro.cr_frame is not None
            and coro.cr_frame.f_locals.get("self") is event)


class _ReadCommittedConsumer(faust_aiokafka.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: dict[Any, set[int]] = {}  # tp -> offsets delivered, not yet acknowledged
        self._last: dict[Any, int] = {}  # tp -> the last offset delivered
        self._fetched: dict[Any, tuple[int, int]] = {}  # tp -> (position after a fetch, last offset fetched)
        deliver = self.callback

        def callback(message: Any) -> Any:  # the fetch loop's callback(message): noted, then faust's coroutine
            self._delivering(message)
            return deliver(message)

        self.callback = callback

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _forget(self, tps: Any) -> None:
        for tp in tps:
            self._pending.pop(tp, None)
            self._last.pop(tp, None)
            self._fetched.pop(tp, None)

    def _delivering(self, message: Any) -> None:
        """Noted as the fetch loop hands `message` on (faust tracks it only once its stream
        takes it from the stream's queue)."""
        if self.app.topics.acks_enabled_for(message.topic):
            self._pending.setdefault(message.tp, set()).add(message.offset)
            self._last[message.tp] = message.offset

    def ack(self, message: Any) -> bool:
        done = super().ack(message)
        pending = self._pending.get(message.tp)
        if pending is not None:
            pending.discard(message.offset)
        return done

    def _new_offset(self, tp: Any) -> int | None:
        """The offset to commit (the module's docstring): every offset below it was
        acknowledged or never given to this consumer."""
        pending = self._pending.get(tp)
        last = self._last.get(tp)
        if pending:
            upto: int | None = min(pending)
        else:
            upto = None if last is None else last + 1
            fetched = self._fetched.get(tp)
            if fetched is not None and fetched[1] <= (-1 if last is None else last):
                upto = fetched[0] if upto is None else max(upto, fetched[0])
        if upto is not None:
            acked = self._acked[tp]
            acked[:] = [o for o in acked if o >= upto]
            self._acked_index[tp].intersection_update(acked)
            self._gap.pop(tp, None)
        return upto

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Any:
        """faust's partitions with acknowledgements, and those a fetch moved (past markers)."""
        seen = set(self._acked) | set(self._fetched)
        return (tp for tp in seen if topics is None or tp in topics or tp.topic in topics)

    async def perform_seek(self) -> None:
        self._forget(list(self._pending) + list(self._last) + list(self._fetched))
        await super().perform_seek()

    async def seek(self, partition: Any, offset: int) -> None:
        self._forget([partition])
        await super().seek(partition, offset)

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self._forget(revoked)
        await super().on_partitions_revoked(revoked)

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        """The fetch loop's `wait_first(callback(message), self.suspend_flow.wait())`,
        with the callback's first step taken in place (the module's docstring); every
        other call is mode's."""
        if (len(coros) == 2 and timeout is None and type(coros[0]) is types.CoroutineType
                and not (self.suspend_flow.is_set() or self._stopped.is_set() or self._crashed.is_set())
                and _waits_on(coros[1], self.suspend_flow)):
            deliver, suspended = coros
            try:
                awaiting = deliver.send(None)
            except StopIteration as done:
                suspended.close()
                return WaitResults([deliver], [done.value], False)
            except BaseException:
                suspended.close()
                raise
            return await super().wait_first(asyncio.ensure_future(_resume(deliver, awaiting)), suspended)
        return await super().wait_first(*coros, timeout=timeout)


class _Transport(faust_aiokafka.Transport):
    Consumer = _ReadCommittedConsumer


class _LenientName(bytes):
    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes.decode(self, encoding, "surrogateescape")


class _LenientBuffer(bytearray):
    """A batch's bytes whose slices decode with surrogateescape: the Python reader takes
    each header name as `buffer[start:end].decode("utf-8")` (and keys, values and header
    values as `bytes(buffer[start:end])`, unchanged by this)."""

    def __getitem__(self, index: Any) -> Any:
        got = bytearray.__getitem__(self, index)
        return _LenientName(got) if isinstance(index, slice) else got


class _LenientBatch(default_records._DefaultRecordBatchPy):  # type: ignore[misc]
    """aiokafka's pure-Python record batch (v2), reading a header name that is not UTF-8
    with surrogateescape."""

    _buffer: bytearray  # (aiokafka's attribute, untyped there)

    def _maybe_uncompress(self) -> None:
        super()._maybe_uncompress()
        if type(self._buffer) is not _LenientBuffer:
            self._buffer = _LenientBuffer(self._buffer)


def _undecodable_name(exc: BaseException) -> bool:
    """Whether a reader refused a batch for a header name (its only text): the C reader
    raises UnicodeDecodeError, the Python one wraps it in CorruptRecordException."""
    return isinstance(exc, UnicodeDecodeError) or (
        isinstance(exc, CorruptRecordException) and isinstance(exc.__cause__, UnicodeDecodeError))


class _Batch:
    """A v2 record batch as aiokafka reads it, and read again leniently (_LenientBatch)
    from the record its reader could not decode. The fetcher asks the batch's attributes
    (offsets, producer, control, CRC) of aiokafka's own."""

    __slots__ = ("_batch", "_data")

    def __init__(self, batch: Any, data: memoryview) -> None:
        self._batch = batch
        self._data = data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def __next__(self) -> Any:  # a control batch's marker is read with next()
        return next(self._batch)

    def __iter__(self) -> Generator[Any, None, None]:
        after = -1
        try:
            for record in self._batch:
                after = record.offset
                yield record
        except (UnicodeDecodeError, CorruptRecordException) as exc:
            if not _undecodable_name(exc):
                raise
            for record in _LenientBatch(self._data):
                if record.offset > after:
                    yield record


class _LenientRecords(memory_records._MemoryRecordsPy):  # type: ignore[misc]
    """A fetched partition's record batches (aiokafka's Python splitter: it keeps each
    batch's bytes at hand, for _Batch), each v2 batch as a _Batch."""

    def next_batch(self, *args: Any) -> Any:
        data = self._next_slice
        batch = super().next_batch(*args)
        if batch is None or data[self.MAGIC_OFFSET] < 2:
            return batch
        return _Batch(batch, data)


def install_lenient_reader() -> None:
    """Have every aiokafka consumer of this process read batches through _LenientRecords
    (the fetcher looks MemoryRecords up in its module at each fetch)."""
    aiokafka_fetcher.MemoryRecords = _LenientRecords


class ReadCommittedApp(faust.App):
    """A faust app whose consumers read with isolation.level=read_committed."""

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self, loop=self.loop)


def missing() -> list[str]:
    """What this module relies on and the installed versions lack (empty: all there)."""
    gone = [f"{getattr(owner, '__name__', owner)}.{name}" for owner, name in OVERRIDDEN if not hasattr(owner, name)]
    source = inspect.getsource(aiokafka.AIOKafkaConsumer)
    if "self._isolation_level = isolation_level" not in source or "isolation_level=self._isolation_level" not in source:
        gone.append("aiokafka.AIOKafkaConsumer._isolation_level (read by start() to build the fetcher)")
    if DRAIN_CALL not in "".join(inspect.getsource(faust_consumer.Consumer._drain_messages).split()):
        gone.append(f"faust.transport.consumer.Consumer._drain_messages calling {DRAIN_CALL} "
                    "(taken in place by wait_first)")
    if "callback=self.callback" not in "".join(inspect.getsource(faust_consumer.Consumer._drain_messages).split()):
        gone.append("faust.transport.consumer.Consumer._drain_messages delivering with self.callback "
                    "(wrapped to note each delivered offset)")
    if FETCH_RECORDS not in "".join(inspect.getsource(aiokafka_fetcher.Fetcher._proc_fetch_request).split()):
        gone.append(f"aiokafka's Fetcher._proc_fetch_request reading batches with {FETCH_RECORDS} "
                    "(see _LenientRecords)")
    why = None if gone else lenient_read_fails()
    if why:
        gone.append(f"the lenient record reader ({why})")
    return gone


class _Name(str):
    def encode(self, *args: Any, **kwargs: Any) -> bytes:
        return UNREADABLE_NAME


UNREADABLE_NAME = b"\xff\xfe-not-utf8"


def batch_with_unreadable_name(compression: int = 0) -> bytes:
    """A v2 record batch of three records (offsets 0 to 2) whose middle one has a header
    name that is not UTF-8, made as another client would (aiokafka's Python builder
    encodes a name with its encode())."""
    builder = default_records._DefaultRecordBatchBuilderPy(
        magic=2, compression_type=compression, is_transactional=0, producer_id=-1, producer_epoch=-1,
        base_sequence=-1, batch_size=1 << 20)
    for offset, headers in enumerate([[("a", b"1")], [("b", b"2"), (_Name("x"), b"3")], []]):
        builder.append(offset, timestamp=1, key=b"k", value=b"v%d" % offset, headers=headers)
    return bytes(builder.build())


def lenient_read_fails() -> str | None:
    """Why the lenient reader does not read batch_with_unreadable_name() (None: it does)."""
    try:
        records = _LenientRecords(batch_with_unreadable_name())
        got = [(r.offset, r.headers) for r in records.next_batch()]
    except Exception as exc:  # noqa: BLE001 (reported)
        return f"{type(exc).__name__}: {exc}"
    want = [(0, [("a", b"1")]), (1, [("b", b"2"), (UNREADABLE_NAME.decode("utf-8", "surrogateescape"), b"3")]),
            (2, [])]
    return None if got == want else f"read {got}, expected {want}"


def unexpected_versions() -> dict[str, str]:
    """Installed versions other than those this was written for: package -> version."""
    installed = {name: version(name) for name in WRITTEN_FOR}
    return {name: v for name, v in installed.items() if not v.startswith(WRITTEN_FOR[name])}
