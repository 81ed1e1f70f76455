"""``esolm bench-estimators``: every likelihood estimator × model × length × batch, judged on
cost, spread, bias and gradient (docs/likelihood.md §5).

For each model (a harness checkpoint, or ``random:<model>`` weights on a preset trunk) and each
(L, batch): draw one batch of the model's own samples (BOS given), then for every estimator
and every seed run estimate + backward of Σ estimate, recording
- forwards and tokens computed (exact, hardware-independent);
- seconds per sample with backward (advisory);
- peak memory with backward: CUDA's allocator peak, or on a CPU the resident-set peak above
  the level before the call (sampled every millisecond); and the bytes of tensors the graph
  saved for backward (exact, hardware-independent), per backward chunk;
- the estimate, and ∇θ of its sum.
Against two references: the sample's own exact log p(y | order, steps) and the order-marginal
log p(y), estimated by IW over ``reference_orders`` orders (docs/likelihood.md §3).  A row
reports the SD of its estimate over seeds (mean over samples), its bias (mean over seeds and
samples of estimate − reference) and the cosine of its gradient to each reference's.

Rows go to ``<out>/points.jsonl`` as each point finishes (a re-run skips finished points and
may add models, lengths and batch sizes; a folder made with other settings is refused), then
``report.md`` and ``pareto.png``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import torch

from harness.bench_likelihood import resume_bench
from harness.likelihood import backward, estimate
from harness.likelihood.denoisers import family, order_generation
from harness.metrics.speed import device_name, synchronize, threads_text
from harness.schedules import SamplingSchedule

# name -> estimator, its options, the chunk of a streamed backward (None: one graph)
ESTIMATOR_SETUPS = {
    "exact": ("exact", {}, None),
    "exact-streamed": ("exact", {}, 1),
    "trajectory-2": ("trajectory", {"shrink": 2}, None),
    "mean_field": ("mean_field", {}, None),
    "elbo_mc-1": ("elbo_mc", {"draws": 1}, None),
    "elbo_mc-4": ("elbo_mc", {"draws": 4}, None),
    "elbo_mc-4-streamed": ("elbo_mc", {"draws": 4}, 1),
    "coupled-1": ("coupled", {"pairs": 1}, None),
    "eubo-4": ("eubo", {"draws": 4, "beta": 1.5}, None),
    "iw-1": ("iw", {"orders": 1}, None),
    "iw-16": ("iw", {"orders": 16}, None),
}


class PeakRSS:
    """The process's resident-set peak above its level at entry, sampled every millisecond
    from /proc (a CPU stand-in for CUDA's allocator peak; None where /proc is missing)."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _rss(self):
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            return None

    def _watch(self):
        while not self._stop.wait(0.001):
            rss = self._rss()
            if rss is not None and rss > self.peak:
                self.peak = rss

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.bytes = None if self.base is None else self.peak - self.base


class SavedBytes:
    """Bytes of the activations autograd saves for backward (each storage once; the model's
    own weights, saved by every matmul, are not counted), the peak over the backward chunks:
    call :meth:`reset` after each chunk's backward."""

    def __init__(self, model):
        self.weights = {(p.untyped_storage().data_ptr(), p.device) for p in model.parameters()}
        self.seen, self.now, self.peak = set(self.weights), 0, 0

    def pack(self, t):
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in self.seen:
            self.seen.add(key)
            self.now += t.untyped_storage().nbytes()
            self.peak = max(self.peak, self.now)
        return t

    def reset(self):
        self.seen, self.now = set(self.weights), 0

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


def flat_grad(model) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().double()
                      for p in model.parameters()])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def reference(model, gen, orders: int, chunk: int, seed: int):
    """(marginal value (n,), its gradient, own exact value (n,), its gradient).  The marginal:
    IW over ``orders`` orders, its gradient Σ_k softmax_k ∇ log p(y | order_k) run as a
    weighted, pass-streamed backward over chunks of orders (any K fits in memory)."""
    model.zero_grad(set_to_none=True)
    own = backward(model, gen, "exact", torch.ones(gen.tokens.shape[0]), chunk=1)
    own_grad = flat_grad(model)
    if family(model) == "ar":
        return own.log_prob, own_grad, own.log_prob, own_grad
    x, n = gen.tokens, gen.tokens.shape[0]
    given = gen.step < 0
    kept = getattr(model, "kept_clean", None)
    if kept is not None and kept(x) is not None:
        given = given | kept(x)
    g = torch.Generator(x.device).manual_seed(seed)
    trajectories, values = [], []
    with torch.no_grad():
        for start in range(0, orders, chunk):
            c = min(chunk, orders - start)
            synthetic = order_generation(model, x.repeat(c, 1), given.repeat(c, 1), g)
            trajectories.append(synthetic)
            values.append(estimate(model, synthetic, "exact").log_prob.view(c, n))
    logp = torch.cat(values)
    marginal = torch.logsumexp(logp, 0) - torch.log(torch.tensor(float(orders), dtype=logp.dtype))
    weights = torch.softmax(logp, 0)  # (K, n): each order's share of p(y)
    model.zero_grad(set_to_none=True)
    for i, synthetic in enumerate(trajectories):
        w = weights[i * chunk: i * chunk + synthetic.tokens.shape[0] // n]
        backward(model, synthetic, "exact", w.reshape(-1), chunk=1)
    return marginal, flat_grad(model), own.log_prob, own_grad


def run_estimator(model, gen, name: str, seed: int, device) -> dict:
    """One estimate + backward: its value, gradient, seconds, counters and memory."""
    estimator, options, chunk = ESTIMATOR_SETUPS[name]
    saved = SavedBytes(model)
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    synchronize(device)
    start = time.perf_counter()
    with PeakRSS() as rss, saved.hooks():
        weights = torch.ones(gen.tokens.shape[0])
        if chunk is None:
            est = estimate(model, gen, estimator, generator=torch.Generator(device).manual_seed(seed), **options)
            est.log_prob.sum().backward()
        else:  # the graph's bytes per chunk: counted afresh after each chunk's backward
            est = backward(model, gen, estimator, weights, chunk=chunk, on_chunk=saved.reset,
                           generator=torch.Generator(device).manual_seed(seed), **options)
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) - base) if device.type == "cuda" else rss.bytes
    return dict(value=est.log_prob.detach().double().cpu(), grad=flat_grad(model), seconds=seconds,
                forwards=est.forwards, tokens=est.tokens_computed, kind=est.kind, label=est.estimator,
                peak_bytes=peak, saved_bytes=saved.peak)


def bench_point(model, entry: str, length: int, batch: int, cfg: dict, device) -> list[dict]:
    """Rows (one per applicable estimator) for one model at one (length, batch)."""
    schedule = schedule_for(model, length, cfg["steps_fraction"])
    gen = model.sample(batch, length, schedule, torch.Generator(device).manual_seed(cfg["seed"]))
    marginal, marginal_grad, own, own_grad = reference(model, gen, cfg["reference_orders"], cfg["reference_chunk"],
                                                       cfg["seed"] + 1)
    marginal, own = marginal.detach().double().cpu(), own.detach().double().cpu()
    base = dict(entry=entry, model=model.name, length=length, batch=batch, schedule=schedule.label(),
                sample_nfe=gen.nfe, reference_orders=cfg["reference_orders"],
                reference_log_p=float(marginal.mean()), exact_log_p=float(own.mean()))
    rows = []
    for name in cfg["estimators"]:
        estimator = ESTIMATOR_SETUPS[name][0]
        if family(model) == "ar" and estimator != "exact":
            continue  # AR: exact only (its one causal forward is exact)
        if family(model) == "esolm" and model.alpha_0 < 1 and estimator in ("coupled", "eubo"):
            continue  # refused: their masks do not cover the sequential term
        try:
            runs = [run_estimator(model, gen, name, seed, device) for seed in range(cfg["seeds"])]
        except torch.OutOfMemoryError:  # every pass's graph held at once: the row says so
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache() if device.type == "cuda" else None
            rows.append(dict(base, estimator=name, note="fwd+bwd: out of memory"))
            continue
        values = torch.stack([r["value"] for r in runs])  # (seeds, batch)
        sd = values.std(0, unbiased=True).mean().item() if len(runs) > 1 else float("nan")
        first = runs[0]
        row = dict(base, estimator=name, label=first["label"], kind=first["kind"], forwards=first["forwards"],
                   tokens_computed=first["tokens"],
                   seconds_per_sample=sorted(r["seconds"] for r in runs)[len(runs) // 2] / batch,
                   peak_bytes=max((r["peak_bytes"] or 0) for r in runs), saved_bytes=first["saved_bytes"],
                   mean_log_p=float(values.mean()), sd=sd,
                   bias_vs_marginal=float((values - marginal).mean()),
                   cos_vs_marginal=sum(cosine(r["grad"], marginal_grad) for r in runs) / len(runs),
                   bias_vs_exact=float((values - own).mean()),
                   cos_vs_exact=sum(cosine(r["grad"], own_grad) for r in runs) / len(runs))
        rows.append(row)
    return rows


def schedule_for(model, length: int, fraction: float) -> SamplingSchedule:
    """The model's sampler with BOS given: T = fraction·L steps for MDLM and Eso-LM (at its
    training alpha_0), first hitting for BD3-LM, left to right for AR."""
    kind = family(model)
    if kind == "ar":
        return SamplingSchedule(given_bos=True)
    if kind == "bd3lm":
        return SamplingSchedule(first_hitting=True, given_bos=True)
    return SamplingSchedule(steps=max(1, round(fraction * length)), given_bos=True)


RANDOM = {"ar": {}, "mdlm": {}, "bd3lm": {"block_size": 4}, "esolm-a": {"alpha_0": 1.0}, "esolm-b": {"alpha_0": 1.0}}


def load_entry(entry: str, max_length: int, device, preset: str = "tiny", vocab: int = 64):
    """A harness checkpoint folder, or ``random:<model>``: random weights on the ``preset``
    trunk (cost and memory mean the same; the references say little)."""
    if entry.startswith("random:"):
        from harness.models import SpecialTokens, build_model
        from harness.nn.transformer import BackboneConfig

        name = entry[len("random:"):]
        if name not in RANDOM:
            raise ValueError(f"--models {entry}: choose random:<{'|'.join(RANDOM)}> or a checkpoint folder")
        torch.manual_seed(0)
        cfg = BackboneConfig.from_preset(preset, vocab_size=vocab, max_len=max_length)
        return build_model(name, cfg, SpecialTokens(bos=vocab - 2, eos=vocab - 2, mask=vocab - 1),
                           **RANDOM[name]).to(device).eval()
    from harness.checkpoints.own_format import load_checkpoint

    return load_checkpoint(entry, device=device).model.eval()


def run_bench(out: str | Path, entries: list[str], lengths: list[int], batches: list[int],
              estimators: list[str] | None = None, seeds: int = 4, reference_orders: int = 1000,
              reference_chunk: int = 125, steps_fraction: float = 0.25, seed: int = 0, preset: str = "tiny",
              vocab: int = 64, device: torch.device | str = "cpu", progress=print) -> Path:
    estimators = list(ESTIMATOR_SETUPS) if estimators is None else estimators
    unknown = sorted(set(estimators) - set(ESTIMATOR_SETUPS))
    if unknown:
        raise ValueError(f"--estimators: unknown {unknown}; choose from {', '.join(ESTIMATOR_SETUPS)}")
    if not entries:
        raise ValueError("--models names no model; give checkpoint folders or random:<model>, comma-separated")
    if seeds < 2:
        raise ValueError(f"--seeds must be >= 2 (the SD over seeds needs two), got {seeds}")
    if reference_orders < 1 or reference_chunk < 1:
        raise ValueError("--reference-orders and --reference-chunk must be >= 1")
    if any(e.startswith("random:") for e in entries) and not all(2 <= L <= 16384 for L in lengths):
        raise ValueError(f"--lengths {lengths}: random models are built for 2 <= L <= 16384")
    if not 0 < steps_fraction <= 1:
        raise ValueError(f"--steps-fraction must be in (0, 1], got {steps_fraction}")
    device = torch.device(device)
    out = Path(out)
    cfg = dict(estimators=estimators, seeds=seeds, reference_orders=reference_orders,
               reference_chunk=reference_chunk, steps_fraction=steps_fraction, seed=seed, preset=preset, vocab=vocab,
               device=device_name(device), torch=torch.__version__, threads=torch.get_num_threads())
    rows = resume_bench(out, cfg)
    points_path = out / "points.jsonl"
    done = {(r["entry"], r["length"], r["batch"]) for r in rows}
    for entry in entries:
        model = None
        for length in lengths:
            for batch in batches:
                if (entry, length, batch) in done:
                    continue
                model = model or load_entry(entry, max(lengths), device, preset, vocab)
                model.check_length(length)
                check_fits(model, length, batch, reference_chunk, device)
                new = bench_point(model, entry, length, batch, cfg, device)
                with points_path.open("a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in new)
                rows += new
                for r in new:
                    if "note" in r:
                        progress(f"{entry:28s} L={length:4d} B={batch:3d} {r['estimator']:20s} {r['note']}")
                        continue
                    progress(f"{entry:28s} L={length:4d} B={batch:3d} {r['estimator']:20s} fwd {r['forwards']:5d} "
                             f"{r['seconds_per_sample'] * 1e3:8.1f} ms/sample  sd {r['sd']:7.3f}  "
                             f"bias {r['bias_vs_marginal']:+8.3f}  cos {r['cos_vs_marginal']:+.3f}")
    (out / "report.md").write_text(report(rows, cfg))
    pareto_plot(rows, out / "pareto.png")
    return out


def check_fits(model, length: int, batch: int, chunk: int, device) -> None:
    """The largest forward (the reference's chunk of orders: chunk × batch rows of 2L
    positions, float64 logits) fits in free memory, or one line naming the flags to lower."""
    from harness.memory import HEADROOM, free_bytes, gib

    rows = batch * max(chunk, 1)
    need = rows * 2 * length * (model.backbone_config.vocab_size * 8 * 3 + model.backbone_config.d_model * 4 * 24)
    free = free_bytes(device)
    if need > free * HEADROOM:
        raise ValueError(f"--batch-sizes {batch} x --reference-chunk {chunk} at length {length} needs ~{gib(need)} "
                         f"per forward but {gib(free)} is free on {device}; lower --batch-sizes or --reference-chunk")


def mib(n) -> str:
    return "" if n is None else f"{n / 2**20:.1f}"


def report(rows: list[dict], cfg: dict) -> str:
    lines = ["# Likelihood estimators: cost, spread, bias and gradient\n",
             f"Device {cfg['device']}, torch {cfg['torch']}, {threads_text(cfg['threads'])}; {cfg['seeds']} seeds per "
             f"estimator; marginal reference: IW over {cfg['reference_orders']} orders (docs/likelihood.md §3); own "
             f"reference: the sample's exact log p(y | order, steps).  `sd`: SD of the estimate over seeds (mean over "
             f"samples, nats); `bias`: mean of estimate − reference (nats per sample); `cos`: cosine of ∇θ Σ estimate to "
             f"the reference's gradient (mean over seeds); `graph MiB`: bytes saved for backward (largest chunk); "
             f"`peak MiB`: {'CUDA allocator' if 'cuda' in cfg['device'].lower() else 'resident-set'} peak with "
             f"backward.  Seconds are advisory.\n"]
    for key in sorted({(r["entry"], r["length"], r["batch"]) for r in rows}):
        point = [r for r in rows if (r["entry"], r["length"], r["batch"]) == key]
        p0 = point[0]
        lines += [f"\n## {key[0]}, L = {key[1]}, batch {key[2]} ({p0['schedule']})\n",
                  f"Reference log p(y) per sample: marginal {p0['reference_log_p']:.2f}, exact (own order and steps) "
                  f"{p0['exact_log_p']:.2f}.\n",
                  "| estimator | kind | forwards | tokens | ms/sample fwd+bwd | graph MiB | peak MiB | mean | sd "
                  "| bias vs marginal | cos vs marginal | bias vs exact | cos vs exact |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in point:
            if "note" in r:
                lines.append(f"| {r['estimator']} | {r['note']} |" + " |" * 11)
                continue
            lines.append(f"| {r['estimator']} | {r['kind']} | {r['forwards']} | {r['tokens_computed']} | "
                         f"{r['seconds_per_sample'] * 1e3:.1f} | {mib(r['saved_bytes'])} | {mib(r['peak_bytes'])} | "
                         f"{r['mean_log_p']:.2f} | {r['sd']:.3f} | {r['bias_vs_marginal']:+.2f} | "
                         f"{r['cos_vs_marginal']:.3f} | {r['bias_vs_exact']:+.2f} | {r['cos_vs_exact']:.3f} |")
    lines.append("\n`pareto.png`: tokens computed with backward against the gradient's cosine to the marginal "
                 "reference, one colour per estimator (circles: the shortest L, squares: longer), one panel per "
                 "model.\n")
    return "\n".join(lines)


def pareto_plot(rows: list[dict], path: Path) -> None:
    """Cost (tokens computed, log scale) against gradient agreement with the marginal
    reference: the estimators up and to the left are the better trade."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = sorted({r["entry"] for r in rows if "note" not in r})
    if not entries:
        return
    from matplotlib.ticker import NullFormatter

    shortest = min(r["length"] for r in rows)
    cols = min(4, len(entries))
    nrows = -(-len(entries) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.6 * nrows + 0.8), squeeze=False)
    names = list(ESTIMATOR_SETUPS)
    cmap = plt.get_cmap("tab20")
    handles = {}
    for ax, entry in zip(axes.flat, entries):
        for r in (r for r in rows if r["entry"] == entry and "note" not in r):
            marker = "o" if r["length"] == shortest else "s"
            handles[r["estimator"]] = ax.scatter(r["tokens_computed"] / r["batch"], r["cos_vs_marginal"],
                                                 color=cmap(names.index(r["estimator"]) % 20), marker=marker)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(entry if entry.startswith("random:") else Path(entry).name, fontsize=9)
        ax.set_xlabel("tokens computed per sample (forward)", fontsize=8)
        ax.set_ylabel("cos(∇ estimate, ∇ IW reference)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(entries):]:
        ax.axis("off")
    order = [n for n in names if n in handles]
    fig.legend([handles[n] for n in order], order, fontsize=8, loc="lower center", ncol=min(6, len(order)))
    fig.tight_layout(rect=(0, 0.8 / (3.6 * nrows + 0.8) + 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
