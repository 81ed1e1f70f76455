"""Sweeps: config errors, grid expansion, sharding, the append-only results file, resume after a
crash (injected exception and a killed process), test-PPL caching, random-init entries, Ray."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml

from harness import sweep as sw
from harness.sweep import local as runner  # the local runner calls compute_point
from harness.config import ConfigError
from harness.results_store import read_samples, sample_path

REPO = Path(__file__).resolve().parents[1]
HAS_MDLM = (REPO / "baselines" / "mdlm.py").is_file()
HAS_ESOLM = (REPO / "harness" / "esolm.py").is_file()

TRAIN = {"backbone": {"preset": "tiny"}, "data": {"seq_len": 16, "bpe_vocab_size": 300},
         "train": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "eval_every": 2, "eval_batches": 1,
                   "ckpt_every": 2, "device": "cpu"}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One runs folder for the module, so the tiny AR is trained once and reused."""
    return tmp_path_factory.mktemp("runs")


def base_config(runs: Path, **over) -> dict:
    cfg = {
        "name": "t", "lengths": [16], "num_samples": 4, "batch_size": 2, "seeds": [0, 1],
        "metrics": ["test_ppl", "gen_ppl", "entropy", "speed"], "evaluator": {"model_entry": "ar"},
        "runs_dir": str(runs), "device": "cpu", "test_ppl": {"max_sequences": 8, "batch_size": 8},
        "speed": {"warmup": 0, "repeats": 1}, "train_defaults": copy.deepcopy(TRAIN),
        "models": [{"name": "ar", "train": {"model": "ar"}}],
    }
    cfg.update(over)
    return cfg


def write(tmp_path: Path, cfg: dict, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(path, results, **kw):
    return sw.run_sweep(path, results_root=results, report=False, progress=False, **kw)


def rows_of(results_dir: Path) -> list[dict]:
    return sw.read_points(results_dir)


# --------------------------------------------------------------------------------------
# config errors: one line naming the key and the fix
# --------------------------------------------------------------------------------------
def test_misspelt_key_is_named_first_with_the_close_match(tmp_path, runs):
    """'lenghts' also leaves 'lengths' missing; the typo is what the user must see."""
    cfg = base_config(runs)
    cfg["lenghts"] = cfg.pop("lengths")
    with pytest.raises(ConfigError) as err:
        sw.load_sweep_config(write(tmp_path, cfg))
    assert str(err.value).endswith("field 'lenghts': unknown key; did you mean 'lengths'? (+1 more)"), err.value
    cfg = base_config(runs)
    cfg["models"][0]["train"]["train"] = {"setps": 3}
    with pytest.raises(ConfigError, match=r"field 'models.0.train.train.setps': unknown key; did you mean 'steps'\?$"):
        sw.load_sweep_config(write(tmp_path, cfg))
    cfg = base_config(runs)
    cfg["speed"] = {"repeats": 2, "zzz": 1}  # nothing close: the valid keys are listed
    with pytest.raises(ConfigError, match=r"field 'speed.zzz': unknown key; remove it or check its spelling "
                                          r"\(valid keys: warmup, repeats\)$"):
        sw.load_sweep_config(write(tmp_path, cfg))
    cfg = base_config(runs)
    cfg["models"].append({"name": "m", "train": {"model": "mdlm"}, "schedules": [{"setps": 8}]})
    with pytest.raises(ConfigError, match="field 'models.1.schedules.0.setps': unknown schedule field; use one of "
                                          r"\[.*\]; did you mean 'steps'\?$"):
        sw.load_sweep_config(write(tmp_path, cfg))


@pytest.mark.parametrize("mutate, expect", [
    (lambda c: c["models"][0].update(trian={}), "models.0.trian': unknown key"),
    (lambda c: c.update(metrics=["gen_ppl", "perplexity"]), "unknown metric(s) ['perplexity']"),
    (lambda c: c.pop("evaluator"), "need an evaluator"),
    (lambda c: c.update(evaluator={"model_entry": "gpt"}), "'evaluator.model_entry': 'gpt' is not a model entry"),
    (lambda c: c["models"].append({"name": "ar", "train": {"model": "ar"}}), "is used twice"),
    (lambda c: c["models"][0].update(checkpoint="x.pt"), "exactly one of 'checkpoint"),
    (lambda c: c["models"].append({"name": "r", "init": "random", "checkpoint": "x.pt"}), "init: random builds"),
    (lambda c: c["models"][0]["train"].update(name="x"), "takes its name from the model entry"),
    (lambda c: c["models"][0].update(schedules=[{"steps": 8}]), "ar does not use schedule field(s) ['steps']"),
    (lambda c: c["models"][0].update(schedules=[{"stpes": 8}]), "field 'models.0.schedules.0.stpes': unknown schedule"),
    (lambda c: c["models"].append({"name": "m", "train": {"model": "mdlm"}}), "mdlm needs 'steps' in every schedule"),
    (lambda c: c["models"].append({"name": "b", "train": {"model": "bd3lm"}, "schedules": [{"steps": 2,
                                                                                           "first_hitting": True}]}),
     "bd3lm needs exactly one of 'steps'"),
    (lambda c: c["models"].append({"name": "m", "train": {"model": "mdlm"}, "schedules": [{"block_length": 5,
                                                                                          "steps": 2}]}),
     "field 'models.1.schedules': schedule field 'block_length' 5 does not divide the length 16"),
    (lambda c: c.update(lengths=[32]), "length 32 exceeds the model's max_len 16"),
    (lambda c: c["train_defaults"]["train"].update(stpes=3),
     "field 'train_defaults.train.stpes (merged into models.0.train)': unknown key"),
    (lambda c: c["models"][0]["train"].update(train={"stpes": 3}), "field 'models.0.train.train.stpes': unknown key"),
    (lambda c: c["models"][0].update(schedules=[{}, {"stpes": [4, 8]}]),
     "field 'models.0.schedules.1.stpes': unknown schedule field; use one of ['alpha_0', 'block_length', 'blocks',"),
    (lambda c: c.update(num_samples=0), "field 'num_samples'"),
    (lambda c: c.update(backend="spark"), "field 'backend'"),
    (lambda c: c.update(step_mode="fast"), "field 'step_mode'"),
])
def test_config_errors_name_the_key(tmp_path, runs, mutate, expect):
    cfg = base_config(runs)
    mutate(cfg)
    with pytest.raises(ConfigError) as err:
        sw.load_sweep_config(write(tmp_path, cfg))
    message = str(err.value)
    assert expect in message
    assert "\n" not in message and message.startswith(str(tmp_path))


def test_length_expressions_and_schedule_products(tmp_path, runs):
    models = [{"name": "ar", "train": {"model": "ar"}}]
    if HAS_MDLM:
        models.append({"name": "m", "train": {"model": "mdlm", "backbone": {"max_len": 64}},
                       "schedules": [{"steps": ["L/8", "L", 3]}], "lengths": [16, 64]})
    cfg = sw.load_sweep_config(write(tmp_path, base_config(runs, models=models, seeds=[0, 1, 2])))
    points = sw.expand_points(cfg)
    ar = [p for p in points if p.entry == "ar"]
    assert [p.key for p in ar] == ["ar/default/L16/s0", "ar/default/L16/s1", "ar/default/L16/s2"]
    if HAS_MDLM:
        m = [(p.length, p.schedule["steps"]) for p in points if p.entry == "m" and p.seed == 0]
        assert m == [(16, 2), (16, 16), (16, 3), (64, 8), (64, 64), (64, 3)]
    assert [p.index for p in points] == list(range(len(points)))
    # an expression that does not divide the length is a config error, before anything runs
    bad = base_config(runs, models=[{"name": "ar", "train": {"model": "ar"}},
                                    {"name": "m", "train": {"model": "mdlm"}, "schedules": [{"steps": "L/5"}]}])
    with pytest.raises(ConfigError, match=r"models.1.schedules.*'L/5' at length 16 is not a whole number"):
        sw.load_sweep_config(write(tmp_path, bad))
    with pytest.raises(ValueError, match="not a length expression"):
        sw.resolve_value("L+1", 16)


@pytest.mark.skipif(not HAS_MDLM, reason="needs baselines/mdlm.py")
def test_length_expression_landing_on_a_literal_point_is_that_point(tmp_path, runs):
    models = [{"name": "ar", "train": {"model": "ar"}},
              {"name": "m", "train": {"model": "mdlm", "backbone": {"max_len": 64}},
               "schedules": [{"steps": [8, 64]}, {"steps": ["L/8", "L"]}], "lengths": [64, 32]}]
    points = sw.expand_points(sw.load_sweep_config(write(tmp_path, base_config(runs, models=models, seeds=[0]))))
    m = [(p.length, p.schedule["steps"]) for p in points if p.entry == "m"]
    assert m == [(64, 8), (64, 64), (32, 8), (32, 64), (32, 4), (32, 32)]
    literal = base_config(runs, models=[models[0], {"name": "m", "train": {"model": "mdlm"},
                                                    "schedules": [{"steps": 4}, {"steps": 4}]}])
    with pytest.raises(ConfigError, match="appears twice"):
        sw.expand_points(sw.load_sweep_config(write(tmp_path, literal)))


def test_shard_parsing():
    assert sw.parse_shard(None) == (0, 1)
    assert sw.parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "1", "a/b", "0/0", "-1/2"):
        with pytest.raises(ConfigError, match="--shard"):
            sw.parse_shard(bad)


# --------------------------------------------------------------------------------------
# the results file
# --------------------------------------------------------------------------------------
def test_read_points_ignores_half_written_last_line_and_repairs_it(tmp_path):
    path = tmp_path / "points.jsonl"
    sw.append_row(path, {"key": "a", "metrics": {"v": 1}})
    sw.append_row(path, {"key": "b", "metrics": {"v": 2}})
    with path.open("a") as f:
        f.write('{"key": "c", "v"')  # crash mid-write
    assert [r["key"] for r in sw.read_points(path)] == ["a", "b"]
    assert [r["key"] for r in sw.read_points(tmp_path)] == ["a", "b"]  # a folder works too
    sw.repair_tail(path)
    sw.append_row(path, {"key": "c", "metrics": {"v": 3}})
    assert [r["key"] for r in sw.read_points(path)] == ["a", "b", "c"]
    # a corrupt line in the middle is an error, not silently skipped
    path.write_text('{"key": "a", "metrics": {}}\nnot json\n{"key": "b", "metrics": {}}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        sw.read_points(path)
    # a JSON line that is not a row (no key, metrics not a mapping) is named, not a KeyError later
    for bad in ('{"metrics": {}}', '{"key": "x", "metrics": null}', 'null', '[1, 2]'):
        path.write_text('{"key": "a", "metrics": {}}\n' + bad + '\n{"key": "b", "metrics": {}}\n')
        with pytest.raises(ValueError, match="line 2 is not a sweep's results row"):
            sw.read_points(path)
    # newest row per key wins
    rows = [{"key": "a", "v": 1}, {"key": "b", "v": 1}, {"key": "a", "v": 2}]
    assert {k: r["v"] for k, r in sw.latest_rows(rows).items()} == {"a": 2, "b": 1}
    with pytest.raises(FileNotFoundError, match="esolm sweep"):
        sw.read_points(tmp_path / "nothing", strict=True)


# --------------------------------------------------------------------------------------
# running: rows, resume after a crash, re-run skips, config changes recompute
# --------------------------------------------------------------------------------------
def test_sweep_rows_resume_after_injected_crash(tmp_path, runs, monkeypatch):
    cfg_path = write(tmp_path, base_config(runs, seeds=[0, 1, 2, 3]))
    results = tmp_path / "results"
    real = sw.compute_point
    calls = []

    def crash_after_two(ctx, point):
        if len(calls) == 2:
            raise RuntimeError("injected crash")
        calls.append(point.key)
        return real(ctx, point)

    monkeypatch.setattr(runner, "compute_point", crash_after_two)
    with pytest.raises(RuntimeError, match="injected crash"):
        run(cfg_path, results)
    out = results / "t"
    assert [r["key"] for r in rows_of(out)] == ["ar/default/L16/s0", "ar/default/L16/s1"]
    ckpt = runs / "t" / "ar" / "checkpoint.pt"
    mtime = ckpt.stat().st_mtime_ns

    calls.clear()
    monkeypatch.setattr(runner, "compute_point", lambda ctx, p: (calls.append(p.key), real(ctx, p))[1])
    run(cfg_path, results)
    assert calls == ["ar/default/L16/s2", "ar/default/L16/s3"]  # only the missing points
    rows = rows_of(out)
    assert sorted(r["key"] for r in rows) == [f"ar/default/L16/s{i}" for i in range(4)]  # each once
    assert ckpt.stat().st_mtime_ns == mtime  # the trained entry was reused, not retrained

    calls.clear()
    run(cfg_path, results)  # everything finished: nothing recomputed
    assert calls == [] and len(rows_of(out)) == 4

    row = rows[0]
    m = row["metrics"]
    assert row["sweep"] == "t" and row["model_entry"] == "ar" and row["family"] == "ar"
    assert row["schedule"] == "default" and row["length"] == 16 and row["num_samples"] == 4
    assert row["batch_size"] == 2 and row["init"] == "trained" and row["alpha_0"] is None
    assert row["data_protocol"] == "documents" and row["diffusion_split"] is None  # named in every row
    assert row["data_framing"] == "bos_eos"
    assert len(row["config_hash"]) == 16 and row["torch"] and row["python"] and row["timestamp"]
    assert m["nfe_per_batch"] == [15, 15] and m["nfe_per_sample"] == 15  # AR: L - 1 forwards
    assert m["tokens_computed_per_sample"] == 15  # one new query position per forward
    assert m["evaluator"].startswith("harness-ar:ar") and m["gen_ppl"] > 1 and m["gen_ppl_mean"] > 1
    assert m["test_ppl_estimator"] == "exact" and m["test_ppl_sequences"] == 8
    assert 0 < m["entropy"] < 3 and m["degenerate"] >= 0
    assert m["seconds_per_sample"] > 0 and m["tokens_per_second"] > 0
    assert m["gpu_peak_memory_bytes"] is None and "no CUDA" in m["telemetry_note"]
    # different seeds -> different samples; samples saved per point
    samples = [json.loads(line) for line in (out / "samples" / "ar__default__L16__s0.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and {"i", "text", "entropy", "gen_ppl"} <= set(samples[0])
    other = (out / "samples" / "ar__default__L16__s1.jsonl").read_text()
    assert other != (out / "samples" / "ar__default__L16__s0.jsonl").read_text()
    # test perplexity was computed once for the entry and length, not once per point
    assert len({r["metrics"]["test_ppl"] for r in rows}) == 1


def test_changed_config_recomputes_and_newest_row_wins(tmp_path, runs, monkeypatch):
    results = tmp_path / "results"
    cfg = base_config(runs, seeds=[0], metrics=["entropy"])
    cfg.pop("evaluator")
    run(write(tmp_path, cfg), results)
    first = rows_of(results / "t")
    cfg["num_samples"] = 6
    run(write(tmp_path, cfg), results)
    rows = rows_of(results / "t")
    assert len(rows) == 2 and rows[0]["config_hash"] != rows[1]["config_hash"]
    latest = sw.latest_rows(rows)
    assert list(latest) == ["ar/default/L16/s0"] and latest["ar/default/L16/s0"]["num_samples"] == 6
    assert first[0]["num_samples"] == 4
    # same command again: the changed point is now finished
    calls = []
    real = sw.compute_point
    monkeypatch.setattr(runner, "compute_point", lambda ctx, p: (calls.append(p.key), real(ctx, p))[1])
    run(write(tmp_path, cfg), results)
    assert calls == []


def test_entries_run_only_the_named_model_entries(tmp_path, runs):
    cfg = base_config(runs, seeds=[0], metrics=["entropy"], models=[
        {"name": "ar", "train": {"model": "ar"}}, {"name": "ar-b", "train": {"model": "ar", "train": {"seed": 3}}}])
    cfg.pop("evaluator")
    path = write(tmp_path, cfg)
    results = tmp_path / "results"
    run(path, results, entries="ar-b")
    assert [r["key"] for r in rows_of(results / "t")] == ["ar-b/default/L16/s0"]
    run(path, results, entries=["ar", "ar-b"])
    assert sorted(r["key"] for r in rows_of(results / "t")) == ["ar-b/default/L16/s0", "ar/default/L16/s0"]
    with pytest.raises(ConfigError, match=r"--entries 'ar,mdlm': mdlm is not a model entry.*\['ar', 'ar-b'\]"):
        run(path, results, entries="ar,mdlm")


def test_step_mode_is_applied_recorded_and_part_of_the_point(tmp_path, runs, monkeypatch):
    """A forced step mode reaches the sampler and the row, and is a new point (its timing
    differs) with the same tokens; "auto" rows record what auto resolved to."""
    monkeypatch.delenv("ESOLM_STEP_MODE", raising=False)
    cfg = base_config(runs, seeds=[0], metrics=["entropy"])
    cfg.pop("evaluator")
    results = tmp_path / "results"
    run(write(tmp_path, cfg), results)
    auto = rows_of(results / "t")
    run(write(tmp_path, {**cfg, "step_mode": "static"}), results)
    rows = rows_of(results / "t")
    assert [r["step_mode"] for r in rows] == ["dynamic", "static"]
    assert rows[0]["config_hash"] == auto[0]["config_hash"] != rows[1]["config_hash"]
    for metric in ("entropy", "nfe", "tokens_computed_per_sample"):  # the same samples, float-exactly
        assert rows[0]["metrics"][metric] == rows[1]["metrics"][metric]


def test_shards_partition_the_points(tmp_path, runs):
    cfg = base_config(runs, seeds=[0, 1, 2], metrics=["entropy"])
    cfg.pop("evaluator")
    path = write(tmp_path, cfg)
    results = tmp_path / "results"
    run(path, results, shard="1/2")
    assert [r["key"] for r in rows_of(results / "t")] == ["ar/default/L16/s1"]
    run(path, results, shard="0/2")
    keys = [r["key"] for r in rows_of(results / "t")]
    assert sorted(keys) == ["ar/default/L16/s0", "ar/default/L16/s1", "ar/default/L16/s2"]


def test_resume_after_killed_process(tmp_path, runs, monkeypatch):
    """Kill -9 a real `esolm sweep` as soon as its first point is on disk; the re-run computes
    only the missing points and the file ends with each point exactly once."""
    cfg = base_config(runs, seeds=list(range(8)), num_samples=8, batch_size=4, metrics=["entropy", "speed"],
                      speed={"warmup": 1, "repeats": 3})
    cfg.pop("evaluator")
    path = write(tmp_path, cfg)
    results = tmp_path / "results"
    run(path, tmp_path / "warm", shard="0/8")  # train/cache the entry first so the child only samples
    points = results / "t" / "points.jsonl"
    child = subprocess.Popen([sys.executable, "-m", "harness.cli", "sweep", str(path), "--results", str(results),
                              "--no-report", "--quiet"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None:
        if points.is_file() and points.read_bytes().count(b"\n") >= 1:
            os.kill(child.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    done = {r["key"] for r in sw.read_points(points)}
    assert 1 <= len(done) < 8
    calls = []
    real = sw.compute_point
    monkeypatch.setattr(runner, "compute_point", lambda ctx, p: (calls.append(p.key), real(ctx, p))[1])
    run(path, results)
    assert len(calls) == 8 - len(done) and not (set(calls) & done)
    keys = [r["key"] for r in sw.read_points(points)]
    assert len(keys) == 8 and len(set(keys)) == 8


@pytest.mark.skipif(not HAS_MDLM, reason="baselines/mdlm.py not present")
def test_test_ppl_once_per_entry_and_length(tmp_path, runs, monkeypatch):
    import harness.metrics.likelihood as lik

    cfg = base_config(runs, seeds=[0], num_samples=2, metrics=["test_ppl", "entropy"],
                      models=[{"name": "m", "train": {"model": "mdlm"}, "schedules": [{"steps": [2, 4, 8]}]}])
    cfg.pop("evaluator")
    calls = []
    real = lik.test_perplexity
    monkeypatch.setattr(lik, "test_perplexity", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    results = tmp_path / "results"
    run(write(tmp_path, cfg), results)
    rows = rows_of(results / "t")
    assert [r["schedule"] for r in rows] == ["T=2", "T=4", "T=8"]
    assert len(calls) == 1
    assert len({r["metrics"]["test_ppl"] for r in rows}) == 1
    assert rows[0]["metrics"]["test_ppl_estimator"].startswith("nelbo")
    assert [r["metrics"]["nfe"] <= s for r, s in zip(rows, (2, 4, 8))] == [True] * 3
    # adding a schedule later reuses the stored test perplexity instead of recomputing it
    cfg["models"][0]["schedules"] = [{"steps": [2, 4, 8, 16]}]
    calls.clear()
    run(write(tmp_path, cfg), results)
    assert calls == [] and len(rows_of(results / "t")) == 4


def test_monte_carlo_draws_reach_bounds_and_leave_exact_models_alone(tmp_path, runs):
    """test_ppl.draws applies to every model: NELBO models average the draws, AR stays exact."""
    cfg = base_config(runs, seeds=[0], num_samples=2, metrics=["test_ppl"],
                      test_ppl={"max_sequences": 8, "batch_size": 8, "draws": 2},
                      models=[{"name": "ar", "train": {"model": "ar"}},
                              {"name": "m", "train": {"model": "mdlm"}, "schedules": [{"steps": 2}]}])
    cfg.pop("evaluator")
    results = tmp_path / "results"
    run(write(tmp_path, cfg), results)
    estimators = {r["model_entry"]: r["metrics"]["test_ppl_estimator"] for r in rows_of(results / "t")}
    assert estimators == {"ar": "exact", "m": "nelbo(draws=2)"}


@pytest.mark.skipif(not HAS_ESOLM, reason="harness/esolm.py not present")
def test_esolm_rows_carry_alpha_0(tmp_path, runs):
    cfg = base_config(runs, seeds=[0], num_samples=2, metrics=["entropy"], models=[
        {"name": "eb", "train": {"model": "esolm-b", "model_args": {"alpha_0": 0.25}},
         "schedules": [{"alpha_0": [1.0, 0.5], "steps": 4}, {"steps": 4}]}])
    cfg.pop("evaluator")
    results = tmp_path / "results"
    run(write(tmp_path, cfg), results)
    rows = rows_of(results / "t")
    assert [(r["family"], r["alpha_0"], r["alpha_0_train"]) for r in rows] == [
        ("esolm-b", 1.0, 0.25), ("esolm-b", 0.5, 0.25), ("esolm-b", 0.25, 0.25)]
    assert [r["schedule"] for r in rows] == ["T=4,a0=1", "T=4,a0=0.5", "T=4"]


@pytest.mark.skipif(not HAS_MDLM, reason="needs baselines/mdlm.py")
def test_row_noise_gives_the_same_samples_at_any_batch_size(tmp_path, runs):
    """With row_noise a point's samples do not depend on the batches it ran in; with one stream
    through all batches (the default) they do, which is what the option is for."""
    def samples(batch_size: int, row_noise: bool) -> list[str]:
        schedule = {"steps": 4, "row_noise": True} if row_noise else {"steps": 4}
        cfg = base_config(runs, seeds=[0], num_samples=4, batch_size=batch_size, metrics=["entropy"],
                          models=[{"name": "m", "train": {"model": "mdlm"}, "schedules": [schedule]}])
        cfg.pop("evaluator")
        results = tmp_path / f"b{batch_size}{row_noise}"
        run(write(tmp_path, cfg), results)
        (row,) = rows_of(results / "t")
        assert row["schedule"] == ("T=4,rows=True" if row_noise else "T=4")
        return [r["text"] for r in read_samples(sample_path(results / "t", row["key"]))]

    assert samples(1, True) == samples(4, True)
    assert samples(1, False) != samples(4, False)


def test_random_init_entry_needs_no_training(tmp_path, runs):
    cfg = base_config(runs, seeds=[0], num_samples=2, metrics=["entropy", "speed"], runs_dir=str(tmp_path / "r"),
                      models=[{"name": "big", "init": "random",
                               "train": {"model": "ar", "data": {"tokenizer": "gpt2", "seq_len": 16},
                                         "train": {"steps": 100000}}}])
    cfg.pop("evaluator")
    results = tmp_path / "results"
    run(write(tmp_path, cfg), results)
    (row,) = rows_of(results / "t")
    assert row["init"] == "random" and row["checkpoint"] is None and row["parameters"] > 0
    assert row["metrics"]["tokens_computed_per_sample"] == 15
    assert not (tmp_path / "r").exists()  # nothing trained, nothing written to runs/


def test_checkpoint_entry_and_evaluator_path(tmp_path, runs):
    ckpt = runs / "t" / "ar" / "checkpoint.pt"
    if not ckpt.is_file():
        run(write(tmp_path, base_config(runs, seeds=[0], metrics=["entropy"], evaluator=None)), tmp_path / "warm")
    cfg = base_config(runs, seeds=[0], num_samples=2, metrics=["gen_ppl"], evaluator=f"ar:{ckpt}",
                      models=[{"name": "given", "checkpoint": str(ckpt.parent), "model": "ar"}])
    results = tmp_path / "results"
    run(write(tmp_path, cfg), results)
    (row,) = rows_of(results / "t")
    assert row["init"] == "checkpoint" and row["family"] == "ar" and row["checkpoint"] == str(ckpt)
    assert row["metrics"]["gen_ppl"] > 1
    # a checkpoint of another model than declared is refused with the fix named
    cfg["models"][0].update(model="mdlm", schedules=[{"steps": 4}])
    with pytest.raises(ValueError, match="holds model 'ar', not 'mdlm'"):
        run(write(tmp_path, cfg), tmp_path / "results2")


def test_ray_backend(tmp_path, runs, monkeypatch):
    cfg = base_config(runs, seeds=[0, 1], metrics=["entropy"], backend="ray")
    cfg.pop("evaluator")
    path = write(tmp_path, cfg)
    if importlib.util.find_spec("ray") is None:
        monkeypatch.setitem(sys.modules, "ray", None)
        with pytest.raises(ConfigError, match="install ray"):
            run(path, tmp_path / "results")
    # a minimal synchronous stand-in checks the driver: training and point tasks submitted, rows
    # appended as they finish (tests/test_ray.py runs a real Ray instance)
    fake = types.SimpleNamespace(initialized=False, submitted=[])
    fake.is_initialized = lambda: fake.initialized
    fake.init = lambda **k: setattr(fake, "initialized", True)

    def submit(fn, args):
        fake.submitted.append(next((a.key for a in args if isinstance(a, sw.Point)), f"train {args[0]}"))
        return fn(*args)

    def remote(**opts):
        def wrap(fn):
            return types.SimpleNamespace(remote=lambda *a: submit(fn, a))
        return wrap

    fake.remote = remote
    fake.wait = lambda refs, num_returns=1: (refs[:num_returns], refs[num_returns:])
    fake.get = lambda ref: ref
    monkeypatch.setitem(sys.modules, "ray", fake)
    results = tmp_path / "results"
    run(path, results)
    assert fake.initialized and fake.submitted == ["train ar", "ar/default/L16/s0", "ar/default/L16/s1"]
    assert [r["key"] for r in rows_of(results / "t")] == fake.submitted[1:]


def test_set_overrides_make_a_variant_and_its_results_keep_the_merged_config(tmp_path, runs, capsys):
    from harness.cli import main

    cfg = base_config(runs, seeds=[0], metrics=["entropy"])
    cfg.pop("evaluator")
    path = write(tmp_path, cfg)
    results = tmp_path / "results"
    main(["sweep", str(path), "--results", str(results), "--no-report", "--quiet",
          "--set", "name=t_static", "--set", "step_mode=static", "--set", "speed.repeats=3",
          "--set", "models.0.train.train.seed=3"])
    assert yaml.safe_load(path.read_text()) == cfg  # the file itself is untouched
    kept = (results / "t_static" / "config.yaml").read_text()
    assert kept.startswith(f"# {path} --set name=t_static --set step_mode=static")
    merged = sw.load_sweep_config(results / "t_static" / "config.yaml")
    assert (merged.name, merged.step_mode, merged.speed.repeats) == ("t_static", "static", 3)
    assert merged.models[0].train.train.seed == 3
    assert [r["step_mode"] for r in rows_of(results / "t_static")] == ["static"]
    assert not (results / "t").exists()

    for bad, expect in [("step_mode", "expected KEY=VALUE"), ("step_mode=fast", "field 'step_mode'"),
                        ("lengths.x=3", "'lengths' is a list of 1; use an index 0..0"),
                        ("name.x=3", "field 'name' is not a mapping"), ("speed.repeat=3", "speed.repeat")]:
        with pytest.raises(SystemExit):
            main(["sweep", str(path), "--results", str(results), "--quiet", "--set", bad])
        err = capsys.readouterr().err
        assert expect in err and err.strip().count("\n") == 0, err


def test_cli_sweep_error_is_one_line(tmp_path, runs, capsys):
    from harness.cli import main

    cfg = base_config(runs)
    cfg["models"][0]["shedules"] = [{}]
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", str(write(tmp_path, cfg)), "--results", str(tmp_path / "r"), "--quiet"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "models.0.shedules" in err and err.startswith("esolm: error:")


@pytest.mark.parametrize("name", ["smoke.yaml", "paper_speed.yaml", "paper_quality.yaml"])
def test_shipped_configs_parse(name):
    path = REPO / "configs" / name
    if not path.is_file():
        pytest.skip(f"configs/{name} not present")
    cfg = sw.load_sweep_config(path)
    points = sw.expand_points(cfg)
    assert points and len({p.key for p in points}) == len(points)
    families = {m.family for m in cfg.models}
    assert {"ar", "mdlm", "bd3lm", "esolm-b"} <= families


def test_sample_boundaries_count_bos_first_eos_last_and_eos_inside():
    import torch

    B, E = 7, 8
    tokens = torch.tensor([[B, 1, 2, E, 3, E],    # the training format, one document boundary
                           [B, 1, 2, 3, 4, 5],    # no final EOS
                           [E, E, E, 1, 2, E]])   # EOS first (BOS == EOS in GPT-2 would count it)
    assert sw.sample_boundaries(tokens, bos=B, eos=E) == {
        "bos_first": 2 / 3, "eos_last": 2 / 3, "eos_inside_per_sample": (1 + 0 + 2) / 3}
    assert sw.sample_boundaries(tokens, bos=E, eos=E)["bos_first"] == 1 / 3


def test_given_bos_is_a_schedule_field_of_every_family():
    from harness.schedules import SamplingSchedule

    needs = {"ar": {}, "mdlm": {"steps": 4}, "bd3lm": {"first_hitting": True}, "esolm-a": {"steps": 4},
             "esolm-b": {"steps": 4}}
    for family, fields in needs.items():
        sw.check_schedule(family, SamplingSchedule(given_bos=True, **fields))
    cfg = sw.load_sweep_config(REPO / "configs" / "cpu_quality_bos.yaml")
    keys = [p.key for p in sw.expand_points(cfg)]
    assert keys[0] == "ar/default/L128/s0" and all(k.split("/")[1].endswith("bos=True") for k in keys[1:])


def test_checkpoint_entries_are_checked_before_anything_is_written(tmp_path, runs):
    """A missing checkpoint, a length above its max_len or another model than named fails at
    once, naming the entry's field, and leaves no results folder behind."""
    from tests.test_evaluators import make_checkpoint

    make_checkpoint(tmp_path / "ck", "ar", max_len=16)
    cases = [({"checkpoint": str(tmp_path / "nope")}, [16], "field 'models.0.checkpoint': checkpoint"),
             ({"checkpoint": str(tmp_path / "ck")}, [32], "length(s) [32] exceed the checkpoint's max_len 16"),
             ({"checkpoint": str(tmp_path / "ck"), "model": "mdlm", "schedules": [{"steps": 4}]}, [16],
              "holds model 'ar', not 'mdlm'")]
    for entry, lengths, fragment in cases:
        cfg = base_config(runs, lengths=lengths, metrics=["entropy"], models=[{"name": "m", **entry}])
        cfg.pop("evaluator")
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            run(write(tmp_path, cfg), tmp_path / "results")
        assert not (tmp_path / "results").exists()


def test_unknown_model_is_named_before_the_evaluator_check(tmp_path, runs):
    cfg = base_config(runs)
    cfg["models"][0]["train"]["model"] = "arr"
    with pytest.raises(ConfigError, match=r"field 'models.0.train.model': unknown model 'arr'"):
        sw.load_sweep_config(write(tmp_path, cfg))


def test_invalid_yaml_names_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nlengths: [16, 32\nmodels: []\n")
    with pytest.raises(ConfigError, match=r"not valid YAML \(line 3, column 7\): expected ',' or '\]'"):
        sw.load_sweep_config(path)


@pytest.mark.parametrize("bad, fragment", [
    ({"train": {"model": "no_such_package.models:Thing"}}, "field 'models.1.train.model': cannot load model"),
    ({"train": {"model": "mdlm", "model_args": {"epss": 0.1}}, "schedules": [{"steps": 4}]},
     "field 'models.1.train.model_args': got an unexpected keyword argument 'epss'"),
])
def test_a_bad_later_entry_stops_the_sweep_before_any_training_or_write(tmp_path, bad, fragment):
    """models.1 used to fail only after models.0 had trained, and its config replaced the
    config.yaml of the results that ran."""
    cfg = base_config(tmp_path / "runs", seeds=[0], metrics=["entropy"], evaluator=None)
    cfg["models"].append({"name": "bad", **bad})
    results = tmp_path / "results"
    (results / "t").mkdir(parents=True)
    (results / "t" / "config.yaml").write_text("# the config that ran\n")
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        run(write(tmp_path, cfg), results)
    assert not (tmp_path / "runs").exists()  # nothing trained
    assert (results / "t" / "config.yaml").read_text() == "# the config that ran\n"


@pytest.mark.parametrize("entry, evaluator, fragment", [
    ({"name": "ar"}, {"model_entry": "ar"},
     "field 'evaluator.model_entry': entry 'ar' (models.0) holds a 'mdlm' checkpoint"),
    ({"name": "x"}, None, "field 'models.0.schedules': entry 'x' holds a 'mdlm' checkpoint ({ck}): mdlm needs 'steps'"),
])
def test_a_checkpoint_entry_is_checked_for_the_model_it_holds(tmp_path, entry, evaluator, fragment):
    """An entry without model: used to run as its name suggested and fail mid-sweep with
    "mdlm needs schedule.steps"."""
    from tests.test_evaluators import make_checkpoint

    make_checkpoint(tmp_path / "ck", "mdlm", max_len=16)
    cfg = base_config(tmp_path / "runs", seeds=[0], metrics=["entropy"] + (["gen_ppl"] if evaluator else []),
                      evaluator=evaluator, models=[{**entry, "checkpoint": str(tmp_path / "ck")}])
    with pytest.raises(ConfigError, match=re.escape(fragment.format(ck=tmp_path / "ck"))):
        run(write(tmp_path, cfg), tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_one_process_per_results_folder_and_shard(tmp_path):
    """The same sweep started twice at once appended every row twice; the second is refused
    naming the first's pid.  Other shards take their own lock."""
    from harness.sweep.run import results_lock

    cfg = base_config(tmp_path / "runs", seeds=[0], metrics=["entropy"], evaluator=None)
    path = write(tmp_path, cfg)
    with results_lock(tmp_path / "results" / "t", (0, 1), None):
        with pytest.raises(ConfigError, match=f"is being written by pid {os.getpid()} running the same sweep"):
            run(path, tmp_path / "results")
        with results_lock(tmp_path / "results" / "t", (1, 2), None):  # another shard: its own lock
            pass
    assert not (tmp_path / "runs").exists() and not rows_of(tmp_path / "results" / "t")


def test_a_shard_waits_for_the_entry_another_shard_trains(tmp_path):
    """Shards started at once each trained every entry; now one trains and the others wait
    for its checkpoint (the run folder's lock) and then train nothing."""
    import threading

    from harness.sweep.run import train_entries
    from harness.train import _train, lock_run

    cfg = sw.load_sweep_config(write(tmp_path, base_config(tmp_path / "runs", seeds=[0], metrics=["entropy"],
                                                             evaluator=None)))
    tcfg = sw.entry_train_config(cfg, cfg.models[0])
    held = lock_run(tcfg.run_dir(), wait=False)  # "another shard" is training the entry
    got, errors = {}, []

    def other_shard():
        try:
            got.update(train_entries(cfg, {"ar"}, progress=False))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    waiting = threading.Thread(target=other_shard)
    waiting.start()
    path = _train(tcfg, resume=False, progress=False, rank=0)  # the first shard's training
    stamp = path.stat().st_mtime_ns
    held.close()
    waiting.join(timeout=300)
    assert not errors and got == {"ar": str(path)}
    assert path.stat().st_mtime_ns == stamp  # not trained again
    log = [json.loads(line)["step"] for line in (tcfg.run_dir() / "log.jsonl").read_text().splitlines()]
    assert log == [2]


def test_overlapping_sweeps_into_one_folder_compute_each_point_once(tmp_path, runs, monkeypatch, capsys):
    """A full sweep, a shard and an --entries subset into one folder used to take three
    different locks and append the same points up to three times (96 rows for 60 points).
    Here the shard and the subset start while the full sweep computes its first point: each
    point is computed by exactly one of them and appears once."""
    cfg_path = write(tmp_path, base_config(runs, seeds=[0, 1, 2, 3], metrics=["entropy"], evaluator=None))
    results = tmp_path / "results"
    real = sw.compute_point
    computed, started = [], []

    def first_point_starts_the_others(ctx, point):
        computed.append(point.key)
        if not started:
            started.append(True)
            run(cfg_path, results, shard="0/2")  # overlaps the full sweep's points s0 and s2
            run(cfg_path, results, entries="ar")  # overlaps every point
        return real(ctx, point)

    monkeypatch.setattr(runner, "compute_point", first_point_starts_the_others)
    run(cfg_path, results)
    keys = [r["key"] for r in rows_of(results / "t")]
    assert sorted(keys) == [f"ar/default/L16/s{i}" for i in range(4)]  # each once
    assert sorted(computed) == sorted(keys)  # and computed once
    assert "1 point(s) were being computed by another sweep into this folder" in capsys.readouterr().err
    assert not list((results / "t" / ".claims").iterdir())  # every claim released


def test_a_claim_left_by_a_killed_sweep_does_not_block_the_point(tmp_path):
    """A claim is a lock the kernel drops with its process: the file a killed sweep leaves
    behind is taken over; a live holder's is not."""
    from harness.sweep.claims import PointClaims

    out = tmp_path / "t"
    holder = PointClaims(out, {"k": "h"})
    assert holder.claim("k")
    other = PointClaims(out, {"k": "h"})
    assert not other.claim("k") and other.busy == {"k": str(os.getpid())}
    holder.held.pop("k").close()  # the holder dies: its lock goes, its file stays
    assert (out / ".claims" / "k").exists()
    assert other.claim("k")
    sw.append_row(out / "points.jsonl", {"key": "k", "config_hash": "h", "metrics": {}})
    other.release("k")
    assert not PointClaims(out, {"k": "h"}).claim("k")  # finished: nothing to compute
    assert PointClaims(out, {"k": "other"}).claim("k")  # a changed config recomputes it
