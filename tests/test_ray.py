"""A sweep on a real local Ray instance: the models are trained on Ray's workers (the driver
cannot train), and the rows equal the local runner's."""

from __future__ import annotations

import pytest
import yaml

from harness import sweep as sw

ray = pytest.importorskip("ray", reason="the 'dist' extra (ray) is not installed")

TRAIN = {"backbone": {"preset": "tiny"}, "data": {"seq_len": 16, "bpe_vocab_size": 300},
         "train": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "eval_every": 2, "eval_batches": 1,
                   "ckpt_every": 2, "device": "cpu", "threads": 1}}


def config(tmp_path, runs, backend):
    cfg = {"name": "t", "lengths": [16], "num_samples": 4, "batch_size": 2, "seeds": [0, 1], "backend": backend,
           "metrics": ["test_ppl", "gen_ppl", "entropy"], "evaluator": {"model_entry": "ar"}, "device": "cpu",
           "threads": 1, "runs_dir": str(runs), "test_ppl": {"max_sequences": 4, "batch_size": 4},
           "train_defaults": TRAIN,
           "models": [{"name": "ar", "train": {"model": "ar"}},
                      {"name": "mdlm", "train": {"model": "mdlm"}, "schedules": [{"steps": 4}]}]}
    path = tmp_path / f"{backend}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_sweep_trains_on_the_workers_and_matches_the_local_runner(tmp_path, local_ray, monkeypatch):
    local = sw.run_sweep(config(tmp_path, tmp_path / "runs_local", "local"), results_root=tmp_path / "local",
                         report=False, progress=False)

    import harness.train

    def no_training_here(*args, **kwargs):
        raise AssertionError("the Ray backend trained on the driver")

    monkeypatch.setattr(harness.train, "train", no_training_here)  # the driver only; workers are other processes
    runs = tmp_path / "runs_ray"
    on_ray = sw.run_sweep(config(tmp_path, runs, "ray"), results_root=tmp_path / "ray", report=False,
                          progress=False)
    assert (runs / "t" / "ar" / "checkpoint.pt").is_file() and (runs / "t" / "mdlm" / "checkpoint.pt").is_file()

    def comparable(results):
        # where and when it ran (and which sweep call: run_id) differ; everything the numbers depend on must not
        return {r["key"]: {k: v for k, v in r.items() if k not in ("timestamp", "checkpoint", "run_id")}
                for r in sw.read_points(results)}

    expected, got = comparable(local), comparable(on_ray)
    assert sorted(got) == sorted(expected) == ["ar/default/L16/s0", "ar/default/L16/s1", "mdlm/T=4/L16/s0",
                                               "mdlm/T=4/L16/s1"]
    for key in expected:
        assert got[key] == expected[key], key
    assert all(str(runs) in r["checkpoint"] for r in sw.read_points(on_ray))
    assert len({r["run_id"] for r in sw.read_points(on_ray)}) == 1  # one sweep call: its rows pair up
