"""Large-batch throughput (the papers' speed regime): tokens per second per point, its floor,
and the paper's ratios MDLM / Eso-LM (B) and BD3-LM / Eso-LM (B).

At the papers' batches (512 at L = 1024 down to 32 at L = 16384) a forward is
compute-bound, so the ratios follow tokens computed, not forwards.  A ratio compares rows
of ONE run only (same ``run_id``: one ``esolm sweep`` call, so one machine, commit and
load), at the same length and batch size: rows resumed in another run are never mixed in.

Pairs: each MDLM point against Eso-LM (B) at alpha_0 = 1 with the same T if the run has it,
else the Eso-LM (B) alpha_0 = 1 point with the most steps (the authors' long-length scripts
run MDLM at T = 8 and Eso-LM (B) at T = 10^6, about one token per step); each BD3-LM point
against that most-steps Eso-LM (B) point.  The ratio is Eso-LM (B)'s tokens/s over the
other's (how many times faster Eso-LM (B) is).
"""

from __future__ import annotations

from harness.report.frame import FAMILY_NAMES, finite
from harness.report.speed import PAPER_BD3LM, PAPER_MDLM
from harness.report.tables import fmt, md_table, times


def is_throughput(agg) -> bool:
    """A sweep timed at its config's ``batch_sizes`` (the throughput regime)."""
    timed = agg[agg["tokens_per_second"].map(finite)]
    return bool(len(timed)) and bool((timed["batch_grid"] == True).any())  # noqa: E712 (None for old rows)


def throughput_table(agg) -> str:
    """Every timed point: batch, tokens/s, seconds per sample, floor, x floor and step mode."""
    timed = agg[agg["tokens_per_second"].map(finite)]
    rows = [[int(r["length"]), int(r["batch_size"]), r["model_entry"], FAMILY_NAMES.get(r["family"], r["family"]),
             r["schedule"], fmt(float(r["tokens_per_second"]), 0), fmt(float(r["seconds_per_sample"]), 5),
             fmt(float(r["floor_seconds_per_sample"]), 5), times(r["x_floor"]), r.get("step_mode") or "–"]
            for _, r in timed.sort_values(["length", "batch_size"], kind="stable").iterrows()]
    return md_table(["L", "batch", "model entry", "family", "schedule", "tokens/s", "s/sample", "floor_s",
                     "x floor", "step mode"], rows, ["r", "r", "l", "l", "l", "r", "r", "r", "r", "l"])


def _eso_a1(rows):
    return rows[(rows["family"] == "esolm-b") & (rows["alpha_0"] == 1.0) & rows["steps"].map(finite)]


def throughput_ratios(agg, column: str = "tokens_per_second") -> list[dict]:
    """One dict per compared pair: run, length, batch, both points and Eso-LM (B)'s speed-up
    (``column``: measured tokens/s; for floors pass "floor_tokens_per_second")."""
    timed = agg[agg[column].map(finite) & agg["run_id"].map(lambda v: isinstance(v, str) and bool(v))]
    out = []
    for (run, length, batch), rows in timed.groupby(["run_id", "length", "batch_size"], sort=True, dropna=False):
        eso = _eso_a1(rows)
        if eso.empty:
            continue
        most = eso.loc[eso["steps"].astype(float).idxmax()]
        for _, r in rows[rows["family"].isin(["mdlm", "bd3lm"])].iterrows():
            twin = eso[eso["steps"].astype(float) == float(r["steps"])] if r["family"] == "mdlm" and finite(r["steps"]) \
                else eso.iloc[:0]
            e = twin.iloc[0] if len(twin) else most
            out.append({"run_id": run, "length": int(length), "batch_size": int(batch), "other": r["model_entry"],
                        "family": r["family"], "other_schedule": r["schedule"], "esolm_schedule": e["schedule"],
                        "other_value": float(r[column]), "esolm_value": float(e[column]),
                        "speedup": float(e[column]) / float(r[column]) if float(r[column]) > 0 else None})
    return out


def ratio_table(pairs: list[dict], unit: str = "tokens/s") -> str:
    rows = [[p["length"], p["batch_size"], f"{FAMILY_NAMES[p['family']]} {p['other']} ({p['other_schedule']})",
             f"Eso-LM (B) ({p['esolm_schedule']})", fmt(p["other_value"], 0), fmt(p["esolm_value"], 0),
             times(p["speedup"]), PAPER_MDLM if p["family"] == "mdlm" else PAPER_BD3LM, p["run_id"]]
            for p in pairs]
    return md_table(["L", "batch", "compared point", "Eso-LM (B) point", f"its {unit}", f"Eso-LM (B) {unit}",
                     "Eso-LM (B) faster by", "paper", "run"], rows,
                    ["r", "r", "l", "l", "r", "r", "r", "l", "l"])


def throughput_section(agg) -> list[str]:
    """The report's throughput section (markdown lines), or [] for a latency-only sweep."""
    if not is_throughput(agg):
        return []
    md = ["## Throughput", "",
          "Tokens per second (batch size × L / median seconds per batch) of every timed point, with its floor "
          "(defined under the protocol; — where no ceilings were measured) and the step mode it ran.", "",
          throughput_table(agg), ""]
    pairs = throughput_ratios(agg)
    if pairs:
        md += ["### Eso-LM (B) against MDLM and BD3-LM", "",
               "Eso-LM (B) at alpha_0 = 1 against each MDLM and BD3-LM point of the same run, length and batch "
               "(MDLM: the same T when measured, else Eso-LM (B)'s most-steps point, as in the authors' long-length "
               f"scripts). The paper reports Eso-LM (B) {PAPER_MDLM} faster than MDLM and {PAPER_BD3LM} faster than "
               "BD3-LM at its batch sizes.", "", ratio_table(pairs), ""]
    agg = agg.assign(floor_tokens_per_second=agg["length"] / agg["floor_seconds_per_sample"])
    floor_pairs = throughput_ratios(agg, "floor_tokens_per_second")
    if floor_pairs:
        md += ["The same pairs at their floors (tokens/s if every point ran at its floor):", "",
               ratio_table(floor_pairs, "floor tokens/s"), ""]
    return md
