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


@pytest.mark.parametrize("changes, reason", [
    ({"gen_ppl": -1.0}, "candidate gen_ppl -1 is not a perplexity (a perplexity is at least 1)"),
    ({"test_ppl": 0.0}, "candidate test_ppl 0 is not a perplexity"),
    ({"gen_ppl": float("nan")}, "candidate gen_ppl nan is not a finite number"),
    ({"test_ppl": float("inf")}, "candidate test_ppl inf is not a finite number"),
    ({"entropy": -0.5}, "candidate entropy -0.5 must not be negative"),
    ({"tokens_computed_per_sample": 0}, "candidate tokens_computed_per_sample 0 must be positive"),
    ({"gen_ppl": "n/a"}, "candidate gen_ppl 'n/a' is not a finite number"),
])
def test_invalid_candidate_values_are_not_comparable_never_improvements(tmp_path, changes, reason):
    code, out = gate(REFERENCE, degraded(**changes), tmp_path)
    assert code == 2, out
    assert f"NOT COMPARABLE mdlm/T=8/L64/s0 {reason}" in out
    assert "1 not comparable" in out and "0 improved" in out and "PASS" not in out
    metric = next(iter(changes))
    code, out = gate(REFERENCE, degraded(**changes), tmp_path, {metric: "off"})  # the user opts out
    assert code == 0 and "PASS" in out, out


@pytest.mark.parametrize("value", [float("nan"), None, -3.0])
def test_unusable_reference_against_a_far_worse_candidate_is_not_comparable(tmp_path, value):
    ref = copy.deepcopy(REFERENCE)
    if value is None:
        del ref[1]["metrics"]["gen_ppl"]
    else:
        ref[1]["metrics"]["gen_ppl"] = value
    code, out = gate(ref, degraded(gen_ppl=9000.0), tmp_path)  # 10x worse than the true 900
    assert code == 2, out
    expect = "reference has no gen_ppl" if value is None else "reference gen_ppl"
    assert f"NOT COMPARABLE mdlm/T=8/L64/s0 {expect}" in out
    assert gate(ref, degraded(gen_ppl=9000.0), tmp_path, {"gen_ppl": "advisory"})[0] == 0
    # a metric neither side measured is simply not compared
    cand = degraded()
    for rows in (ref, cand):
        rows[1]["metrics"].pop("gen_ppl", None)
    assert gate(ref, cand, tmp_path)[0] == 0


def test_another_evaluator_or_config_is_not_comparable(tmp_path):
    ref, cand = copy.deepcopy(REFERENCE), copy.deepcopy(REFERENCE)
    for r in ref:
        r["metrics"]["evaluator"] = "harness-ar:ar@step20"
    for r in cand:
        r["metrics"]["evaluator"] = "harness-ar:ar@step60"
    code, out = gate(ref, cand, tmp_path)
    assert code == 2
    assert ("NOT COMPARABLE ar/default/L64/s0 gen_ppl scored by another evaluator (harness-ar:ar@step20 -> "
            "harness-ar:ar@step60)") in out
    assert gate(ref, cand, tmp_path, {"gen_ppl": "off"})[0] == 0  # gen_ppl_mean is off, mauve advisory by default

    cand = copy.deepcopy(REFERENCE)
    cand[0]["config_hash"] = "c" * 16
    code, out = gate(REFERENCE, cand, tmp_path)
    assert code == 2 and f"NOT COMPARABLE ar/default/L64/s0 made from a different config (config hash {'h' * 16} -> "\
                          f"{'c' * 16}" in out
    assert gate(REFERENCE, cand, tmp_path, {"config_hash": "off"})[0] == 0
    with pytest.raises(cp.ToleranceError, match="'config_hash': 'loose' not understood; use off or check"):
        gate(REFERENCE, cand, tmp_path, {"config_hash": "loose"})


def test_degenerate_mauve_is_not_comparable_where_mauve_is_gated(tmp_path):
    rows = degraded(mauve=0.0041, mauve_degenerate="no cluster holds both generated and reference texts")
    code, out = gate(REFERENCE, rows, tmp_path, {"mauve": {"abs": 0.1}})
    assert code == 2 and ("NOT COMPARABLE mdlm/T=8/L64/s0 candidate MAUVE is degenerate: no cluster holds both "
                          "generated and reference texts") in out
    assert gate(REFERENCE, rows, tmp_path)[0] == 0  # MAUVE is advisory by default


def test_regression_beside_an_invalid_value_is_named_and_exit_is_2(tmp_path):
    rows = degraded(gen_ppl=-1.0, nfe=9)
    code, out = gate(REFERENCE, rows, tmp_path)
    assert code == 2
    assert ("NOT COMPARABLE mdlm/T=8/L64/s0 candidate gen_ppl -1 is not a perplexity (a perplexity is at least 1); "
            "REGRESSED nfe: 8 -> 9 (+1, +12.50%) (tolerance exact)") in out


def test_default_output_is_one_line_per_failing_point_and_a_summary(tmp_path):
    rows = degraded(gen_ppl=2000.0, tokens_computed_per_sample=600.0)
    code, out = gate(REFERENCE, rows, tmp_path)
    lines = out.strip().splitlines()
    assert code == 1 and lines == [
        "REGRESSED mdlm/T=8/L64/s0 gen_ppl: 900 -> 2000 (+1100, +122.22%) (tolerance +5%); "
        "tokens_computed_per_sample: 512 -> 600 (+88, +17.19%) (tolerance exact)",
        "2 reference points: 1 ok, 0 improved, 1 REGRESSED, 0 missing, 0 not comparable; 0 new in candidate",
        "FAIL"]
    ref = write(tmp_path / "ref" / "points.jsonl", REFERENCE)
    cand = write(tmp_path / "cand" / "points.jsonl", rows)
    verbose = io.StringIO()
    assert cp.compare_files(ref, cand, out=verbose, verbose=True, csv_path=tmp_path / "cmp.csv") == 1
    table = verbose.getvalue().splitlines()
    assert table[0].split()[:3] == ["point", "status", "test_ppl"] and "gen_ppl [+5%]" in table[0]
    assert any(line.startswith("ar/default/L64/s0") and " ok " in line for line in table)  # ok points too
    assert verbose.getvalue().endswith(out)
    import csv

    with open(tmp_path / "cmp.csv") as fh:
        got = {(r["point"], r["metric"]): r for r in csv.DictReader(fh)}
    assert got[("mdlm/T=8/L64/s0", "gen_ppl")]["status"] == "REGRESSED"
    assert float(got[("mdlm/T=8/L64/s0", "gen_ppl")]["candidate"]) == 2000.0
    assert got[("ar/default/L64/s0", "nfe")]["status"] == "ok" and got[("ar/default/L64/s0", "nfe")]["tolerance"] == "exact"


def test_cli_not_comparable_exit_code_and_flags(tmp_path, capsys):
    from harness.cli import main

    ref = write(tmp_path / "ref" / "points.jsonl", REFERENCE)
    bad = write(tmp_path / "bad" / "points.jsonl", degraded(test_ppl=0.0))
    with pytest.raises(SystemExit) as exit_:
        main(["compare", str(ref), str(bad), "--verbose", "--csv", str(tmp_path / "t.csv")])
    out = capsys.readouterr().out
    assert exit_.value.code == 2 and "NOT COMPARABLE mdlm/T=8/L64/s0 candidate test_ppl 0" in out
    assert (tmp_path / "t.csv").read_text().startswith("point,point_status,metric,status")


def test_malformed_row_is_a_one_line_error_not_a_regression(tmp_path, capsys):
    from harness.cli import main

    ref = write(tmp_path / "ref" / "points.jsonl", REFERENCE)
    cand = tmp_path / "cand" / "points.jsonl"
    cand.parent.mkdir()
    cand.write_text(json.dumps(REFERENCE[0]) + "\n" + json.dumps({"metrics": {}}) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(ref), str(cand)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "line 2 is not a sweep's results row" in err[0]
