"""esolm rescore: a results folder's saved samples re-scored by another evaluator, into a copy."""

from __future__ import annotations

import copy
import hashlib
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from harness import sweep as sw
from harness.cli import main
from harness.config import ConfigError
from harness.evaluators import get_evaluator
from harness.rescore import NO_SAMPLES, evaluator_slug, rescore
from harness.results_store import read_samples

TRAIN = {"backbone": {"preset": "tiny"}, "data": {"seq_len": 16, "bpe_vocab_size": 300},
         "train": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "eval_every": 2, "eval_batches": 1,
                   "ckpt_every": 2, "device": "cpu"}}
MISSING = "m/T=4/L16/s0"  # its samples file is deleted: copied with a note
NEWER = "ar/default/L16/s0"  # a newer row of this key is appended: the newer one is rescored


def tree_hash(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """A finished tiny sweep: AR (the sweep's evaluator), a second AR (the rescoring one), MDLM."""
    tmp = tmp_path_factory.mktemp("rescore")
    cfg = {"name": "t", "lengths": [16], "num_samples": 4, "batch_size": 2, "seeds": [0],
           "metrics": ["test_ppl", "gen_ppl", "entropy", "speed"], "evaluator": {"model_entry": "ar"},
           "runs_dir": str(tmp / "runs"), "device": "cpu", "test_ppl": {"max_sequences": 4, "batch_size": 4},
           "speed": {"warmup": 0, "repeats": 1}, "train_defaults": copy.deepcopy(TRAIN), "save_samples": None,
           "models": [{"name": "ar", "train": {"model": "ar"}},
                      {"name": "ar2", "train": {"model": "ar", "train": {"seed": 1}}},
                      {"name": "m", "train": {"model": "mdlm"}, "schedules": [{"steps": [2, 4]}]}]}
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = sw.run_sweep(path, results_root=tmp / "results", report=False, progress=False)
    (out / sw.SAMPLES_DIR / f"{sw.safe_name(MISSING)}.jsonl").unlink()
    newer = copy.deepcopy(sw.latest_rows(sw.read_points(out))[NEWER])
    newer["metrics"]["seconds_per_sample"] = 123.0
    sw.append_row(out / sw.POINTS_FILE, newer)
    return out


def checkpoint_of(results_dir: Path, entry: str) -> str:
    return next(r["checkpoint"] for r in sw.read_points(results_dir) if r["model_entry"] == entry)


def test_rescore_copies_rows_with_new_gen_ppl(sweep_dir, capsys):
    before = tree_hash(sweep_dir)
    spec = f"ar:{checkpoint_of(sweep_dir, 'ar2')}"
    out = rescore(sweep_dir, spec, progress=False)
    assert out == sweep_dir.with_name("t_ar-ar2") and evaluator_slug("hf:/x/gpt2-large/") == "gpt2-large"
    assert tree_hash(sweep_dir) == before  # the input is never written

    old = sw.latest_rows(sw.read_points(sweep_dir))
    new = sw.latest_rows(sw.read_points(out))
    assert list(new) == list(old) and len(sw.read_points(out)) == len(old)
    assert new[NEWER]["metrics"]["seconds_per_sample"] == 123.0
    evaluator = get_evaluator(spec, device="cpu")
    for key, row in new.items():
        was, m = old[key]["metrics"], row["metrics"]
        for field in ("test_ppl", "entropy", "seconds_per_sample", "tokens_per_second", "nfe"):
            assert m[field] == was[field], (key, field)
        assert {k: v for k, v in row.items() if k != "metrics"} == {k: v for k, v in old[key].items() if k != "metrics"}
        if key == MISSING:
            assert m["rescore_note"] == NO_SAMPLES and m["gen_ppl"] == was["gen_ppl"]
            assert not (out / sw.SAMPLES_DIR / f"{sw.safe_name(key)}.jsonl").exists()
            continue
        records = read_samples(out / sw.SAMPLES_DIR / f"{sw.safe_name(key)}.jsonl")
        texts = [r["text"] for r in records]
        assert texts == [r["text"] for r in read_samples(sweep_dir / sw.SAMPLES_DIR / f"{sw.safe_name(key)}.jsonl")]
        scored = evaluator.score(texts)
        assert m["gen_ppl"] == pytest.approx(scored.ppl, rel=1e-12) and m["gen_ppl"] != was["gen_ppl"]
        assert m["gen_ppl_mean"] == pytest.approx(scored.mean_sample_ppl, rel=1e-12)
        assert m["gen_ppl_tokens"] == scored.n_tokens and m["gen_ppl_samples"] == 4
        assert m["evaluator"] == evaluator.name != m["rescored_from"] == was["evaluator"]
        assert all(math.isclose(r["gen_ppl"], p, rel_tol=1e-12) for r, p in zip(records, scored.sample_ppl))
        assert all("entropy" in r for r in records)
    assert (out / "config.yaml").read_bytes() == (sweep_dir / "config.yaml").read_bytes()
    assert f"esolm rescore {sweep_dir} --evaluator {spec}" in (out / "README.md").read_text()

    after = tree_hash(out)
    rescore(sweep_dir, spec, progress=False)  # resumable: a second run adds nothing
    assert tree_hash(out) == after
    assert "already in" in capsys.readouterr().err
    (out / "README.md").write_text("notes on these results\n")
    rescore(sweep_dir, spec, progress=False)  # and keeps a README written up since
    assert (out / "README.md").read_text() == "notes on these results\n"


def test_a_point_the_sweep_reran_is_scored_again(sweep_dir, tmp_path, capsys):
    """Resuming skips a key only if its re-scored row came from the source row there now."""
    import shutil

    source = tmp_path / "t"
    shutil.copytree(sweep_dir, source)
    spec = f"ar:{checkpoint_of(sweep_dir, 'ar2')}"
    out = rescore(source, spec, out_dir=tmp_path / "o", progress=False)
    rerun = copy.deepcopy(sw.latest_rows(sw.read_points(source))["m/T=2/L16/s0"])
    rerun["timestamp"] = "2099-01-01T00:00:00+00:00"
    rerun["metrics"]["nfe"] = 99.0
    sw.append_row(source / sw.POINTS_FILE, rerun)
    n_before = len(sw.read_points(out))
    rescore(source, spec, out_dir=out, progress=False)
    assert len(sw.read_points(out)) == n_before + 1  # that point only
    row = sw.latest_rows(sw.read_points(out))["m/T=2/L16/s0"]
    assert row["timestamp"] == rerun["timestamp"] and row["metrics"]["nfe"] == 99.0
    assert "already in" in capsys.readouterr().err


def test_rescore_mauve_uses_the_entrys_test_split(sweep_dir, tmp_path, monkeypatch):
    """Reference texts rebuilt from the train block are the ones the sweep would use with the
    checkpoint; mauve_score itself is stubbed (importing mauve-text alone takes seconds)."""
    from harness.checkpoints.own_format import load_checkpoint
    from harness.config import DataSpec
    from harness.metrics import mauve as mauve_mod

    ck = load_checkpoint(checkpoint_of(sweep_dir, "m"), device="cpu")
    loaded = SimpleNamespace(data=DataSpec(**ck.config["data"]), tokenizer=ck.tokenizer)
    expected = sw.reference_texts(None, loaded, 16, 3)
    calls = []

    def fake_mauve(evaluator, generated, reference, **kwargs):
        calls.append(reference)
        return {"mauve": 0.5, "n_p": len(generated), "n_q": len(reference), "reason": None}

    monkeypatch.setattr(mauve_mod, "mauve_score", fake_mauve)
    spec = f"ar:{checkpoint_of(sweep_dir, 'ar2')}"
    out = rescore(sweep_dir, spec, out_dir=tmp_path / "o", mauve=True, reference_samples=3, progress=False)
    m = sw.latest_rows(sw.read_points(out))["m/T=2/L16/s0"]["metrics"]
    assert m["mauve"] == 0.5 and m["mauve_n"] == [4, 3] and m["mauve_evaluator"] == m["evaluator"]
    assert calls and all(ref == expected for ref in calls)


def test_bad_input_is_a_config_error_naming_the_option(sweep_dir, tmp_path, capsys):
    for spec in ("bogus", "ar:/nonexistent/checkpoint.pt"):
        with pytest.raises(ConfigError, match="^--evaluator"):
            rescore(sweep_dir, spec, out_dir=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="--out .* is inside the results folder"):
        rescore(sweep_dir, "bogus", out_dir=sweep_dir, progress=False)
    for argv in (["rescore", str(sweep_dir), "--evaluator", "bogus", "--quiet"],
                 ["rescore", str(tmp_path / "missing"), "--evaluator", "smollm2"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("esolm: error:"), lines


def test_rescore_refuses_to_overwrite_results_or_to_score_nothing(sweep_dir, tmp_path, capsys):
    spec = f"ar:{checkpoint_of(sweep_dir, 'ar2')}"
    victim = tmp_path / "victim"
    shutil.copytree(sweep_dir, victim)  # a sweep's own results, e.g. a mistyped --out results/smoke
    before = tree_hash(victim)
    with pytest.raises(ConfigError, match="holds results that are not a rescore"):
        rescore(sweep_dir, spec, out_dir=victim, progress=False)
    assert tree_hash(victim) == before
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copyfile(sweep_dir / sw.POINTS_FILE, bare / sw.POINTS_FILE)
    with pytest.raises(ConfigError, match="has no saved samples"):
        rescore(bare, spec, out_dir=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
    out = rescore(sweep_dir / sw.POINTS_FILE, spec, out_dir=tmp_path / "o2", progress=False)  # a points.jsonl path
    assert f"1 of {len(sw.latest_rows(sw.read_points(sweep_dir)))} points have no saved samples" in \
        capsys.readouterr().err
    assert len(sw.read_points(out)) == len(sw.latest_rows(sw.read_points(sweep_dir)))
