"""Bad input at the command line: one line naming the flag or field and exit code 2 — never a
traceback, an allocation the machine cannot hold, or a flag silently ignored."""

import sys

import pytest
import torch

import harness.memory as memory
from baselines.mdlm import per_sequence_times
from harness.checkpoints.own_format import load_checkpoint
from harness.cli import main
from harness.models import resolve_model_class
from tests.helpers import random_batch, tiny_model
from tests.test_evaluators import make_checkpoint


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name in ("ar", "mdlm", "esolm-b"):
        make_checkpoint(root / name, name, max_len=16)
    return root


def last_error_line(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and "Traceback" not in "\n".join(err), err
    return err[-1]


@pytest.mark.parametrize("model", ["mdlm", "esolm-b"])
def test_a_step_count_no_machine_holds_is_refused_before_allocating(runs, capsys, model):
    """--steps 1e11 used to be killed for memory while building the step plan."""
    line = last_error_line(capsys, ["sample", str(runs / model), "--steps", "100000000000", "--length", "8",
                                    "--device", "cpu"])
    assert line.startswith("esolm: error: --steps 100000000000: one sample needs") and "lower --steps" in line


def test_many_samples_are_drawn_in_batches_that_fit(runs, capsys, monkeypatch):
    """--n beyond what fits (it used to allocate 204 GB at once) runs in batches; one
    generator runs through them, so the first batch is what a smaller --n gives."""
    args = ["sample", str(runs / "mdlm"), "--length", "12", "--steps", "4", "--device", "cpu", "--seed", "3"]
    main(args + ["--n", "2"])
    two = capsys.readouterr().out.split("--- schedule")[0].split("--- sample ")[1:]
    per_row, fixed = memory.sampling_cost(load_checkpoint(runs / "mdlm").model, 12, 4)
    monkeypatch.setattr(memory, "free_bytes", lambda device: int((2.5 * per_row + fixed) / memory.HEADROOM))
    main(args + ["--n", "5"])
    out = capsys.readouterr().out
    blocks = out.split("--- schedule")[0].split("--- sample ")[1:]
    assert [b.split(" ---")[0] for b in blocks] == ["0", "1", "2", "3", "4"]
    assert blocks[:2] == two
    assert "batch of 5 x 12 tokens (run as batches of 2): " in out
    monkeypatch.setattr(memory, "free_bytes", lambda device: per_row // 4)
    line = last_error_line(capsys, args + ["--n", "5"])
    assert line.startswith("esolm: error: --length 12: one sample needs") and "lower --length" in line


@pytest.mark.parametrize("args, fragment", [
    (["sample", "{mdlm}", "--steps", "2", "--length", "12", "--prompt", "\udcff\udcfe"],  # bytes ff fe from argv
     "esolm: error: --prompt is not valid UTF-8 text"),
    (["sample", "{ar}", "--seed", str(2**70)], "argument --seed: must be in [0, 2**63 - 1]"),
    (["eval", "{mdlm}", "--seed", "-1"], "argument --seed: must be in [0, 2**63 - 1], got -1"),
    (["eval", "{ar}", "--draws", "3"], "esolm: error: --draws does not apply to ar: its likelihood is exact"),
    (["eval", "{mdlm}", "--draws", "1000000000000"], "argument --draws: must be at most 10,000"),  # ran unbounded
    (["eval", "{mdlm}", "--iw", "1000000000000"], "argument --iw: must be at most 10,000"),
])
def test_flags_that_used_to_crash_or_be_ignored(runs, capsys, args, fragment):
    args = [a.format(**{n: str(runs / n) for n in ("ar", "mdlm")}) for a in args]
    assert fragment in last_error_line(capsys, args + ["--device", "cpu"])


class FirstDraw(Exception):
    pass


@pytest.mark.parametrize("name, method", [("mdlm", "token_nelbo"), ("bd3lm", "token_nelbo"),
                                          ("esolm-b", "sequential_term")])
def test_nelbo_draws_run_one_at_a_time(monkeypatch, name, method):
    """--draws 1e9 used to allocate every draw's times up front (killed for memory); now the
    first draw is computed before the second one's times exist."""
    model = tiny_model(name, max_len=8, dtype=torch.float32)

    def first(*args, **kwargs):
        raise FirstDraw

    monkeypatch.setattr(model, method, first)
    with pytest.raises(FirstDraw):
        model.nll(random_batch(2, 8), draws=10**12)


def test_times_drawn_one_draw_at_a_time_are_the_stratified_times():
    n, draws, eps = 5, 3, 1e-3
    u = torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    strata = torch.arange(draws, dtype=torch.float64)[:, None] / draws
    expected = (eps + (1 - eps) * ((u + strata) % 1)).float()
    got = torch.stack(list(per_sequence_times(n, draws, eps, torch.Generator().manual_seed(0))))
    assert torch.equal(got, expected)


def test_plugin_models_are_checked_and_not_imported_from_the_working_directory(tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match="must implement loss, nll, sample; it does not override loss, nll, sample"):
        resolve_model_class("harness.models:LanguageModel")  # used to fail mid-training with NotImplementedError
    monkeypatch.delitem(sys.modules, "this", raising=False)
    with pytest.raises(ValueError, match="'this' is a standard-library module"):
        resolve_model_class("this:X")
    assert "this" not in sys.modules and "Zen of Python" not in capsys.readouterr().out

    (tmp_path / "stray_model_module.py").write_text("from baselines.ar import AR\n\nclass Stray(AR):\n    pass\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # as `python -m` puts the working directory first
    monkeypatch.delitem(sys.modules, "stray_model_module", raising=False)
    with pytest.raises(ValueError, match="the current directory is not searched: add its folder to PYTHONPATH"):
        resolve_model_class("stray_model_module:Stray")
    assert "stray_model_module" not in sys.modules
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # asked for explicitly: imported
    assert resolve_model_class("stray_model_module:Stray").__name__ == "Stray"
    monkeypatch.delitem(sys.modules, "stray_model_module")


@pytest.fixture
def without_lm_eval(monkeypatch):
    """import lm_eval raises ImportError; the adapter is imported afresh, and whatever was
    there before (or nothing) is put back after (set, then removed: monkeypatch restores both)."""
    import harness

    monkeypatch.setitem(sys.modules, "lm_eval", None)
    monkeypatch.setitem(sys.modules, "harness.lm_eval_adapter", None)
    monkeypatch.delitem(sys.modules, "harness.lm_eval_adapter")
    monkeypatch.setattr(harness, "lm_eval_adapter", None, raising=False)
    monkeypatch.delattr(harness, "lm_eval_adapter")


def test_lm_eval_task_without_the_eval_extra_is_one_line(tmp_path, without_lm_eval, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["lm-eval-task", str(tmp_path / "tasks")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("esolm: error:") and "install the 'eval' extra" in err[0]


def test_lm_eval_script_without_the_eval_extra_is_one_line(without_lm_eval, monkeypatch, capsys):
    """The esolm-lm-eval script imports main from the adapter; without lm-eval that import
    used to raise its ImportError as a traceback."""
    from harness.lm_eval_adapter import main as script  # what the console script runs

    monkeypatch.setattr("sys.argv", ["esolm-lm-eval", "--model", "esolm", "--tasks", "esolm_corpus_ppl"])
    with pytest.raises(SystemExit) as exit_info:
        script()
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("esolm-lm-eval: error:") and "install the 'eval' extra" in err[0]


def test_importance_weighted_orders_combine_across_chunks(monkeypatch):
    """--iw K holds a chunk of orders at a time; the estimate is the same logsumexp."""
    import harness.esolm as esolm

    model = tiny_model("esolm-b", max_len=8)
    x = random_batch(3, 8)
    whole = model.nll_exact_order(x, orders=5, generator=torch.Generator().manual_seed(0)).nats
    monkeypatch.setattr(esolm, "IW_CHUNK", 2)
    chunked = model.nll_exact_order(x, orders=5, generator=torch.Generator().manual_seed(0)).nats
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("model", ["mdlm", "esolm-b", "ar"])
@pytest.mark.parametrize("flag, value", [("--length", "0"), ("--length", "-3"), ("--n", "0")])
def test_out_of_range_sizes_are_one_line_naming_the_flag(runs, capsys, model, flag, value):
    """--length 0 on MDLM/Eso-LM used to surface as 'validation error for SamplingSchedule';
    argparse's own errors used to print the usage block above the message."""
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", str(runs / model), flag, value, "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert f"argument {flag}: must be at least" in err[0] and "--help" in err[0]
