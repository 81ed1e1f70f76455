"""The papers' reference figures (docs/models.md §6) and the measured rows they may stand beside.

A figure is shown only next to a row of a *released* checkpoint (the sweep config names an
``hf:/folder`` or ``.ckpt`` for the entry, so ``esolm import`` brought it in) measured under
the paper's protocol: same model family, block size and alpha_0, L = 1024, the same kind of
test-PPL estimator (exact for AR, a NELBO bound for the diffusion models), and for generative
PPL the GPT-2 Large evaluator (by its recorded name), nucleus top_p = 0.9 and about one
token per forward (NFE ≈ L).  A test PPL also needs the rows framed as the figure's were
(``data_framing``: the bd3lms scripts score BD3-LM on raw OpenWebText rows, AR and MDLM on
[BOS] ... [EOS] rows) and BD3-LM scored as bd3lms scores it (position 0 clean and unscored,
P[mask | t] = t: ``ignore_bos`` and ``mask_rate`` in the row's model options).  Any other row of an imported checkpoint gets "—" and the
reason.  The gen-PPL figures are means of per-sample perplexities (BD3-LM's convention), so
they are compared with ``gen_ppl_mean``.

Eso-LM figures are deliberately absent: the official s-sahoo/Eso-LMs README quotes no
perplexities (only the 65× / 4× speed-ups, which :mod:`harness.report.speed` uses), and
nothing here is taken from memory of the paper's tables.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from harness.report.frame import FAMILY_NAMES, finite
from harness.report.tables import fmt, md_table

BD3LM_PAPER = "Arriola et al. 2025, Block Diffusion (BD3-LM), arXiv:2503.09573"
TEST_TABLE = "OWT test-perplexity table (L = 1024; the AR and MDLM rows are the paper's baselines)"
GEN_TABLE = ("generative-perplexity table (L = 1024, NFE ≈ 1K, GPT-2 Large; sampled with nucleus p = 0.9 and "
             "MDLM with T = 5000, as in kuleshov-group/bd3lms scripts/gen_ppl/*.sh)")
LENGTH = 1024
EVALUATOR = "gpt2large"  # the recorded evaluator name, lower-cased, letters and digits only
TOP_P = 0.9


@dataclass(frozen=True)
class Figure:
    """One published number and the protocol it was measured under."""

    metric: str  # "test_ppl" or "gen_ppl"
    family: str
    value: float
    relation: str  # "=" exact, "≤" NELBO upper bound, "≈" sampled (noisy)
    paper: str
    table: str
    what: str
    block_size: int | None = None
    alpha_0: float | None = None
    length: int = LENGTH
    framing: str = "bos_eos"  # how the test rows were framed (docs/data.md §4.1)


def _test(family, value, relation, what, block_size=None):
    framing = "raw" if family == "bd3lm" else "bos_eos"  # bd3lms' ppl_owt_*.sh: insert_valid_special
    return Figure("test_ppl", family, value, relation, BD3LM_PAPER, TEST_TABLE, what, block_size, framing=framing)


def _gen(family, value, what, block_size=None):
    return Figure("gen_ppl", family, value, "≈", BD3LM_PAPER, GEN_TABLE, what, block_size)


FIGURES = (
    _test("ar", 17.54, "=", "AR, exact test PPL on OWT"),
    _test("mdlm", 22.98, "≤", "MDLM, NELBO bound on OWT test PPL"),
    _test("bd3lm", 20.73, "≤", "BD3-LM L' = 4, NELBO bound on OWT test PPL", 4),
    _test("bd3lm", 21.68, "≤", "BD3-LM L' = 8, NELBO bound on OWT test PPL", 8),
    _test("bd3lm", 22.27, "≤", "BD3-LM L' = 16, NELBO bound on OWT test PPL", 16),
    _gen("ar", 14.1, "AR, gen PPL under GPT-2 Large"),
    _gen("mdlm", 46.8, "MDLM, gen PPL under GPT-2 Large"),
    _gen("bd3lm", 25.7, "BD3-LM L' = 4, gen PPL under GPT-2 Large", 4),
)


def imported_entries(results_dir: Path) -> set[str]:
    """Model entries whose checkpoint the sweep config names as a released file."""
    cfg = Path(results_dir) / "config.yaml"
    if not cfg.is_file():
        return set()
    import yaml

    try:
        models = (yaml.safe_load(cfg.read_text()) or {}).get("models") or []
    except (yaml.YAMLError, AttributeError):
        return set()
    named = {m["name"]: m["checkpoint"] for m in models
             if isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("checkpoint"), str)}
    if not named:
        return set()
    from harness.checkpoints.own_format import foreign_source  # the one rule for "a released file"

    return {name for name, spec in named.items() if foreign_source(spec)}


def _options(row) -> dict:
    return row["model_options"] if isinstance(row.get("model_options"), dict) else {}


def _fields(row) -> dict:
    return row["schedule_fields"] if isinstance(row.get("schedule_fields"), dict) else {}


def _same(a, b) -> bool:
    """Two optional numbers (None / NaN = not set) are the same setting."""
    if not finite(a) or not finite(b):
        return not finite(a) and not finite(b)
    return math.isclose(float(a), float(b))


def find_figure(row, metric: str) -> tuple[Figure | None, str]:
    """The paper's figure for this row and metric, and a protocol note; (None, reason) when
    no figure applies."""
    family = row.get("family")
    name = FAMILY_NAMES.get(family, family)
    block = _options(row).get("block_size") if family == "bd3lm" else None
    candidates = [f for f in FIGURES if f.metric == metric and f.family == family and f.block_size == block
                  and _same(f.alpha_0, row.get("alpha_0"))]
    if not candidates:
        label = f"{name} L' = {block}" if block else name
        what = f"no published {metric_name(metric)} of {label} recorded here"
        if family in ("esolm-a", "esolm-b"):
            what += " (the official Eso-LMs README quotes none)"
        return None, what
    fig = candidates[0]
    if int(row["length"]) != fig.length:
        return None, f"L = {int(row['length'])}; the paper's figure is at L = {fig.length}"
    if metric == "test_ppl":
        return _test_protocol(row, fig)
    return _gen_protocol(row, fig)


def metric_name(metric: str) -> str:
    return {"test_ppl": "test PPL", "gen_ppl": "gen PPL"}[metric]


def row_framing(row) -> str:
    """The row's data framing; rows from before the field were all [BOS] ... [EOS] rows."""
    framing = row.get("data_framing")
    return framing if isinstance(framing, str) else "bos_eos"


def _test_protocol(row, fig: Figure) -> tuple[Figure | None, str]:
    est = str(row.get("test_ppl_estimator") or "")
    exact = fig.relation == "="
    if not (est == "exact" if exact else est.startswith("nelbo")):
        return None, f"estimator {est or 'not recorded'}; the paper's figure is {'exact' if exact else 'a NELBO bound'}"
    if row_framing(row) != fig.framing:
        return None, (f"framing {row_framing(row)}; the paper scores {FAMILY_NAMES.get(fig.family, fig.family)} on "
                      f"{fig.framing} rows (data.framing)")
    options = _options(row)
    if fig.family == "bd3lm" and (options.get("ignore_bos") is not True or options.get("mask_rate") != "bd3lms"):
        return None, ("BD3-LM scored with position 0 masked or P[mask | t] = (1 − eps)·t; the paper's keeps position 0 "
                      "clean and unscored, P[mask | t] = t (ignore_bos, mask_rate: bd3lms)")
    n = row.get("test_ppl_sequences")
    data = f"first {int(n)} sequences of the given held-out corpus" if finite(n) else "the given held-out corpus"
    return fig, f"{est}, {data}; paper: its OWT test split"


def _gen_protocol(row, fig: Figure) -> tuple[Figure | None, str]:
    evaluator = str(row.get("evaluator") or "")
    if re.sub(r"[^a-z0-9]", "", evaluator.lower()) != EVALUATOR:
        return None, f"evaluator {evaluator or 'not recorded'}; the paper scores with GPT-2 Large"
    fields = _fields(row)
    top_p = float(fields.get("top_p", 1.0))
    if not math.isclose(top_p, TOP_P):
        return None, f"top_p = {top_p:g}; the paper samples with nucleus p = {TOP_P:g}"
    L = int(row["length"])
    steps = fields.get("steps")
    if fig.family == "mdlm" and not (isinstance(steps, int) and steps >= L):
        return None, f"T = {steps}; the paper's MDLM takes T = 5000 (≥ L, NFE ≈ 1K)"
    if fig.family == "bd3lm" and not fields.get("first_hitting"):
        return None, "not first hitting; the paper's BD3-LM reveals about one token per forward (NFE ≈ 1K)"
    sampler = {"ar": "one token per forward", "mdlm": f"T = {steps} (paper: T = 5000)",
               "bd3lm": "first hitting, one token per step"}[fig.family]
    return fig, f"{evaluator}, top_p {top_p:g}, {sampler}; mean of per-sample PPL"


def paper_rows(df, results_dir: Path) -> list[dict]:
    """Per imported point (seeds averaged) and metric: measured, figure or None, note."""
    imported = imported_entries(results_dir)
    if not imported:
        return []
    records = [r for r in df.to_dict("records") if r.get("model_entry") in imported]
    out, seen = [], {}
    for metric, column in (("test_ppl", "test_ppl"), ("gen_ppl", "gen_ppl_mean")):
        for r in records:
            if not finite(r.get(column)):
                continue
            # test PPL is one number per (entry, length, alpha_0); gen PPL one per point
            key = (metric, r["model_entry"], int(r["length"]),
                   float(r["alpha_0"]) if metric == "test_ppl" and finite(r.get("alpha_0")) else None,
                   None if metric == "test_ppl" else r["schedule"])
            if key in seen:
                seen[key]["values"].append(float(r[column]))
                continue
            fig, note = find_figure(r, metric)
            item = {"metric": metric, "entry": r["model_entry"], "family": r["family"], "length": int(r["length"]),
                    "schedule": "–" if metric == "test_ppl" else r["schedule"], "values": [float(r[column])],
                    "framing": row_framing(r), "figure": fig, "note": note}
            seen[key] = item
            out.append(item)
    for item in out:
        item["measured"] = sum(item["values"]) / len(item["values"])
    return out


def paper_section(df, results_dir: Path) -> list[str]:
    """report.md lines of "Against the papers"; none unless some row has a figure."""
    rows = paper_rows(df, results_dir)
    if not any(r["figure"] for r in rows):
        return []
    reasons: dict[str, int] = {}
    table = []
    for r in rows:
        fig = r["figure"]
        if fig is None:
            n = reasons.setdefault(r["note"], len(reasons) + 1)
            paper, ratio, note = "—", "—", f"not comparable, see ({n})"
        else:
            paper = f"{fig.relation} {fig.value:g}" if fig.relation != "=" else f"{fig.value:g}"
            ratio, note = f"{r['measured'] / fig.value:.2f}", r["note"]
        table.append([r["entry"], FAMILY_NAMES.get(r["family"], r["family"]), metric_name(r["metric"]), r["schedule"],
                      r["length"], r["framing"], fmt(r["measured"]), paper, ratio, note])
    lines = ["## Against the papers", "",
             "Released checkpoints (imported with `esolm import`) next to the papers' published figures; ratio = "
             "measured / paper. A figure appears only where the row was measured under the paper's protocol "
             "(L = 1024; test PPL: exact for AR, a NELBO bound otherwise; gen PPL: GPT-2 Large, nucleus p = 0.9, "
             "about one token per forward, compared as the mean of per-sample PPL). '≤': the paper's NELBO bound; "
             "'≈': a sampled figure, noisy at small sample counts. framing: the test rows' (raw: L text tokens; "
             "bos_eos: [BOS] + L − 2 + [EOS]); a test PPL is compared only under the framing the paper used.", "",
             md_table(["model entry", "family", "metric", "schedule", "L", "framing", "measured", "paper", "ratio",
                       "protocol note"], table, ["l", "l", "l", "l", "r", "l", "r", "r", "r", "l"]), ""]
    lines += [f"- ({n}) {reason}." for reason, n in reasons.items()]
    if reasons:
        lines.append("")
    for paper in dict.fromkeys(r["figure"].paper for r in rows if r["figure"]):
        tables = dict.fromkeys(r["figure"].table for r in rows if r["figure"] and r["figure"].paper == paper)
        lines += [f"Source: {paper}: " + "; ".join(tables) + ".", ""]
    return lines
