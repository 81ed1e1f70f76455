"""The Eso-LM paper's own timings beside the rows measured under the same protocol
(docs/floors.md §5).

The paper (Sahoo, Yang et al., arXiv 2506.01928v4) times two protocols on two GPUs:

- latency, Table 11 (A6000): batch 1, nucleus off, about one token per forward for every
  method (AR; MDLM and BD3-LM with first hitting; Eso-LM (B) sampled at alpha_0 = 1 with
  T = 10^6, whose empty steps run no forward), L = 2048 and 8192, seconds per sample;
- throughput, Tables 13–15 (H200): batch 512, L = 1024, nucleus 0.9, seconds per batch of 512
  with the NFE per sample the paper reports.  BD3-LM's T counts steps over the whole
  sequence, so a row's T is its steps per block × L / L'.

A row is joined to at most one figure by a key made from the row alone: family, BD3-LM block
size, sampled alpha_0 (Eso-LM), schedule, length, batch size and top_p, and the paper's trunk
(12 layers × 768, read from the row's attention FLOPs per query-key pair).  A schedule field
that changes the sampler (a decoder, a cache, a fixed Eso-LM split, cache-error probes) leaves
the row with no key, so no figure: the report prints "–" there, never a nearest figure.

A ratio of ours compares rows of one run only (same ``run_id``, as in
:mod:`harness.report.throughput`).  Its paper counterpart is the ratio of the two figures.
The paper's tables list points, not pairs; the throughput pairs here are each MDLM and BD3-LM
figure against the Eso-LM (B) figure with the same T where the paper has one, else (and among
several) the one with the nearest NFE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.report.frame import finite
from harness.report.tables import fmt, md_table

PAPER = "Sahoo, Yang et al., Esoteric Language Models, arXiv 2506.01928v4"
LATENCY, THROUGHPUT = "latency", "throughput"
PAPER_TRUNK_PAIR_FLOPS = 4 * 768 * 12  # 4 · d_model · n_layers of the paper's 12 × 768 trunk
ONE_PER_FORWARD, FIRST_HITTING = "one token per forward", "first hitting"
# schedule fields that leave the sampler's work as the paper's: given_bos reveals one position
# fewer (BD3-LM's reference sampler starts from BOS), row_noise only seeds the draws
NEUTRAL_FIELDS = {"given_bos", "row_noise"}
KEY_FIELDS = {"steps", "alpha_0", "first_hitting", "top_p"}


@dataclass(frozen=True)
class Timing:
    """One timing of the paper and the protocol it was measured under."""

    table: str
    protocol: str  # LATENCY or THROUGHPUT
    method: str  # the paper's label
    family: str
    length: int
    batch: int
    gpu: str
    seconds: float  # per sample (latency) or per batch (throughput)
    schedule: str  # ONE_PER_FORWARD, FIRST_HITTING or "T = <steps over the sequence>"
    top_p: float
    nfe: int | None = None  # None: not given (latency: NFE ≈ L)
    block_size: int | None = None
    alpha_0: float | None = None

    @property
    def key(self) -> tuple:
        return key_of(self.family, self.block_size, self.alpha_0, self.schedule, self.length, self.batch, self.top_p)

    @property
    def steps(self) -> int | None:
        return int(self.schedule.split("=")[1]) if self.schedule.startswith("T =") else None


def key_of(family, block_size, alpha_0, schedule, length, batch, top_p) -> tuple:
    """The join key: figures and rows both build theirs here, so they compare exactly."""
    return (family, None if block_size is None else int(block_size),
            None if alpha_0 is None else round(float(alpha_0), 6), schedule, int(length), int(batch),
            round(float(top_p), 6))


def _lat(method, family, seconds_2048, seconds_8192, schedule, block_size=None, alpha_0=None):
    return tuple(Timing("11", LATENCY, method, family, L, 1, "A6000", s, schedule, 1.0, None, block_size, alpha_0)
                 for L, s in ((2048, seconds_2048), (8192, seconds_8192)))


def _thr(method, family, nfe, seconds, steps, block_size=None, alpha_0=None):
    return Timing("13–15", THROUGHPUT, method, family, 1024, 512, "H200", seconds, f"T = {steps}", 0.9, nfe,
                  block_size, alpha_0)


TIMINGS = (
    *_lat("AR", "ar", 13.3, 54.0, ONE_PER_FORWARD),
    *_lat("MDLM", "mdlm", 201.3, 5438.3, FIRST_HITTING),
    *_lat("BD3-LM L' = 4", "bd3lm", 24.3, 312.0, FIRST_HITTING, block_size=4),
    *_lat("BD3-LM L' = 16", "bd3lm", 21.3, 268.1, FIRST_HITTING, block_size=16),
    *_lat("Eso-LM (B)", "esolm-b", 14.6, 82.1, "T = 1000000", alpha_0=1.0),
    _thr("MDLM T = 128", "mdlm", 128, 106.96, 128),
    _thr("MDLM T = 1024", "mdlm", 657, 566.19, 1024),
    _thr("MDLM T = 4096", "mdlm", 907, 752.06, 4096),
    _thr("BD3-LM L' = 4, T = 4096", "bd3lm", 1180, 60.32, 4096, block_size=4),
    _thr("BD3-LM L' = 16, T = 4096", "bd3lm", 984, 58.82, 4096, block_size=16),
    _thr("Eso-LM (B) α0 = 1, T = 16", "esolm-b", 16, 2.97, 16, alpha_0=1.0),
    _thr("Eso-LM (B) α0 = 1, T = 128", "esolm-b", 128, 6.40, 128, alpha_0=1.0),
    _thr("Eso-LM (B) α0 = 1, T = 1024", "esolm-b", 646, 24.19, 1024, alpha_0=1.0),
    # the paper lists this point for training alpha_0 = 1 and 0.125 with the same time; speed
    # does not depend on the weights, so it is one figure here
    _thr("Eso-LM (B) α0 = 0.0625, T = 1024", "esolm-b", 1022, 36.99, 1024, alpha_0=0.0625),
)
GPUS = {LATENCY: "A6000", THROUGHPUT: "H200"}
SHAPES = {LATENCY: {(2048, 1), (8192, 1)}, THROUGHPUT: {(1024, 512)}}  # (L, batch) of each protocol


def _by_method(protocol: str, length: int, method: str) -> Timing:
    return next(t for t in TIMINGS if t.protocol == protocol and t.length == length and t.method == method)


def _throughput_pairs() -> list[tuple[Timing, Timing]]:
    eso = [t for t in TIMINGS if t.protocol == THROUGHPUT and t.family == "esolm-b"]
    pairs = []
    for t in TIMINGS:
        if t.protocol == THROUGHPUT and t.family in ("mdlm", "bd3lm"):
            same_t = [e for e in eso if e.steps == t.steps] or eso
            pairs.append((t, min(same_t, key=lambda e: abs(e.nfe - t.nfe))))
    return pairs


# (numerator, denominator): how many times slower the numerator is
PAIRS = tuple([pair for L in (2048, 8192) for pair in
               [(_by_method(LATENCY, L, m), _by_method(LATENCY, L, "Eso-LM (B)"))
                for m in ("MDLM", "BD3-LM L' = 4", "BD3-LM L' = 16")]
               + [(_by_method(LATENCY, L, "Eso-LM (B)"), _by_method(LATENCY, L, "AR"))]]
              + _throughput_pairs())


def row_key(row) -> tuple | None:
    """The row's join key, or None where the row cannot be the paper's protocol (another
    trunk, or a schedule field that changes the sampler)."""
    flops = row.get("attention_flops_per_pair")
    if not finite(flops) or int(float(flops)) != PAPER_TRUNK_PAIR_FLOPS:
        return None
    fields = row.get("schedule_fields") if isinstance(row.get("schedule_fields"), dict) else {}
    # split: 'binomial' is Eso-LM's default with steps, the paper's draw
    if set(fields) - KEY_FIELDS - NEUTRAL_FIELDS - {"split"} or fields.get("split", "binomial") != "binomial":
        return None
    family, length, batch = row.get("family"), row.get("length"), row.get("batch_size")
    if not (isinstance(family, str) and finite(length) and finite(batch)):
        return None
    length = int(length)
    options = row.get("model_options") if isinstance(row.get("model_options"), dict) else {}
    block = options.get("block_size") if family == "bd3lm" else None
    if family == "bd3lm" and not finite(block):
        return None
    alpha_0 = row.get("alpha_0") if family in ("esolm-a", "esolm-b") else None
    if family in ("esolm-a", "esolm-b") and not finite(alpha_0):
        return None
    steps, first = fields.get("steps"), bool(fields.get("first_hitting"))
    if first and steps is None:
        schedule = FIRST_HITTING
    elif steps is not None and not first:
        total = int(steps) * length / int(block) if family == "bd3lm" else int(steps)  # BD3-LM: steps per block
        if total != int(total):
            return None
        schedule = f"T = {int(total)}"
    elif family == "ar" and steps is None and not first:
        schedule = ONE_PER_FORWARD
    else:
        return None
    return key_of(family, block, alpha_0, schedule, length, batch, fields.get("top_p", 1.0))


def find_timing(row) -> Timing | None:
    """The paper's timing measured under this row's protocol, or None."""
    key = row_key(row)
    return next((t for t in TIMINGS if key is not None and t.key == key), None)


def _seconds(r, protocol: str) -> float:
    if protocol == LATENCY:
        return float(r["seconds_per_sample"]) if finite(r.get("seconds_per_sample")) else math.nan
    if finite(r.get("seconds_per_batch")):
        return float(r["seconds_per_batch"])
    per_sample = r.get("seconds_per_sample")
    return float(per_sample) * float(r["batch_size"]) if finite(per_sample) else math.nan


def _run(r) -> str | None:
    run = r.get("run_id")
    return run if isinstance(run, str) and run else None


def timed_points(df) -> list[dict]:
    """Per (run, model entry, schedule, L, batch) at a protocol's L and batch: seconds (per
    sample for latency, per batch for throughput) and NFE averaged over seeds, the figure or
    None, the device."""
    points: dict[tuple, dict] = {}
    for r in df.to_dict("records"):
        if not (finite(r.get("length")) and finite(r.get("batch_size"))):
            continue
        shape = (int(r["length"]), int(r["batch_size"]))
        protocol = next((p for p, shapes in SHAPES.items() if shape in shapes), None)
        seconds = _seconds(r, protocol) if protocol else math.nan
        if not finite(seconds):
            continue
        key = (_run(r), r["model_entry"], r["schedule"], *shape)
        p = points.setdefault(key, {"run_id": _run(r), "entry": r["model_entry"], "family": r["family"],
                                    "schedule": r["schedule"], "length": shape[0], "batch": shape[1],
                                    "protocol": protocol, "timing": find_timing(r), "seconds_all": [], "nfe_all": [],
                                    "batch_nfe_all": [], "device": r.get("device_name") or r.get("device") or "?",
                                    "dtype": r.get("dtype")})
        p["seconds_all"].append(seconds)
        for col, into in (("nfe_per_sample", "nfe_all"), ("nfe", "batch_nfe_all")):
            if finite(r.get(col)):
                p[into].append(float(r[col]))
    out = list(points.values())
    for p in out:
        p["seconds"] = sum(p["seconds_all"]) / len(p["seconds_all"])
        p["nfe"] = sum(p["nfe_all"]) / len(p["nfe_all"]) if p["nfe_all"] else None
        p["batch_nfe"] = sum(p["batch_nfe_all"]) / len(p["batch_nfe_all"]) if p["batch_nfe_all"] else None
        p["seeds"] = len(p["seconds_all"])
    return out


def ratio_rows(points: list[dict]) -> list[dict]:
    """Every paper pair of a protocol with a matched point: the paper's ratio and ours from
    each run holding both points (one line per run; none measured in one run: ours None)."""
    protocols = {p["protocol"] for p in points if p["timing"]}
    out = []
    for num, den in PAIRS:
        if num.protocol not in protocols:
            continue
        runs = []
        for a in (p for p in points if p["timing"] == num and p["run_id"]):
            for b in (p for p in points if p["timing"] == den and p["run_id"] == a["run_id"]):
                runs.append((a, b))
        base = {"num": num, "den": den, "paper": num.seconds / den.seconds}
        if not runs:
            out.append({**base, "ours": None, "a": None, "b": None, "run_id": None})
        for a, b in runs:
            out.append({**base, "ours": a["seconds"] / b["seconds"] if b["seconds"] > 0 else None, "a": a, "b": b,
                        "run_id": a["run_id"]})
    return out


def ratio_text(v) -> str:
    """'13.8×', '1.10×', '0.186×'; '–' where not measured."""
    if not finite(v):
        return "–"
    return f"{v:.1f}×" if v >= 10 else f"{v:.2f}×" if v >= 1 else f"{v:.3g}×"


def _device(p: dict) -> str:
    return f"{p['device']}, {p['dtype']}" if isinstance(p.get("dtype"), str) else str(p["device"])


def _nfe(p: dict) -> str:
    """Ours per sample, with forwards per batch where they differ (MDLM rows that reveal nothing
    at a step skip it on their own)."""
    if p["nfe"] is None:
        return "–"
    text = fmt(p["nfe"], 0)
    if p["batch_nfe"] is not None and p["batch"] > 1 and round(p["batch_nfe"]) != round(p["nfe"]):
        text += f" ({fmt(p['batch_nfe'], 0)} per batch)"
    return text


def points_table(points: list[dict], protocol: str) -> str:
    unit = "s/sample" if protocol == LATENCY else "s/batch"
    rows = []
    for p in sorted(points, key=lambda p: (p["length"], p["timing"] is None)):
        t = p["timing"]
        rows.append([p["length"], p["entry"], p["schedule"], t.method if t else "–", _nfe(p),
                     (fmt(float(t.nfe), 0) if t.nfe is not None else "≈ L") if t else "–", fmt(p["seconds"], 3),
                     fmt(t.seconds, 2) if t else "–", ratio_text(p["seconds"] / t.seconds) if t else "–",
                     _device(p), p["run_id"] or "–"])
    return md_table(["L", "model entry", "schedule", "paper method", "NFE ours", "NFE paper", f"{unit} ours",
                     f"{unit} paper ({GPUS[protocol]})", "ours / paper", "our GPU", "run"], rows,
                    ["r", "l", "l", "l", "r", "r", "r", "r", "r", "l", "l"])


def _pair_name(num: Timing, den: Timing) -> str:
    return f"{num.method} / {den.method}"


def ratios_table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        a, b = r["a"], r["b"]
        points = f"{a['entry']} ({a['schedule']}) / {b['entry']} ({b['schedule']})" if a else "–"
        out.append([r["num"].protocol, r["num"].length, _pair_name(r["num"], r["den"]),
                    f"{ratio_text(r['paper'])} ({r['num'].gpu})", ratio_text(r["ours"]), points,
                    _device(a) if a else "–", r["run_id"] or "–"])
    return md_table(["protocol", "L", "ratio (slower / faster)", "paper (GPU)", "ours", "our points", "our GPU", "run"],
                    out, ["l", "r", "l", "r", "r", "l", "l", "l"])


def paper_speed_section(df) -> list[str]:
    """report.md lines of "Against the paper's timings"; none unless a row has a figure."""
    points = timed_points(df)
    if not any(p["timing"] for p in points):
        return []
    md = ["## Against the paper's timings", "",
          f"The Eso-LM paper's own timings ({PAPER}) beside the points measured under the same protocol: the paper "
          "timed latency on an A6000 and throughput on an H200; ours ran on the GPU each row names, so ours / paper "
          "mixes machines, while the ratios between samplers compare like with like. A point matches a figure only "
          "by its family, BD3-LM block size, sampled alpha_0, schedule (BD3-LM's T = steps per block × L / L'), "
          "length, batch size, top_p and the paper's 12 × 768 trunk (docs/floors.md §5); – = no paper "
          "counterpart. NFE ours: forwards per sample.", ""]
    for protocol, title in ((LATENCY, "Latency (Table 11: batch 1, nucleus off, about one token per forward, A6000; "
                                      "seconds per sample)"),
                            (THROUGHPUT, "Throughput (Tables 13–15: batch 512, L = 1024, nucleus 0.9, H200; seconds "
                                         "per batch of 512)")):
        these = [p for p in points if p["protocol"] == protocol]
        if any(p["timing"] for p in these):
            md += [f"### {title}", "", points_table(these, protocol), ""]
    rows = ratio_rows(points)
    if rows:
        md += ["### Ratios: the paper's and ours", "",
               "How many times slower the first sampler is. The paper's ratio divides its two figures; ours divides "
               "the two points of one run (same run id: one machine and commit), – where no run measured both (rows "
               "without a run id, written before the field, give none). "
               "Throughput pairs: each MDLM and BD3-LM figure against the Eso-LM (B) figure with the same T where "
               "the paper has one, else the one with the nearest NFE.", "", ratios_table(rows), ""]
    return md
