"""GPU bench: ceilings, sampler step modes against their floors, training-step cost.

    python scripts/gpu_bench.py --out bench.json

1. Ceilings of this GPU: a bf16 8192^3 matmul (FLOP/s) and a 2 GiB device-to-device copy
   (bytes read + written per second), as docs/floors.md §1 describes.
2. The papers' trunk ("small", random bf16 weights, GPT-2 vocabulary) at L = 1024, batch 1:
   one sample per sampler in "dynamic" (plain eager), "graph" (fixed-shape CUDA-graph) and
   "compiled" (torch.compile-fused, then CUDA-graph) step modes (``--modes``), with the floor
   max(NFE x weight bytes / copy rate, 2 x params x tokens / matmul rate), and each mode's
   speed-up and token agreement against the first mode named (bf16: rare near-ties may
   flip).  A mode's time excludes its warm-up sample (graph captures and compilation),
   which is reported as ``<mode>_warmup_s``.
3. ms per optimizer step of the quality trunk ("medium", batch 64 x 512) for each model family,
   to size configs/paper_quality.yaml to a time budget (``--train-compile``: also compiled).
``--only steps``: one step's cost by window width (AR 1, Eso-LM 2, BD3-LM 4/16) at short and
long cache ranges, graph and compiled, with the top kernels of an eager step (where the time goes).
``--only profile``: per sampling step of each latency sampler at batch 1, the kernels and their time
by kernel class under torch.profiler (docs/floors.md §5); ``--device cpu`` runs it on the tiny trunk.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from harness.models import SpecialTokens, build_model
from harness.nn.transformer import BackboneConfig
from harness.schedules import SamplingSchedule
from harness.metrics.floors import forward_cost

VOCAB = 50258


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def ceilings() -> dict:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    a @ b
    t = statistics.median(timed(lambda: a @ b, 10))
    src = torch.randn(2 ** 30, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    dst.copy_(src)
    c = statistics.median(timed(lambda: dst.copy_(src), 10))
    return {"matmul_flops": 2 * 8192 ** 3 / t, "copy_bytes_per_s": 2 * src.numel() * 2 / c}


SAMPLERS = [
    ("ar", {}, SamplingSchedule()),
    ("esolm-b", {"alpha_0": 0.25}, SamplingSchedule(alpha_0=0.25, steps=128)),
    ("esolm-b", {"alpha_0": 0.25}, SamplingSchedule(alpha_0=1.0, steps=128)),
    ("bd3lm", {"block_size": 4}, SamplingSchedule(first_hitting=True)),
    ("mdlm", {}, SamplingSchedule(steps=128)),
]


def sampler_modes(ceil: dict, length: int, modes: list[str], only: set[str] | None = None) -> list[dict]:
    special = SpecialTokens(bos=VOCAB - 2, eos=VOCAB - 2, mask=VOCAB - 1)
    cfg = BackboneConfig.from_preset("small", vocab_size=VOCAB, max_len=length)
    rows = []
    for name, options, schedule in SAMPLERS:
        if only and name not in only:
            continue
        torch.manual_seed(0)
        model = build_model(name, cfg, special, **options).cuda().to(torch.bfloat16).eval()
        cost = forward_cost(model)  # the sweep rows' floor inputs
        wbytes, params = cost["weight_bytes"], cost["matmul_parameters"]
        row = {"model": name, "options": options, "schedule": schedule.label(), "length": length, "batch": 1}
        tokens = {}
        for mode in modes:
            model.step_mode = mode

            def once():
                with torch.no_grad():
                    return model.sample(1, length, schedule, torch.Generator("cuda").manual_seed(0))

            t0 = time.perf_counter()
            gen = once()  # warm-up: captures the graphs (and compiles the steps) this seed's shapes need
            torch.cuda.synchronize()
            row[f"{mode}_warmup_s"] = time.perf_counter() - t0
            tokens[mode] = gen.tokens
            times = timed(once, 2)
            row[f"{mode}_s"] = statistics.median(times)
            row["nfe"], row["tokens_computed"] = gen.nfe, gen.tokens_computed
        row["floor_s"] = max(row["nfe"] * wbytes / ceil["copy_bytes_per_s"],
                             2 * params * row["tokens_computed"] / ceil["matmul_flops"])
        ref = modes[0]  # speed-ups and token agreement are against the first mode named
        for mode in modes:
            row[f"{mode}_over_floor"] = row[f"{mode}_s"] / row["floor_s"]
            if mode != ref:
                row[f"speedup_{mode}_vs_{ref}"] = row[f"{ref}_s"] / row[f"{mode}_s"]
                row[f"tokens_agree_{mode}_{ref}"] = float((tokens[ref] == tokens[mode]).float().mean())
        print(json.dumps(row), flush=True)
        rows.append(row)
        del model
        torch.cuda.empty_cache()
    return rows


def step_costs(length: int, device: str = "cuda") -> list[dict]:
    """One fixed-shape step of the papers' trunk (bf16 on CUDA) by window width N and cache
    range: AR decodes N = 1, Eso-LM (B)'s sequential phase N = 2, BD3-LM blocks N = 4 / 16.
    Replayed graphs timed with CUDA events (median of 50), plus the top kernels of one eager
    step at the longest range — to see where a step's time goes beyond the weight-read floor."""
    from torch.profiler import ProfilerActivity, profile

    from harness.nn.steps import StaticSteps

    cuda = device == "cuda"
    cfg = BackboneConfig.from_preset("small" if cuda else "tiny", vocab_size=VOCAB, max_len=2 * length)
    torch.manual_seed(0)
    net = build_model("ar", cfg, SpecialTokens(bos=VOCAB - 2, eos=VOCAB - 2, mask=VOCAB - 1)).net
    net = net.to(device).to(torch.bfloat16 if cuda else torch.float32).eval()
    rows = []
    compiled_steps = StaticSteps(net, batch=1, capacity=2 * length, graph=cuda, compiled=True)
    shapes = [(compiled, width, start) for compiled in (False, True) for width in (1, 2, 4, 16)
              for start in (32, length - width - 1)]
    for compiled, n, start in shapes:
        steps = compiled_steps if compiled else StaticSteps(net, batch=1, capacity=2 * length, graph=cuda)
        tokens = torch.randint(0, VOCAB - 2, (1, n), device=device)
        positions = torch.arange(start, start + n, device=device)[None]
        with torch.no_grad():
            steps.step(tokens, positions, start)  # capture
            if cuda:
                times = []
                for _ in range(50):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    steps.step(tokens, positions, start)
                    b.record()
                    b.synchronize()
                    times.append(a.elapsed_time(b))
                ms = statistics.median(times)
            else:
                t0 = time.perf_counter()
                steps.step(tokens, positions, start)
                ms = 1000 * (time.perf_counter() - t0)
        row = {"width": n, "start": start, "keys": min(1 << (start + n - 1).bit_length(), 2 * length),
               "compiled": compiled, "ms_per_step": ms}
        if start > 32 and n <= 2 and not compiled:
            eager = StaticSteps(net, batch=1, capacity=2 * length, graph=False)
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
            with torch.no_grad():
                eager.step(tokens, positions, start)
                with profile(activities=acts) as prof:
                    eager.step(tokens, positions, start)
            key = "device_time_total" if cuda else "cpu_time_total"
            events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)
            row["top_ops"] = [(e.key, e.count, round(getattr(e, key, 0), 1)) for e in events[:12]]
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


PROFILE_SAMPLERS = [  # configs/paper_latency.yaml's samplers: (name, model, options, schedule)
    ("ar", "ar", {}, SamplingSchedule()),
    ("mdlm", "mdlm", {}, SamplingSchedule(first_hitting=True)),
    ("bd3lm-4", "bd3lm", {"block_size": 4}, SamplingSchedule(first_hitting=True)),
    ("bd3lm-16", "bd3lm", {"block_size": 16}, SamplingSchedule(first_hitting=True)),
    ("esolm-b", "esolm-b", {"alpha_0": 1.0}, SamplingSchedule(alpha_0=1.0, steps=1_000_000)),
]
# Kernel (CUDA) or op (CPU: "aten::...") classes by name, lower-cased: the first entry with a matching key wins.
CLASSES = (
    ("other", ("::expand",)),  # a view, not exp
    ("elementwise", ("::maximum", "::minimum")),  # not the ::max / ::min reductions
    ("attention", ("flash", "fmha", "attention", "attn", "sdpa")),
    ("matmul", ("gemm", "gemv", "matmul", "nvjet", "cublas", "cutlass", "xmma", "::mm", "::bmm", "::addmm",
                "::baddbmm", "::linear", "::mv", "::addmv")),
    ("reduction", ("softmax", "reduce", "layer_norm", "rms_norm", "::sum", "::mean", "::max", "::amax", "::argmax",
                   "::min", "::argmin", "topk", "sort", "cumsum", "scan", "triton_red", "triton_per")),
    ("copy", ("copy", "memcpy", "memset", "::cat", "::stack", "index", "gather", "scatter", "embedding", "::to",
              "clone", "contiguous")),
    ("elementwise", ("elementwise", "::add", "::mul", "::div", "::sub", "fill", "::where", "::exp", "::log", "::neg",
                     "sqrt", "::pow", "::reciprocal", "gelu", "silu", "::tanh", "::sigmoid", "::sin", "::cos", "clamp",
                     "masked", "bitwise", "::eq", "::ne", "::lt", "::le", "::gt", "::ge", "::rand", "uniform",
                     "::normal", "bernoulli", "::zero", "::ones", "::full", "::arange", "triton_poi")),
)
KERNEL_CLASSES = ("matmul", "attention", "elementwise", "reduction", "copy", "other")
SYNCS = {"cuda": ("cudaStreamSynchronize", "cudaEventSynchronize", "cudaMemcpy"),  # runtime calls that wait
         "cpu": ("aten::_local_scalar_dense", "aten::nonzero")}  # ops that read a value back (sync on a GPU)


def op_class(name: str) -> str:
    name = name.lower()
    return next((cls for cls, keys in CLASSES if any(k in name for k in keys)), "other")


def profile_summary(events, device: str) -> dict:
    """Per-step counts and times of a profiled window of steps (``events``: the profiler's
    ``events()``). CUDA: every kernel, memcpy and memset, timed on the device; CPU: the aten
    ops the Python code calls (an op's inner ops count inside it), timed on the host."""
    from torch.autograd import DeviceType

    def outermost(e):
        parent = e.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        return parent is None

    steps = [e for e in events if e.name.startswith("ProfilerStep") and e.device_type == DeviceType.CPU]
    n = max(len(steps), 1)
    ops = [e for e in events if e.device_type == DeviceType.CPU and e.name.startswith("aten::") and outermost(e)]
    if device == "cuda":
        units = [e for e in events if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
                 and not e.name.startswith("ProfilerStep")]
    else:
        units = ops
    count = dict.fromkeys(KERNEL_CLASSES, 0)
    time_us = dict(count)
    by_name: dict[str, list] = {}
    for e in units:
        cls, us = op_class(e.name), e.time_range.elapsed_us()
        count[cls] += 1
        time_us[cls] += us
        by_name.setdefault(e.name, [0, 0.0])
        by_name[e.name][0] += 1
        by_name[e.name][1] += us
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:8]
    total = sum(time_us.values())
    wall = sum(e.time_range.elapsed_us() for e in steps) / n
    return {
        "steps_profiled": len(steps),
        "kernels_per_step": len(units) / n,
        "time_us_per_step": total / n,
        "kernels_by_class": {c: v / n for c, v in count.items()},
        "time_us_by_class": {c: v / n for c, v in time_us.items()},
        "wall_us_per_step": wall,
        "busy_share": total / n / wall if wall else None,
        "aten_ops_per_step": len(ops) / n,
        "host_syncs_per_step": sum(e.name in SYNCS[device] for e in events) / n,
        "top": [(name[:100], c / n, round(us / n, 2)) for name, (c, us) in top],
    }


def step_profile(length: int, device: str, preset: str, modes: list[str], steps: int = 16) -> list[dict]:
    """Each latency sampler at batch 1 (random weights; bf16 on CUDA): one unprofiled sample (the
    warm-up, which counts the forwards), then the same sample again with ``steps`` consecutive
    steps from its middle under torch.profiler.  A step runs from one network forward's start to
    the next's: the forward and the sampler's own work after it.  Eager step modes only
    (dynamic: exact shapes; static: the padded fixed-shape step a CUDA graph would replay);
    under a graph the profiler would see one launch per step."""
    from torch.profiler import ProfilerActivity, profile, schedule

    vocab = VOCAB if device == "cuda" else 512
    special = SpecialTokens(bos=vocab - 2, eos=vocab - 2, mask=vocab - 1)
    cfg = BackboneConfig.from_preset(preset, vocab_size=vocab, max_len=length)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    if device == "cpu":
        torch.set_num_threads(1)  # ops this small gain nothing from threads, which wait on each other on a busy machine
    rows = []
    for sampler, name, options, sched in PROFILE_SAMPLERS:
        torch.manual_seed(0)
        model = build_model(name, cfg, special, **options).to(device).eval()
        if device == "cuda":
            model = model.to(torch.bfloat16)
        for mode in modes:
            model.step_mode = mode
            forwards = [0]
            hook = model.net.embed.register_forward_pre_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
            with torch.no_grad():
                model.sample(1, length, sched, torch.Generator(device).manual_seed(0))
            hook.remove()
            active = max(1, min(steps, forwards[0] - 3))
            wait = max(1, (forwards[0] - active) // 2)  # profiler step k starts at forward k

            def mark(*_):
                if device == "cuda" and prof.step_num == wait + active:
                    torch.cuda.synchronize()  # the window's kernels finish inside it (not counted as a sync)
                prof.step()

            with torch.no_grad(), profile(activities=acts,
                                          schedule=schedule(wait=wait, warmup=1, active=active, repeat=1)) as prof:
                hook = model.net.embed.register_forward_pre_hook(mark)
                gen = model.sample(1, length, sched, torch.Generator(device).manual_seed(0))
                hook.remove()
            events = prof.events()
            row = {"sampler": sampler, "model": name, "options": options, "schedule": sched.label(),
                   "length": length, "batch": 1, "step_mode": mode, "forwards": forwards[0], "nfe": gen.nfe,
                   "first_step": wait + 1, **profile_summary(events, device)}
            print(json.dumps({k: v for k, v in row.items() if k != "top"}), flush=True)
            rows.append(row)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows


def training_steps(batch: int, length: int, compiled: bool = False) -> list[dict]:
    """ms per optimizer step (bf16 autocast), eager and, with ``compiled``, with the trunk
    compiled as ``train.compile: true`` does (its warm-up, compilation included, reported)."""
    special = SpecialTokens(bos=VOCAB - 2, eos=VOCAB - 2, mask=VOCAB - 1)
    cfg = BackboneConfig.from_preset("medium", vocab_size=VOCAB, max_len=length)
    rows = []
    for name, options in [("ar", {}), ("mdlm", {}), ("bd3lm", {"block_size": 4}), ("esolm-a", {"alpha_0": 0.25}),
                          ("esolm-b", {"alpha_0": 0.25})]:
        row = {"model": name, "options": options, "batch": batch, "length": length}
        for mode in ("eager", "compiled") if compiled else ("eager",):
            torch.manual_seed(0)
            model = build_model(name, cfg, special, **options).cuda().train()
            if mode == "compiled":
                model.net.compile(dynamic=False)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
            x = torch.randint(0, VOCAB - 2, (batch, length), device="cuda")

            def step():
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = model.loss(x)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            warmup = sum(timed(step, 3))
            ms = 1000 * statistics.median(timed(step, 10))
            prefix = "" if mode == "eager" else "compiled_"
            row.update({f"{prefix}ms_per_step": ms, f"{prefix}warmup_s": warmup})
            del model, opt
            torch.cuda.empty_cache()
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--only", choices=["all", "steps", "samplers", "training", "profile"], default="all",
                    help="steps: only the per-step costs by window width and cache range (L = 8192); "
                         "samplers: only ceilings and the samplers' step modes; training: only ms per training step; "
                         "profile: kernels and time by kernel class per sampling step (runs on a CPU too)")
    ap.add_argument("--modes", default="dynamic,graph,compiled",
                    help="sampler step modes to time (comma-separated; see harness/nn/steps.py); "
                         "--only profile takes the eager ones, dynamic and static (default: dynamic)")
    ap.add_argument("--train-compile", action="store_true",
                    help="also time training with the trunk compiled (train.compile: true)")
    ap.add_argument("--samplers", default=None,
                    help="only these models' samplers (comma-separated: ar, esolm-b, bd3lm, mdlm)")
    ap.add_argument("--device", default="cuda", help="--only profile: cuda or cpu")
    ap.add_argument("--preset", default=None, help="--only profile: the trunk (default: small on CUDA, tiny on a CPU)")
    args = ap.parse_args()
    if args.only == "profile":
        device = args.device
        if device == "cuda" and not torch.cuda.is_available():
            raise SystemExit("no CUDA device: use --device cpu")
        preset = args.preset or ("small" if device == "cuda" else "tiny")
        modes = [m for m in args.modes.split(",") if m in ("dynamic", "static")] or ["dynamic"]
        result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
                  "preset": preset, "length": args.length, "batch": 1,
                  "kernels": "CUDA kernels, memcpys and memsets, device time" if device == "cuda"
                  else "aten ops called from Python (inner ops inside them), host time",
                  "host_syncs": "cudaStreamSynchronize, cudaEventSynchronize and cudaMemcpy calls" if device == "cuda"
                  else "ops that read a value back to the host (aten::_local_scalar_dense, aten::nonzero)",
                  "step": "one network forward and the sampler's work up to the next; eager steps (dynamic: exact "
                          "shapes, static: the fixed-shape step a CUDA graph replays), since under a CUDA graph the "
                          "profiler sees one graph launch per step",
                  "profile": step_profile(args.length, device, preset, modes)}
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        return
    if not torch.cuda.is_available():
        raise SystemExit("gpu_bench needs a CUDA device")
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    if args.only in ("steps", "training"):
        if args.only == "steps":
            result["step_costs"] = step_costs(8192)
        else:
            result["training"] = training_steps(64, 512, args.train_compile)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        return
    result["ceilings"] = ceil = ceilings()
    print(json.dumps(result), flush=True)
    only = set(args.samplers.split(",")) if args.samplers else None
    result["samplers"] = sampler_modes(ceil, args.length, args.modes.split(","), only)
    if args.only == "samplers":
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        return
    result["training"] = training_steps(64, 512, args.train_compile)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
