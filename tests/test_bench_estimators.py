"""esolm bench-estimators: rows per applicable estimator, exact counters, the references'
own rows agree with themselves, streaming shrinks the graph kept for backward, and bad
flags fail in one line."""

import json
import subprocess
import sys

import pytest
import torch

from harness.bench_estimators import run_bench


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    run_bench(out, ["random:ar", "random:mdlm", "random:esolm-b"], [8], [2], seeds=2, reference_orders=16,
              reference_chunk=8, steps_fraction=1.0, progress=lambda line: None)
    return out, [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()]


def test_every_applicable_estimator_has_a_row_with_exact_counters(bench):
    out, rows = bench
    names = {(r["entry"], r["estimator"]) for r in rows}
    assert {e for m, e in names if m == "random:ar"} == {"exact", "exact-streamed"}  # AR: exact only
    assert len([1 for m, _ in names if m == "random:mdlm"]) == 11
    by = {(r["entry"], r["estimator"]): r for r in rows}
    mdlm_exact = by[("random:mdlm", "exact")]
    passes = mdlm_exact["forwards"]  # one per distinct reveal step of the row that took most (<= 7 free positions)
    assert 3 <= passes <= 7 and mdlm_exact["tokens_computed"] == passes * 2 * 8
    assert by[("random:esolm-b", "exact")]["forwards"] == 1
    assert by[("random:mdlm", "elbo_mc-4")]["forwards"] == 4 and by[("random:mdlm", "coupled-1")]["forwards"] == 2
    assert (out / "report.md").exists() and (out / "pareto.png").stat().st_size > 0


def test_the_references_agree_with_themselves_and_streaming_keeps_one_pass_of_graph(bench):
    _, rows = bench
    by = {(r["entry"], r["estimator"]): r for r in rows}
    for entry in ("random:ar", "random:mdlm", "random:esolm-b"):
        exact, streamed = by[(entry, "exact")], by[(entry, "exact-streamed")]
        assert abs(exact["bias_vs_exact"]) < 1e-9 and exact["sd"] == 0.0  # the reference is the streamed sum
        assert exact["cos_vs_exact"] == pytest.approx(1.0, abs=1e-9)
        assert streamed["mean_log_p"] == pytest.approx(exact["mean_log_p"], abs=1e-9)
    # MDLM's exact score holds every pass's graph; streamed, one pass's at a time
    exact = by[("random:mdlm", "exact")]
    ratio = exact["saved_bytes"] / by[("random:mdlm", "exact-streamed")]["saved_bytes"]
    assert exact["forwards"] - 1 < ratio <= exact["forwards"] + 0.5, (ratio, exact["forwards"])
    # the same draws whether streamed or not
    assert by[("random:mdlm", "elbo_mc-4")]["mean_log_p"] == pytest.approx(
        by[("random:mdlm", "elbo_mc-4-streamed")]["mean_log_p"], abs=1e-9)
    assert by[("random:mdlm", "iw-1")]["kind"] == "exact" and by[("random:mdlm", "elbo_mc-1")]["kind"] == "lower bound"


def test_a_rerun_resumes_and_other_settings_are_refused(bench):
    out, rows = bench
    run_bench(out, ["random:ar", "random:mdlm", "random:esolm-b"], [8], [2], seeds=2, reference_orders=16,
              reference_chunk=8, steps_fraction=1.0, progress=lambda line: pytest.fail("re-ran a finished point"))
    with pytest.raises(ValueError, match="other settings .seeds."):
        run_bench(out, ["random:ar", "random:mdlm", "random:esolm-b"], [8], [2], seeds=3, reference_orders=16,
                  reference_chunk=8, steps_fraction=1.0)


@pytest.mark.parametrize("flags,message", [
    (["--models", "random:gpt"], "--models random:gpt: choose"),
    (["--models", "random:mdlm", "--estimators", "exact,nope"], "--estimators: unknown"),
    (["--models", "random:mdlm", "--seeds", "1"], "--seeds"),
])
def test_bad_flags_end_in_one_line(tmp_path, flags, message):
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "bench-estimators", "--out", str(tmp_path / "o"),
                           "--device", "cpu", *flags], capture_output=True, text=True)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_an_estimator_out_of_memory_is_a_row_saying_so(tmp_path, monkeypatch):
    """On a GPU, MDLM's one-graph exact score at large L runs out of memory: the row says so,
    the streamed one still runs, and the report and plot are written."""
    import harness.bench_estimators as bench_module

    real = bench_module.run_estimator

    def short_of_memory(model, gen, name, seed, device):
        if name == "exact":
            raise torch.OutOfMemoryError("pretend")
        return real(model, gen, name, seed, device)
    monkeypatch.setattr(bench_module, "run_estimator", short_of_memory)
    run_bench(tmp_path, ["random:mdlm"], [8], [2], estimators=["exact", "exact-streamed"], seeds=2,
              reference_orders=2, progress=lambda line: None)
    rows = [json.loads(line) for line in (tmp_path / "points.jsonl").read_text().splitlines()]
    assert rows[0]["note"] == "fwd+bwd: out of memory" and "forwards" in rows[1]
    assert "| exact | fwd+bwd: out of memory |" in (tmp_path / "report.md").read_text()
