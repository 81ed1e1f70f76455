"""Up-front budgets: a size no machine can hold is refused in one line naming its flag before
anything is built or written; long work that is allowed shows what it will run and a progress bar."""

from __future__ import annotations

import pytest

import harness.memory as memory
from harness.checkpoint import load_checkpoint
from harness.cli import main
from tests.test_evaluators import make_checkpoint


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    for name in ("mdlm", "esolm-b"):
        make_checkpoint(root / name, name, max_len=16)
    return root


def bench(*flags):
    return lambda tmp_path, runs: ["bench-likelihood", "--out", str(tmp_path / "bench"), "--device", "cpu", *flags]


def sample(model, *flags):
    return lambda tmp_path, runs: ["sample", str(runs / model), "--device", "cpu", *flags]


CASES = {
    # used to take every byte of RAM until the kernel killed it
    "sample blocks 1e14": (sample("esolm-b", "--blocks", str(10**14), "--length", "8"),
                           "esolm: error: --blocks 100000000000000: one sample needs"),
    "bench lengths 1e8": (bench("--lengths", "100000000", "--models", "mdlm"),
                          "esolm: error: --lengths 100000000: one mdlm sample needs"),
    "bench batch 1e9": (bench("--batch-sizes", "1000000000", "--models", "ar"),
                        "esolm: error: --batch-sizes 1000000000: 1000000000 ar samples at length 64 need"),
    # ran nothing and exited 0
    "bench models ,": (bench("--models", ","), "esolm: error: --models names no model; give a comma-separated list"),
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
