"""`slipguard bench` prints a column per join core: each workload's medians of its runs."""

from __future__ import annotations

import json

from streams.tools.bench import CoreFigures, CoreWide, Figures, WorkloadFigures, report


def _core(core: str, rates: list[float]) -> CoreFigures:
    return CoreFigures(core=core, runs_events_per_s=rates, join_events_per_s=sorted(rates)[len(rates) // 2],
                       ratio=0.5, join_cpu_s_per_million=7.25 if core == "native" else 14.5,
                       changelog_records_per_event=0.125, pending_entries_peak=1234, released_by_hold_limits=0,
                       commit_us_per_event=1.5)


def _figures(cores: list[str]) -> Figures:
    rates = {"native": [150_000.0, 170_000.0, 160_000.0], "python": [90_000.0, 80_000.0, 85_000.0]}
    work = WorkloadFigures(workload="spread", events=1_000_000, ceiling_events_per_s=300_000,
                           cores=[_core(c, rates[c]) for c in cores], read_only_us_per_event=0.5,
                           produce_us_per_record=2.0, kstreams_events_per_s=40_000.0, kstreams_cpu_s_per_million=30.0)
    wide = [CoreWide(core=c, restore_records_per_s=300_000 if c == "native" else 150_000, restore_seconds=3.3,
                     detection_latency_p50_s=0.9, detection_latency_p99_s=1.2, recoveries_expected=10,
                     recoveries_seen=10) for c in cores]
    return Figures(partitions=6, guarantee="exactly_once", runs=3, workloads=[work], join_peak_rss_mb=500.0,
                   bytes_per_pending_entry=228, bytes_per_pending_entry_native=264 if "native" in cores else None,
                   restore_entries=1_000_000, live_rate_per_s=2000.0, cores=wide)


def _row(text: str, label: str) -> list[str]:
    [line] = [line for line in text.splitlines() if line.startswith(label)]
    return line[len(label):].split()


def test_a_column_per_core_with_the_median_of_its_runs() -> None:
    text = report(_figures(["native", "python"]))
    assert _row(text, " ") == ["native", "python"]
    assert _row(text, "[spread] join, events/s (median)") == ["160,000", "85,000"]
    assert _row(text, "[spread] join, each run, k events/s") == ["150", "170", "160", "90", "80", "85"]
    assert _row(text, "[spread] join CPU, s per million events") == ["7.25", "14.50"]
    assert _row(text, "[spread] join / Kafka Streams") == ["4.00", "2.12"]
    memory = _row(text, "memory per pending payment, B")
    assert memory[0] == "264" and "228" in memory, "each core's own memory figure in its column"
    assert _row(text, "restore of 1,000,000 changelog entries, records/s")[::3] == ["300,000", "150,000"]
    assert json.loads(text.splitlines()[-1])["workloads"][0]["cores"][1]["runs_events_per_s"] == [90_000.0, 80_000.0,
                                                                                                   85_000.0]


def test_one_column_where_only_the_python_core_runs() -> None:
    text = report(_figures(["python"]))
    assert _row(text, " ") == ["python"]
    assert _row(text, "[spread] join, events/s (median)") == ["85,000"]
    assert _row(text, "memory per pending payment, B") == ["228", "(tracemalloc)"]
