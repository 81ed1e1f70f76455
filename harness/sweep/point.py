"""One point: sample, score, time, and the row and sample records it leaves in the results
store (:func:`compute_point`, :func:`save_point`)."""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from harness.memory import sub_batch
from harness.metrics.floors import forward_cost
from harness.metrics.speed import threads_text
from harness.models import REGISTRY
from harness.nn.steps import FALLBACKS, exact_modes, resolve_mode
from harness.results_store import POINTS_FILE, append_row, write_samples
from harness.schedules import SamplingSchedule
from harness.unmasking.probe import COLUMNS as CACHE_ERROR_COLUMNS
from harness.sweep.context import Context, LoadedEntry, git_commit
from harness.sweep.grid import Point
from harness.sweep.identity import point_hash, point_seed, ppl_cache_key
from harness.sweep.schema import ModelEntry, SweepConfig


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


def compute_point(ctx: Context, point: Point) -> tuple[dict, list[dict]]:
    """Run one point: sample, score, time. Returns (row, sample records)."""
    cfg = ctx.cfg
    entry = ctx.entry(point.entry)
    loaded = ctx.load(point.entry)
    model, tok = loaded.model, loaded.tokenizer
    sampler = ctx.sampler(loaded)
    sampler.step_mode = None if cfg.step_mode in ("auto", "fastest") else cfg.step_mode
    sampler.max_memory = cfg.max_memory
    fallbacks = len(FALLBACKS)
    model.check_length(point.length)
    schedule = SamplingSchedule(**point.schedule)
    options = model.options() if hasattr(model, "options") else {}
    model_name = loaded.model_name
    family = model_name if model_name in REGISTRY else "custom"
    is_esolm = family in ("esolm-a", "esolm-b") or "alpha_0" in options
    alpha_0 = (schedule.alpha_0 if schedule.alpha_0 is not None else options.get("alpha_0")) if is_esolm else None

    # --- samples ---------------------------------------------------------------------
    # A throughput point samples one batch of its own size; a batch whose KV cache does not
    # fit the memory budget runs as consecutive sub-batches (harness.memory).
    batch = point.batch_size or cfg.batch_size
    num_samples = point.batch_size or cfg.num_samples
    rows_at_once = sub_batch(sampler, batch, point.length)
    same_work = rows_at_once == 1 or not getattr(sampler, "fixed_steps_count_every_row", False)
    candidates, trials = trial_modes(cfg.step_mode, ctx.device, same_work), None
    if candidates:  # timed at the first point of each (entry, length, batch), then reused
        shape = (point.entry, point.length, batch)
        if shape in ctx.step_modes:
            sampler.step_mode = ctx.step_modes[shape]
        else:
            trials = fastest_mode(ctx, sampler, point, schedule, batch, rows_at_once, candidates)
            ctx.step_modes[shape] = sampler.step_mode
    generator = torch.Generator(device=ctx.device).manual_seed(point_seed(point.seed, point.key))
    rows, nfe_batches, tokens_computed, nfe_rows, extra, key_reads, pairs = [], [], 0, [], {}, 0, 0
    done, probes = 0, []
    while done < num_samples:
        n = min(rows_at_once, num_samples - done)
        with torch.no_grad(), ctx.sampling_autocast():
            gen = sampler.sample(n, point.length, schedule, generator)
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
    tokens = torch.cat(rows)
    texts = [tok.decode(row[1:].tolist() if int(row[0]) == tok.bos_id else row.tolist()) for row in tokens]

    metrics: dict[str, Any] = {
        "nfe": sum(nfe_batches) / len(nfe_batches),
        "nfe_per_batch": nfe_batches,
        "nfe_per_sample": sum(nfe_rows) / len(nfe_rows),
        "tokens_computed_per_sample": tokens_computed / num_samples,
        "key_reads_per_sample": key_reads / num_samples,
        "attention_pairs_per_sample": pairs / num_samples,
    }
    metrics.update(sample_boundaries(tokens, tok.bos_id, tok.eos_id))
    metrics.update(cache_error(ctx, sampler, point, schedule, min(rows_at_once, num_samples), probes))
    if trials is not None:
        metrics["step_mode_trials"] = trials  # seconds per batch of each mode tried; the fastest ran
    for k, values in extra.items():
        metrics[f"extra_{k}"] = sum(values) / len(values)
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
        result = mauve_score(ctx.evaluator(), texts, reference_texts(ctx, loaded, point.length, n_ref), **kwargs)
        metrics.update(mauve=result["mauve"], mauve_note=result.get("reason"), mauve_n=[result["n_p"], result["n_q"]],
                       mauve_degenerate=result.get("degenerate"))
        metrics.setdefault("evaluator", ctx.evaluator().name)
    if "test_ppl" in cfg.metrics:
        metrics.update(compute_test_ppl(ctx, entry, loaded, point.length, alpha_0 if is_esolm else None))
    if "speed" in cfg.metrics:
        from tqdm import tqdm

        from harness.metrics.machine import busy_warning
        from harness.metrics.speed import time_sampling

        untimed_probe = schedule.model_copy(update={"measure_cache_error": False})  # time the sampler alone

        def one_batch():
            # The samples' own seed: the timed runs take the shapes the sampling pass took, so
            # the CUDA graphs they replay were captured before the clock started.
            timing_gen = torch.Generator(device=ctx.device).manual_seed(point_seed(point.seed, point.key))
            with torch.no_grad(), ctx.sampling_autocast():
                for lo in range(0, batch, rows_at_once):
                    sampler.sample(min(rows_at_once, batch - lo), point.length, untimed_probe, timing_gen)

        sp = time_sampling(one_batch, warmup=cfg.speed.warmup, repeats=cfg.speed.repeats, device=ctx.device,
                           dtype=ctx.dtype, batch_size=batch, length=point.length)
        if ctx.device.type == "cuda":
            metrics["graph_fallbacks"] = len(FALLBACKS) - fallbacks  # step shapes run eagerly, not as graphs
        metrics.update(seconds_per_sample=sp["seconds_per_sample"], tokens_per_second=sp["tokens_per_second"],
                       seconds_per_batch=sp["seconds_median"], seconds_all=sp["seconds_all"],
                       gpu_peak_memory_bytes=sp["peak_memory_bytes"], gpu_energy_per_sample_joules=sp["energy_per_sample_joules"],
                       gpu_mean_power_watts=sp["mean_power_watts"], telemetry_note=sp.get("telemetry_reason"),
                       **{k: sp[k] for k in ("load_average_1min", "cpu_seconds", "other_cores", "machine_busy")})
        warning = busy_warning(sp, f"point {point.key}")
        if warning:
            tqdm.write(warning, file=sys.stderr)

    row = {
        "sweep": cfg.name,
        "key": point.key,
        "config_hash": point_hash(cfg, entry, point, ctx.device),
        "model_entry": entry.name,
        "family": family,
        "model": model_name,
        "model_options": options,
        "init": entry.init if entry.train is not None else "checkpoint",
        "checkpoint": loaded.checkpoint,
        "parameters": loaded.meta.get("parameters"),
        **forward_cost(sampler),
        "train_step": loaded.meta.get("step"),
        "schedule": point.label,
        "schedule_group": point.group,
        "schedule_fields": point.schedule,
        "alpha_0": alpha_0,
        "alpha_0_train": options.get("alpha_0"),
        "diffusion_split": schedule.diffusion_split() if is_esolm else None,  # absent in older rows: "fixed"
        "data_protocol": loaded.data.protocol,  # absent in older rows: "documents"
        "data_framing": loaded.data.row_framing,  # absent in older rows: "bos_eos" ([BOS] ... [EOS] rows)
        "length": point.length,
        "seed": point.seed,
        "num_samples": num_samples,
        "batch_size": batch,
        "sub_batch": rows_at_once,
        "batch_grid": point.batch_size is not None,  # timed at the config's batch_sizes (throughput)
        "max_memory": cfg.max_memory,
        "metrics": metrics,
        "device": str(ctx.device),
        "device_name": _device_name(ctx.device),
        "dtype": ctx.dtype,
        "step_mode": resolve_mode(sampler.step_mode, ctx.device),
        "run_id": ctx.run_id,
        "git_commit": ctx.commit if ctx.commit is not None else git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return row, records


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
        generator = torch.Generator(device=ctx.device).manual_seed(point_seed(point.seed, point.key))
        with torch.no_grad(), ctx.sampling_autocast():
            sampler.sample(n, point.length, schedule, generator, use_cache=use_cache)

    return twin_run(run, getattr(getattr(sampler, "special", None), "mask", None))


def trial_modes(step_mode: str, device: torch.device, same_work: bool = True) -> tuple[str, ...]:
    """The step modes a sweep times (at the first point of each entry, length and batch) before
    it runs the fastest (none: run the one set).
    ``fastest``: every mode this device runs; ``auto``: those giving the eager tokens exactly
    (harness.nn.steps.exact_modes), unless $ESOLM_STEP_MODE names one, and only where they
    also count the same work (``same_work``: not MDLM/BD3-LM at a batch above 1, whose
    fixed-shape steps count every row), so NFE and tokens computed never hang on a timing."""
    if step_mode == "fastest":
        return ("graph", "dynamic", "compiled") if device.type == "cuda" else ("dynamic", "static", "compiled")
    if step_mode == "auto" and same_work and not os.environ.get("ESOLM_STEP_MODE") and len(exact_modes(device)) > 1:
        return exact_modes(device)
    return ()


def fastest_mode(ctx: Context, sampler, point: Point, schedule: SamplingSchedule, batch: int, rows: int,
                 modes: tuple[str, ...]) -> dict:
    """One batch in each of ``modes`` (after one untimed batch that captures or compiles what
    the mode needs), then the fastest is left set on the sampler.  Returns {mode: seconds per
    batch, or the error that ruled it out}."""
    import time

    from harness.metrics.speed import synchronize

    trials: dict = {}
    for mode in modes:
        sampler.step_mode = mode
        try:
            for _ in range(2):  # the first run captures or compiles; the second is timed
                gen = torch.Generator(device=ctx.device).manual_seed(point_seed(point.seed, point.key))
                synchronize(ctx.device)
                t0 = time.perf_counter()
                with torch.no_grad(), ctx.sampling_autocast():
                    for lo in range(0, batch, rows):
                        sampler.sample(min(rows, batch - lo), point.length, schedule, gen)
                synchronize(ctx.device)
            trials[mode] = time.perf_counter() - t0
        except Exception as err:  # a mode this machine cannot run (e.g. no compiler): not a candidate
            trials[mode] = f"failed: {str(err).splitlines()[0][:200]}"
    timed = {m: t for m, t in trials.items() if isinstance(t, float)}
    if not timed:
        raise RuntimeError(f"step modes {list(modes)}: every one failed at {point.key}: {trials}")
    sampler.step_mode = min(timed, key=timed.get)
    return trials


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU ({threads_text(torch.get_num_threads())})"


def save_point(results_dir: Path, cfg: SweepConfig, row: dict, records: list[dict]) -> None:
    """Samples first, then the row: a row in points.jsonl always has its samples file."""
    write_samples(results_dir, row["key"], records if cfg.save_samples is None else records[: cfg.save_samples])
    append_row(results_dir / POINTS_FILE, row)
