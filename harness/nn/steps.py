"""Fixed-shape sampler steps, replayed as CUDA graphs on a GPU (docs/floors.md §4).

At batch 1 every sampler is launch-bound: an eager decode step of the 12-layer trunk costs
~4 ms of kernel launches against a ~0.1 ms weight-read floor.  A CUDA graph replays the
whole step as one launch, but only if nothing in it changes shape or is read back to the
host.  So the samplers' cached steps go through :class:`StaticSteps`:

- one pre-allocated KV cache, kept across ``sample`` calls (graphs hold its address);
- a step is ``Transformer.forward_static``: the window is padded to a power-of-two width
  and attends over a power-of-two number of cache slots, so a whole sample touches a
  handful of shapes; the window's offset and the mask's prefix are device scalars;
- each (width, keys) shape is captured once and replayed afterwards.

Modes (``LanguageModel.step_mode``): ``"dynamic"`` is the plain eager path with exact
shapes (the CPU default); ``"static"`` runs the fixed-shape step eagerly (what the graph
replays: tests check it gives the dynamic path's tokens exactly); ``"graph"`` captures and
replays (the CUDA default); ``"compiled"`` first fuses the fixed-shape step with
torch.compile (a graph replays ~19 kernels per layer, most of them small element-wise ones
that inductor fuses into their neighbours), then captures it like ``"graph"`` on CUDA; on a
CPU, where nothing is captured, its windows and key ranges stay exact (padding would only
add work: 10-50 % for Eso-LM (B)'s narrow windows) and the code is compiled for dynamic shapes.
Fused kernels round differently, so compiled logits equal the eager ones to float
tolerance, not bit for bit.  Sampling (Gumbel noise, argmax) stays outside the graph, so
the random streams are the same in every mode.  The work counters
(NFE, tokens computed) count the algorithm's windows, not the padding, so they stay
hardware-independent; fixed-shape MDLM/BD3-LM steps run (and count) every row of a batch
where the dynamic path runs only the rows that reveal a token.
"""

from __future__ import annotations

import os
import warnings
from contextlib import nullcontext

import torch

MODES = ("dynamic", "static", "graph", "compiled")
COMPILE_LIMIT = 64  # recompilations allowed per compiled step (dynamo's default is 8)
FALLBACKS: list[str] = []  # step shapes whose graph capture failed and that ran eagerly instead


def resolve_mode(mode: str | None, device: torch.device) -> str:
    """``None``/"auto": $ESOLM_STEP_MODE if set, else "graph" on CUDA and "dynamic" elsewhere.
    "compiled" keeps its name on a CPU (compiled, no graphs)."""
    mode = mode if mode not in (None, "auto") else os.environ.get("ESOLM_STEP_MODE") or None
    if mode is None:
        return "graph" if device.type == "cuda" else "dynamic"
    if mode not in MODES:
        raise ValueError(f"step_mode must be one of {MODES} or 'auto', got {mode!r}")
    if mode == "graph" and device.type != "cuda":
        return "static"  # CUDA graphs need a CUDA device; the same steps run eagerly
    return mode


def exact_modes(device: torch.device) -> tuple[str, ...]:
    """The modes whose tokens equal the plain eager sampler's bit for bit: what a sweep's
    ``auto`` times and picks from.  On a CPU only ``dynamic``: the
    fixed-shape steps there run the same kernels on padded windows (they exist to check what
    a graph replays), never less work.  ``compiled`` is left out everywhere: its fused kernels
    round differently, so a sample would depend on which mode a timing happened to pick."""
    return ("graph", "dynamic") if device.type == "cuda" else ("dynamic",)


def bucket(n: int, minimum: int = 1) -> int:
    """Smallest power of two >= max(n, minimum)."""
    n = max(n, minimum, 1)
    return 1 << (n - 1).bit_length()


def compile_static(fn):
    """``fn`` compiled by torch.compile on first use (in the warm-up before a graph capture).
    The first shape is compiled for its exact sizes; dynamo's automatic dynamic shapes then
    recompile once with symbolic width and key range, which serves every later bucket, so a
    whole sample costs about three compilations, not one per shape."""
    compiled = torch.compile(fn, fullgraph=True)
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # older torch

    def run(*args):
        with config.patch(**{limit: COMPILE_LIMIT}):
            return compiled(*args)

    return run


def _autocast_without_cache(device: torch.device):
    """Keep the caller's autocast state, but without its weight-cast cache: casts made during
    a capture would otherwise be served later from the graph's private memory."""
    if device.type != "cuda" or not torch.is_autocast_enabled("cuda"):
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)


class Replay:
    """``fn(*buffers)`` on static input buffers; captured as a CUDA graph when ``graph``."""

    def __init__(self, fn, buffers: list[torch.Tensor], graph: bool, pool=None):
        self.fn, self.buffers, self.graph, self.pool = fn, buffers, graph, pool
        self._graph = self._out = None

    def __call__(self, *inputs) -> torch.Tensor:
        for buf, value in zip(self.buffers, inputs):
            if isinstance(value, torch.Tensor):
                buf.copy_(value)
            else:
                buf.fill_(value)  # a Python int becomes a kernel argument: no host->device copy
        if self.graph and self._graph is None:
            self._capture()
        if not self.graph:
            return self.fn(*self.buffers)
        self._graph.replay()
        return self._out

    def _capture(self) -> None:
        """Capture, or on failure fall back to running this shape eagerly (same results,
        slower), recorded in FALLBACKS so a timing can say so."""
        device = self.buffers[0].device
        try:
            with _autocast_without_cache(device):
                side = torch.cuda.Stream(device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):  # warm-up off the capture (cuBLAS handles, workspaces)
                    for _ in range(2):
                        self.fn(*self.buffers)
                torch.cuda.current_stream(device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool):
                    out = self.fn(*self.buffers)
            self._graph, self._out = graph, out
        except RuntimeError as err:  # torch.AcceleratorError is a RuntimeError
            torch.cuda.synchronize(device)
            shapes = [tuple(b.shape) for b in self.buffers]
            FALLBACKS.append(f"{shapes}: {str(err).splitlines()[0]}")
            warnings.warn(f"CUDA graph capture failed for step shapes {shapes}; running them eagerly: {err}",
                          stacklevel=2)
            self.graph = False


def steps_key(net, batch: int, capacity: int, graph: bool, compiled: bool = False) -> tuple:
    """What a StaticSteps is bound to: its cache's shape and dtype, graphs or not, compiled or not."""
    p = net.head.weight
    return (batch, capacity, p.device, p.dtype, graph, compiled)


class StaticSteps:
    """The fixed-shape cached steps of one trunk for one (batch, capacity)."""

    def __init__(self, net, batch: int, capacity: int, graph: bool, compiled: bool = False):
        self.net, self.batch, self.capacity, self.graph = net, batch, capacity, graph
        self.key = steps_key(net, batch, capacity, graph, compiled)
        self._forward_static = compile_static(net.forward_static) if compiled else net.forward_static
        self._forward = compile_static(net.forward) if compiled else net.forward
        self._cache = None  # allocated on the first cached step (MDLM's full forwards need none)
        self.pool = torch.cuda.graph_pool_handle() if graph else None
        self._steps: dict[tuple[int, int], Replay] = {}
        self._full: dict[tuple, Replay] = {}  # one per (rows, L): the batch, and a memory-budget chunk
        # Compiled without graphs (a CPU): nothing needs a fixed shape, so windows and key
        # ranges stay exact — padding them would only add work (compiled code with dynamic shapes)
        self.exact = compiled and not graph
        self._row_caches: dict[tuple[int, int], object] = {}

    @property
    def cache(self):
        if self._cache is None:
            self._cache = self.net.new_cache(self.batch, self.capacity)
        return self._cache

    def step(self, tokens: torch.Tensor, positions: torch.Tensor, start: int, floor: int = 0,
             rows: slice | None = None) -> torch.Tensor:
        """Logits (B, N, V) of the window ``tokens`` (B, N) written at cache slots
        [start, start + N) — see ``Transformer.forward_static`` for ``floor``.  The window is
        padded with its last token to a power-of-two width; padded rows only write scratch
        slots past the window, which no real query attends to and later steps overwrite.
        ``rows``: the window is these rows of the batch (a memory-budget chunk)."""
        B, N = tokens.shape
        rows = None if rows is None or (rows.start in (0, None) and rows.stop >= self.batch) else rows
        if self.exact:
            return self._exact_step(tokens, positions, start, floor, rows)
        width = bucket(N)
        keys = min(bucket(start + N, 64), self.capacity)
        if start + width > self.capacity:
            raise ValueError(f"KV cache overflow: window [{start}, {start + width}) > capacity {self.capacity}")
        shape = (width, keys) if rows is None else (width, keys, rows.start, rows.stop)
        replay = self._steps.get(shape)
        if replay is None:
            buffers = [torch.zeros(B, width, dtype=torch.long, device=tokens.device),
                       torch.zeros(B, width, dtype=torch.long, device=tokens.device),
                       torch.zeros(1, dtype=torch.long, device=tokens.device),
                       torch.zeros(1, dtype=torch.long, device=tokens.device)]

            cache = self._cache_rows(rows)

            def run(tok, pos, start_, floor_, keys=keys, cache=cache):
                return self._forward_static(tok, pos, cache, start_, floor_, keys)

            replay = self._steps[shape] = Replay(run, buffers, self.graph, self.pool)
        if width > N:
            pad = width - N
            tokens = torch.cat([tokens, tokens[:, -1:].expand(B, pad)], 1)
            positions = torch.cat([positions, positions[:, -1:].expand(B, pad)], 1)
        return replay(tokens, positions, start, floor)[:, :N]

    def _cache_rows(self, rows: slice | None):
        """The cache, or one kept view of some of its rows (a memory-budget chunk): the same
        object at every step, as a captured graph or compiled code expects."""
        if rows is None:
            return self.cache
        key = (rows.start, rows.stop)
        if key not in self._row_caches:
            self._row_caches[key] = self.cache.rows(rows)
        return self._row_caches[key]

    def _exact_step(self, tokens, positions, start: int, floor: int, rows: slice | None) -> torch.Tensor:
        """The window at its own width over exactly the slots written so far, [0, start + N)."""
        N = tokens.shape[1]
        if start + N > self.capacity:
            raise ValueError(f"KV cache overflow: window [{start}, {start + N}) > capacity {self.capacity}")
        cache = self._cache_rows(rows)
        start_, floor_ = (torch.tensor([v], device=tokens.device) for v in (start, floor))
        return self._forward_static(tokens.contiguous(), positions.contiguous(), cache, start_, floor_, start + N)

    def full(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits of a full-attention forward without cache (MDLM's denoiser) at a fixed
        (rows, L): one captured shape per row count (the batch, or a chunk of it)."""
        replay = self._full.get(tuple(tokens.shape))
        if replay is None:
            buffers = [torch.zeros_like(tokens), torch.zeros_like(positions)]
            replay = self._full[tuple(tokens.shape)] = Replay(lambda tok, pos: self._forward(tok, pos, None), buffers,
                                                              self.graph, self.pool)
        return replay(tokens, positions)


def static_steps(model, batch: int, capacity: int) -> StaticSteps | None:
    """The model's StaticSteps for this batch and capacity (kept across calls, so graphs are
    captured once per shape), or None in "dynamic" mode."""
    mode = resolve_mode(getattr(model, "step_mode", None), model.device)
    if mode == "dynamic":
        return None
    graph = mode in ("graph", "compiled") and model.device.type == "cuda"
    compiled = mode == "compiled"
    current = getattr(model, "_static_steps", None)
    if current is None or current.key != steps_key(model.net, batch, capacity, graph, compiled):
        model._static_steps = None  # free the old cache and graphs first
        model._static_steps = StaticSteps(model.net, batch, capacity, graph=graph, compiled=compiled)
    return model._static_steps
