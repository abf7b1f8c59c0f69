"""Fuzz the join's whole record path: hostile records mixed into honest traffic, driven
as a worker drives them (tests/join/fuzz.py). The properties, for every generated run:

* nothing escapes as an exception, and the join reports no internal error;
* every record it would produce (outputs, dead letters, changelog), headers included,
  fits a record of the producer's batch (the topics' limit, checked at start);
* every output is valid by its model, and carries only a valid traceparent;
* every record the contract says the join must not take is dead-lettered, once, and
  nothing else is;
* every state entry is bounded (by the input cap), whatever the input;
* the honest records' decisions are the same as in a run without the hostile ones,
  but for what an interacting record is entitled to (a forged payment's anomaly);
* at every commit, a core restored from the changelog holds the same state.

The default budget runs in `make test`; `make fuzz` runs it long (SLIPGUARD_FUZZ_EXAMPLES)
and keeps each failing case it finds in tests/join/fuzz_corpus/, which every run replays.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas.headers import valid_traceparent
from streams.join import changelog, compact, native
from streams.join.core import JoinParams, PartitionJoin, Side
from streams.join.intake import MAX_INPUT_BYTES
from streams.join.native import NativePipeline
from streams.join.pipeline import Pipeline
from streams.ops import metrics
from tests.join import fuzz
from tests.join.fuzz import BASE, Rec, T

CORPUS = Path(__file__).parent / "fuzz_corpus"
EXAMPLES = int(os.environ.get("SLIPGUARD_FUZZ_EXAMPLES", "150"))
ENTRY_MAX = MAX_INPUT_BYTES + 512  # a record, its packed or trace overhead


def _state(core: PartitionJoin) -> tuple:
    """(pending, orders, recovered, settled) as the native core's state() gives them."""
    return ({oid: (compact.t_of(e), compact.flags_of(e) & ~compact.PERSISTED, compact.part_of(e)
                   if type(e) is bytes else compact.pack_payment(e.payment), compact.trace_of(e))  # type: ignore[union-attr]
             for oid, e in core.pending.items()},
            {oid: (e.ts, e.paid_id) for oid, e in core.orders.items()},
            {oid: (e.payment_id, e.deadline, e.late, e.trace) for oid, e in core.recovered.items()},
            {oid: (v >> 64, v & ((1 << 64) - 1)) for oid, v in core.settled.items()})


def _same_after_restore(restored: tuple, live: tuple) -> None:
    """A restore of the changelog gives the live state: pending payments, orders and
    recovered payments alike, but for one thing by design. A matched pair lives in a bundle
    of the pairs matched in its commit, and a bundle is deleted when its last pair expires:
    a pair the live core has forgotten may come back with its bundle (and is forgotten again
    at the restored core's first expiry). So matched pairs: the live ones all come back, and
    what else comes back is a matched pair too."""
    (pending, orders, recovered, settled), (live_pending, live_orders, live_recovered, live_settled) = restored, live
    assert pending == live_pending, "a restore gives the same pending payments"
    assert recovered == live_recovered, "a restore gives the same recovered payments"
    # (settled pairs, like matched ones, are written in bundles: a forgotten one may come back with its bundle)
    assert {oid: settled.get(oid) for oid in live_settled} == live_settled, "every settled pair comes back"
    assert {oid: orders.get(oid) for oid in live_orders} == live_orders, "every order the live core holds comes back"
    back = {oid: v for oid, v in orders.items() if oid not in live_orders}
    assert all(paid_id is not None for _, paid_id in back.values()), \
        f"only a forgotten matched pair may come back with its bundle, not a waiting order: {back}"


def _restores_the_same(pipe: Pipeline, log: dict[bytes, bytes | None]) -> None:
    restored = PartitionJoin(JoinParams(T, fuzz.G, fuzz.H, (fuzz.KEY,)))
    changelog.restore_into(restored, {k: v for k, v in log.items() if v is not None})
    _same_after_restore(_state(restored), _state(pipe.pairs[0].core))


def _restores_the_same_natively(pipe: NativePipeline, log: dict[bytes, bytes | None]) -> None:
    latest = {k: v for k, v in log.items() if v is not None}
    restored = native.restore(JoinParams(T, fuzz.G, fuzz.H, (fuzz.KEY,)), latest, 0)
    _same_after_restore(restored.state(), pipe.native.state(0))


def check(case: dict) -> None:
    """One fuzz case: {"seed", "honest", "hostile": [[position, record]...], "backlog", "minimise"}."""
    honest = fuzz.honest(case["honest"], case["seed"])
    hostile = [(pos, Rec.from_json(r)) for pos, r in case["hostile"]]
    s = fuzz.settings(minimise_personal_data=case["minimise"])
    end = max(r.ts for r in honest)
    if case["backlog"]:  # everything read hours after it was written: the wall clock stands far ahead
        def now(_step: int) -> int:
            return end + 2 * 3_600_000
    else:  # live: the wall clock follows the records
        def now(step: int) -> int:
            return BASE + step * 200
    mixed = list(honest)
    for pos, rec in sorted(hostile, key=lambda x: x[0], reverse=True):
        mixed.insert(min(pos, len(mixed)), rec)
    errors = metrics.JOIN_INTERNAL_ERRORS._value.get()

    alone = fuzz.run(honest, s=s, now=now, rnd=random.Random(case["seed"]))
    both = fuzz.run(mixed, s=s, now=now, rnd=random.Random(case["seed"] + 1), restore_check=_restores_the_same)
    if native.NATIVE is not None:  # the native record path, on the same batches: the very same work
        nat = fuzz.run(mixed, s=s, now=now, rnd=random.Random(case["seed"] + 1),
                       restore_check=_restores_the_same_natively, native=True)
        assert [(r.topic, r.key, r.value, r.headers) for r in nat.sink.records] == \
            [(r.topic, r.key, r.value, r.headers) for r in both.sink.records], "the native path produces the same"
        assert nat.sink.offsets == both.sink.offsets
        assert nat.changelog == both.changelog, "the native path writes the same changelog records"

    assert metrics.JOIN_INTERNAL_ERRORS._value.get() == errors, "the join failed on a record it accepted"
    counts = [sum(1 for r in mixed if r.side == side) for side in (Side.PAYMENT, Side.ORDER)]
    assert both.sink.offsets == {(topic, 0): n for topic, n in zip(fuzz.TOPICS, counts, strict=True) if n}, \
        "every record decided: the offsets stored reach the end of both partitions"
    for r in both.sink.records:
        trace = dict(r.headers).get("traceparent")
        assert trace is None or valid_traceparent(trace), "only a valid traceparent is ever copied"
    # Dead letters: exactly the records the contract refuses, each once.
    first = now(1)
    letters = fuzz.dead_letters(both.sink, s.dlq_topic)
    offsets = {0: 0, 1: 0}
    refused = set()
    for rec in mixed:
        where = (fuzz.TOPICS[rec.side], offsets[rec.side])
        offsets[rec.side] += 1
        if not fuzz.accepted(rec, first):
            assert rec.hostile, "an honest record is refused"
            refused.add(where)
    assert set(letters) == refused, "the DLQ holds exactly the records the contract refuses"
    # State is bounded whatever came in.
    assert isinstance(both.pipeline, Pipeline)
    assert max(fuzz.entry_weights(both.pipeline.pairs[0].core), default=0) <= ENTRY_MAX
    # The honest records decide as they do alone, but for what interacting ones may add.
    oids = {r.oid for r in honest}
    got, want = fuzz.decisions(both.sink, s, oids), fuzz.decisions(alone.sink, s, oids)
    forged = {("bad_signature", rec.oid) for _, rec in hostile if rec.hostile == "forged"}
    got["anomalies"] = [a for a in got["anomalies"] if (a[0], a[1]) not in forged]
    assert got == want, "hostile records changed what the join decided about honest ones"
    assert want["recovered"], "the honest traffic has payments to recover (else the comparison proves little)"


@st.composite
def cases(draw) -> dict:
    seed = draw(st.integers(0, 2**16))
    n = draw(st.integers(20, 120))
    honest = fuzz.honest(n, seed)
    payments = [r for r in honest if r.side == Side.PAYMENT]
    oids = [r.oid for r in honest]
    backlog = draw(st.booleans())
    now = max(r.ts for r in honest) + 2 * 3_600_000 if backlog else BASE
    rnd = draw(st.randoms(use_true_random=False))
    hostile = []
    fast = 0
    for _ in range(draw(st.integers(1, 25))):
        rec = fuzz.hostile_record(rnd, now, oids)
        if rec.hostile == "fast-clock":  # two in a row would move progress, as the contract says: one only
            fast += 1
            if fast > 1:
                continue
        pos = draw(st.integers(0, len(honest)))
        if rec.hostile == "copy":  # an exact copy of an honest payment, soon after it (a producer's retry)
            original = draw(st.sampled_from(payments))
            rec = Rec(original.side, original.key, original.value, original.ts, original.headers, "copy", original.oid)
            pos = honest.index(original) + draw(st.integers(1, 10))
        if rec.hostile in ("valid", "skewed", "forged"):  # stamped no later than what precedes it
            before = [r.ts for r in honest[:pos] if r.side == rec.side] or [BASE]
            rec.ts = min(rec.ts, before[-1])
        hostile.append([pos, rec.to_json()])
    return {"seed": seed, "honest": n, "hostile": hostile, "backlog": backlog,
            "minimise": draw(st.booleans())}


@settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("SLIPGUARD_FUZZ_KEEP"),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(cases())
def test_hostile_records_never_crash_stall_or_fool_the_join(case: dict) -> None:
    try:
        check(case)
    except Exception:
        _keep(case)
        raise


def _keep(case: dict) -> None:
    """`make fuzz`: keep the failing case. Hypothesis runs the smallest it found last, so
    that one is what stays in the file: name it for what it shows and commit it."""
    if not os.environ.get("SLIPGUARD_FUZZ_KEEP"):
        return
    CORPUS.mkdir(exist_ok=True)
    (CORPUS / "new-failure.json").write_text(json.dumps(case, sort_keys=True) + "\n")


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.json")), ids=lambda p: p.stem)
def test_every_case_the_fuzzer_found_stays_fixed(path: Path) -> None:
    check(json.loads(path.read_text()))


@pytest.mark.parametrize("setting", ["order_timeout", "grace", "late_horizon", "max_future"])
def test_each_time_setting_at_its_bound_decides_the_same_on_both_cores(setting: str) -> None:
    """No setting can make a time wrap around: each duration takes at most
    MAX_DURATION_MS (100 years; more is a settings error), and at that bound the two cores
    decide and write the same (a sum that wrapped in the native core once sent every record
    to the DLQ)."""
    from streams.settings import MAX_DURATION_MS

    with pytest.raises(ValidationError, match="at most 100 years"):
        fuzz.settings(**{setting: f"{MAX_DURATION_MS + 1}ms"})
    with pytest.raises(ValidationError):
        fuzz.settings(**{setting: "1e400"})
    s = fuzz.settings(**{setting: f"{MAX_DURATION_MS}ms"})
    records = fuzz.honest(20, 7)
    now = lambda step: BASE + step * 200  # noqa: E731
    py = fuzz.run(records, s=s, now=now, rnd=random.Random(3))
    assert not fuzz.dead_letters(py.sink, s.dlq_topic), "honest records are never refused"
    if native.NATIVE is not None:
        nat = fuzz.run(records, s=s, now=now, rnd=random.Random(3), native=True)
        assert [(r.topic, r.key, r.value) for r in nat.sink.records] == [(r.topic, r.key, r.value)
                                                                          for r in py.sink.records]
        assert nat.changelog == py.changelog and nat.sink.offsets == py.sink.offsets
