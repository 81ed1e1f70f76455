"""Add the floor's work counters to speed rows measured before the counters existed.

    esolm sweep configs/paper_speed.yaml --entries ar,bd3lm-4,bd3lm-16,esolm-b \\
        --set name=paper_speed_counts --set device=cpu --set precision=fp32 \\
        --set train_defaults.backbone.preset=tiny --set "metrics=[entropy]" \\
        --results out/recount --no-report
    python scripts/recount_counters.py results/paper_speed out/recount/paper_speed_counts
    esolm report results/paper_speed

The report's floor charges each cached forward for the K and V it reads (``key_reads``
slots x ``kv_bytes_per_key``) and every forward for its attention arithmetic
(``attention_pairs`` x ``attention_flops_per_pair``).  Both are counted by the sampler's
algorithm: they depend on L, the schedule and the reveal draws, not on the weights, the
trunk's width or the device.  So the same sweep run on a CPU with the tiny trunk and the
same vocabulary (the Gumbel draws, and so the random stream, have the vocabulary's shape)
counts them.

- AR and BD3-LM with first hitting draw nothing that moves their counts: the recount is exact.
- Eso-LM draws its reveal counts from the sampling generator, whose CPU stream is not
  CUDA's, so its recount is another draw of the same schedule.  Each row keeps that draw's
  NFE and tokens computed in ``<counter>_recount`` (``same_draw`` says whether both equal
  the measured row's).
- Some counts follow exactly from a row's own counters, and are taken from there: MDLM
  keeps no KV cache (0 slots) and every forward runs its L queries over all L keys (pairs
  = tokens computed x L); an AR step's one query attends to every slot it reads (pairs =
  KV reads); a BD3-LM forward's L' queries attend to every slot it reads (pairs = L' x KV
  reads).  Only Eso-LM's attention pairs then need the re-run.

The per-unit costs come from the measured rows' own trunk and dtype (built on the meta
device, so nothing is allocated).  A counter a row already has is left as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from harness.results_store import POINTS_FILE, latest_rows, read_points, write_atomic
from harness.metrics.floors import forward_cost
from harness.sweep.schema import entry_train_config, load_sweep_config

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# counter in a row's metrics -> its per-unit cost (a row field from forward_cost), and a short name
COUNTERS = {"key_reads_per_sample": ("kv_bytes_per_key", "key_reads"),
            "attention_pairs_per_sample": ("attention_flops_per_pair", "attention_pairs")}


def trunk_cost(results: Path, entry_name: str, dtype: str) -> dict:
    """forward_cost of the trunk the rows were measured with."""
    from harness.data import build_tokenizer
    from harness.train import build

    cfg = load_sweep_config(results / "config.yaml")
    tcfg = entry_train_config(cfg, next(m for m in cfg.models if m.name == entry_name))
    with torch.device("meta"):
        model = build(tcfg, build_tokenizer(tcfg.data)).to(DTYPES[dtype])
    return forward_cost(model)


def own_count(counter: str, row: dict) -> tuple[float, str] | None:
    """A counter that follows exactly from the row's own counters (and why), else None."""
    m, family = row["metrics"], row["family"]
    if family == "mdlm":
        if counter == "key_reads_per_sample":
            return 0.0, "mdlm keeps no KV cache"
        return m["tokens_computed_per_sample"] * int(row["length"]), "mdlm: each forward runs L queries over L keys"
    if counter == "attention_pairs_per_sample" and "key_reads_per_sample" in m:
        if family == "ar":
            return m["key_reads_per_sample"], "ar: a step's one query attends to every slot it reads"
        if family == "bd3lm":
            block = int(row["model_options"]["block_size"])
            return m["key_reads_per_sample"] * block, "bd3lm: a block's L' queries attend to every slot read"
    return None


def recount(target: Path, counts: Path) -> tuple[list[dict], list[str]]:
    """The target's rows with the counters added where missing, and one line per counter added."""
    rows = read_points(target, strict=True)
    counted = latest_rows(read_points(counts, strict=True))
    costs: dict[tuple, dict] = {}
    lines = []
    for row in rows:
        m = row["metrics"]
        for counter, (unit, name) in COUNTERS.items():
            if counter in m:
                continue
            own = own_count(counter, row)
            if own is not None:
                value, note = own[0], {"why": own[1]}
            elif row["key"] in counted:
                c = counted[row["key"]]
                cm = c["metrics"]
                if counter not in cm:
                    lines.append(f"{row['key']}: {counts} has no {counter} (left without it)")
                    continue
                same = (cm["nfe_per_sample"], cm["tokens_computed_per_sample"]) == \
                    (m["nfe_per_sample"], m["tokens_computed_per_sample"])
                value = cm[counter]
                note = {"from": c["sweep"], "device_name": c["device_name"], "git_commit": c["git_commit"],
                        "nfe_per_sample": cm["nfe_per_sample"],
                        "tokens_computed_per_sample": cm["tokens_computed_per_sample"], "same_draw": same}
            else:
                lines.append(f"{row['key']}: not in {counts} (left without {counter})")
                continue
            key = (row["model_entry"], row["dtype"])
            if key not in costs:
                costs[key] = trunk_cost(target, row["model_entry"], row["dtype"])
            m[counter] = value
            row[unit] = costs[key][unit]
            row[f"{name}_recount"] = note
            lines.append(f"{row['key']}: {value:.0f} {name}/sample" + ("" if note.get("same_draw", True) else
                         f" (another draw: NFE {note['nfe_per_sample']:.0f} vs {m['nfe_per_sample']:.0f}, tokens "
                         f"{note['tokens_computed_per_sample']:.0f} vs {m['tokens_computed_per_sample']:.0f})"))
    return rows, lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("target", type=Path, help="results folder whose rows lack a counter")
    p.add_argument("counts", type=Path, help="results folder of the same sweep re-run (e.g. on CPU, tiny trunk)")
    args = p.parse_args(argv)
    for folder in (args.target, args.counts):
        if not (folder / POINTS_FILE).is_file():
            p.error(f"{folder}: no {POINTS_FILE}; give a sweep's results folder")
    rows, lines = recount(args.target, args.counts)
    print("\n".join(lines) or "every row already has every counter")
    write_atomic(args.target / POINTS_FILE, "".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
