"""The report's prose: protocol table, what the numbers were measured on, the floor's
definition, sample quotes and notes."""

from __future__ import annotations

import json
from pathlib import Path

from harness.report.frame import finite
from harness.report.tables import md_table, values_of
from harness.results_store import sample_path

def floor_text(ceilings: list[dict]) -> str:
    """The floor's formula, the ceilings and their source, and what it leaves out."""
    def rate(v, unit, digits):
        return f"{v / 1e12:.{digits}f} T{unit}" if v >= 1e12 else f"{v / 1e9:.1f} G{unit}"

    parts = [f"{rate(c['matmul_flops'], 'FLOP/s', 0)} matmul and {rate(c['copy_bytes_per_s'], 'B/s', 2)} memory "
             f"copy ({c['source']})" for c in ceilings]
    return ("Floor (floor_s, seconds per sample) = max((NFE per batch × weight bytes + KV-cache slots read × "
            "K/V bytes per slot) / copy rate, (2 × matmul parameters × tokens computed + 4 × d_model × layers × "
            "query-key pairs the attention masks allow) per sample × batch size / matmul rate) / batch size, with "
            "the weights of every layer but the embedding table in the sampling dtype; ceilings: "
            + "; ".join(parts) + ". Rows from before the KV-read or attention-pair counters (no "
            "key_reads_per_sample or attention_pairs_per_sample) count no KV reads or attention FLOPs. The floor "
            "ignores the embedding lookup, elementwise work and sampling (the work between forwards), so it is a "
            "lower bound; x floor = measured / floor.")


def measured_on(df) -> str:
    """One line naming what every figure and table here was measured with."""
    def join(col):
        return ", ".join(values_of(df, col)) or "unknown"

    batch = ", ".join(str(int(v)) for v in sorted(df["batch_size"].dropna().unique())) or "unknown"
    commits = values_of(df, "git_commit")
    return (f"Measured on {join('device_name')}, batch size {batch}, {join('dtype')}, "
            f"commit{'s' if len(commits) > 1 else ''} {', '.join(commits) or 'unknown'}.")


def protocol_table(df, results_dir: Path) -> str:
    estimators = values_of(df, "test_ppl_estimator")
    rows = [
        ["sweep", ", ".join(values_of(df, "sweep"))],
        ["results", f"`{results_dir}` ({len(df)} points)"],
        ["generative-PPL evaluator", ", ".join(values_of(df, "evaluator")) or "– (gen_ppl not measured)"],
        ["test-PPL estimator(s)", ", ".join(estimators) or "– (test_ppl not measured)"],
        ["test-PPL data", ", ".join(f"{s} split" for s in values_of(df, "test_ppl_split")) +
         (f", first {int(df['test_ppl_sequences'].max())} sequences" if "test_ppl_sequences" in df
          and df["test_ppl_sequences"].notna().any() else "")],
        ["device", ", ".join(values_of(df, "device_name"))],
        ["dtype", ", ".join(values_of(df, "dtype"))],
        ["sampler step mode", ", ".join(values_of(df, "step_mode")) or "not recorded"],
        ["samples per point", ", ".join(values_of(df, "num_samples"))],
        ["batch size", ", ".join(values_of(df, "batch_size"))],
        ["seeds", ", ".join(values_of(df, "seed"))],
        ["lengths", ", ".join(str(v) for v in sorted(df["length"].unique()))],
        ["git commit", ", ".join(values_of(df, "git_commit")) or "unknown"],
        ["torch / python", f"{', '.join(values_of(df, 'torch'))} / {', '.join(values_of(df, 'python'))}"],
        ["finished", f"{df['timestamp'].min()} … {df['timestamp'].max()}" if "timestamp" in df else "–"],
    ]
    return md_table(["", ""], rows, ["l", "l"])


def sample_section(df, agg, results_dir: Path, per_entry: int = 1, chars: int = 400) -> str:
    """The first sample of each entry's best (lowest gen PPL, else first) point."""
    out = []
    for entry in dict.fromkeys(agg["model_entry"]):
        rows = df[df["model_entry"] == entry]
        if rows["gen_ppl"].map(finite).any():
            row = rows.loc[rows["gen_ppl"].astype(float).idxmin()]
        else:
            row = rows.iloc[0]
        path = sample_path(results_dir, row["key"])
        if not path.is_file():
            continue
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:per_entry]
        for rec in records:
            text = rec.get("text", "").strip()
            text = (text[:chars] + " …") if len(text) > chars else text
            stats = []
            if finite(rec.get("gen_ppl")):
                stats.append(f"gen PPL {rec['gen_ppl']:.1f}")
            if finite(rec.get("entropy")):
                stats.append(f"entropy {rec['entropy']:.2f}")
            out.append(f"**{entry}**, `{row['key']}` (sample {rec.get('i', 0)}; {', '.join(stats)}):\n\n"
                       "```text\n" + text.replace("```", "'''") + "\n```\n")
    return "\n".join(out) if out else "_no sample files found_\n"


def notes(df) -> list[str]:
    out = []
    for col, label in (("mauve_note", "MAUVE"), ("telemetry_note", "GPU telemetry")):
        if col in df:
            vals = values_of(df, col)
            if vals:
                out.append(f"- {label}: {'; '.join(vals)}.")
    if "degenerate_rule" in df and values_of(df, "degenerate_rule"):
        out.append(f"- Degenerate samples are counted, never dropped: {'; '.join(values_of(df, 'degenerate_rule'))}.")
    reasons = values_of(df, "mauve_degenerate")
    if reasons:
        n = int(df["mauve_degenerate"].map(lambda v: isinstance(v, str)).sum())
        out.append(f"- MAUVE is shown as \"degenerate\" at {n} of {len(df)} points: {'; '.join(reasons)}. Such a "
                   "score says nothing about the texts; the raw value stays in points.jsonl (`mauve`, with "
                   "`mauve_degenerate` saying why). More samples, or more clusters (`mauve: {num_buckets: K}`), "
                   "make it a measurement.")
    if "mauve" in df and df["mauve"].map(finite).any() and "mauve_n" in df:
        n = min(min(v) for v in df["mauve_n"] if isinstance(v, list) and v)
        if n < 200:
            out.append(f"- MAUVE here compares only {n} generated vs reference texts per point: at this size it is "
                       "very noisy (differences of ±0.3 are common); read it as a pipeline check, not a ranking.")
    if any(str(v).startswith("harness-ar:") for v in values_of(df, "evaluator")) and (df["family"] == "ar").any():
        out.append("- The evaluator is a harness AR checkpoint: if it is an AR row of this sweep, that row's "
                   "generative perplexity scores the evaluator's own samples and is flattered accordingly.")
    out.append("- Speed: wall-clock after warm-up, median of repeats, device-synchronised; tokens/s counts all L "
               "positions of a sample. NFE and tokens computed are exact and hardware-independent.")
    if (df["family"].isin(["esolm-a", "esolm-b"])).any() and "test_ppl" in df:
        out.append("- Eso-LM test PPL is the NELBO at the row's alpha_0 (evaluation), computed once per "
                   "(model entry, length, alpha_0); other models once per (model entry, length).")
    return out


def description(results_dir: Path) -> str:
    cfg = results_dir / "config.yaml"
    if not cfg.is_file():
        return ""
    try:
        import yaml

        return str((yaml.safe_load(cfg.read_text()) or {}).get("description", "") or "")
    except Exception:
        return ""
