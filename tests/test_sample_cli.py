"""esolm sample's sampling options: --row-noise gives the same samples however the run is cut
into batches, and --measure-cache-error prints the cache error a sweep row would record."""

import re

import pytest

import harness.memory as memory
from harness.checkpoints.own_format import load_checkpoint
from harness.cli import main
from tests.test_budgets import runs  # noqa: F401  (the same tiny MDLM and Eso-LM (B) checkpoints)


def samples(out: str) -> list[str]:
    return out.split("--- schedule")[0].split("--- sample ")[1:]


@pytest.mark.parametrize("model,flags", [("mdlm", ["--steps", "4"]), ("esolm-b", ["--steps", "4", "--alpha-0", "0.5"])])
def test_row_noise_samples_do_not_depend_on_the_batches(runs, capsys, monkeypatch, model, flags):
    args = ["sample", str(runs / model), "--length", "12", "--n", "5", "--device", "cpu", "--seed", "3", "--quiet",
            *flags]
    main(args + ["--row-noise"])
    whole = samples(capsys.readouterr().out)
    per_row, fixed = memory.sampling_cost(load_checkpoint(runs / model).model, 12, 4)
    monkeypatch.setattr(memory, "free_bytes", lambda device: int((2.5 * per_row + fixed) / memory.HEADROOM))
    main(args + ["--row-noise"])
    out = capsys.readouterr().out
    assert "(run as batches of 2)" in out and samples(out) == whole
    main(args)  # one stream through the batches: the later batches' samples differ
    assert samples(capsys.readouterr().out) != whole


def test_measure_cache_error_prints_the_error_of_the_cache(runs, capsys):
    base = ["sample", str(runs / "mdlm"), "--length", "16", "--n", "2", "--device", "cpu", "--measure-cache-error"]

    def error(flags) -> tuple[float, str]:
        main(base + flags)
        line = capsys.readouterr().out.strip().splitlines()[-1]
        match = re.search(r"max \|delta logit\| ([-0-9.e+]+)", line)
        assert line.startswith("--- cache error over ") and match, line
        return float(match[1]), line

    exact, line = error(["--steps", "4"])  # no KV cache: the twin run reads exactly 0
    assert exact == 0 and "twin run" in line
    approximate, line = error(["--block-length", "8", "--steps", "4", "--cache", "dual"])
    assert approximate > 0 and "in-sampler" in line
