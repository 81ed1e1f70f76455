"""scripts/gpu_lease.sh's paper stage (paper_throughput at L <= 8192, then the paper_quality
leases), dry-run on the CPU at tiny sizes: it runs both sweeps and packs their results."""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_paper_stage_dry_run_packs_both_sweeps(tmp_path):
    out, results = tmp_path / "out", tmp_path / "results"
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(out), "RESULTS": str(results), "BUDGET_S": "500",
           "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["bash", "scripts/gpu_lease.sh", "paper"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (results / "paper_throughput" / "ceilings.json").is_file()
    for name, entries in (("paper_throughput", {"esolm-b-long", "ar"}), ("paper_quality", {"ar", "mdlm"})):
        with tarfile.open(out / f"{name}.tgz") as tgz:
            members = set(tgz.getnames())
        assert f"{name}/points.jsonl" in members
        rows = (results / name / "points.jsonl").read_text().splitlines()
        assert {__import__("json").loads(r)["model_entry"] for r in rows} == entries
    assert "=== done" in proc.stdout


def test_decoders_stage_dry_run_sweeps_every_entry(tmp_path):
    """The decoders stage (configs/paper_decoders.yaml) at tiny sizes on the CPU: every entry runs,
    every row carries its cache error, and the results are packed."""
    import json

    out, results = tmp_path / "out", tmp_path / "results"
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(out), "RESULTS": str(results), "BUDGET_S": "500",
           "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["bash", "scripts/gpu_lease.sh", "decoders"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(r) for r in (results / "paper_decoders" / "points.jsonl").read_text().splitlines()]
    assert {r["model_entry"] for r in rows} == {"ar", "mdlm", "bd3lm-4", "bd3lm-16", "esolm-b"}
    assert len(rows) == 16 and all(r["metrics"]["cache_error_draws"] >= 0 for r in rows)
    exact = [r for r in rows if r["model_entry"] in ("ar", "bd3lm-4", "bd3lm-16", "esolm-b")]
    assert all(r["metrics"]["cache_error_max_logit"] < 1e-3 for r in exact)
    # probed in the sampler (at L = 32 a block of 32 is the whole sequence: nothing is stale, tests/test_decoders.py
    # checks the error is positive where it is)
    approximate = [r for r in rows if r["schedule_fields"].get("cache")]
    assert len(approximate) == 4 and all(r["metrics"]["cache_error_draws"] > 0 for r in approximate)
    assert all(r["metrics"]["cache_error_method"].startswith("in-sampler") for r in approximate)
    with tarfile.open(out / "paper_decoders.tgz") as tgz:
        assert "paper_decoders/points.jsonl" in tgz.getnames()
    assert "=== done" in proc.stdout
