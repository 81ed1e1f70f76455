"""pytest-benchmark: every sampler at batch 8 on a 4-layer, 256-wide trunk against its floor
on this machine (the throughput regime on a CPU).

    pytest benchmarks/test_bench_throughput.py --benchmark-enable -s      # prints the table

Per sampler and step mode it records (``extra_info``):
- ``floor_s``: seconds per batch no implementation could beat here — max(weights and KV
  slots read / copy rate, (2 × matmul weights × tokens computed + 4 · d_model · layers ×
  attention pairs) / matmul rate), with this machine's ceilings measured once at the
  trunk's shapes (harness.metrics.ceilings) and printed;
- ``x_floor`` = measured / floor (target: ≤ 1.5);
- ``x_forwards``: the sampler's time over that of its forwards alone — the very trunk
  forwards the plain eager sampler ran (same tokens, positions, masks and cache lengths),
  replayed back to back with nothing in between (target: ≤ 1.2, i.e. no more than 20 %
  spent outside the network: sampling, gathers, cache bookkeeping, mask building, step
  overhead; fused or padded modes can go below 1);
- ``per_token_vs_full``: seconds per token computed over those of one full-length forward
  of the whole batch (how far a sampler's windows are from the best-amortised forward);
- in the eager mode, ``time_shares``: where one profiled run's time goes (the trunk's
  matmuls, attention, GELU and layer norms, the draws, and everything else: small kernels,
  copies and dispatch), and ``kernels_x_floor``: the trunk's matmul, attention, GELU and
  norm kernels alone over the floor — what this machine's kernels leave for the rest;
- the exact work counters.
The targets are reported (``meets_targets``), and asserted only with ESOLM_FLOOR_TARGETS=1:
wall-clock on a shared machine is advisory (the project has no timed tests).
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
import torch
from torch.profiler import ProfilerActivity, profile, record_function

import baselines.ar
import harness.sampling

from harness.metrics.ceilings import measure_ceilings
from harness.metrics.speed import median_seconds
from harness.models import SpecialTokens, build_model
from harness.nn.transformer import BackboneConfig, KVCache
from harness.report.speed import floor_seconds
from harness.schedules import SamplingSchedule
from harness.metrics.floors import forward_cost

CPU = torch.device("cpu")
VOCAB = 2049
SPECIAL = SpecialTokens(bos=VOCAB - 2, eos=VOCAB - 2, mask=VOCAB - 1)
BATCH, LENGTH = 8, 256
TRUNK = dict(n_layers=4, d_model=256, n_heads=4)
CASES = {  # id -> (model, options, schedule)
    "ar": ("ar", {}, SamplingSchedule(top_p=0.9)),
    "mdlm-T8": ("mdlm", {}, SamplingSchedule(steps=8, top_p=0.9)),
    "bd3lm-4-fh": ("bd3lm", {"block_size": 4}, SamplingSchedule(first_hitting=True, top_p=0.9)),
    "esolm-b-a1-T8": ("esolm-b", {"alpha_0": 1.0}, SamplingSchedule(alpha_0=1.0, steps=8, top_p=0.9)),
    "esolm-b-a1-TL": ("esolm-b", {"alpha_0": 1.0}, SamplingSchedule(alpha_0=1.0, steps=LENGTH, top_p=0.9)),
}


def recorded_forwards(model, sample) -> list[tuple]:
    """Run ``sample`` in the plain eager mode, recording every trunk forward it makes: the
    arguments, and the length of the cache it wrote to at that moment."""
    calls, forward = [], model.net.forward

    def record(tokens, positions, mask, cache=None, commit=0):
        calls.append((tokens.clone(), positions.clone(), mask, cache, None if cache is None else cache.length, commit))
        return forward(tokens, positions, mask, cache, commit)

    model.step_mode, model.net.forward = "dynamic", record
    try:
        sample()
    finally:
        del model.net.forward
    return calls


def replay_forwards(net, calls) -> None:
    """The recorded forwards back to back, each cache (or row view of one: keyed by its first
    tensor's address) standing in by a fresh one of its shape."""
    caches = {}
    for tokens, positions, mask, cache, length, commit in calls:
        replayed = None
        if cache is not None:
            key = (cache.k[0].data_ptr(), tuple(cache.k[0].shape))
            if key not in caches:
                caches[key] = KVCache(net.cfg, cache.k[0].shape[0], cache.capacity, tokens.device, cache.k[0].dtype)
            replayed = caches[key]
            replayed.length = length
        net(tokens, positions, mask, replayed, commit)


KERNELS = {"aten::mm": "matmul", "aten::addmm": "matmul", "aten::bmm": "matmul",
           "aten::_scaled_dot_product_flash_attention_for_cpu": "attention",
           "aten::_scaled_dot_product_attention_math": "attention",
           "aten::gelu": "gelu", "aten::native_layer_norm": "norm"}


def time_shares(sample, monkeypatch) -> dict:
    """Seconds of one profiled run by where they go: each op's own time, filed under "draw"
    when it runs inside a draw (the Drawer's, or AR's sample_tokens), else under its kernel
    class (KERNELS) or "other".  The profiler adds a little to every op, most to small ones."""
    def labelled(draw):
        def run(*args, **kwargs):
            with record_function("draw"):
                return draw(*args, **kwargs)
        return run

    monkeypatch.setattr(harness.sampling.Drawer, "_flush", labelled(harness.sampling.Drawer._flush))
    monkeypatch.setattr(baselines.ar, "sample_tokens", labelled(baselines.ar.sample_tokens))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        sample()
    monkeypatch.undo()
    seconds = Counter()
    for event in prof.events():
        parent = event
        while parent is not None and parent.name != "draw":
            parent = parent.cpu_parent
        seconds["draw" if parent is not None else KERNELS.get(event.name, "other")] += event.self_cpu_time_total / 1e6
    return dict(seconds)


@pytest.fixture(scope="module")
def ceilings():
    measured = measure_ceilings(TRUNK["d_model"], VOCAB, tokens=BATCH * LENGTH, repeats=20)
    print(f"\nceilings: {measured['matmul_flops'] / 1e9:.1f} GFLOP/s matmul, "
          f"{measured['copy_bytes_per_s'] / 1e9:.2f} GB/s copy")
    return measured


@pytest.mark.parametrize("mode", ["dynamic", "static", "compiled"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_sampler_against_its_floor(benchmark, ceilings, case, mode, monkeypatch):
    name, options, schedule = CASES[case]
    torch.manual_seed(0)
    cfg = BackboneConfig(vocab_size=VOCAB, max_len=LENGTH, **TRUNK)
    model = build_model(name, cfg, SPECIAL, **options).eval()
    model.step_mode = mode

    def sample():
        with torch.no_grad():
            return model.sample(BATCH, LENGTH, schedule, torch.Generator().manual_seed(0))

    with torch.no_grad():
        calls = recorded_forwards(model, sample)
        forwards = median_seconds(lambda: replay_forwards(model.net, calls), CPU)
    model.step_mode = mode
    gen = benchmark.pedantic(sample, rounds=3, iterations=1, warmup_rounds=1)
    seconds = (benchmark.stats.stats.median if not benchmark.disabled else median_seconds(sample, CPU, 1))
    tokens = torch.zeros(BATCH, LENGTH, dtype=torch.long)
    with torch.no_grad():
        full = median_seconds(lambda: model.net(tokens, torch.arange(LENGTH), None), CPU)
    cost = forward_cost(model)
    floor = floor_seconds(gen.nfe, gen.tokens_computed / BATCH, BATCH, cost["weight_bytes"],
                          cost["matmul_parameters"], ceilings["matmul_flops"], ceilings["copy_bytes_per_s"],
                          gen.key_reads / BATCH * cost["kv_bytes_per_key"],
                          gen.attention_pairs / BATCH * cost["attention_flops_per_pair"])
    x_floor = seconds / BATCH / floor
    per_token = (seconds / gen.tokens_computed) / (full / (BATCH * LENGTH))
    x_forwards = seconds / forwards
    info = dict(model=name, schedule=schedule.label(), step_mode=mode, batch=BATCH, length=LENGTH, nfe=gen.nfe,
                tokens_computed=gen.tokens_computed, seconds_per_batch=seconds, floor_s=floor, x_floor=x_floor,
                forwards_s=forwards, x_forwards=x_forwards, n_forwards=len(calls),
                full_forward_s=full, per_token_vs_full=per_token, matmul_flops=ceilings["matmul_flops"],
                copy_bytes_per_s=ceilings["copy_bytes_per_s"], meets_targets=x_floor <= 1.5 and x_forwards <= 1.2)
    shares = ""
    if mode == "dynamic":
        spent = time_shares(sample, monkeypatch)
        total = sum(spent.values())
        kernels = sum(spent.get(k, 0.0) for k in ("matmul", "attention", "gelu", "norm"))
        info.update(time_shares={k: v / total for k, v in sorted(spent.items())}, kernels_x_floor=kernels / BATCH / floor)
        shares = ("\n    time shares: " + ", ".join(f"{k} {v:.0%}" for k, v in info["time_shares"].items())
                  + f"; trunk kernels alone {info['kernels_x_floor']:.2f}x floor")
    benchmark.extra_info.update(info)
    print(f"\n{case:15s} {mode:8s} {seconds:8.3f} s/batch  floor {floor * BATCH:8.3f} s  x floor {x_floor:5.2f}  "
          f"forwards alone {forwards:7.3f} s  x forwards {x_forwards:5.2f}  per token vs full forward {per_token:5.2f}"
          + shares)
    assert gen.tokens.shape == (BATCH, LENGTH)
    if os.environ.get("ESOLM_FLOOR_TARGETS") == "1":
        assert x_floor <= 1.5 and x_forwards <= 1.2, info
