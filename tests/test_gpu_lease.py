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
