"""Throughput sweeps: batch sizes as a grid dimension, CPU ceilings and floors on every row,
and paper ratios from rows of one run only."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from harness import sweep as sw
from harness.config import ConfigError
from harness.metrics.ceilings import busy_warning, measure_ceilings
from harness.sweep.ceilings import sweep_ceilings
from harness.report.frame import aggregate, load_frame
from harness.report.speed import add_floors
from harness.report.throughput import throughput_ratios


def config(**over) -> dict:
    cfg = {
        "name": "tp", "lengths": [16], "batch_sizes": [1, 3], "num_samples": 1, "batch_size": 1,
        "metrics": ["speed"], "speed": {"warmup": 0, "repeats": 1}, "device": "cpu", "save_samples": 0,
        "train_defaults": {"backbone": {"preset": "tiny", "max_len": 16},
                           "data": {"corpus": "bundled", "tokenizer": "bpe", "bpe_vocab_size": 300, "seq_len": 16},
                           "train": {"seed": 0, "device": "cpu"}},
        "models": [{"name": "mdlm", "init": "random", "train": {"model": "mdlm"}, "schedules": [{"steps": 4}]},
                   {"name": "esolm-b", "init": "random", "train": {"model": "esolm-b"},
                    "schedules": [{"alpha_0": 1.0, "steps": [4, 16]}]}],
    }
    cfg.update(over)
    return cfg


def write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "tp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_batch_sizes_expand_the_grid_per_length():
    cfg = sw.parse_sweep_config(config(lengths=[16, 8], batch_sizes={16: [2, 4], 8: 1}))
    points = sw.expand_points(cfg)
    assert [(p.entry, p.length, p.batch_size) for p in points if p.entry == "mdlm"] == [
        ("mdlm", 16, 2), ("mdlm", 16, 4), ("mdlm", 8, 1)]
    assert len({p.key for p in points}) == len(points)  # the batch is part of the key
    with pytest.raises(ConfigError, match="batch_sizes.*length 8"):
        sw.parse_sweep_config(config(lengths=[16, 8], batch_sizes={16: 2}))
    with pytest.raises(ConfigError, match="batch_sizes"):
        sw.parse_sweep_config(config(batch_sizes=[0]))
    with pytest.raises(ConfigError, match="max_memory"):
        sw.parse_sweep_config(config(max_memory="lots"))


def test_ceilings_are_positive_finite_and_stored(tmp_path):
    small = measure_ceilings(32, 50, tokens=64, repeats=1, copy_bytes=2 ** 20)
    for key in ("matmul_flops", "copy_bytes_per_s"):
        assert math.isfinite(small[key]) and small[key] > 0
    path = sweep_ceilings(write(tmp_path, config()), tmp_path / "results", repeats=1, tokens=64)
    assert path == tmp_path / "results" / "tp" / "ceilings.json"
    stored = json.loads(path.read_text())
    assert stored["matmul_flops"] > 0 and stored["copy_bytes_per_s"] > 0 and stored["device"] == "cpu"


def test_ceilings_record_the_load_and_warn_when_the_cpu_was_busy(tmp_path):
    stored = json.loads(sweep_ceilings(write(tmp_path, config()), tmp_path / "r", repeats=1, tokens=64).read_text())
    assert stored["load_average_1min"] >= 0
    quiet, busy = dict(stored, load_average_1min=0.4, threads=2), dict(stored, load_average_1min=3.7, threads=2)
    assert busy_warning(quiet) is None and busy_warning(dict(busy, device="cuda")) is None
    assert busy_warning(busy).startswith("warning: load average 3.7 on 2 threads")


def test_every_row_has_batch_tokens_per_second_floor_and_step_mode(tmp_path):
    path = write(tmp_path, config())
    results = tmp_path / "results"
    sweep_ceilings(path, results, repeats=1, tokens=64)
    out = sw.run_sweep(path, results_root=results, report=False, progress=False)
    rows = sw.read_points(out)
    assert sorted((r["model_entry"], r["batch_size"]) for r in rows) == [
        ("esolm-b", 1), ("esolm-b", 1), ("esolm-b", 3), ("esolm-b", 3), ("mdlm", 1), ("mdlm", 3)]
    for r in rows:
        assert r["num_samples"] == r["batch_size"] and r["step_mode"] == "dynamic" and r["run_id"]
        assert r["metrics"]["tokens_per_second"] > 0
    df = load_frame(out)
    add_floors(df, out)
    assert (df["floor_seconds_per_sample"] > 0).all()  # CPU rows get floors from ceilings.json
    sw.run_sweep(path, results_root=results, progress=False)  # resumes (nothing to run) and reports
    text = (results.parent / "reports" / "tp" / "report.md").read_text()
    assert "## Throughput" in text and "x floor" in text


def test_ratios_pair_rows_of_one_run_only(tmp_path):
    """Rows of a second run (resumed with other points) never enter the first run's ratios."""
    path = write(tmp_path, config(batch_sizes=[2]))
    results = tmp_path / "results"
    sw.run_sweep(path, results_root=results, report=False, progress=False, entries="esolm-b")
    sw.run_sweep(path, results_root=results, report=False, progress=False, entries="mdlm")
    agg = aggregate(load_frame(results / "tp"))
    assert agg["run_id"].nunique() == 2
    assert throughput_ratios(agg) == []
    sw.run_sweep(path, results_root=results, report=False, progress=False,
                 overrides=["name=tp2"])  # one run holding both
    agg = aggregate(load_frame(results / "tp2"))
    pairs = throughput_ratios(agg)
    assert len(pairs) == 1 and pairs[0]["esolm_schedule"] == "T=4,a0=1"  # MDLM T=4 against Eso-LM T=4
    eso = agg[(agg["family"] == "esolm-b") & (agg["steps"] == 4)]["tokens_per_second"].iloc[0]
    mdlm = agg[agg["family"] == "mdlm"]["tokens_per_second"].iloc[0]
    assert pairs[0]["speedup"] == pytest.approx(eso / mdlm)


def test_fastest_step_mode_runs_the_fastest_measured_mode(tmp_path):
    """Timed at the first point of each (entry, length, batch); the later points of that
    shape run the mode it chose without timing again."""
    cfg = config(batch_sizes=[2], step_mode="fastest",
                 models=[{"name": "ar", "init": "random", "train": {"model": "ar"},
                          "schedules": [{"top_p": 1.0}, {"top_p": 0.9}]}])
    results = tmp_path / "results"
    rows = sw.read_points(sw.run_sweep(write(tmp_path, cfg), results_root=results, report=False, progress=False))
    assert len(rows) == 2
    timed_rows = [r for r in rows if "step_mode_trials" in r["metrics"]]
    assert len(timed_rows) == 1
    trials = timed_rows[0]["metrics"]["step_mode_trials"]
    assert set(trials) == {"dynamic", "static", "compiled"}
    timed = {m: t for m, t in trials.items() if isinstance(t, float)}
    assert timed and rows[0]["step_mode"] == rows[1]["step_mode"] == min(timed, key=timed.get)
