"""The CI gate: per-metric tolerances, exit codes, the committed reference, and an end-to-end
tiny sweep compared against itself."""

from __future__ import annotations

import copy
import io
import json
import shutil
from pathlib import Path

import pytest
import yaml

from harness import compare as cp
from harness.sweep import append_row, read_points, run_sweep

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "results" / "smoke" / "points.jsonl"


def point(key, **metrics):
    base = {"test_ppl": 90.0, "test_ppl_estimator": "exact", "gen_ppl": 100.0, "gen_ppl_mean": 105.0,
            "entropy": 4.0, "degenerate": 0, "nfe": 63, "nfe_per_sample": 63.0, "tokens_computed_per_sample": 63.0,
            "seconds_per_sample": 0.01, "tokens_per_second": 6400.0, "mauve": 0.9}
    base.update(metrics)
    return {"sweep": "demo", "key": key, "config_hash": "h" * 16, "metrics": base}


REFERENCE = [point("ar/default/L64/s0"), point("mdlm/T=8/L64/s0", gen_ppl=900.0, nfe=8, nfe_per_sample=8.0,
                                               tokens_computed_per_sample=512.0)]


def write(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    for r in rows:
        append_row(path, r)
    return path


def gate(ref_rows, cand_rows, tmp_path, tolerances=None):
    ref = write(tmp_path / "ref" / "points.jsonl", ref_rows)
    cand = write(tmp_path / "cand" / "points.jsonl", cand_rows)
    out = io.StringIO()
    code = cp.compare_files(ref, cand, tolerances=tolerances, out=out)
    return code, out.getvalue()


def degraded(**changes):
    rows = copy.deepcopy(REFERENCE)
    rows[1]["metrics"].update(changes)
    return rows


def test_identical_passes(tmp_path):
    code, out = gate(REFERENCE, REFERENCE, tmp_path)
    assert code == 0 and "PASS" in out and "2 ok" in out and "REGRESSED" not in out.replace("0 REGRESSED", "")


@pytest.mark.parametrize("changes, expect_code, expect", [
    ({"gen_ppl": 900.0 * 1.10}, 1, "REGRESSED mdlm/T=8/L64/s0 gen_ppl: 900 -> 990 (+90, +10.00%) (tolerance +5%)"),
    ({"gen_ppl": 900.0 * 1.04}, 0, "2 ok"),                       # within +5 %
    ({"gen_ppl": 900.0 * 0.80}, 0, "improved"),                   # better is fine
    ({"test_ppl": 90.0 * 1.03}, 1, "REGRESSED mdlm/T=8/L64/s0 test_ppl"),
    ({"test_ppl": 90.0 * 1.01}, 0, "PASS"),
    ({"entropy": 3.85}, 1, "REGRESSED mdlm/T=8/L64/s0 entropy"),  # lost 0.15 nats
    ({"entropy": 3.95}, 0, "PASS"),
    ({"entropy": 4.5}, 0, "improved"),
    ({"tokens_computed_per_sample": 513.0}, 1, "REGRESSED mdlm/T=8/L64/s0 tokens_computed_per_sample"),
    ({"tokens_computed_per_sample": 511.0}, 0, "improved"),       # exact: any change is reported
    ({"nfe": 9}, 1, "REGRESSED mdlm/T=8/L64/s0 nfe:"),
    ({"seconds_per_sample": 10.0}, 0, "PASS"),                    # speed is advisory by default
    ({"gen_ppl": None}, 1, "gen_ppl: 900 -> missing"),
    ({"mauve": None}, 0, "PASS"),                                 # mauve advisory (optional extra)
])
def test_tolerances(tmp_path, changes, expect_code, expect):
    code, out = gate(REFERENCE, degraded(**changes), tmp_path)
    assert code == expect_code, out
    assert expect in out, out


def test_missing_and_new_points(tmp_path):
    code, out = gate(REFERENCE, REFERENCE[:1], tmp_path)
    assert code == 1 and "missing" in out and "1 missing" in out and "FAIL" in out
    code, out = gate(REFERENCE[:1], REFERENCE, tmp_path)
    assert code == 0 and "new" in out and "1 new in candidate" in out


def test_tolerance_file(tmp_path):
    tol = tmp_path / "tol.yaml"
    tol.write_text("seconds_per_sample: {rel: 0.25}\ngen_ppl: {rel: 0.2}\nentropy: off\n")
    code, out = gate(REFERENCE, degraded(seconds_per_sample=0.02, gen_ppl=1000.0, entropy=1.0), tmp_path, tol)
    assert code == 1 and "REGRESSED mdlm/T=8/L64/s0 seconds_per_sample" in out
    assert "gen_ppl:" not in out.split("PASS")[0].split("REGRESSED mdlm")[-1] and "entropy" not in out
    tol.write_text("gen_pll: {rel: 0.1}\n")
    with pytest.raises(cp.ToleranceError, match="unknown metric 'gen_pll'; known metrics: test_ppl, gen_ppl"):
        gate(REFERENCE, REFERENCE, tmp_path, tol)
    tol.write_text("gen_ppl: 5%\n")
    with pytest.raises(cp.ToleranceError, match="metric 'gen_ppl': tolerance '5%' not understood"):
        gate(REFERENCE, REFERENCE, tmp_path, tol)
    assert cp.load_tolerances({"test_ppl": "exact"})["test_ppl"].kind == "exact"


def test_cli_exit_codes_and_one_line_errors(tmp_path, capsys):
    from harness.cli import main

    ref = write(tmp_path / "ref" / "points.jsonl", REFERENCE)
    bad = write(tmp_path / "bad" / "points.jsonl", degraded(gen_ppl=2000.0))
    for args, code in (([str(ref.parent), str(ref)], 0), ([str(ref), str(bad.parent)], 1)):
        with pytest.raises(SystemExit) as exit_:
            main(["compare", *args])
        assert exit_.value.code == code
    tol = tmp_path / "t.yaml"
    tol.write_text("speed: advisory\n")
    with pytest.raises(SystemExit) as exit_:
        main(["compare", str(ref), str(ref), "--tolerances", str(tol)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.count("\n") == 0 and "unknown metric 'speed'" in err
    with pytest.raises(SystemExit) as exit_:
        main(["compare", str(tmp_path / "nowhere"), str(ref)])
    assert exit_.value.code == 2


def test_half_written_candidate_line_is_ignored(tmp_path):
    ref = write(tmp_path / "ref.jsonl", REFERENCE)
    cand = write(tmp_path / "cand.jsonl", REFERENCE)
    with cand.open("a") as f:
        f.write('{"key": "ar/default/L64/s0", "metrics": {"gen_ppl": 1e9')
    assert cp.compare_files(ref, cand, out=io.StringIO()) == 0


def test_committed_smoke_reference_gate():
    """The committed reference passes against itself and fails on degraded copies."""
    if not SMOKE.is_file():
        pytest.skip("results/smoke/points.jsonl not committed yet")
    rows = read_points(SMOKE)
    assert cp.compare_files(SMOKE, SMOKE, out=io.StringIO()) == 0
    worse_ppl = copy.deepcopy(rows)
    worse_ppl[-1]["metrics"]["gen_ppl"] *= 1.2
    more_work = copy.deepcopy(rows)
    more_work[0]["metrics"]["tokens_computed_per_sample"] += 1
    for candidate, metric in ((worse_ppl, "gen_ppl"), (more_work, "tokens_computed_per_sample")):
        path = Path(write(Path(__import__("tempfile").mkdtemp()) / "points.jsonl", candidate))
        out = io.StringIO()
        assert cp.compare_files(SMOKE, path, out=out) == 1
        assert "REGRESSED" in out.getvalue() and metric in out.getvalue()
        shutil.rmtree(path.parent)


def test_end_to_end_tiny_sweep_compared_with_itself(tmp_path):
    cfg = {
        "name": "e2e", "lengths": [16], "num_samples": 4, "batch_size": 2, "seeds": [0, 1],
        "metrics": ["test_ppl", "gen_ppl", "entropy", "speed"], "evaluator": {"model_entry": "ar"},
        "runs_dir": str(tmp_path / "runs"), "device": "cpu", "test_ppl": {"max_sequences": 8},
        "speed": {"warmup": 0, "repeats": 1},
        "models": [{"name": "ar", "train": {
            "model": "ar", "backbone": {"preset": "tiny"}, "data": {"seq_len": 16, "bpe_vocab_size": 300},
            "train": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "eval_every": 2, "eval_batches": 1,
                      "ckpt_every": 2, "device": "cpu"}}}],
    }
    path = tmp_path / "e2e.yaml"
    path.write_text(yaml.safe_dump(cfg))
    results = run_sweep(path, results_root=tmp_path / "results", report=True, progress=False,
                        reports_root=tmp_path / "reports")
    assert (tmp_path / "reports" / "e2e" / "report.md").is_file()
    assert len(read_points(results)) == 2
    assert cp.compare_files(results, results, out=io.StringIO()) == 0
    # a second, independent results root with the same config reproduces the numbers exactly
    again = run_sweep(path, results_root=tmp_path / "again", report=False, progress=False)
    out = io.StringIO()
    assert cp.compare_files(results, again, out=out) == 0, out.getvalue()
    first = {r["key"]: r["metrics"] for r in read_points(results)}
    second = {r["key"]: r["metrics"] for r in read_points(again)}
    for key in first:
        for metric in ("gen_ppl", "entropy", "test_ppl", "tokens_computed_per_sample"):
            assert first[key][metric] == second[key][metric]
    rows = read_points(again)
    rows[0]["metrics"]["gen_ppl"] *= 1.5
    write(tmp_path / "worse" / "points.jsonl", rows)
    assert cp.compare_files(results, tmp_path / "worse", out=io.StringIO()) == 1
    assert json.loads((results / "points.jsonl").read_text().splitlines()[0])["sweep"] == "e2e"


def test_notes_say_when_gen_ppl_evaluators_differ_or_a_reference_value_is_unusable(tmp_path):
    ref, cand = copy.deepcopy(REFERENCE), copy.deepcopy(REFERENCE)
    for r in ref:
        r["metrics"]["evaluator"] = "harness-ar:ar@step20"
    for r in cand:
        r["metrics"]["evaluator"] = "harness-ar:ar@step60"
    ref[0]["metrics"]["entropy"] = float("nan")
    code, out = gate(ref, cand, tmp_path)
    assert code == 0  # nothing regressed, but the table says what it could not gate
    assert "gen_ppl evaluator differs: harness-ar:ar@step20 -> harness-ar:ar@step60" in out
    assert "reference entropy nan unusable; not gated" in out


def test_malformed_row_is_a_one_line_error_not_a_regression(tmp_path, capsys):
    from harness.cli import main

    ref = write(tmp_path / "ref" / "points.jsonl", REFERENCE)
    cand = tmp_path / "cand" / "points.jsonl"
    cand.parent.mkdir()
    cand.write_text(json.dumps(REFERENCE[0]) + "\n" + json.dumps({"metrics": {}}) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(ref), str(cand)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "line 2 is not a results row" in err[0]
