"""Up-front budgets: a size no machine can hold, or no run needs, is refused in one line naming
its field or flag before anything is trained, built or written; long work that is allowed shows
what it will run and a progress bar."""

from __future__ import annotations

import pytest
import yaml

import harness.memory as memory
from harness import sweep as sw
from harness.checkpoints.own_format import load_checkpoint
from harness.cli import main
from harness.config import ConfigError
from tests.test_evaluators import make_checkpoint
from tests.test_sweep import base_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    for name in ("mdlm", "esolm-b"):
        make_checkpoint(root / name, name, max_len=16)
    return root


def sweep_file(tmp_path, **changes) -> str:
    """A sweep config whose entries would train into tmp_path/runs (nothing may appear there)."""
    cfg = base_config(tmp_path / "runs", **changes.pop("top", {}))
    for key, value in changes.items():
        if key == "entry":
            cfg["models"].append(value)
        else:
            cfg[key].update(value)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def sweep(**changes):
    return lambda tmp_path, runs: ["sweep", sweep_file(tmp_path, **changes), "--results", str(tmp_path / "results")]


def bench(*flags):
    return lambda tmp_path, runs: ["bench-likelihood", "--out", str(tmp_path / "bench"), "--device", "cpu", *flags]


def sample(model, *flags):
    return lambda tmp_path, runs: ["sample", str(runs / model), "--device", "cpu", *flags]


MDLM = {"name": "m", "train": {"model": "mdlm"}}
CASES = {
    # used to take every byte of RAM for minutes until the kernel killed it
    "sweep steps L*1e12": (sweep(entry={**MDLM, "schedules": [{"steps": "L*1000000000000"}]}),
                           "field 'models.1.schedules.0.steps': steps 16000000000000 at length 16"),
    "sweep blocks 1e14": (sweep(entry={"name": "e", "train": {"model": "esolm-b"},
                                       "schedules": [{"blocks": 10**14}]}),
                          "field 'models.1.schedules.0.blocks': blocks 100000000000000 at length 16"),
    "sweep batch_sizes 1e9": (sweep(top={"batch_sizes": [10**9]}),
                              "field 'batch_sizes': every batch size must be at most 1,000,000"),
    "sample blocks 1e14": (sample("esolm-b", "--blocks", str(10**14), "--length", "8"),
                           "esolm: error: --blocks 100000000000000: one sample needs"),
    "bench lengths 1e8": (bench("--lengths", "100000000", "--models", "mdlm"),
                          "esolm: error: --lengths 100000000: one mdlm sample needs"),
    "bench batch 1e9": (bench("--batch-sizes", "1000000000", "--models", "ar"),
                        "esolm: error: --batch-sizes 1000000000: 1000000000 ar samples at length 64 need"),
    # used to run unbounded, saying nothing
    "sweep num_samples 1e12": (sweep(top={"num_samples": 10**12}),
                               "field 'num_samples': at most 1,000,000 samples per point"),
    "sweep draws 1e12": (sweep(test_ppl={"draws": 10**12}),
                         "field 'test_ppl.draws': at most 10,000 draws per sequence"),
    # accepted where esolm sample --seed refuses them
    "sweep seed -1": (sweep(top={"seeds": [-1]}), "field 'seeds': every seed must be in [0, 2**63 - 1]"),
    "sweep seed 1e23": (sweep(top={"seeds": [0, 10**23]}), "every seed must be in [0, 2**63 - 1] (torch's 64-bit seed, "
                        "as esolm sample --seed), got 100000000000000000000000"),
    # ran nothing and exited 0
    "bench models ,": (bench("--models", ","), "esolm: error: --models names no model; give a comma-separated list"),
    # wrote the benchmark's folder, then failed naming no flag ("Overflow when unpacking long long")
    "bench seed 2**70": (bench("--seed", str(2**70), "--models", "ar"),
                         "argument --seed: must be in [0, 2**63 - 1], got 1180591620717411303424"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sizes_beyond_the_budget_are_one_line_before_any_work(tmp_path, runs, capsys, case):
    build, fragment = CASES[case]
    with pytest.raises(SystemExit) as exit_info:
        main(build(tmp_path, runs))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "Traceback" not in err[0], err
    assert fragment in err[0], err[0]
    assert not any(tmp_path.glob("*/")), "nothing is trained, built or written"


def test_samples_a_point_keeps_must_fit_the_free_memory(tmp_path, monkeypatch):
    """Within the stated caps, a point that keeps more samples than memory holds is refused by
    the same free-memory rule as esolm sample (1000 x 16 tokens x 16 bytes = 256 kB here)."""
    monkeypatch.setattr(memory, "free_bytes", lambda device: 400_000)
    with pytest.raises(ConfigError, match=r"field 'num_samples': 1000 samples x 16 tokens, all kept by one point, "
                                          r"needs ~0.000238 GiB but 0.000373 GiB is free on this machine; lower it"):
        sw.load_sweep_config(sweep_file(tmp_path, top={"num_samples": 1000}))
    sw.load_sweep_config(sweep_file(tmp_path, top={"num_samples": 10}))
    with pytest.raises(ConfigError, match=r"field 'batch_sizes': 1000 samples x 16 tokens"):
        sw.load_sweep_config(sweep_file(tmp_path, top={"batch_sizes": [1, 1000]}))


def test_sample_runs_many_batches_with_its_plan_and_a_progress_bar(runs, capsys, monkeypatch):
    """--n beyond one batch used to print nothing on stderr for as long as it ran."""
    args = ["sample", str(runs / "mdlm"), "--length", "12", "--steps", "4", "--device", "cpu", "--n", "5"]
    per_row, fixed = memory.sampling_cost(load_checkpoint(runs / "mdlm").model, 12, 4)
    monkeypatch.setattr(memory, "free_bytes", lambda device: int((2.5 * per_row + fixed) / memory.HEADROOM))
    main(args)
    captured = capsys.readouterr()
    assert "esolm sample: 5 samples x 12 tokens as 3 batches of up to 2" in captured.err
    assert "sample: 100%" in captured.err and "5/5" in captured.err
    assert captured.out.count("--- sample ") == 5
    main(args + ["--quiet"])
    assert capsys.readouterr().err == ""
    main(args[:-1] + ["2"])  # one batch: nothing to follow
    assert capsys.readouterr().err == ""
