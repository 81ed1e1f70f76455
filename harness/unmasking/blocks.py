"""Semi-autoregressive block decoding of a bidirectional denoiser with Fast-dLLM's approximate
caches (docs/models.md §2.4).

The sequence z (n, L) is decoded block by block, [lo, hi) at a time; every forward reads the
whole sequence (later blocks still all-[MASK]) and the block's logits are drawn from.
  no cache   each step runs all L positions;
  prefix     a row's first step in the block (and every ``refresh``-th) runs all L positions
             and writes every K/V to the cache; its other steps run [lo, L) (the block and
             the masked suffix) against the cached K/V of [0, lo);
  dual       the same, but the other steps run only [lo, hi), against the cached K/V of
             the prefix and of the masked suffix.
The cached K/V were computed when the block had fewer tokens revealed, so these steps are
approximations: nothing in the model's training made them exact.  Refresh points are the
block's steps k with k % refresh == 0; a row that reveals nothing at such a step refreshes
at its next forward instead (its tokens did not change in between, so the cache it builds
is the same), so every row's work and tokens depend on its own plan only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from harness.memory import cache_row_bytes, row_chunk
from harness.models import Generation
from harness.nn import masks
from harness.nn.transformer import KVCache
from harness.unmasking.ancestral import ancestral_denoise, plan_reveals
from harness.unmasking.confidence import confident_denoise
from harness.unmasking.probe import CacheProbe


@dataclass
class Work:
    """The exact counters of a block-decoded sample (as in harness.models.Generation)."""

    forwards: int = 0
    tokens: int = 0
    key_reads: int = 0
    pairs: int = 0
    refreshes: int = 0  # full forwards that (re)built a row's cache, rows summed
    per_row: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))


def gather_cache(cache: KVCache, rows: torch.Tensor) -> KVCache:
    """A copy of some rows of ``cache`` (a forward over a subset of the batch)."""
    sub = KVCache.__new__(KVCache)
    sub.k, sub.v = [t[rows] for t in cache.k], [t[rows] for t in cache.v]
    sub.capacity, sub.length = cache.capacity, 0
    return sub


class BlockDenoiser:
    """``denoiser(rows)`` of block [lo, hi) for ancestral_denoise / confident_denoise."""

    def __init__(self, net, z: torch.Tensor, lo: int, hi: int, *, cache: KVCache | None, mode: str | None,
                 refresh: int | None, work: Work, probe: CacheProbe | None = None, chunk: int | None = None):
        self.net, self.z, self.lo, self.hi = net, z, lo, hi
        self.chunk = chunk or z.shape[0]  # rows per forward call (the memory budget); one forward either way
        self.cache, self.mode, self.refresh, self.work, self.probe = cache, mode, refresh, work, probe
        n, L = z.shape
        self.positions = torch.arange(L, device=z.device)
        self.attend = masks.bidirectional(L, z.device)
        self.last = [-1] * n  # each row's last step in this block (−1: none yet)
        self.k = 0
        self.stash: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # row -> (cached, uncached) logits

    def on_step(self, k: int) -> None:
        self.k = k
        self.stash = {}

    def fresh(self, row: int) -> bool:
        """Does this row's forward at the current step (re)build its cache?"""
        if self.cache is None or self.last[row] < 0:
            return True
        return self.refresh is not None and self.k // self.refresh > self.last[row] // self.refresh

    def __call__(self, rows: torch.Tensor | None) -> torch.Tensor:
        n, L = self.z.shape
        index = list(range(n)) if rows is None else rows.tolist()
        full = [i for i, r in enumerate(index) if self.fresh(r)]
        cached = [i for i, r in enumerate(index) if not self.fresh(r)]
        out = None
        for part, run in ((full, self.full), (cached, self.cached)):
            if not part:
                continue
            sel = torch.tensor([index[i] for i in part], device=self.z.device)
            whole = len(part) == n and self.chunk >= n
            pieces = [run(sel[i:i + self.chunk], whole) for i in range(0, len(part), self.chunk)]
            logits = pieces[0] if len(pieces) == 1 else torch.cat(pieces)
            if out is None:
                out = logits.new_empty((len(index),) + tuple(logits.shape[1:]))
            out[torch.tensor(part, device=self.z.device)] = logits
            self.work.forwards += 1
        for r in index:
            self.last[r] = self.k
        return out

    def full(self, sel: torch.Tensor, whole: bool) -> torch.Tensor:
        """All L positions; with a cache, every K/V is written to it."""
        L, m = self.z.shape[1], sel.numel()
        tokens = self.z if whole else self.z[sel]
        if self.cache is None:
            logits = self.net(tokens, self.positions, self.attend)
        else:
            sub = self.cache if whole else gather_cache(self.cache, sel)
            sub.length = 0
            logits = self.net(tokens, self.positions, self.attend, sub, commit=L)
            if not whole:
                for layer in range(len(sub.k)):
                    self.cache.k[layer][sel], self.cache.v[layer][sel] = sub.k[layer], sub.v[layer]
            self.work.key_reads += m * L
            self.work.refreshes += m
        self.work.tokens += m * L
        self.work.pairs += m * masks.allowed_pairs(L, 0, L)
        return logits[:, self.lo:self.hi]

    def cached(self, sel: torch.Tensor, whole: bool) -> torch.Tensor:
        """prefix: [lo, L); dual: [lo, hi) — fresh K/V for these, cached ones for the rest."""
        L, m = self.z.shape[1], sel.numel()
        stop = L if self.mode == "prefix" else self.hi
        N = stop - self.lo
        sub = self.cache if whole else gather_cache(self.cache, sel)
        device = self.z.device
        window = self.z[:, self.lo:stop] if whole else self.z[sel, self.lo:stop]
        logits = self.net.forward_static(window.contiguous(), self.positions[self.lo:stop].expand(m, N).contiguous(),
                                         sub, torch.tensor([self.lo], device=device), torch.tensor([L], device=device), L)
        logits = logits[:, :self.hi - self.lo]
        self.work.tokens += m * N
        self.work.key_reads += m * L
        self.work.pairs += m * N * L  # every query attends to all L slots
        if self.probe is not None:  # the same state without the cache (not counted: not the sampler's work)
            reference = self.net(self.z[sel], self.positions, self.attend)[:, self.lo:self.hi]
            for j, r in enumerate(sel.tolist()):
                self.stash[r] = (logits[j], reference[j])
        return logits

    def after_draws(self, rows: torch.Tensor, cols: torch.Tensor, tokens: torch.Tensor, noise: torch.Tensor) -> None:
        """Feed the probe the draws this step took from cached logits."""
        if self.probe is None or not self.stash:
            return
        picked = [i for i, r in enumerate(rows.tolist()) if r in self.stash]
        if not picked:
            return
        cached = torch.stack([self.stash[int(rows[i])][0][int(cols[i])] for i in picked])
        reference = torch.stack([self.stash[int(rows[i])][1][int(cols[i])] for i in picked])
        self.probe.add(cached, reference, tokens[picked], noise[picked])


def sample_blocks(model, n: int, length: int, schedule, generator, use_cache: bool = True,
                  prefix=None) -> Generation:
    """MDLM's block decoding: ``schedule.block_length`` positions at a time (default: the
    whole sequence as one block), each block by the ancestral plan (``steps`` per block) or
    by a confidence rule, with ``schedule.cache`` when ``use_cache`` (use_cache=False runs
    every step in full: the uncached twin).  Counters as in Generation; extra: the rows'
    cache-building forwards and, with ``measure_cache_error``, the probe's columns."""
    schedule.check_length(length)
    B = schedule.block_length or length
    device, mask_id = model.device, model.special.mask
    prefix = model.given_prefix(n, length, schedule, prefix)
    given = 0 if prefix is None else prefix.shape[1]
    z = torch.full((n, length), mask_id, dtype=torch.long, device=device)
    if prefix is not None:
        z[:, :given] = prefix
    mode = schedule.cache if use_cache else None
    cache = model.net.new_cache(n, length) if mode else None
    held = n * cache_row_bytes(model.backbone_config, length, cache.k[0].element_size()) if mode else 0
    chunk = row_chunk(model, n, length, length, reserved=held)  # rows per forward within the memory budget
    probe = CacheProbe(mask_id, schedule.top_p) if schedule.measure_cache_error and mode else None
    rule, first, nb = schedule.confidence_rule(), given // B, length // B
    plans = None if rule else plan_reveals(n, B, noise=model.noise, steps=schedule.steps, first_hitting=False,
                                           generator=generator, device=device, windows=nb - first,
                                           given=given - first * B)
    work = Work(per_row=torch.zeros(n, dtype=torch.long, device=device))
    step = torch.full((n, length), -1, dtype=torch.long, device=device)
    offset = 0
    for b in range(first, nb):
        lo, hi = b * B, (b + 1) * B
        den = BlockDenoiser(model.net, z, lo, hi, cache=cache, mode=mode, refresh=schedule.refresh, work=work,
                            probe=probe, chunk=chunk)
        hooks = dict(on_step=den.on_step, after_draws=den.after_draws if probe else None)
        if rule is None:
            plan = plans[b - first]
            _, _, run = ancestral_denoise(z[:, lo:hi], den, plan, mask_id=mask_id, generator=generator,
                                          top_p=schedule.top_p, every_row=False, **hooks)
            when, width = torch.where(plan.when < schedule.steps, plan.when, -1), schedule.steps
        else:
            _, _, run, when = confident_denoise(z[:, lo:hi], den, rule, mask_id=mask_id, generator=generator,
                                                top_p=schedule.top_p, **hooks)
            width = int(when.max()) + 1
        work.per_row += run
        step[:, lo:hi] = torch.where(when >= 0, offset + when, -1)
        offset += width
    extra = {"cache_refreshes": work.refreshes}
    if schedule.measure_cache_error:
        extra.update((probe or CacheProbe()).result("in-sampler (cached step re-run uncached, same state)"))
    return Generation(z, nfe=work.forwards, tokens_computed=work.tokens, nfe_per_sample=work.per_row, extra=extra,
                      key_reads=work.key_reads, attention_pairs=work.pairs, step=step,
                      order=step.argsort(dim=1, stable=True))
