"""One point: sample, score, time, and the row and sample records it leaves in the results
store (:func:`compute_point`, :func:`save_point`).

compute_point reads as its steps: :func:`prepare` the model and sampler, :func:`draw_samples`
(with the exact counters), :func:`score_samples` (entropy, gen PPL, MAUVE), the test
perplexity, :func:`time_point`, and the row (:func:`harness.results_row.make_row`)."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from harness.memory import sub_batch
from harness.metrics.floors import forward_cost
from harness.metrics.speed import threads_text
from harness.models import REGISTRY
from harness.nn.steps import FALLBACKS, resolve_mode
from harness.results_row import make_row
from harness.results_store import POINTS_FILE, append_row, write_samples
from harness.schedules import SamplingSchedule
from harness.unmasking.probe import COLUMNS as CACHE_ERROR_COLUMNS
from harness.sweep.context import Context, LoadedEntry, git_commit
from harness.sweep.grid import Point
from harness.sweep.identity import point_hash, point_noise, ppl_cache_key
from harness.sweep.schema import ModelEntry, SweepConfig
from harness.sweep.step_modes import fastest_mode, trial_modes


def compute_test_ppl(ctx: Context, entry: ModelEntry, loaded: LoadedEntry, length: int, alpha_0) -> dict:
    from harness.metrics.likelihood import test_perplexity
    from harness.data import load_splits

    key = ppl_cache_key(ctx.cfg, entry, length, alpha_0, ctx.device)
    if key not in ctx.test_ppl_cache:
        spec = ctx.cfg.test_ppl
        data = load_splits(loaded.data, loaded.tokenizer, seq_len=length)[spec.split]
        if spec.max_sequences:
            data = data[: spec.max_sequences]
        kwargs = {}
        if spec.draws != 1:
            kwargs["draws"] = spec.draws
        if alpha_0 is not None:
            kwargs["alpha_0"] = alpha_0
        with ctx.autocast():
            result = test_perplexity(loaded.model, data, spec.batch_size, seed=spec.seed, **kwargs)
        ctx.test_ppl_cache[key] = {"test_ppl": result["ppl"], "test_ppl_se": result["ppl_se"],
                                   "test_ppl_se_kind": result["se_kind"], "test_ppl_estimator": result["estimator"],
                                   "test_ppl_exact": result["exact"], "test_ppl_sequences": result["n_sequences"],
                                   "test_ppl_split": spec.split, "test_ppl_key": key}
    return ctx.test_ppl_cache[key]


def reference_texts(ctx: Context, loaded: LoadedEntry, length: int, n: int) -> list[str]:
    from harness.data import test_texts

    return test_texts(loaded.data, loaded.tokenizer, length, n)


def sample_boundaries(tokens: torch.Tensor, bos: int, eos: int) -> dict:
    """Where samples put BOS and EOS.  Every training row is [BOS] + text + [EOS] (docs/data.md §6
    wrap packing), so a model that learned the format starts with BOS and ends with EOS; AR
    is given its BOS, the diffusion samplers generate position 0, and with rotary positions
    only they can place it (and EOS at L − 1) only relative to tokens already revealed.
    EOS inside a sample marks document boundaries (the data has one every document)."""
    inside = tokens[:, 1:-1] == eos
    return {"bos_first": (tokens[:, 0] == bos).double().mean().item(),
            "eos_last": (tokens[:, -1] == eos).double().mean().item(),
            "eos_inside_per_sample": inside.sum(dim=1).double().mean().item()}


@dataclass
class PointSetup:
    """What the steps of one point share: the entry, its loaded model and sampler, the
    schedule, and the batch shape (a batch over the memory budget runs as sub-batches)."""

    entry: ModelEntry
    loaded: LoadedEntry
    sampler: object
    schedule: SamplingSchedule
    options: dict
    family: str
    is_esolm: bool
    alpha_0: float | None
    batch: int
    num_samples: int
    rows_at_once: int
    trials: dict | None
    fallbacks: int


def prepare(ctx: Context, point: Point) -> PointSetup:
    """Load the entry, set up its sampler, and pick the step mode (timed once per entry,
    length and batch where there is a choice)."""
    cfg = ctx.cfg
    loaded = ctx.load(point.entry)
    model = loaded.model
    sampler = ctx.sampler(loaded)
    sampler.step_mode = None if cfg.step_mode in ("auto", "fastest") else cfg.step_mode
    sampler.max_memory = cfg.max_memory
    model.check_length(point.length)
    schedule = SamplingSchedule(**point.schedule)
    options = model.options() if hasattr(model, "options") else {}
    family = loaded.model_name if loaded.model_name in REGISTRY else "custom"
    is_esolm = family in ("esolm-a", "esolm-b") or "alpha_0" in options
    alpha_0 = (schedule.alpha_0 if schedule.alpha_0 is not None else options.get("alpha_0")) if is_esolm else None
    # A throughput point samples one batch of its own size.
    batch = point.batch_size or cfg.batch_size
    rows_at_once = sub_batch(sampler, batch, point.length)
    same_work = rows_at_once == 1 or not getattr(sampler, "fixed_steps_count_every_row", False)
    candidates, trials = trial_modes(cfg.step_mode, ctx.device, same_work), None
    if candidates:
        shape = (point.entry, point.length, batch)
        if shape in ctx.step_modes:
            sampler.step_mode = ctx.step_modes[shape]
        else:
            trials = fastest_mode(ctx, sampler, point, schedule, batch, rows_at_once, candidates)
            ctx.step_modes[shape] = sampler.step_mode
    return PointSetup(ctx.entry(point.entry), loaded, sampler, schedule, options, family, is_esolm, alpha_0, batch,
                      point.batch_size or cfg.num_samples, rows_at_once, trials, len(FALLBACKS))


def draw_samples(ctx: Context, point: Point, s: PointSetup) -> tuple[torch.Tensor, dict, list[dict]]:
    """The point's samples in batches that fit, from the point's own seed: (tokens, the
    counters per sample, the sampler's own cache-error probes)."""
    noise = point_noise(point, s.schedule, ctx.device)
    rows, nfe_batches, tokens_computed, nfe_rows, extra, key_reads, pairs = [], [], 0, [], {}, 0, 0
    done, probes = 0, []
    while done < s.num_samples:
        n = min(s.rows_at_once, s.num_samples - done)
        with torch.no_grad(), ctx.sampling_autocast():
            gen = s.sampler.sample(n, point.length, s.schedule, noise.batch(done, n))
        rows.append(gen.tokens.cpu())
        nfe_batches.append(int(gen.nfe))
        tokens_computed += int(gen.tokens_computed)
        key_reads += int(gen.key_reads)
        pairs += int(gen.attention_pairs)
        if gen.nfe_per_sample is not None:
            nfe_rows.extend(int(v) for v in torch.as_tensor(gen.nfe_per_sample).reshape(-1).tolist())
        else:
            nfe_rows.extend([int(gen.nfe)] * n)
        if "cache_error_method" in (gen.extra or {}):  # the sampler's own probe (harness.unmasking.probe)
            probes.append({k: gen.extra[k] for k in CACHE_ERROR_COLUMNS})
        for k, v in (gen.extra or {}).items():
            if k.startswith("cache_error_"):
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                extra.setdefault(k, []).append(v)
        done += n
    metrics: dict[str, Any] = {
        "nfe": sum(nfe_batches) / len(nfe_batches),
        "nfe_per_batch": nfe_batches,
        "nfe_per_sample": sum(nfe_rows) / len(nfe_rows),
        "tokens_computed_per_sample": tokens_computed / s.num_samples,
        "key_reads_per_sample": key_reads / s.num_samples,
        "attention_pairs_per_sample": pairs / s.num_samples,
    }
    for k, values in extra.items():
        metrics[f"extra_{k}"] = sum(values) / len(values)
    return torch.cat(rows), metrics, probes


def score_samples(ctx: Context, point: Point, s: PointSetup, tokens: torch.Tensor,
                  texts: list[str]) -> tuple[dict, list[dict]]:
    """Entropy, generative perplexity and MAUVE, as the config asks: (metrics, one record
    per sample with its own scores)."""
    cfg, tok = ctx.cfg, s.loaded.tokenizer
    metrics: dict[str, Any] = {}
    records = [{"i": i, "text": t} for i, t in enumerate(texts)]
    if "entropy" in cfg.metrics:
        from harness.metrics.entropy import sample_entropies

        ent = sample_entropies(tokens, ignore_ids={tok.bos_id, tok.mask_id})
        metrics.update(entropy=ent["entropy_mean"], degenerate=ent["n_degenerate"],
                       degenerate_rule=ent["degenerate_rule"])
        for rec, h in zip(records, ent["entropy_per_sample"]):
            rec["entropy"] = h
    if "gen_ppl" in cfg.metrics:
        scored = ctx.evaluator().score(texts)
        metrics.update(gen_ppl=scored.ppl, gen_ppl_mean=scored.mean_sample_ppl, gen_ppl_tokens=scored.n_tokens,
                       evaluator=scored.evaluator)
        for rec, p in zip(records, scored.sample_ppl):
            rec["gen_ppl"] = p
    if "mauve" in cfg.metrics:
        from harness.metrics.mauve import mauve_score

        n_ref = cfg.mauve.reference_samples or cfg.num_samples
        kwargs = {"num_buckets": cfg.mauve.num_buckets} if cfg.mauve.num_buckets else {}
        result = mauve_score(ctx.evaluator(), texts, reference_texts(ctx, s.loaded, point.length, n_ref), **kwargs)
        metrics.update(mauve=result["mauve"], mauve_note=result.get("reason"), mauve_n=[result["n_p"], result["n_q"]],
                       mauve_degenerate=result.get("degenerate"))
        metrics.setdefault("evaluator", ctx.evaluator().name)
    return metrics, records


def time_point(ctx: Context, point: Point, s: PointSetup) -> dict:
    """Seconds per sample over the config's repeats of one batch (median, with every repeat
    and the machine's load), the sampler alone: the cache-error probe is not timed."""
    from tqdm import tqdm

    from harness.metrics.machine import busy_warning
    from harness.metrics.speed import time_sampling

    untimed_probe = s.schedule.model_copy(update={"measure_cache_error": False})

    def one_batch():
        # The samples' own seed: the timed runs take the shapes the sampling pass took, so
        # the CUDA graphs they replay were captured before the clock started.
        noise = point_noise(point, s.schedule, ctx.device)
        with torch.no_grad(), ctx.sampling_autocast():
            for lo in range(0, s.batch, s.rows_at_once):
                n = min(s.rows_at_once, s.batch - lo)
                s.sampler.sample(n, point.length, untimed_probe, noise.batch(lo, n))

    sp = time_sampling(one_batch, warmup=ctx.cfg.speed.warmup, repeats=ctx.cfg.speed.repeats, device=ctx.device,
                       dtype=ctx.dtype, batch_size=s.batch, length=point.length)
    metrics = {}
    if ctx.device.type == "cuda":
        metrics["graph_fallbacks"] = len(FALLBACKS) - s.fallbacks  # step shapes run eagerly, not as graphs
    metrics.update(seconds_per_sample=sp["seconds_per_sample"], tokens_per_second=sp["tokens_per_second"],
                   seconds_per_batch=sp["seconds_median"], seconds_all=sp["seconds_all"],
                   gpu_peak_memory_bytes=sp["peak_memory_bytes"], gpu_energy_per_sample_joules=sp["energy_per_sample_joules"],
                   gpu_mean_power_watts=sp["mean_power_watts"], telemetry_note=sp.get("telemetry_reason"),
                   **{k: sp[k] for k in ("load_average_1min", "cpu_seconds", "other_cores", "machine_busy")})
    warning = busy_warning(sp, f"point {point.key}")
    if warning:
        tqdm.write(warning, file=sys.stderr)
    return metrics


def compute_point(ctx: Context, point: Point) -> tuple[dict, list[dict]]:
    """Run one point: sample, score, time. Returns (row, sample records)."""
    s = prepare(ctx, point)
    tokens, metrics, probes = draw_samples(ctx, point, s)
    tok = s.loaded.tokenizer
    texts = [tok.decode(row[1:].tolist() if int(row[0]) == tok.bos_id else row.tolist()) for row in tokens]
    metrics.update(sample_boundaries(tokens, tok.bos_id, tok.eos_id))
    metrics.update(cache_error(ctx, s.sampler, point, s.schedule, min(s.rows_at_once, s.num_samples), probes))
    if s.trials is not None:
        metrics["step_mode_trials"] = s.trials  # seconds per batch of each mode tried; the fastest ran
    scores, records = score_samples(ctx, point, s, tokens, texts)
    metrics.update(scores)
    if "test_ppl" in ctx.cfg.metrics:
        metrics.update(compute_test_ppl(ctx, s.entry, s.loaded, point.length, s.alpha_0))
    if "speed" in ctx.cfg.metrics:
        metrics.update(time_point(ctx, point, s))
    return point_row(ctx, point, s, metrics), records


def point_row(ctx: Context, point: Point, s: PointSetup, metrics: dict) -> dict:
    """The point's row (harness/results_row.py lists and explains every field)."""
    cfg, entry, loaded = ctx.cfg, s.entry, s.loaded
    return make_row(
        sweep=cfg.name, key=point.key, config_hash=point_hash(cfg, entry, point, ctx.device),
        model_entry=entry.name, family=s.family, model=loaded.model_name, model_options=s.options,
        init=entry.init if entry.train is not None else "checkpoint", checkpoint=loaded.checkpoint,
        parameters=loaded.meta.get("parameters"), **forward_cost(s.sampler), train_step=loaded.meta.get("step"),
        schedule=point.label, schedule_group=point.group, schedule_fields=point.schedule,
        alpha_0=s.alpha_0, alpha_0_train=s.options.get("alpha_0"),
        diffusion_split=s.schedule.diffusion_split() if s.is_esolm else None,
        data_protocol=loaded.data.protocol, data_framing=loaded.data.row_framing,
        length=point.length, seed=point.seed, num_samples=s.num_samples, batch_size=s.batch,
        sub_batch=s.rows_at_once, batch_grid=point.batch_size is not None, max_memory=cfg.max_memory,
        metrics=metrics, device=str(ctx.device), device_name=_device_name(ctx.device), dtype=ctx.dtype,
        step_mode=resolve_mode(s.sampler.step_mode, ctx.device), run_id=ctx.run_id,
        git_commit=ctx.commit if ctx.commit is not None else git_commit(), torch=torch.__version__,
        python=platform.python_version(), timestamp=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def cache_error(ctx: Context, sampler, point: Point, schedule: SamplingSchedule, n: int, probes: list[dict]) -> dict:
    """The cache-exactness columns (None unless the schedule asks): the sampler's own probe
    where it has one, else one batch of n sampled twice, cached and uncached, with the
    point's seed (harness.unmasking.probe.twin_run)."""
    from harness.unmasking.probe import merge, twin_run

    if not schedule.measure_cache_error:
        return dict.fromkeys(CACHE_ERROR_COLUMNS)
    if probes:
        return merge(probes)

    def run(use_cache: bool):
        noise = point_noise(point, schedule, ctx.device)
        with torch.no_grad(), ctx.sampling_autocast():
            sampler.sample(n, point.length, schedule, noise.batch(0, n), use_cache=use_cache)

    return twin_run(run, getattr(getattr(sampler, "special", None), "mask", None))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU ({threads_text(torch.get_num_threads())})"


def save_point(results_dir: Path, cfg: SweepConfig, row: dict, records: list[dict]) -> None:
    """Samples first, then the row: a row in points.jsonl always has its samples file."""
    write_samples(results_dir, row["key"], records if cfg.save_samples is None else records[: cfg.save_samples])
    append_row(results_dir / POINTS_FILE, row)
