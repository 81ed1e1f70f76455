"""CI gate: ``esolm compare REFERENCE CANDIDATE [--tolerances FILE]``.

Both arguments are a ``points.jsonl`` or a results folder holding one.  Points are matched
by key (newest row per key).  Each gated metric of each reference point is checked:

- ``REGRESSED``: worse than the reference by more than its tolerance, or missing/null in
  the candidate while the reference has it;
- ``improved``: better by more than the tolerance;
- ``ok``: within tolerance;
- ``missing``: the whole point is absent from the candidate.

Exit code 1 on any REGRESSED or missing point, else 0.  Speed is *advisory* by default
(shown, never failing: shared CI runners are noisy); the exact work counters (NFE, tokens
computed) are gated exactly, so the speed story is still checked where time is not.

Tolerance file (YAML), one entry per metric, overriding the defaults below::

    gen_ppl: {rel: 0.05}        # candidate may be up to 5 % higher
    entropy: {abs: 0.1}         # may drop by up to 0.1 nats
    tokens_computed_per_sample: exact
    seconds_per_sample: {rel: 0.25}   # gate speed too (default: advisory)
    mauve: off                  # not compared at all
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

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
STATUS_ORDER = ["REGRESSED", "missing", "improved", "ok"]


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
    if path is None:
        return tol
    if isinstance(path, dict):
        data, source = path, "tolerances"
    else:
        source = str(path)
        if not Path(path).is_file():
            raise FileNotFoundError(f"tolerance file {source!r} not found")
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as err:
            raise ToleranceError(f"{source}: not valid YAML: {str(err).splitlines()[0]}") from err
        if not isinstance(data, dict):
            raise ToleranceError(f"{source}: expected a mapping metric -> tolerance")
    for metric, spec in data.items():
        if metric not in METRICS:
            raise ToleranceError(f"{source}: unknown metric {metric!r}; known metrics: {', '.join(METRICS)}")
        tol[metric] = parse_tolerance(metric, spec, source)
    return tol


def _num(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def judge(metric: str, ref, cand, tol: Tolerance) -> tuple[str, str, str]:
    """(status, short cell text, full text) of one metric; status ok/improved/REGRESSED/advisory."""
    direction = METRICS[metric][0]
    r, c = _num(ref), _num(cand)
    if c is None:
        return ("advisory" if tol.kind == "advisory" else "REGRESSED"), "missing", f"{r:.6g} -> missing"
    delta = c - r
    rel = delta / abs(r) if r else (0.0 if delta == 0 else math.inf)
    full = f"{r:.6g} -> {c:.6g}" + (f" ({delta:+.4g}, {rel:+.2%})" if r else f" ({delta:+.4g})")
    short = f"{c:.5g}" + (f" ({rel:+.1%})" if delta else "")
    text = (short, full)
    worse = delta > 0 if direction == "lower" else delta < 0
    if tol.kind == "advisory":
        return ("advisory", *text)
    if tol.kind == "exact":
        allowed = 0.0
    elif tol.kind == "rel":
        allowed = tol.value * abs(r)
    else:
        allowed = tol.value
    margin = abs(delta) - allowed - 1e-12 * max(1.0, abs(r))
    if delta == 0 or margin <= 0:
        return ("ok", *text)
    return ("REGRESSED" if worse else "improved", *text)


def compare_rows(reference: dict[str, dict], candidate: dict[str, dict], tolerances: dict[str, Tolerance]):
    """Per point: (key, status, {metric: (status, text)}, notes)."""
    results = []
    for key, ref in reference.items():
        cand = candidate.get(key)
        if cand is None:
            results.append((key, "missing", {}, ["point not in candidate"]))
            continue
        per_metric, notes = {}, []
        rm, cm = ref.get("metrics", {}), cand.get("metrics", {})
        for metric, tol in tolerances.items():
            if tol.kind == "off" or rm.get(metric) is None:
                continue
            if _num(rm.get(metric)) is None:  # NaN, inf or not a number: say so, never gate silently off
                notes.append(f"reference {metric} {rm.get(metric)!r} unusable; not gated")
                continue
            per_metric[metric] = judge(metric, rm.get(metric), cm.get(metric), tol)
        if ref.get("config_hash") != cand.get("config_hash"):
            notes.append("config hash differs")
        if "gen_ppl" in per_metric and rm.get("evaluator") != cm.get("evaluator"):
            notes.append(f"gen_ppl evaluator differs: {rm.get('evaluator')} -> {cm.get('evaluator')}")
        statuses = [v[0] for v in per_metric.values() if v[0] != "advisory"]
        status = next((s for s in STATUS_ORDER if s in statuses), "ok")
        results.append((key, status, per_metric, notes))
    return results


def _cell(result) -> str:
    if result is None:
        return ""
    status, short, _ = result
    mark = {"REGRESSED": "REGRESSED ", "improved": "improved ", "ok": "", "advisory": ""}[status]
    return f"{mark}{short}"


def format_table(results, tolerances: dict[str, Tolerance], new_keys: list[str]) -> str:
    metrics = [m for m in tolerances if any(m in r[2] for r in results)]
    headers = ["point", "status"] + [f"{m} [{tolerances[m].describe()}]" for m in metrics] + ["notes"]
    rows = [[key, status] + [_cell(per.get(m)) for m in metrics] + ["; ".join(notes)]
            for key, status, per, notes in results]
    rows += [[key, "new"] + [""] * len(metrics) + ["not in reference (not gated)"] for key in new_keys]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)] if rows else [len(h) for h in headers]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def compare_files(reference: str | Path, candidate: str | Path, tolerances: str | Path | dict | None = None,
                  out=None) -> int:
    """Print the comparison table; return 1 on any regression or missing point, else 0."""
    import sys

    from harness.results_store import latest_rows, read_points

    out = out or sys.stdout
    tol = load_tolerances(tolerances)
    ref = latest_rows(read_points(reference, strict=True))
    cand = latest_rows(read_points(candidate, strict=True))
    if not ref:
        raise ValueError(f"reference {str(reference)!r} has no points; nothing to compare against")
    results = compare_rows(ref, cand, tol)
    new_keys = [k for k in cand if k not in ref]
    print(format_table(results, tol, new_keys), file=out)
    counts = {s: sum(1 for r in results if r[1] == s) for s in STATUS_ORDER}
    failing = counts["REGRESSED"] + counts["missing"]
    print(f"\n{len(results)} reference points: {counts['ok']} ok, {counts['improved']} improved, "
          f"{counts['REGRESSED']} REGRESSED, {counts['missing']} missing; {len(new_keys)} new in candidate", file=out)
    for key, status, per, _ in results:
        for metric, (s, _, full) in per.items():
            if s == "REGRESSED":
                print(f"REGRESSED {key} {metric}: {full} (tolerance {tol[metric].describe()})", file=out)
    print("FAIL" if failing else "PASS", file=out)
    return 1 if failing else 0
