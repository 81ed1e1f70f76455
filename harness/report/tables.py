"""Markdown tables and number formatting."""

from __future__ import annotations

import math

from harness.report.frame import FAMILY_NAMES, finite

def fmt(v, digits: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        if v != 0 and (abs(v) >= 1e7 or abs(v) < 0.5 * 10 ** -digits):
            return f"{v:.3e}"
        return f"{v:,.{digits}f}"
    return str(v)


def md_table(headers: list[str], rows: list[list], align: list[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(headers) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


RESULT_COLUMNS = [  # (column, header, digits)
    ("test_ppl", "test PPL (± SE)", 2), ("gen_ppl", "gen PPL", 2), ("gen_ppl_mean", "gen PPL (mean/sample)", 2),
    ("entropy", "entropy", 3), ("degenerate", "degenerate", 1), ("mauve", "MAUVE", 3),
    ("nfe_per_sample", "NFE/sample", 1), ("tokens_computed_per_sample", "tokens computed/sample", 1),
    ("seconds_per_sample", "s/sample", 4), ("floor_seconds_per_sample", "floor_s", 4), ("x_floor", "x floor", 1),
    ("tokens_per_second", "tokens/s", 0),
]


TIMED = ("seconds_per_sample", "tokens_per_second")
BUSY_MARK = " (busy)"
BUSY_NOTE = ("(busy): other processes kept cores busy while the point was timed (its row's `other_cores`), so its "
             "seconds may be inflated; re-time it on a quiet machine.")


def with_se(r, digits: int) -> str:
    """'351.40 ± 12.3': test perplexity with its standard error, where the row has one."""
    text = fmt(float(r["test_ppl"]), digits)
    se = r.get("test_ppl_se")
    return f"{text} ± {fmt(float(se), 1)}" if finite(se) else text


def results_table(agg) -> str:
    cols = [c for c in RESULT_COLUMNS if agg[c[0]].map(finite).any()]
    batches = "batch_size" in agg and agg["batch_size"].nunique() > 1  # a throughput sweep: say which batch
    headers = ["model entry", "family", "schedule", "alpha_0"] + (["batch"] if batches else []) + [h for _, h, _ in cols]
    rows = []
    for _, r in agg.iterrows():
        rows.append([r["model_entry"], FAMILY_NAMES.get(r["family"], r["family"]), r["schedule"],
                     fmt(r["alpha_0"], 4) if finite(r["alpha_0"]) else "–"]
                    + ([int(r["batch_size"])] if batches else [])
                    + [times(r[c]) if c == "x_floor" else "degenerate" if c == "mauve" and isinstance(r.get("mauve_degenerate"), str)
                       else with_se(r, d) if c == "test_ppl"
                       else fmt(float(r[c]), d) + (BUSY_MARK if c in TIMED and r.get("machine_busy") is True else "")
                       for c, _, d in cols])
    table = md_table(headers, rows, ["l", "l", "l"] + ["r"] * (len(headers) - 3))
    if "machine_busy" in agg and (agg["machine_busy"] == True).any():  # noqa: E712 - NaN-safe
        table += "\n\n" + BUSY_NOTE
    return table


def seconds_with_spread(r) -> str:
    """'0.0029 (0.0028–0.0031)': the median seconds per sample and its fastest–slowest repeat."""
    text = fmt(float(r["seconds_per_sample"]), 4)
    lo, hi = r.get("seconds_min_per_sample"), r.get("seconds_max_per_sample")
    return f"{text} ({fmt(float(lo), 4)}–{fmt(float(hi), 4)})" if finite(lo) and finite(hi) else text


def points_table(agg, numbers: dict, fronts: dict[str, set]) -> str:
    """The numbered points of the speed-quality plots: what each is, its values, and the
    frontiers (time, NFE) it lies on."""
    rows = []
    for i, n in numbers.items():
        r = agg.loc[i]
        on = [axis for axis, members in fronts.items() if n in members]
        rows.append([n, r["model_entry"], FAMILY_NAMES.get(r["family"], r["family"]), r["schedule"], r["length"],
                     seconds_with_spread(r), fmt(float(r["nfe_per_sample"]), 1),
                     fmt(float(r["gen_ppl"]), 1), fmt(float(r["entropy"]), 2), ", ".join(on) or "–"])
    return md_table(["#", "model entry", "family", "schedule", "L", "s/sample (repeats)", "NFE/sample", "gen PPL",
                     "entropy",
                     "frontier"], rows, ["r", "l", "l", "l", "r", "r", "r", "r", "r", "l"])


def boundaries_table(agg) -> str:
    """BOS at position 0, EOS at L − 1 and EOS inside, per point: a format check the
    perplexities miss (gen PPL takes the first token as context only)."""
    rows = [[r["model_entry"], FAMILY_NAMES.get(r["family"], r["family"]), r["schedule"], r["length"],
             fmt(100 * float(r["bos_first"]), 0), fmt(100 * float(r["eos_last"]), 0),
             fmt(float(r["eos_inside_per_sample"]), 2)]
            for _, r in agg.iterrows() if finite(r["bos_first"])]
    return md_table(["model entry", "family", "schedule", "L", "BOS at 0 (%)", "EOS at L − 1 (%)",
                     "EOS inside / sample"], rows, ["l", "l", "l", "r", "r", "r", "r"])


def times(v) -> str:
    """A ratio as '12.3×'; '—' when a point is missing."""
    return f"{v:.1f}×" if finite(v) else "—"


def alpha0_table(agg, length: int) -> str:
    """The papers' perplexity-vs-alpha_0 table at one length: per Eso-LM entry (its training
    alpha_0 in brackets) and alpha_0 at evaluation, the test PPL (NELBO at that alpha_0) and
    gen PPL for each number of steps T; AR (alpha_0 = 0) and MDLM (alpha_0 = 1) as the ends."""
    at = agg[agg["length"] == length]
    eso = at[at["family"].isin(["esolm-a", "esolm-b"]) & at["alpha_0"].map(finite)]
    if eso.empty:
        return ""
    ts = sorted({int(t) for t in eso["steps"] if finite(t)})

    def cells(g):
        by_t = {int(t): v for t, v in zip(g["steps"], g["gen_ppl"]) if finite(t)}
        if g["family"].iloc[0] == "ar":
            by_t = dict.fromkeys(ts, g["gen_ppl"].iloc[0])  # AR has no T: the same row under every T
        return [fmt(float(g["test_ppl"].mean()))] + [fmt(float(by_t[t])) if t in by_t else "–" for t in ts]

    def ends(family, label):
        return [[entry, label] + cells(g) for entry, g in at[at["family"] == family].groupby("model_entry", sort=False)]

    rows = ends("ar", "0 (AR)")
    for (entry, a0), g in eso.sort_values("alpha_0", kind="stable").groupby(["model_entry", "alpha_0"], sort=False):
        trained = g["alpha_0_train"].iloc[0]
        name = f"{entry} (trained a0={float(trained):g})" if finite(trained) else entry
        rows.append([name, f"{float(a0):g}"] + cells(g))
    rows += ends("mdlm", "1 (MDLM)")
    return md_table(["model entry", "alpha_0"] + ["test PPL"] + [f"gen PPL T={t}" for t in ts], rows)


def by_length_table(agg, column: str, show) -> str:
    """``column`` (shown by ``show``), one table column per length; rows are the curves keyed
    by their length-free schedule (seconds per sample, or measured / floor)."""
    data = agg[agg[column].map(finite)]
    lengths = sorted(data["length"].unique())
    rows = []
    for (entry, fam, group), g in data.groupby(["model_entry", "family", "group"], sort=False):
        by_len = dict(zip(g["length"], g[column]))
        rows.append([entry, FAMILY_NAMES.get(fam, fam), group] + [show(by_len[L]) if L in by_len else "–"
                                                                  for L in lengths])
    return md_table(["model entry", "family", "schedule"] + [f"L = {L}" for L in lengths], rows,
                    ["l", "l", "l"] + ["r"] * len(lengths))


def values_of(df, col) -> list:
    """The distinct values of a column as text ("(1 threads)", as rows before the fix spelled
    a device, reads "(1 thread)")."""
    return sorted({str(v).replace("(1 threads)", "(1 thread)") for v in df[col].dropna()}) if col in df else []
