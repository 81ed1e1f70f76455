"""CI gate: ``esolm compare REFERENCE CANDIDATE [--tolerances FILE]``.

Both arguments are a ``points.jsonl`` or a results folder holding one.  Points are matched
by key (newest row per key).  Each gated metric of each reference point is checked:

- ``REGRESSED``: worse than the reference by more than its tolerance, or missing/null in
  the candidate while the reference has it;
- ``improved``: better by more than the tolerance;
- ``ok``: within tolerance;
- ``missing``: the whole point is absent from the candidate.

- ``not comparable``: the gate cannot tell, and says why: a value that cannot be a
  measurement (a perplexity below 1, NaN, inf, a MAUVE outside [0, 1], a negative count or
  time) on either side, a gated metric the reference lacks or holds as NaN, gen PPL / MAUVE
  scored by different evaluators, a MAUVE marked degenerate (harness.metrics.mauve), or a
  point made from a different config (config hash).

Exit code 2 when any point is not comparable (an invalid value is an error, never an
improvement), else 1 on any REGRESSED or missing point, else 0.  A metric set to ``off``
or ``advisory`` in the tolerance file opts out of these checks for that metric, and
``config_hash: off`` compares points made from different configs.  Speed is *advisory* by
default (shown, never failing: shared CI runners are noisy); the exact work counters (NFE,
tokens computed) are gated exactly, so the speed story is still checked where time is not.
A Monte-Carlo test perplexity (a NELBO bound) that moved past its tolerance but within two
standard errors of the difference (both rows' ``test_ppl_se``) is noise and passes; an exact
one has no such band.

Output: one line per point that fails (REGRESSED, missing or not comparable) and a summary
line; ``--verbose`` prints the full table first, ``--csv FILE`` writes it per point and metric.

Tolerance file (YAML), one entry per metric, overriding the defaults below::

    gen_ppl: {rel: 0.05}        # candidate may be up to 5 % higher
    entropy: {abs: 0.1}         # may drop by up to 0.1 nats
    tokens_computed_per_sample: exact
    seconds_per_sample: {rel: 0.25}   # gate speed too (default: advisory)
    mauve: off                  # not compared at all
    config_hash: off            # compare points made from different configs
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from harness.metrics.mauve import recorded_degenerate

# metric -> (direction, default tolerance); direction "lower"/"higher" is the better side.
METRICS: dict[str, tuple[str, object]] = {
    "test_ppl": ("lower", {"rel": 0.02}),
    "gen_ppl": ("lower", {"rel": 0.05}),
    "gen_ppl_mean": ("lower", "off"),
    "entropy": ("higher", {"abs": 0.1}),
    "degenerate": ("lower", "off"),
    "mauve": ("higher", "advisory"),  # noisy at small n, and absent without the optional extra
    "nfe": ("lower", "exact"),
    "nfe_per_sample": ("lower", "exact"),
    "tokens_computed_per_sample": ("lower", "exact"),
    "seconds_per_sample": ("lower", "advisory"),
    "tokens_per_second": ("higher", "off"),
}
NOT_COMPARABLE = "not comparable"
STATUS_ORDER = [NOT_COMPARABLE, "REGRESSED", "missing", "improved", "ok"]
PERPLEXITIES = ("test_ppl", "gen_ppl", "gen_ppl_mean")
POSITIVE = ("nfe", "nfe_per_sample", "tokens_computed_per_sample", "seconds_per_sample", "tokens_per_second")
EVALUATOR_METRICS = ("gen_ppl", "gen_ppl_mean", "mauve")  # scored by the evaluator: comparable under one only
CHECKS = ("config_hash",)  # tolerance-file keys that are checks, not metrics: "off" or "check"


class ToleranceError(ValueError):
    pass


@dataclass
class Tolerance:
    kind: str  # "rel", "abs", "exact", "advisory", "off"
    value: float = 0.0

    def describe(self) -> str:
        if self.kind == "rel":
            return f"{self.value:+.0%}" if self.value else "0%"
        if self.kind == "abs":
            return f"±{self.value:g}"
        return self.kind


def parse_tolerance(metric: str, spec, source: str = "tolerances") -> Tolerance:
    if spec is False:  # YAML reads a bare `off` as false
        spec = "off"
    if isinstance(spec, str) and spec in ("exact", "advisory", "off"):
        return Tolerance(spec)
    if isinstance(spec, dict) and len(spec) == 1:
        (kind, value), = spec.items()
        if kind in ("rel", "abs") and isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            return Tolerance(kind, float(value))
    raise ToleranceError(f"{source}: metric '{metric}': tolerance {spec!r} not understood; use {{rel: 0.05}}, "
                         f"{{abs: 0.1}}, exact, advisory or off")


def load_tolerances(path: str | Path | dict | None) -> dict[str, Tolerance]:
    tol = {m: parse_tolerance(m, spec, "defaults") for m, (_, spec) in METRICS.items()}
    tol |= {c: Tolerance("check") for c in CHECKS}
    if path is None:
        return tol
    if isinstance(path, dict):
        data, source = path, "tolerances"
    else:
        source = str(path)
        if not Path(path).is_file():
            raise FileNotFoundError(f"tolerance file {source!r} not found")
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise ToleranceError(f"--tolerances {source!r} is not UTF-8 text; save it as UTF-8 YAML") from None
        except yaml.YAMLError as err:
            raise ToleranceError(f"{source}: not valid YAML: {str(err).splitlines()[0]}") from err
        if not isinstance(data, dict):
            raise ToleranceError(f"{source}: expected a mapping metric -> tolerance")
    for metric, spec in data.items():
        if metric in CHECKS:
            if spec not in (False, "off", "check"):
                raise ToleranceError(f"{source}: '{metric}': {spec!r} not understood; use off or check")
            tol[metric] = Tolerance("off" if spec in (False, "off") else "check")
            continue
        if metric not in METRICS:
            raise ToleranceError(f"{source}: unknown metric {metric!r}; known metrics: {', '.join(METRICS)}")
        tol[metric] = parse_tolerance(metric, spec, source)
    return tol


def _num(v):
    """A finite float, or None (missing, NaN, inf or not a number)."""
    if isinstance(v, bool):
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def invalid(metric: str, value) -> str | None:
    """Why ``value`` cannot be a measurement of ``metric`` (None when it can, or is absent)."""
    if value is None:
        return None
    v = _num(value)
    if v is None:
        return f"{value!r} is not a finite number"
    if metric in PERPLEXITIES and v < 1:
        return f"{v:g} is not a perplexity (a perplexity is at least 1)"
    if metric == "mauve" and not 0 <= v <= 1:
        return f"{v:g} is not a MAUVE score (0 to 1)"
    if metric in POSITIVE and v <= 0:
        return f"{v:g} must be positive"
    if v < 0:
        return f"{v:g} must not be negative"
    return None


@dataclass
class Check:
    """One metric of one point."""

    status: str  # ok, improved, REGRESSED, advisory or NOT_COMPARABLE
    ref: float | None = None
    cand: float | None = None
    text: str = ""  # "900 -> 990 (+90, +10.00%)" or why it cannot be compared

    @property
    def short(self) -> str:
        if self.status == NOT_COMPARABLE or self.cand is None or self.ref is None:
            return self.text
        delta = self.cand - self.ref
        rel = delta / abs(self.ref) if self.ref else 0.0
        return f"{self.cand:.5g}" + (f" ({rel:+.1%})" if delta else "")


def noise_band(metric: str, rm: dict, cm: dict) -> float:
    """How far a Monte-Carlo estimate may move by chance: two standard errors of the
    difference, sqrt(SE_ref² + SE_cand²), when both rows carry ``<metric>_se``; 0 for an exact
    estimate (the same test set gives the same number, so any move is real)."""
    se = (_num(rm.get(f"{metric}_se")), _num(cm.get(f"{metric}_se")))
    if None in se or rm.get(f"{metric}_exact") or cm.get(f"{metric}_exact"):
        return 0.0
    return 2 * math.hypot(*se)


def judge(metric: str, ref, cand, tol: Tolerance, noise: float = 0.0) -> Check:
    """Compare one metric; ``ref`` is a valid reference value (checked by the caller).  A move
    within ``noise`` (:func:`noise_band`) is ok even past the tolerance."""
    direction = METRICS[metric][0]
    r = float(ref)
    why = invalid(metric, cand)
    if why is not None:
        return Check("advisory" if tol.kind == "advisory" else NOT_COMPARABLE, r, None, f"candidate {metric} {why}")
    if cand is None:
        return Check("advisory" if tol.kind == "advisory" else "REGRESSED", r, None, f"{r:.6g} -> missing")
    c = float(cand)
    delta = c - r
    rel = delta / abs(r) if r else (0.0 if delta == 0 else math.inf)
    full = f"{r:.6g} -> {c:.6g}" + (f" ({delta:+.4g}, {rel:+.2%})" if r else f" ({delta:+.4g})")
    worse = delta > 0 if direction == "lower" else delta < 0
    if tol.kind == "advisory":
        return Check("advisory", r, c, full)
    allowed = {"exact": 0.0, "rel": tol.value * abs(r), "abs": tol.value}[tol.kind]
    margin = abs(delta) - allowed - 1e-12 * max(1.0, abs(r))
    if delta == 0 or margin <= 0:
        return Check("ok", r, c, full)
    if abs(delta) <= noise:
        return Check("ok", r, c, f"{full}; within 2 combined SEs ({noise:.4g}): Monte-Carlo noise")
    return Check("REGRESSED" if worse else "improved", r, c, full)


def compare_point(ref: dict, cand: dict, tolerances: dict[str, Tolerance]) -> tuple[dict[str, Check], list[str]]:
    """Per-metric checks of one point present on both sides, and the point-level reasons it
    cannot be compared (a different config)."""
    rm, cm = ref.get("metrics", {}), cand.get("metrics", {})
    checks, reasons = {}, []
    if tolerances.get("config_hash", Tolerance("check")).kind != "off" and ref.get("config_hash") != cand.get(
            "config_hash"):
        reasons.append(f"made from a different config (config hash {ref.get('config_hash')} -> "
                       f"{cand.get('config_hash')}; set config_hash: off in the tolerances to compare anyway)")
    evaluators = (rm.get("evaluator"), cm.get("evaluator"))
    for metric, tol in tolerances.items():
        if metric in CHECKS or tol.kind == "off":
            continue
        opted = "advisory" if tol.kind == "advisory" else NOT_COMPARABLE
        r, c = rm.get(metric), cm.get(metric)
        if r is None and c is None:
            continue  # measured on neither side
        why = invalid(metric, r)
        if r is None or why is not None:
            text = f"reference has no {metric}" if r is None else f"reference {metric} {why}"
            checks[metric] = Check(opted, None, _num(c), text)
        elif metric == "mauve" and (recorded_degenerate(rm) or recorded_degenerate(cm)):
            side, m = ("reference", rm) if recorded_degenerate(rm) else ("candidate", cm)
            checks[metric] = Check(opted, _num(r), _num(c), f"{side} MAUVE is degenerate: {recorded_degenerate(m)}")
        elif metric in EVALUATOR_METRICS and c is not None and evaluators[0] != evaluators[1]:
            checks[metric] = Check(opted, _num(r), _num(c), f"{metric} scored by another evaluator "
                                   f"({evaluators[0]} -> {evaluators[1]})")
        else:
            checks[metric] = judge(metric, r, c, tol, noise_band(metric, rm, cm))
    return checks, reasons


def compare_rows(reference: dict[str, dict], candidate: dict[str, dict], tolerances: dict[str, Tolerance]):
    """Per point: (key, status, {metric: Check}, reasons it cannot be compared)."""
    results = []
    for key, ref in reference.items():
        cand = candidate.get(key)
        if cand is None:
            results.append((key, "missing", {}, ["point not in candidate"]))
            continue
        checks, reasons = compare_point(ref, cand, tolerances)
        statuses = [c.status for c in checks.values()] + [NOT_COMPARABLE] * bool(reasons)
        status = next((s for s in STATUS_ORDER if s in statuses), "ok")
        results.append((key, status, checks, reasons))
    return results


def _cell(check: Check | None) -> str:
    if check is None:
        return ""
    mark = {"REGRESSED": "REGRESSED ", "improved": "improved ", NOT_COMPARABLE: "NOT COMPARABLE: "}
    return mark.get(check.status, "") + check.short


def _metrics_shown(results, tolerances) -> list[str]:
    return [m for m in tolerances if any(m in r[2] for r in results)]


def format_table(results, tolerances: dict[str, Tolerance], new_keys: list[str]) -> str:
    """Every reference point and every compared metric (``--verbose``)."""
    metrics = _metrics_shown(results, tolerances)
    headers = ["point", "status"] + [f"{m} [{tolerances[m].describe()}]" for m in metrics] + ["notes"]
    rows = [[key, status] + [_cell(per.get(m)) for m in metrics] + ["; ".join(reasons)]
            for key, status, per, reasons in results]
    rows += [[key, "new"] + [""] * len(metrics) + ["not in reference (not gated)"] for key in new_keys]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)] if rows else [len(h) for h in headers]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def write_csv(results, tolerances: dict[str, Tolerance], new_keys: list[str], path: str | Path) -> None:
    """One row per (point, metric): the full comparison, numbers unformatted."""
    import csv

    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["point", "point_status", "metric", "status", "reference", "candidate", "tolerance", "detail"])
        for key, status, per, reasons in results:
            for reason in reasons:
                out.writerow([key, status, "", status, "", "", "", reason])
            for metric, check in per.items():
                out.writerow([key, status, metric, check.status, "" if check.ref is None else check.ref,
                              "" if check.cand is None else check.cand, tolerances[metric].describe(), check.text])
        for key in new_keys:
            out.writerow([key, "new", "", "new", "", "", "", "not in reference (not gated)"])


def failing_line(key: str, status: str, per: dict[str, Check], reasons: list[str], tol) -> str | None:
    """One line naming everything that fails at one point, or None when nothing does."""
    if status == "missing":
        return f"missing {key}: point not in candidate"
    parts = list(reasons)
    for metric, check in per.items():
        if check.status == NOT_COMPARABLE:
            parts.append(check.text)  # names the metric
        elif check.status == "REGRESSED":
            prefix = "REGRESSED " if status == NOT_COMPARABLE else ""
            parts.append(f"{prefix}{metric}: {check.text} (tolerance {tol[metric].describe()})")
    if not parts:
        return None
    return f"{'NOT COMPARABLE' if status == NOT_COMPARABLE else status} {key} " + "; ".join(parts)


def compare_files(reference: str | Path, candidate: str | Path, tolerances: str | Path | dict | None = None,
                  out=None, verbose: bool = False, csv_path: str | Path | None = None) -> int:
    """Print one line per failing point and a summary; return 2 when a point cannot be
    compared, 1 on any regression or missing point, else 0."""
    import sys

    from harness.results_store import check_output, check_output_file, latest_rows, read_points

    out = out or sys.stdout
    check_output(csv_path, "--csv", results=(reference, candidate),
                 files=(tolerances,) if isinstance(tolerances, (str, Path)) else ())
    check_output_file(csv_path, "--csv")
    tol = load_tolerances(tolerances)
    ref = latest_rows(read_points(reference, strict=True))
    cand = latest_rows(read_points(candidate, strict=True))
    if not ref:
        raise ValueError(f"reference {str(reference)!r} has no points; nothing to compare against")
    results = compare_rows(ref, cand, tol)
    new_keys = [k for k in cand if k not in ref]
    if verbose:
        print(format_table(results, tol, new_keys) + "\n", file=out)
    if csv_path is not None:
        write_csv(results, tol, new_keys, csv_path)
    for key, status, per, reasons in results:
        line = failing_line(key, status, per, reasons, tol)
        if line:
            print(line, file=out)
    counts = {s: sum(1 for r in results if r[1] == s) for s in STATUS_ORDER}
    print(f"{len(results)} reference points: {counts['ok']} ok, {counts['improved']} improved, "
          f"{counts['REGRESSED']} REGRESSED, {counts['missing']} missing, {counts[NOT_COMPARABLE]} not comparable; "
          f"{len(new_keys)} new in candidate", file=out)
    if counts[NOT_COMPARABLE]:
        print("NOT COMPARABLE: fix the values or configs named above, or opt a metric out in --tolerances "
              "(metric: off)", file=out)
        return 2
    failing = counts["REGRESSED"] + counts["missing"]
    print("FAIL" if failing else "PASS", file=out)
    return 1 if failing else 0
