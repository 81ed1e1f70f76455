"""Timings say when other work shared the machine: the CPU time other processes used over
the timed window, recorded with every timed row, warned about and flagged in the report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import harness.metrics.machine as machine
from harness.metrics.speed import time_sampling

REPO = Path(__file__).resolve().parents[1]


def test_a_busy_loop_beside_the_timing_is_seen():
    """A process spinning on a core while we time: other_cores near one, flagged busy."""
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        with machine.SharedMachine(threads=os.cpu_count()) as shared:
            time.sleep(0.8)  # our own window uses no CPU: all busy time is the loop's
    finally:
        spin.kill()
        spin.wait()
    r = shared.reading
    assert r["other_cores"] > 0.6 and r["machine_busy"] is True, r
    assert r["wall_seconds"] >= 0.8 and r["cpu_seconds"] < 0.1
    line = machine.busy_warning(r, "point ar/default/L16/s0")
    assert line.startswith("warning: point ar/default/L16/s0: other processes kept ") and "re-time" in line


@pytest.mark.parametrize("cores, threads, other, busy", [
    (2, 2, 1.0, True),  # a busy loop on a 2-core machine timing with 2 threads
    (2, 2, 0.2, False),  # a daemon's tick
    (16, 1, 1.0, False),  # a GPU host's launching thread has 15 idle cores to spare
    (16, 1, 15.5, True),
    (2, 1, 1.5, True),
])
def test_busy_means_other_work_took_cores_the_timing_needed(monkeypatch, cores, threads, other, busy):
    clock = iter([0.0, 1.0])
    busy_seconds = iter([100.0, 100.0 + other])  # the machine's busy CPU seconds: ours are 0
    monkeypatch.setattr(machine.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(machine.time, "process_time", lambda: 5.0)
    monkeypatch.setattr(machine, "_busy_seconds", lambda: next(busy_seconds))
    monkeypatch.setattr(machine.os, "cpu_count", lambda: cores)
    with machine.SharedMachine(threads) as shared:
        pass
    assert shared.reading["other_cores"] == pytest.approx(other)
    assert shared.reading["machine_busy"] is busy


def test_a_window_too_short_to_count_gets_no_verdict():
    with machine.SharedMachine(threads=1) as shared:
        pass
    assert shared.reading["other_cores"] is None and shared.reading["machine_busy"] is None
    assert machine.busy_warning(shared.reading, "x") is None


def test_timed_rows_carry_the_reading():
    out = time_sampling(lambda: torch.ones(4, 4).sum(), warmup=0, repeats=2)
    assert {"load_average_1min", "cpu_seconds", "other_cores", "machine_busy"} <= set(out)
    assert out["cpu_seconds"] >= 0 and out["wall_seconds"] >= sum(out["seconds_all"]) * 0.99


def test_the_report_flags_points_timed_on_a_busy_machine(tmp_path):
    from harness.report import write_report

    results = tmp_path / "results" / "smoke"
    shutil.copytree(REPO / "results" / "smoke", results)
    rows = [json.loads(line) for line in (results / "points.jsonl").read_text().splitlines()]
    timed = next(r for r in rows if r["metrics"].get("seconds_per_sample"))
    timed["metrics"].update(machine_busy=True, other_cores=1.0)
    (results / "points.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = write_report(results, out_dir=tmp_path / "report").read_text()
    assert text.count(" (busy)") == 2  # its seconds and its tokens/s, in its results table
    assert "(busy): other processes kept cores busy while the point was timed" in text
