"""Test perplexity is the same at any batch size for a seed, and carries its standard error;
the CI gate treats a move within two combined standard errors as Monte-Carlo noise."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from harness.cli import main
from harness.compare import Tolerance, compare_point
from harness.metrics.likelihood import test_perplexity
from tests.helpers import random_batch, tiny_model


@pytest.mark.parametrize("name", ["mdlm", "bd3lm", "esolm-a", "esolm-b"])
def test_the_estimate_does_not_depend_on_the_batch_size(name):
    """The smoke report's MDLM test PPL was 351.40 at batch 32 and 403.18 at eval's default 16."""
    model = tiny_model(name, max_len=16, dtype=torch.float32)
    data = random_batch(32, 16, seed=1)
    for kwargs in ({}, {"draws": 3}):
        got = [test_perplexity(model, data, batch_size, seed=5, **kwargs) for batch_size in (1, 7, 32)]
        for r in got[1:]:  # the same draws; only the forwards' float rounding may differ with the batch shape
            assert r["ppl"] == pytest.approx(got[0]["ppl"], rel=1e-9)
            assert r["ppl_se"] == pytest.approx(got[0]["ppl_se"], rel=1e-9)
        assert got[0]["ppl"] != test_perplexity(model, data, 7, seed=6, **kwargs)["ppl"]  # the seed still counts


def test_eval_prints_the_same_number_at_batch_sizes_1_7_and_32(tmp_path, capsys):
    import yaml

    cfg = {"name": "t", "model": "mdlm", "out_dir": str(tmp_path / "run"), "backbone": {"preset": "tiny"},
           "data": {"seq_len": 16, "bpe_vocab_size": 300},
           "train": {"steps": 2, "batch_size": 4, "eval_every": 2, "eval_batches": 1, "ckpt_every": 2,
                     "device": "cpu", "warmup_steps": 1}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    main(["train", str(tmp_path / "cfg.yaml"), "--quiet"])
    capsys.readouterr()
    out = []
    for batch_size in ("1", "7", "32"):
        main(["eval", str(tmp_path / "run"), "--max-sequences", "32", "--batch-size", batch_size, "--json",
              "--quiet", "--device", "cpu"])
        out.append(json.loads(capsys.readouterr().out))
    for r in out[1:]:
        assert r["ppl"] == pytest.approx(out[0]["ppl"], rel=1e-9)
        assert r["ppl_se"] == pytest.approx(out[0]["ppl_se"], rel=1e-9)
    main(["eval", str(tmp_path / "run"), "--max-sequences", "32", "--quiet", "--device", "cpu"])
    line = capsys.readouterr().out
    assert f"perplexity {out[0]['ppl']:.3f} ± {out[0]['ppl_se']:.3f} (SE over the 32 sequences;" in line


def test_the_monte_carlo_se_matches_the_spread_over_seeds():
    """With draws >= 2 the SE comes from each sequence's independent draws: it should say how
    far another seed moves the estimate.  Tolerance: the SE (averaged over the seeds) within a
    factor 1.6 of the standard deviation over 16 seeds (whose own relative error is ~18 %)."""
    model = tiny_model("mdlm", max_len=16, dtype=torch.float32)
    data = random_batch(24, 16, seed=2)
    runs = [test_perplexity(model, data, 24, seed=s, draws=4) for s in range(16)]
    assert {r["se_kind"] for r in runs} == {"monte-carlo"}
    spread = statistics.stdev(r["ppl"] for r in runs)
    se = statistics.mean(r["ppl_se"] for r in runs)
    assert spread / 1.6 < se < spread * 1.6, (se, spread)


def row(ppl: float, se: float | None, exact: bool = False) -> dict:
    return {"config_hash": "h", "metrics": {"test_ppl": ppl, "test_ppl_se": se, "test_ppl_exact": exact}}


@pytest.mark.parametrize("cand, se, exact, status", [
    (110.0, 6.0, False, "ok"),  # +10 %: past the 2 % tolerance, inside 2·sqrt(6² + 6²) = 17
    (120.0, 6.0, False, "REGRESSED"),  # +20 %: outside the noise
    (110.0, None, False, "REGRESSED"),  # no SE recorded: the tolerance alone
    (110.0, 6.0, True, "REGRESSED"),  # exact: the same test set gives the same number
])
def test_the_gate_treats_a_move_within_the_noise_as_noise(cand, se, exact, status):
    tol = {"test_ppl": Tolerance("rel", 0.02)}
    checks, _ = compare_point(row(100.0, se, exact), row(cand, se, exact), tol)
    assert checks["test_ppl"].status == status, checks["test_ppl"].text


def test_eval_hf_dataset_points_a_run_at_its_moved_data(tmp_path, capsys, monkeypatch):
    """A run whose dataset folder moved (or an import whose data lives elsewhere here) is
    evaluated with --hf-dataset; a wrong folder is one line naming the flag."""
    datasets = pytest.importorskip("datasets")
    import yaml

    monkeypatch.setenv("ESOLM_CACHE", str(tmp_path / "cache"))
    texts = [("the cat sat on the mat and looked at the dog. " * (1 + i % 4)) for i in range(30)]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "owt"))
    cfg = {"name": "t", "model": "ar", "out_dir": str(tmp_path / "run"), "backbone": {"preset": "tiny"},
           "data": {"hf_dataset": str(tmp_path / "owt"), "protocol": "owt", "valid_docs": 5, "seq_len": 16,
                    "bpe_vocab_size": 300},
           "train": {"steps": 2, "batch_size": 4, "eval_every": 2, "eval_batches": 1, "ckpt_every": 2,
                     "device": "cpu", "warmup_steps": 1}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    main(["train", str(tmp_path / "cfg.yaml"), "--quiet"])
    capsys.readouterr()

    def evaluate(*flags):
        main(["eval", str(tmp_path / "run"), "--json", "--quiet", "--split", "valid", *flags])
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    before = evaluate()
    (tmp_path / "owt").rename(tmp_path / "moved")
    with pytest.raises(SystemExit) as err:
        evaluate()
    assert err.value.code == 2 and "data.hf_dataset" in capsys.readouterr().err
    assert evaluate("--hf-dataset", str(tmp_path / "moved"))["ppl"] == before["ppl"]
    with pytest.raises(SystemExit) as err:
        evaluate("--hf-dataset", str(tmp_path / "missing"))
    lines = capsys.readouterr().err.strip().splitlines()
    assert err.value.code == 2 and len(lines) == 1 and lines[0].startswith("esolm: error: --hf-dataset")
