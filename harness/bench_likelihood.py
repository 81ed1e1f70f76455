"""``esolm bench-likelihood``: what it costs to score a model's own samples (RL with
verifiable rewards needs log p(sample) with gradients for every sample drawn).

For each model and each (length L, batch size): draw one batch with the model's sampler
(recording the log-probabilities it drew with), then time its scorers on that batch:
``sample_log_prob`` (exact log p(tokens | order, steps): Eso-LM (B) and AR in one pass,
MDLM / BD3-LM / Eso-LM (A) in one pass per step) and, where the model offers it, the
cheaper NELBO (``elbo_log_prob``, one draw: a bound on another quantity).  Each scorer is
timed without gradients and as forward + backward (what a policy-gradient step runs).
Weights are random (cost does not depend on them), so nothing is trained.

Rows go to ``<out>/points.jsonl`` as each point finishes (a re-run skips finished points;
a folder made with other settings is refused), then ``<out>/report.md`` is written.
Passes and tokens computed are exact and hardware-independent; seconds are advisory.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.metrics.speed import device_name, median_seconds, threads_text
from harness.models import SpecialTokens, build_model
from harness.nn.transformer import BackboneConfig
from harness.sampling import record_log_probs
from harness.schedules import SamplingSchedule

# name -> (registry model, model options, schedule at length L).  The diffusion models share
# T = L/4; Eso-LM runs pure diffusion (alpha_0 = 1) so that it does MDLM's job.
SETUPS = {
    "ar": ("ar", {}, lambda L: SamplingSchedule()),
    "mdlm": ("mdlm", {}, lambda L: SamplingSchedule(steps=max(1, L // 4))),
    "bd3lm-4": ("bd3lm", {"block_size": 4}, lambda L: SamplingSchedule(first_hitting=True)),
    "esolm-a": ("esolm-a", {"alpha_0": 1.0}, lambda L: SamplingSchedule(steps=max(1, L // 4))),
    "esolm-b": ("esolm-b", {"alpha_0": 1.0}, lambda L: SamplingSchedule(steps=max(1, L // 4))),
}
DTYPES = {"fp32": torch.float32, "fp64": torch.float64}


def scorers(model):
    out = [("exact", model.sample_log_prob)]
    if hasattr(model, "elbo_log_prob"):
        out.append(("elbo(draws=1)", lambda gen: model.elbo_log_prob(gen, draws=1,
                                                                       generator=torch.Generator(model.device).manual_seed(0))))
    return out


def bench_point(setup: str, length: int, batch: int, cfg: dict, device: torch.device) -> list[dict]:
    """Rows (one per scorer) for one model at one (length, batch)."""
    name, options, schedule_at = SETUPS[setup]
    V = cfg["vocab"]
    backbone = BackboneConfig.from_preset(cfg["preset"], vocab_size=V, max_len=length)
    torch.manual_seed(cfg["seed"])
    model = build_model(name, backbone, SpecialTokens(bos=V - 2, eos=V - 2, mask=V - 1), **options)
    model = model.to(device=device, dtype=DTYPES[cfg["dtype"]]).eval()
    schedule = schedule_at(length)
    draw = lambda: model.sample(batch, length, schedule, torch.Generator(device).manual_seed(cfg["seed"]))
    with record_log_probs(batch, device) as recorded:
        gen = draw()
    sample_seconds = median_seconds(draw, device, 1, warmup=0)  # the recorded draw was the warm-up
    base = dict(setup=setup, model=name, schedule=schedule.label(), length=length, batch=batch,
                sample_nfe=gen.nfe, sample_tokens_computed=gen.tokens_computed,
                sample_seconds=sample_seconds)
    rows = []
    for scorer, fn in scorers(model):
        with torch.no_grad():
            result = fn(gen)
            seconds = median_seconds(lambda: fn(gen), device, cfg["repeats"])
        row = dict(base, scorer=scorer, exact=result.exact, passes=result.passes,
                   tokens_computed=result.tokens_computed, seconds=seconds)
        if cfg["backward"]:
            def step():
                model.zero_grad(set_to_none=True)
                fn(gen).log_prob.sum().backward()
            try:
                row["seconds_backward"] = median_seconds(step, device, cfg["repeats"])
            except torch.OutOfMemoryError:  # every pass's graph lives until backward: passes x activations
                model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache() if device.type == "cuda" else None
                row["seconds_backward"], row["note"] = None, "fwd+bwd: out of memory"
        # The exact scorer must reproduce the sampler's own log-probabilities (float tolerance).
        row["max_abs_diff_vs_sampler"] = float((result.log_prob - recorded).abs().max()) if result.exact else None
        rows.append(row)
    return rows


def check_fits(setups: list[str], lengths: list[int], batches: list[int], preset: str, vocab: int, dtype: str,
               device: torch.device) -> None:
    """Every point's sampling batch fits in memory, checked before anything is built: a point
    samples its whole batch in one call, so a size that cannot fit is refused naming its flag
    (it used to take the machine's memory until the kernel killed it)."""
    from harness.memory import HEADROOM, free_bytes, gib, unsplit_batch_cost

    free = free_bytes(device)
    budget = free * HEADROOM
    for setup in setups:
        name, options, schedule_at = SETUPS[setup]
        for length in lengths:
            backbone = BackboneConfig.from_preset(preset, vocab_size=vocab, max_len=length)
            with torch.device("meta"):  # the model's shape and facts, no memory
                shape = build_model(name, backbone, SpecialTokens(bos=vocab - 2, eos=vocab - 2, mask=vocab - 1),
                                    **options)
            schedule = schedule_at(length)
            per_row, once = unsplit_batch_cost(shape, length, schedule.steps, schedule.blocks,
                                               DTYPES[dtype].itemsize)
            if once + per_row > budget:
                raise ValueError(f"--lengths {length}: one {setup} sample needs ~{gib(once + per_row)} but "
                                 f"{gib(free)} is free on {device}; lower --lengths")
            for batch in batches:
                if once + batch * per_row > budget:
                    fit = int((budget - once) // per_row)
                    raise ValueError(f"--batch-sizes {batch}: {batch} {setup} samples at length {length} need "
                                     f"~{gib(once + batch * per_row)} but {gib(free)} is free on {device}; lower "
                                     f"--batch-sizes (up to {fit} rows fit at length {length})")


def resume_bench(out: Path, cfg: dict) -> list[dict]:
    """A benchmark folder's finished rows, so a re-run resumes it: its config.json is written
    on the first run and must equal ``cfg`` after (other settings: one line, another --out)."""
    out.mkdir(parents=True, exist_ok=True)
    config_path, points_path = out / "config.json", out / "points.jsonl"
    if config_path.exists():
        old = json.loads(config_path.read_text())
        if old != cfg:
            changed = sorted(k for k in cfg if old.get(k) != cfg[k])
            raise ValueError(f"--out {out} holds a benchmark with other settings ({', '.join(changed)}); "
                             f"give another --out")
    else:
        config_path.write_text(json.dumps(cfg, indent=1) + "\n")
    return [json.loads(line) for line in points_path.read_text().splitlines()] if points_path.exists() else []


def run_bench(out: str | Path, setups: list[str], lengths: list[int], batches: list[int], preset: str = "tiny",
              vocab: int = 2048, dtype: str = "fp32", repeats: int = 3, backward: bool = True, seed: int = 0,
              device: torch.device | str = "cpu", progress=print) -> Path:
    unknown = sorted(set(setups) - set(SETUPS))
    if unknown:
        raise ValueError(f"--models: unknown {unknown}; choose from {sorted(SETUPS)}")
    if not setups:
        raise ValueError(f"--models names no model; give a comma-separated list from {sorted(SETUPS)}")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype: use one of {sorted(DTYPES)}, got {dtype!r}")
    device = torch.device(device)
    check_fits(setups, lengths, batches, preset, vocab, dtype, device)
    out = Path(out)
    cfg = dict(preset=preset, vocab=vocab, dtype=dtype, repeats=repeats, backward=backward, seed=seed,
               device=device_name(device), torch=torch.__version__, threads=torch.get_num_threads())
    rows = resume_bench(out, cfg)
    points_path = out / "points.jsonl"
    done = {(r["setup"], r["length"], r["batch"]) for r in rows}
    for setup in setups:
        for length in lengths:
            for batch in batches:
                if (setup, length, batch) in done:
                    continue
                new = bench_point(setup, length, batch, cfg, device)
                with points_path.open("a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in new)
                rows += new
                for r in new:
                    progress(f"{setup:8s} L={length:5d} B={batch:3d} {r['scorer']:14s} passes {r['passes']:5d} "
                             f"{r['seconds'] * 1e3:9.1f} ms" + (f"  fwd+bwd {r['seconds_backward'] * 1e3:9.1f} ms"
                                                                 if r.get("seconds_backward") else ""))
    (out / "report.md").write_text(report(rows, cfg))
    return out


def report(rows: list[dict], cfg: dict) -> str:
    """A table per (L, batch) and the headline: Eso-LM (B)'s single pass against MDLM's
    per-step passes and its NELBO."""
    lines = [f"# Scoring a model's own samples: passes and time per batch\n",
             f"Device {cfg['device']}, torch {cfg['torch']}, {threads_text(cfg['threads'])}, {cfg['dtype']}, trunk "
             f"`{cfg['preset']}`, vocabulary {cfg['vocab']}, random weights; seconds are medians of "
             f"{cfg['repeats']} (one warm-up), `fwd+bwd` = scoring plus backward (a policy-gradient step). "
             f"`exact` = log p(tokens | order, steps), equal to the sampler's own log-probabilities "
             f"(max diff column); `elbo(draws=1)` = one-draw NELBO, a bound on the marginal log p(x), not that "
             f"quantity.\n"]
    for length, batch in sorted({(r["length"], r["batch"]) for r in rows}):
        point = [r for r in rows if r["length"] == length and r["batch"] == batch]
        lines += [f"\n## L = {length}, batch {batch}\n",
                  "| model | schedule | scorer | passes | tokens computed | ms | fwd+bwd ms | max diff vs sampler "
                  "| sampler NFE | sampling ms |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in point:
            diff = "" if r["max_abs_diff_vs_sampler"] is None else f"{r['max_abs_diff_vs_sampler']:.1e}"
            bwd = f"{r['seconds_backward'] * 1e3:.1f}" if r.get("seconds_backward") else r.get("note", "")
            lines.append(f"| {r['setup']} | {r['schedule']} | {r['scorer']} | {r['passes']} | {r['tokens_computed']} "
                         f"| {r['seconds'] * 1e3:.1f} | {bwd} | {diff} | {r['sample_nfe']} "
                         f"| {r['sample_seconds'] * 1e3:.1f} |")
        pick = {(r["setup"], r["scorer"]): r for r in point}
        b, m, e = pick.get(("esolm-b", "exact")), pick.get(("mdlm", "exact")), pick.get(("mdlm", "elbo(draws=1)"))
        if b and m:
            text = (f"\nEso-LM (B) exact: {b['passes']} pass, {b['seconds'] * 1e3:.1f} ms; MDLM exact: "
                    f"{m['passes']} passes, {m['seconds'] * 1e3:.1f} ms ({m['seconds'] / b['seconds']:.1f}x)")
            if e:
                text += f"; MDLM one-draw NELBO: {e['passes']} pass, {e['seconds'] * 1e3:.1f} ms (a bound, not exact)"
            lines.append(text + ".")
    return "\n".join(lines) + "\n"
