"""GPU speed: floors (the time no implementation could beat on the GPU, docs/floors.md) and the
paper's speed ratios of Eso-LM (B) against MDLM and BD3-LM."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from harness.report.frame import finite
from harness.report.tables import fmt, md_table, times

# Ceilings measured once on an H100 (bf16 matmul 8192^3; device-to-device copy), docs/floors.md §1.
PERF_H100 = {"matmul_flops": 759e12, "copy_bytes_per_s": 2.9e12, "source": "built-in H100 figures, docs/floors.md §1"}
# Eso-LM paper (Sahoo et al., docs/models.md §6), sampling-speed figure: Eso-LM (B) against MDLM and KV-cached BD3-LM.
PAPER_MDLM = "14–65×"
PAPER_BD3LM = "3–4×"


def floor_seconds(nfe: float, tokens_computed_per_sample: float, batch_size: float, weight_bytes: float,
                  matmul_parameters: float, matmul_flops: float, copy_bytes_per_s: float,
                  kv_bytes_per_sample: float = 0.0, attention_flops_per_sample: float = 0.0) -> float:
    """Seconds per sample no implementation can beat on this machine: per batch, every forward
    reads all weights (``nfe`` is forwards per batch) and every cached forward its KV-cache
    slots; every computed token costs 2 FLOPs per matmul parameter, and every query-key pair
    its masks allow 4 · d_model per layer (QKᵀ and the values), at the matmul rate; whichever
    is slower, shared by the batch's samples."""
    read = (nfe * weight_bytes + kv_bytes_per_sample * batch_size) / copy_bytes_per_s
    flops = 2 * matmul_parameters * tokens_computed_per_sample + attention_flops_per_sample
    return max(read, flops * batch_size / matmul_flops) / batch_size


def file_ceilings(results_dir: Path) -> dict | None:
    """Ceilings measured for this sweep: ``ceilings.json``, else ``gpu_bench.json``'s "ceilings"."""
    path = results_dir / "ceilings.json"
    if path.is_file():
        ceil = json.loads(path.read_text())
        return {**ceil, "source": ceil.get("source") or str(path), "any_device": True}
    path = results_dir / "gpu_bench.json"
    if path.is_file():
        bench = json.loads(path.read_text())
        if isinstance(bench.get("ceilings"), dict):
            device = f" on {bench['device']}" if bench.get("device") else ""
            return {**bench["ceilings"], "source": f"measured by scripts/gpu_bench.py{device}, {path}",
                    "any_device": False}
    return None


def counted(row, count: str, per_unit: str) -> float:
    """count × per unit, or 0 for a row from before that counter (the floor leaves it out)."""
    values = [row.get(count), row.get(per_unit)]
    return float(values[0]) * float(values[1]) if all(finite(v) for v in values) else 0.0


def add_floors(df, results_dir: Path) -> list[dict]:
    """Column ``floor_seconds_per_sample`` (NaN where no ceilings apply or the row lacks the
    forward's cost); returns the ceilings used.  ceilings.json applies to every row,
    gpu_bench.json to CUDA rows, PERF_H100 to H100 rows; other rows get no floor
    (``esolm ceilings`` measures a CPU's into ceilings.json)."""
    measured = file_ceilings(results_dir)
    used, floors = {}, []
    for _, r in df.iterrows():
        cuda = str(r.get("device", "")).startswith("cuda")
        if measured and (measured["any_device"] or cuda):
            ceil = measured
        elif cuda and "H100" in str(r.get("device_name", "")):
            ceil = PERF_H100
        else:
            ceil = None
        values = [r.get(c) for c in ("nfe", "tokens_computed_per_sample", "batch_size", "weight_bytes",
                                     "matmul_parameters")]
        if ceil is None or not all(finite(v) for v in values):
            floors.append(float("nan"))
            continue
        sub = r.get("sub_batch")  # a batch run as sub-batches (memory budget): nfe is per sub-batch
        if finite(sub) and 0 < float(sub) < float(values[2]):
            values[0] = float(values[0]) * math.ceil(float(values[2]) / float(sub))
        floors.append(floor_seconds(*(float(v) for v in values), float(ceil["matmul_flops"]),
                                    float(ceil["copy_bytes_per_s"]),
                                    counted(r, "key_reads_per_sample", "kv_bytes_per_key"),
                                    counted(r, "attention_pairs_per_sample", "attention_flops_per_pair")))
        used[ceil["source"]] = ceil
    df["floor_seconds_per_sample"] = floors
    return list(used.values())


def _on_cuda(frame):
    return frame["device"].astype(str).str.startswith("cuda")


def cuda_rows(frame):
    return frame[_on_cuda(frame)]


def cuda_timed(agg):
    """Timed CUDA rows."""
    return agg[_on_cuda(agg) & agg["seconds_per_sample"].map(finite)]


def steps_is(r, steps) -> bool:
    return finite(r["steps"]) and int(r["steps"]) == int(steps)


def pick(rows, test):
    """First row (config order) passing ``test``, or None."""
    for _, r in rows.iterrows():
        if test(r):
            return r
    return None


def _eso_a1(rows, steps):
    return pick(rows, lambda r: r["family"] == "esolm-b" and finite(r["alpha_0"]) and float(r["alpha_0"]) == 1.0
                 and steps_is(r, steps))


def _t_name(group: str, steps) -> str:
    """'T=L/8' when the schedule was written with a length expression, else 'T=<steps>'."""
    m = re.search(r"(?:^|,)T=([^,]+)", str(group))
    return f"T={m.group(1)}" if m and "L" in m.group(1) else f"T={int(steps)}"


def speed_ratios(agg, column: str = "seconds_per_sample") -> dict | None:
    """Per length: MDLM / Eso-LM (B) alpha_0 = 1 at the same T, and BD3-LM (first hitting) /
    Eso-LM (B) alpha_0 = 1, T = L; with the seconds per sample (``column``: measured, or
    ``floor_seconds_per_sample`` for the ratios with no per-step overhead) of every compared
    point.  None unless the CUDA rows hold Eso-LM (B) and MDLM or BD3-LM."""
    data = cuda_timed(agg)
    fams = set(data["family"])
    if "esolm-b" not in fams or not fams & {"mdlm", "bd3lm"}:
        return None
    lengths = sorted(int(v) for v in data["length"].unique())
    mdlm_cols, bd3_cols = {}, []  # T name -> [steps/length ...]; block sizes
    for _, r in data.iterrows():
        rows = data[data["length"] == r["length"]]
        if r["family"] == "mdlm" and finite(r["steps"]) and _eso_a1(rows, r["steps"]) is not None:
            mdlm_cols.setdefault(_t_name(r["group"], r["steps"]), []).append(float(r["steps"]) / r["length"])
        if (r["family"] == "bd3lm" and r["first_hitting"] and finite(r["block_size"])
                and int(r["block_size"]) not in bd3_cols):
            bd3_cols.append(int(r["block_size"]))
    t_names = sorted(mdlm_cols, key=lambda k: sum(mdlm_cols[k]) / len(mdlm_cols[k]))
    bd3_cols.sort()
    table = []
    for L in lengths:
        rows = data[data["length"] == L]
        line = {"length": L}
        for name in t_names:
            mdlm = pick(rows, lambda r: r["family"] == "mdlm" and finite(r["steps"])
                         and _t_name(r["group"], r["steps"]) == name)
            eso = _eso_a1(rows, mdlm["steps"]) if mdlm is not None else None
            line[f"MDLM {name} s"] = float(mdlm[column]) if mdlm is not None else None
            line[f"Eso-LM (B) a0=1 {name} s"] = float(eso[column]) if eso is not None else None
        eso_l = _eso_a1(rows, L)
        if bd3_cols:
            line["Eso-LM (B) a0=1 T=L s"] = float(eso_l[column]) if eso_l is not None else None
        for b in bd3_cols:
            bd3 = pick(rows, lambda r: r["family"] == "bd3lm" and r["first_hitting"] and finite(r["block_size"])
                        and int(r["block_size"]) == b)
            line[f"BD3-LM L'={b} s"] = float(bd3[column]) if bd3 is not None else None
        for name in t_names:
            line[f"MDLM / Eso-LM {name}"] = _ratio(line[f"MDLM {name} s"], line[f"Eso-LM (B) a0=1 {name} s"])
        for b in bd3_cols:
            line[f"BD3-LM L'={b} / Eso-LM T=L"] = _ratio(line[f"BD3-LM L'={b} s"], line["Eso-LM (B) a0=1 T=L s"])
        table.append(line)
    return {"t_names": t_names, "block_sizes": bd3_cols, "rows": table}


def _ratio(num, den):
    return num / den if finite(num) and finite(den) and den > 0 else None


def ratio_tables(ratios: dict, seconds_title: str = "Seconds per sample of the compared points:") -> str:
    """The ratios with the paper's figures as a last row, then the compared points' seconds."""
    rcols = [k for k in ratios["rows"][0] if " / " in k]
    scols = [k for k in ratios["rows"][0] if k.endswith(" s")]
    rows = [[f"L = {r['length']}"] + [times(r[k]) for k in rcols] for r in ratios["rows"]]
    rows.append(["paper (Eso-LM (B), L up to 8192)"] + [PAPER_MDLM if k.startswith("MDLM") else PAPER_BD3LM
                                                         for k in rcols])
    seconds = [[f"L = {r['length']}"] + [fmt(r[k], 4) if finite(r[k]) else "—" for k in scols]
               for r in ratios["rows"]]
    return (md_table(["length"] + rcols, rows, ["l"] + ["r"] * len(rcols)) + "\n\n"
            + seconds_title + "\n\n"
            + md_table(["length"] + [k[:-2] for k in scols], seconds, ["l"] + ["r"] * len(scols)))


def write_ratios_csv(ratios: dict, path: Path) -> None:
    """The same table, numbers unformatted (empty where a point is missing)."""
    import csv

    cols = list(ratios["rows"][0])
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(cols)
        for r in ratios["rows"]:
            writer.writerow(["" if r[c] is None else r[c] for c in cols])
