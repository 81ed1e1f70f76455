"""Add the KV-cache read counter to speed rows measured before it existed (issue #6).

    esolm sweep configs/paper_speed.yaml --entries ar,bd3lm-4,bd3lm-16,esolm-b \\
        --set name=paper_speed_counts --set device=cpu --set precision=fp32 \\
        --set train_defaults.backbone.preset=tiny --set "metrics=[entropy]" \\
        --results out/recount --no-report
    python scripts/recount_kv_reads.py results/paper_speed out/recount/paper_speed_counts
    esolm report results/paper_speed

The report's floor charges each cached forward for the K and V it reads (``key_reads``
slots x ``kv_bytes_per_key``).  ``key_reads`` is counted by the sampler's algorithm: it
depends on L, the schedule and the reveal draws, not on the weights, the trunk's width or
the device.  So the same sweep run on a CPU with the tiny trunk and the same vocabulary
(the Gumbel draws, and so the random stream, have the vocabulary's shape) counts it.

- AR and BD3-LM with first hitting draw nothing that moves their counts: the recount is exact.
- Eso-LM draws its reveal counts from the sampling generator, whose CPU stream is not
  CUDA's, so its recount is another draw of the same schedule.  Each row keeps that draw's
  NFE and tokens computed in ``key_reads_recount`` (``same_draw`` says whether both equal
  the measured row's).
- MDLM keeps no KV cache: it reads no slots, and its rows get 0 without a recount.

``kv_bytes_per_key`` comes from the measured rows' own trunk and dtype (built on the meta
device, so nothing is allocated).  Rows that already have the counter are left as they are.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from harness.results_store import POINTS_FILE, latest_rows, read_points, write_atomic
from harness.sweep.point import forward_cost
from harness.sweep.schema import entry_train_config, load_sweep_config

NO_KV_CACHE = {"mdlm"}  # families whose sampler runs full forwards only (key_reads is always 0)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def kv_bytes_per_key(results: Path, entry_name: str, dtype: str) -> int:
    """K and V bytes per cache slot of the trunk the rows were measured with."""
    from harness.train import build, build_tokenizer

    cfg = load_sweep_config(results / "config.yaml")
    tcfg = entry_train_config(cfg, next(m for m in cfg.models if m.name == entry_name))
    with torch.device("meta"):
        model = build(tcfg, build_tokenizer(tcfg.data)).to(DTYPES[dtype])
    return forward_cost(model)["kv_bytes_per_key"]


def recount(target: Path, counts: Path) -> tuple[list[dict], list[str]]:
    """The target's rows with the counter added where it was missing, and one line per row changed."""
    rows = read_points(target, strict=True)
    counted = latest_rows(read_points(counts, strict=True))
    kv_cache: dict[tuple, int] = {}
    lines = []
    for row in rows:
        m = row["metrics"]
        if "key_reads_per_sample" in m:
            continue
        if row["family"] in NO_KV_CACHE:
            reads, note = 0.0, {"why": f"{row['family']} keeps no KV cache"}
        elif row["key"] in counted:
            c = counted[row["key"]]
            cm = c["metrics"]
            same = (cm["nfe_per_sample"], cm["tokens_computed_per_sample"]) == \
                (m["nfe_per_sample"], m["tokens_computed_per_sample"])
            reads = cm["key_reads_per_sample"]
            note = {"from": c["sweep"], "device_name": c["device_name"], "git_commit": c["git_commit"],
                    "nfe_per_sample": cm["nfe_per_sample"],
                    "tokens_computed_per_sample": cm["tokens_computed_per_sample"], "same_draw": same}
        else:
            lines.append(f"{row['key']}: not in {counts} (left without the counter)")
            continue
        key = (row["model_entry"], row["dtype"])
        if key not in kv_cache:
            kv_cache[key] = kv_bytes_per_key(target, row["model_entry"], row["dtype"])
        m["key_reads_per_sample"] = reads
        row["kv_bytes_per_key"] = kv_cache[key]
        row["key_reads_recount"] = note
        same = note.get("same_draw", True)
        lines.append(f"{row['key']}: {reads:.0f} slots/sample" + ("" if same else
                     f" (another draw: NFE {note['nfe_per_sample']:.0f} vs {m['nfe_per_sample']:.0f}, tokens "
                     f"{note['tokens_computed_per_sample']:.0f} vs {m['tokens_computed_per_sample']:.0f})"))
    return rows, lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("target", type=Path, help="results folder whose rows lack key_reads_per_sample")
    p.add_argument("counts", type=Path, help="results folder of the same sweep re-run (e.g. on CPU, tiny trunk)")
    args = p.parse_args(argv)
    for folder in (args.target, args.counts):
        if not (folder / POINTS_FILE).is_file():
            p.error(f"{folder}: no {POINTS_FILE}; give a sweep's results folder")
    rows, lines = recount(args.target, args.counts)
    print("\n".join(lines) or "every row already has key_reads_per_sample")
    write_atomic(args.target / POINTS_FILE, "".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
