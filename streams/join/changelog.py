"""Changelog records for the join's state, in a compacted topic.

Key: b"p:" / b"o:" / b"r:" + order_id (pending payment, unmatched order, recovered
payment), value: a small fixed header and the record. Key b"m:" + number: a bundle of
matched pairs (order_id, payment_id, times, the first payment's bytes). Key b"s:" +
number (the same numbers as the matched pairs' bundles): a bundle of settled pairs, each
its order_id, its payment's fingerprint and its window's end (state.py). A None value
deletes.

Formats, each still read (tests/join/test_changelog_upgrade.py restores what each wrote):
1. header and the record's original bytes;
2. (flag bits) the fields a restore needs and the traceparent before the original bytes;
3. a pending payment is its compact entry as the join keeps it (compact.py, flag bit
   COMPACT): written as it is and restored as it is, nothing parsed. Recovered payments
   and matched pairs that came from one carry its compact payment part where format 2
   had the payment's JSON (compact.payment() reads either).
4. settled bundles (b"s:"), format 3 otherwise: a changelog without them restores as
   before (nothing settled). Formats 2 and 3 leave them out (`written`), all but their
   tombstones: a release before format 4 does not know the key.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, cast

from schemas import Order, Payment, fast
from streams.join import compact
from streams.join.state import (
    BufferedOrder,
    Bundle,
    Change,
    Entry,
    PendingPayment,
    RecoveredPayment,
    Settled,
    Store,
    order_cmp,
)

if TYPE_CHECKING:
    from streams.join.core import PartitionJoin

PREFIX = {Store.PENDING: b"p:", Store.ORDERS: b"o:", Store.RECOVERED: b"r:", Store.MATCHED: b"m:",
          Store.SETTLED: b"s:"}
KIND = {v: k for k, v in PREFIX.items()}
# globals: cheap in the restore loop
_PENDING, _ORDERS, _MATCHED, _SETTLED = Store.PENDING, Store.ORDERS, Store.MATCHED, Store.SETTLED
_TS_FLAG = struct.Struct(">qB")
_ORDER = struct.Struct(">qqI")  # order ts, paid_t, length of the order's bytes
_PAIR = struct.Struct(">HHIqq")  # lengths of order_id, payment_id, payment bytes; order ts, paid_t
_RECOVERED_AT = struct.Struct(">q")
_SETTLED_ENTRY = struct.Struct(">HQq")  # length of order_id, the payment's fingerprint, the window's end
# Flag byte of payment and recovered entries: bit 0 late; bit 1 a recovered_at follows
# (wall-clock ms of the recovery); bit 2 a traceparent follows (one length byte, then
# its bytes). Records written before a bit existed have it clear and still decode: their
# recovery time is taken as the restore's wall clock (they are remembered a little
# longer, never shorter), their trace as absent.
# Bit 3: the fields a restore needs follow (payment_id, user_id, amount, currency, each
# one length byte and UTF-8), so that restoring does not parse the payment's JSON: about
# 10 us per entry with the strict models, most of a restore's time.
_LATE, _HAS_RECOVERED_AT, _HAS_TRACE, _HAS_FIELDS = 1, 2, 4, 8
# Format 3 pending entries: bit 4 COMPACT, bit 7 PERSISTED (compact.py); 1 and 4 as above.
_PERSISTED = compact.PERSISTED
_PERSISTED_COMPACT = compact.PERSISTED | compact.COMPACT
assert (compact.LATE, compact.TRACE) == (_LATE, _HAS_TRACE)
# An unmatched order's length field: its top bit says the order's traceparent follows
# (one length byte, then its bytes), the next bit that its fields follow (user_id,
# amount, currency, as above); both clear in older records.
_ORDER_TRACES, _ORDER_FIELDS = 0x8000_0000, 0x4000_0000
MAX_TRACE = 255  # a W3C traceparent is 55 bytes; anything longer is not kept


class ChangelogFormatError(ValueError):
    """A changelog record that this version cannot read (written by something else?)."""


def encode_key(store: Store, key: str | int) -> bytes:
    if isinstance(key, int):
        return PREFIX[store] + b"%012d" % key
    return PREFIX[store] + key.encode()


def encode_value(store: Store, entry: Entry | Bundle | Settled, fmt: int = 3, oid: str = "") -> bytes:
    """`entry` under `oid` (a pending payment's order_id: needed for format 2).

    `fmt` 2: what the release before format 3 reads (a pending payment as its JSON with the
    fields beside it, and never a packed payment part anywhere): for a rolling upgrade from
    it, and for as long as a rollback to it may come. Costs a rebuilt payment per entry.
    Format 4 writes values as 3 does (`written` keeps its settled bundles, which 2 and 3
    leave out)."""
    if store == Store.SETTLED:
        assert isinstance(entry, list)
        parts = []
        for settled_oid, fp, window_end in cast(Settled, entry):
            o = settled_oid.encode()
            parts.append(_SETTLED_ENTRY.pack(len(o), fp, window_end) + o)
        return b"".join(parts)
    if isinstance(entry, list):
        parts = []
        for oid, matched in cast(Bundle, entry):
            o, pid, raw = oid.encode(), (matched.paid_id or "").encode(), matched.paid_raw or b""
            if fmt == 2:
                raw = _json(raw, oid)
            parts.append(_PAIR.pack(len(o), len(pid), len(raw), matched.ts, matched.paid_t) + o + pid + raw)
        return b"".join(parts)
    if store == Store.PENDING:
        assert isinstance(entry, bytes)
        if fmt == 2:
            return _pending_format2(entry, oid)
        return entry  # format 3: the entry itself
    if store == Store.ORDERS:
        assert isinstance(entry, BufferedOrder)
        trace = _trace_field(entry.trace)
        fields = _fields(*entry.cmp) if entry.cmp and entry.paid_raw is None else b""
        n = len(entry.raw) | (_ORDER_TRACES if trace else 0) | (_ORDER_FIELDS if fields else 0)
        return _ORDER.pack(entry.ts, entry.paid_t, n) + trace + fields + entry.raw + (entry.paid_raw or b"")
    assert isinstance(entry, RecoveredPayment)
    trace = _trace_field(entry.trace)
    fields = _fields(entry.payment_id)
    flags = entry.late | _HAS_RECOVERED_AT | (_HAS_TRACE if trace else 0) | (_HAS_FIELDS if fields else 0)
    raw = _json(entry.raw, oid) if fmt == 2 else entry.raw
    return _TS_FLAG.pack(entry.deadline, flags) + _RECOVERED_AT.pack(entry.recovered_at) + trace + fields + raw


def _json(record: bytes, oid: str) -> bytes:
    """A payment's JSON, for a record that may be a packed payment part (format 2 has none)."""
    return compact.payment(record, oid).encode() if compact.is_part(record) else record


def _pending_format2(entry: bytes, oid: str) -> bytes:
    """A pending payment as format 2 wrote it: header, trace, fields, the payment's JSON."""
    p = compact.payment(compact.part_of(entry), oid)
    trace = _trace_field(compact.trace_of(entry))
    fields = _fields(p.payment_id, p.user_id, p.amount, p.currency)
    flags = (entry[8] & _LATE) | (_HAS_TRACE if trace else 0) | (_HAS_FIELDS if fields else 0)
    return _TS_FLAG.pack(compact.t_of(entry), flags) + trace + fields + p.encode()


def _fields(*values: object) -> bytes:
    """Each value's text, one length byte and UTF-8; empty if one is too long (then the
    reader parses the JSON instead)."""
    out = bytearray()
    for v in values:
        b = str(v).encode()
        if len(b) > 255:
            return b""
        out.append(len(b))
        out += b
    return bytes(out)


def _read_fields(value: bytes, at: int, count: int) -> tuple[list[str], int]:
    found = []
    for _ in range(count):
        n = value[at]
        found.append(value[at + 1 : at + 1 + n].decode())
        at += 1 + n
    return found, at


def _trace_field(trace: bytes | None) -> bytes:
    """A length byte and the traceparent; empty for none (or one too long to be real)."""
    if not trace or len(trace) > MAX_TRACE:
        return b""
    return bytes((len(trace),)) + trace


def _read_trace(value: bytes, at: int) -> tuple[bytes | None, int]:
    n = value[at]
    return (value[at + 1 : at + 1 + n] or None), at + 1 + n


def encode(change: Change, fmt: int = 3) -> tuple[bytes, bytes | None]:
    """A change as a changelog record's key and value (None: a tombstone), in format `fmt`
    (see encode_value)."""
    key = change.key
    value = None if change.value is None else encode_value(change.store, change.value, fmt,
                                                           key if isinstance(key, str) else "")
    return encode_key(change.store, key), value


def written(records: list[tuple[int, bytes, bytes | None]], fmt: int) -> list[tuple[int, bytes, bytes | None]]:
    """Changelog records (partition, key, value) as a worker writing format `fmt` sends
    them: formats 2 and 3 leave the settled bundles out (the releases they are for cannot
    read them; a restore from them forgets what they held, as those releases did), but
    not their tombstones: a worker rolled back to format 3 deletes the bundles a format 4
    worker left once their pairs are forgotten, so that the release before can restore
    the partition (a bundle it never wrote gets a tombstone too: harmless)."""
    if fmt < 4:
        prefix = PREFIX[Store.SETTLED]
        return [r for r in records if r[2] is None or not r[1].startswith(prefix)]
    return records


def decode(key: bytes, value: bytes | None, now_ms: int = 0) -> Change:
    """A changelog record as a Change (value None: a tombstone). `now_ms`: the recovery
    time given to recovered entries written before it was recorded."""
    kind = KIND.get(key[:2])
    if kind is None:
        raise ChangelogFormatError(f"unknown changelog key prefix {key[:2]!r}")
    if kind == _MATCHED:
        number = int(key[2:])
        return Change(kind, number, None if value is None else _decode_pairs(value))
    if kind == _SETTLED:
        return Change(kind, int(key[2:]), None if value is None else _decode_settled(value))
    oid = key[2:].decode()
    if value is None:
        return Change(kind, oid, None)
    if kind == _ORDERS:
        ts, paid_t, n = _ORDER.unpack_from(value)
        start = _ORDER.size
        trace = cmp = None
        if n & _ORDER_TRACES:
            trace, start = _read_trace(value, start)
        if n & _ORDER_FIELDS:
            (uid, amount, cur), start = _read_fields(value, start, 3)
            cmp = (uid, Decimal(amount), cur)
        n &= ~(_ORDER_TRACES | _ORDER_FIELDS)
        raw, paid_raw = value[start : start + n], value[start + n :] or None
        paid_id = compact.payment_id_of(paid_raw) if paid_raw else None
        return Change(kind, oid, BufferedOrder(ts, raw, cmp or order_cmp(Order.decode(raw)), paid_id, paid_t,
                                               paid_raw, trace=trace))
    t, flags = _TS_FLAG.unpack_from(value)
    if kind == _PENDING and flags & compact.COMPACT:
        return Change(kind, oid, compact.with_flag(value, _PERSISTED))
    at = _TS_FLAG.size
    recovered_at = now_ms
    if flags & _HAS_RECOVERED_AT:
        (recovered_at,) = _RECOVERED_AT.unpack_from(value, at)
        at += _RECOVERED_AT.size
    trace = None
    if flags & _HAS_TRACE:
        trace, at = _read_trace(value, at)
    late = bool(flags & _LATE)
    if kind == _PENDING:  # formats 1 and 2: the payment's JSON, parsed once to make its entry
        if flags & _HAS_FIELDS:
            _, at = _read_fields(value, at, 4)
        part = compact.pack_payment(fast.decode(Payment, value[at:]))
        return Change(kind, oid, compact.entry(t, part, late | _PERSISTED, trace))
    if flags & _HAS_FIELDS:
        (pid,), at = _read_fields(value, at, 1)
    else:
        pid = compact.payment_id_of(value[at:])
    return Change(kind, oid, RecoveredPayment(pid, t, value[at:], late, recovered_at=recovered_at, trace=trace))


def _decode_pairs(value: bytes) -> Bundle:
    pairs: Bundle = []
    at, end = 0, len(value)
    while at < end:
        n_oid, n_pid, n_raw, ts, paid_t = _PAIR.unpack_from(value, at)
        at += _PAIR.size
        oid = value[at : at + n_oid].decode()
        at += n_oid
        pid = value[at : at + n_pid].decode()
        at += n_pid
        raw = value[at : at + n_raw]
        at += n_raw
        # A matched pair never matches again: the order's own bytes and fields are not needed.
        pairs.append((oid, BufferedOrder(ts, b"", None, pid, paid_t, raw)))
    return pairs


def _decode_settled(value: bytes) -> Settled:
    entries: Settled = []
    at, end = 0, len(value)
    unpack, size = _SETTLED_ENTRY.unpack_from, _SETTLED_ENTRY.size
    while at < end:
        n_oid, fp, window_end = unpack(value, at)
        at += size
        entries.append((value[at : at + n_oid].decode(), fp, window_end))
        at += n_oid
    return entries


def restore_into(core: PartitionJoin, latest: dict[bytes, bytes | None], now_ms: int = 0) -> None:
    """Rebuild a PartitionJoin from the last value of each changelog key of its partition.

    Bundles of matched and settled pairs go first, oldest first (by their shared number:
    the later one for an order wins); entries under their own keys override matched pairs
    (a settled pair stays beside them, as in the live join: state._install_settled).
    Pending payments in format 3 (persisted, as written) go in as they are, together (one
    pass to schedule their timeouts): a restore is mostly these.
    """
    bundle_prefix, settled_prefix = PREFIX[Store.MATCHED], PREFIX[Store.SETTLED]
    for key in sorted((k for k in latest if k.startswith((bundle_prefix, settled_prefix))), key=lambda k: k[2:]):
        core.restore(decode(key, latest[key]))
    pending_prefix, as_written = PREFIX[Store.PENDING], _PERSISTED_COMPACT
    pending: dict[str, PendingPayment] = {}
    for key, value in latest.items():
        if value is None or key.startswith((bundle_prefix, settled_prefix)):
            continue
        if key.startswith(pending_prefix) and value[8] & as_written == as_written:
            pending[key[2:].decode()] = value
            continue
        core.restore(decode(key, value, now_ms))
    core.restore_pending(pending)


def drop_handled(latest: dict[bytes, bytes | None], timeout_ms: int) -> list[bytes]:
    """Take out of `latest` each pending payment that the changelog also holds as handled:
    the same payment (payment_id and event time) recovered under its order's r: key, or
    matched in a pair of a bundle. Returns their keys, for the next commit to delete.

    A live join never holds a payment both pending and handled: it stops pending when it
    is recovered or matched, in the interval whose commit writes the recovery or the pair
    and the pending key's tombstone. An at_least_once commit has no transaction and can
    fail part way; it sends an interval's tombstones only once all its new values have
    landed (checkpoint.phases), so a failed commit leaves either some new values and no
    tombstone (harmless: the records read again after the rewind find what they made),
    or all of its new values and some of its tombstones: a pending key beside its own
    recovery or pair, which this resolves toward handled (the recovery was delivered
    before any state: commit step 1). Its key must then be deleted (Checkpoint.delete):
    left in the log, it would be pending again at a restore once the recovery or the
    pair's bundle is gone, with nothing left to tell.

    A pending payment among the new values that landed is known before its record is
    read again: the advances read again before it judge it too, and may recover it where
    the contract says of a payment read (the orders' progress past its deadline + GRACE,
    no order of it read; its order, appended after, late), where a clean rewind reading it
    again with its order before the next advance matches them. Both are the contract's:
    a race between the order's append and the worker's advance, not a false recovery
    (tests/join/test_partial_commit.py, Ahead).

    Only the same payment is taken out: a pair lingering in a bundle after it expired
    (bundles go when all their pairs have) does not hide a later payment for its order."""
    pending = [key for key, value in latest.items() if key[:2] == b"p:" and value is not None]
    if not pending:
        return []
    recovered = PREFIX[Store.RECOVERED]
    handled: dict[bytes, list[tuple[str, int]]] = {}  # order_id -> (payment_id, event time) handled
    for key in pending:
        value = latest.get(recovered + key[2:])
        if value is not None:
            entry = decode(recovered + key[2:], value).value
            assert isinstance(entry, RecoveredPayment)
            handled.setdefault(key[2:], []).append((entry.payment_id, entry.deadline - timeout_ms))
    bundle_prefix = PREFIX[Store.MATCHED]
    bundles = [value for key, value in latest.items() if key[:2] == bundle_prefix and value]
    if bundles:
        wanted = {key[2:] for key in pending}
        unpack, size = _PAIR.unpack_from, _PAIR.size
        for value in bundles:  # the pairs' order ids only, unless one is wanted
            at, end = 0, len(value)
            while at < end:
                n_oid, n_pid, n_raw, _, paid_t = unpack(value, at)
                at += size
                oid = value[at : at + n_oid]
                if oid in wanted:
                    pid = value[at + n_oid : at + n_oid + n_pid].decode()
                    handled.setdefault(oid, []).append((pid, paid_t))
                at += n_oid + n_pid + n_raw
    dropped = []
    for oid, done in handled.items():
        key = PREFIX[Store.PENDING] + oid
        value = latest[key]
        assert value is not None
        entry = value if value[8] & compact.COMPACT else decode(key, value).value
        assert isinstance(entry, bytes)
        if (compact.payment_id_in(entry), compact.t_of(entry)) in done:
            del latest[key]
            dropped.append(key)
    return dropped


# ---------------------------------------------------------------- reading it from outside the join


@dataclass(frozen=True)
class Held:
    """What the changelog says the join holds for one order (for `slipguard explain`)."""

    kind: str  # "pending" | "recovered" | "waiting" (an order) | "matched" | "settled"
    payment_id: str | None = None
    since_ms: int | None = None  # a pending payment's event time, a recovery's time


def keys_of(order_id: str) -> set[bytes]:
    """The changelog keys an order's own entries are under (bundles: is_bundle)."""
    return {encode_key(store, order_id) for store in (Store.PENDING, Store.ORDERS, Store.RECOVERED)}


def is_bundle(key: bytes) -> bool:
    return key.startswith((PREFIX[Store.MATCHED], PREFIX[Store.SETTLED]))


def held(latest: dict[bytes, bytes | None], order_id: str) -> list[Held]:
    """What the last values of an order's keys (and the bundles) say the join holds for it."""
    found = []
    for key, value in latest.items():
        if value is None:
            continue
        change = decode(key, value)
        entry = change.value
        if change.store == Store.SETTLED:
            assert isinstance(entry, list)
            found += [Held("settled") for oid, _, _ in cast(Settled, entry) if oid == order_id]
        elif isinstance(entry, bytes):
            found.append(Held("pending", compact.payment_id_in(entry), compact.t_of(entry)))
        elif isinstance(entry, RecoveredPayment):
            found.append(Held("recovered", entry.payment_id, entry.recovered_at))
        elif isinstance(entry, BufferedOrder):
            found.append(Held("waiting"))
        elif isinstance(entry, list):
            found += [Held("matched", matched.paid_id) for oid, matched in cast(Bundle, entry) if oid == order_id]
    return found
