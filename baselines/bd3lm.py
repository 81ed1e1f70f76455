"""Block diffusion, BD3-LM (docs/models.md §3): autoregressive over blocks, MDLM within a block.

The sequence is cut into B = L / L' blocks x^1 … x^B and
    −log p(x) ≤ Σ_b NELBO_MDLM(x^b | x^{<b}),
each block an MDLM (SUBS, weight 1/t) conditioned on the clean earlier blocks.  L' = 1 is
AR (each [MASK] query sees the clean prefix and itself); L' = L is MDLM.

As the released models were trained and scored (bd3lms' defaults, docs/models.md §3):
mask_rate     "bd3lms": a token is masked with probability t (that repository's log-linear
              noise); "mdlm": (1 − eps)·t, the MDLM repository's.
ignore_bos    True: position 0 is never masked (x_t[:, 0] = x0[:, 0]) and the NELBO counts the
              L − 1 other positions; False: position 0 is masked and scored like any other.

training          one pass over z_t ⊕ x (length 2L, both halves at positions 0..L−1) under
                  masks.block_diffusion: z_t queries see their own noisy block and the clean
                  x of strictly earlier blocks; x queries see x block-causally.  One t per
                  block, antithetic over batch × blocks; only the z_t half is scored; the
                  loss is the mean over all L positions (position 0 adds 0 under
                  ignore_bos, as in the official training).  Optional clipped schedule
                  t ~ U[beta, omega] for training only; the NELBO (``nll``) always uses
                  t ~ U[eps, 1], as the official evaluation does.
sample            block by block: a block starts all-[MASK] and is denoised by the MDLM
                  sampler (T steps, or first-hitting: one token per step) attending to a
                  KV cache of the finished blocks; a finished block is run once more, clean,
                  to write its keys/values (counted in nfe and in extra["cache_writes"]).
                  Under ignore_bos (the default) position 0 is always given as BOS, as the
                  reference sampler does: the loss never asked the model to predict it, and
                  an all-[MASK] position 0 is an input it never saw.  With ignore_bos: false
                  it is generated like any other unless given (given_bos).  (A prefix-free
                  all-[MASK] block only ever occurs at block 0, so its contents are learnable;
                  within it, as in MDLM, rotary positions alone cannot tell the positions
                  apart until some of its tokens are revealed.)
sample_log_prob   exact log p(tokens | reveal steps): the training forward on z ⊕ x scores
                  every block at once, so pass r serves the r-th step of every block; passes =
                  the most distinct steps in any block (≤ min(T, L')).  ``elbo_log_prob``:
                  the cheaper NELBO (a bound on the marginal log p(x)).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.unmasking.ancestral import ancestral_denoise, dense_rank, plan_reveals
from harness.unmasking.confidence import confident_denoise
from harness.models import NLL, Generation, LanguageModel, SampleLogProb, scored_sum
from harness.nn import masks
from harness.nn.steps import static_steps
from harness.nn.transformer import KVCache
from harness.schedules import MASK_RATES, LogLinear, SamplingSchedule, antithetic_times, per_sequence_times, uniform

# The BD3-LM code regenerates samples whose last 256 tokens have unigram entropy < 4 nats;
# this sampler never does (docs/models.md §0): harness.metrics.entropy counts degenerate samples
# for every model instead.


def block_causal(n: int, block_size: int, device=None) -> torch.Tensor:
    """x-half of the training mask: query sees keys of its own and earlier blocks."""
    return masks.block_diffusion(n, block_size, device)[n:, n:]


def rows_of(cache: KVCache, rows: torch.Tensor, keys: int, cfg) -> KVCache:
    """A scratch copy of the first ``keys`` slots of ``cache`` for a subset of rows.

    Denoising forwards commit nothing, so they may run on a copy; the shared cache keeps
    its rows aligned with the batch.
    """
    sub = KVCache(cfg, rows.numel(), keys, cache.k[0].device, cache.k[0].dtype)
    for layer in range(cfg.n_layers):
        sub.k[layer].copy_(cache.k[layer][rows, :, :keys])
        sub.v[layer].copy_(cache.v[layer][rows, :, :keys])
    sub.length = cache.length
    return sub


class BD3LM(LanguageModel):
    name = "bd3lm"
    display_name = "BD3-LM"
    color = "#2ca02c"
    schedule_fields = ("steps", "first_hitting", "threshold", "factor", "entropy_bound")
    importable = True
    fixed_steps_count_every_row = True

    @classmethod
    def check_schedule(cls, schedule: SamplingSchedule, options: dict | None = None) -> None:
        super().check_schedule(schedule, options)
        rule = schedule.confidence_rule()
        if (schedule.steps is not None) + schedule.first_hitting + (rule is not None) != 1:
            raise ValueError("bd3lm needs exactly one of 'steps' (T per block), 'first_hitting' (one token per step) "
                             "or a confidence rule ('threshold', 'factor', 'entropy_bound') in every schedule")

    @classmethod
    def default_schedule(cls, schedule, new_positions, options=None):
        """First hitting (one token per step), as the reference sampler runs by default."""
        if schedule.steps is not None or schedule.confidence_rule() is not None:
            return schedule
        return schedule.model_copy(update={"first_hitting": True})

    def cache_capacity(self, length: int) -> int:
        return length + self.block_size  # a padded block of scratch slots past the end

    def __init__(self, backbone, special, block_size: int = 4, clip: tuple[float, float] | None = None,
                 eps: float = 1e-3, ignore_bos: bool = True, mask_rate: str = "bd3lms"):
        super().__init__(backbone, special)
        if not 1 <= block_size <= backbone.max_len:
            raise ValueError(f"block_size must be in [1, max_len={backbone.max_len}], got {block_size}")
        if clip is not None:
            clip = tuple(float(c) for c in clip)
            if len(clip) != 2 or not 0.0 < clip[0] < clip[1] <= 1.0:
                raise ValueError(f"clip must be (beta, omega) with 0 < beta < omega <= 1, got {clip}")
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        if mask_rate not in MASK_RATES:
            raise ValueError(f"mask_rate must be one of {list(MASK_RATES)} (bd3lms: P[mask | t] = t), got {mask_rate!r}")
        if not isinstance(ignore_bos, bool):
            raise ValueError(f"ignore_bos must be true or false, got {ignore_bos!r}")
        self.block_size, self.clip, self.ignore_bos = block_size, clip, ignore_bos
        self.noise = LogLinear(eps, mask_rate=mask_rate)

    # Checkpoints saved before these options existed were trained masking position 0 at the
    # mdlm repository's rate (docs/models.md §3.1).
    legacy_options = {"ignore_bos": False, "mask_rate": "mdlm"}

    def options(self) -> dict:
        return {"block_size": self.block_size, "clip": list(self.clip) if self.clip else None, "eps": self.noise.eps,
                "ignore_bos": self.ignore_bos, "mask_rate": self.noise.mask_rate}

    def given_prefix(self, n, length, schedule, prefix):
        """BOS at position 0 under ignore_bos (see the sample entry above), else as asked.
        Built on the device with no check to read back: it is clean by construction."""
        if prefix is None and self.ignore_bos:
            return torch.full((n, 1), self.special.bos, dtype=torch.long, device=self.device)
        return super().given_prefix(n, length, schedule, prefix)

    def kept_clean(self, x0: torch.Tensor) -> torch.Tensor | None:
        """(B, L) positions the forward process never masks: position 0 under ignore_bos."""
        if not self.ignore_bos:
            return None
        keep = torch.zeros_like(x0, dtype=torch.bool)
        keep[:, 0] = True
        return keep

    def blocks(self, length: int) -> int:
        if length % self.block_size:
            raise ValueError(f"length {length} is not divisible by block_size {self.block_size}; "
                             f"use a multiple of {self.block_size}")
        return length // self.block_size

    # --- training / likelihood ----------------------------------------------------------
    def token_ce(self, x0: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
        """(B, L) −log p_θ(x_i | z_t of i's block, x of earlier blocks) at masked positions, 0 at clean."""
        L = x0.shape[1]
        self.blocks(L)
        positions = torch.arange(L, device=x0.device).repeat(2)
        logits = self.net(torch.cat([zt, x0], dim=1), positions, masks.block_diffusion(L, self.block_size, x0.device))
        logits = self.subs_logits(logits[:, :L])  # only the z_t half is scored
        ce = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")
        return ce * (zt == self.special.mask)

    def token_nelbo(self, x0: torch.Tensor, t: torch.Tensor, generator=None, keep=None) -> torch.Tensor:
        """(B, L) one-sample NELBO terms for block times t (B, blocks); positions where
        ``keep`` (B, L) is True are never masked (a given prefix)."""
        t = t.repeat_interleave(self.block_size, dim=1)  # each token takes its block's t
        drop = uniform(x0.shape, generator, x0.device) < self.noise.mask_prob(t)
        drop = drop if keep is None else drop & ~keep
        zt = x0.masked_fill(drop, self.special.mask)
        return self.noise.weight(t) * self.token_ce(x0, zt)

    def loss(self, x0: torch.Tensor, generator=None) -> torch.Tensor:
        """Per-token NELBO (or the clipped-schedule objective): one t per block, antithetic over batch × blocks."""
        B, nb = x0.shape[0], self.blocks(x0.shape[1])
        lo, hi = self.clip if self.clip else (self.noise.eps, 1.0)
        t = lo + (hi - lo) * antithetic_times(B * nb, 0.0, generator, x0.device).view(B, nb)
        return self.token_nelbo(x0, t, generator, self.kept_clean(x0)).mean()

    @torch.no_grad()
    def nll(self, x0: torch.Tensor, draws: int = 1, generator=None) -> NLL:
        """Per-sequence NELBO with t ~ U[eps, 1] per block (never the clipped range), over L − 1
        tokens under ignore_bos (position 0 is given, as in the official evaluation), else L."""
        B, nb = x0.shape[0], self.blocks(x0.shape[1])
        times = per_sequence_times((B, nb), draws, self.noise.eps, generator, x0.device)
        keep = self.kept_clean(x0)
        nats = sum(self.token_nelbo(x0, t.view(B, nb), generator, keep).double().sum(dim=1) for t in times) / draws
        return NLL(nats, tokens=x0.shape[1] - self.ignore_bos, exact=False, estimator=f"nelbo(draws={draws})")

    # --- sampling ---------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n, length, schedule: SamplingSchedule, generator=None, use_cache=True,
               prefix=None) -> Generation:
        """Block-by-block sampling; schedule.steps per block, or schedule.first_hitting.
        A given prefix fills its blocks (they only write the cache) and the start of the next.

        use_cache=True: each denoising forward runs only the current block's L' queries (and
        only the rows that reveal a token at that step) against the KV cache of finished
        blocks; a finished block (except the last) is run once more to write the cache.
        use_cache=False: every step recomputes all rows over the whole prefix under the
        block-causal mask.  Same tokens for the same generator.
        Counters: nfe = denoising forwards + cache writes; nfe_per_sample likewise per row;
        tokens_computed = Σ over forwards of rows × query positions; extra["cache_writes"].
        A confidence rule (threshold, factor, entropy_bound) runs each block until it is
        full, every row that still holds a [MASK] at each step, on the eager path.
        """
        self.check_schedule(schedule)
        self.check_length(length)
        rule = schedule.confidence_rule()  # reveal by confidence (harness.unmasking.confidence) instead of a plan
        Lb, nb = self.block_size, self.blocks(length)
        device = self.device
        prefix = self.given_prefix(n, length, schedule, prefix)
        given = 0 if prefix is None else prefix.shape[1]
        x = torch.full((n, length), self.special.mask, dtype=torch.long, device=device)
        if prefix is not None:
            x[:, :given] = prefix
        positions = torch.arange(length, device=device)
        # Fixed-shape steps pad a block to a power of two: scratch slots past the end.
        steps = static_steps(self, n, length + Lb) if use_cache and rule is None else None
        cache = self.net.new_cache(n, length) if use_cache and steps is None else None
        nfe = tokens_computed = cache_writes = key_reads = pairs = 0
        per_row = torch.zeros(n, dtype=torch.long, device=device)
        first = given // Lb  # blocks before it are all given
        plans = None if rule else plan_reveals(
            n, Lb, noise=self.noise, steps=schedule.steps, first_hitting=schedule.first_hitting, generator=generator,
            device=device, windows=nb - first, given=given - first * Lb)  # every block's, up front
        step = torch.full((n, length), -1, dtype=torch.long, device=device)
        offset = 0  # steps a confidence rule has numbered so far
        for b in range(nb):
            lo, hi = b * Lb, (b + 1) * Lb
            block = x[:, lo:hi]  # a view: the sampler fills x in place
            attend = block_causal(hi, Lb, device)  # uncached: whole prefix; cached: its last L' rows

            if steps is not None:  # every row at a fixed shape (a CUDA graph on a GPU)
                def denoiser(rows, block=block, lo=lo, hi=hi):
                    logits = steps.step(block, positions[lo:hi].expand(n, Lb), start=lo, floor=hi)
                    return logits if rows is None else logits[rows]
            elif use_cache:
                def denoiser(rows, block=block, lo=lo, hi=hi, attend=attend):
                    c, toks = (cache, block) if rows is None else (rows_of(cache, rows, hi, self.net.cfg), block[rows])
                    return self.net(toks, positions[lo:hi], attend[lo:], c, commit=0)
            else:
                def denoiser(rows, lo=lo, hi=hi, attend=attend):
                    return self.net(x[:, :hi] if rows is None else x[rows, :hi], positions[:hi], attend)[:, lo:]

            if b < first:
                forwards, rows_run, run = 0, 0, 0
            elif rule is None:
                plan = plans[b - first]
                forwards, rows_run, run = ancestral_denoise(
                    block, denoiser, plan, mask_id=self.special.mask, generator=generator,
                    top_p=schedule.top_p, every_row=not use_cache, all_rows=steps is not None,
                )
                per_block = schedule.steps or Lb  # steps a block's plan numbers (first hitting: L')
                step[:, lo:hi] = torch.where(plan.when < per_block, b * per_block + plan.when, -1)
            else:
                forwards, rows_run, run, when = confident_denoise(
                    block, denoiser, rule, mask_id=self.special.mask, generator=generator, top_p=schedule.top_p)
                step[:, lo:hi] = torch.where(when >= 0, offset + when, -1)
                offset += int(when.max()) + 1
            nfe += forwards
            per_row += run
            tokens_computed += rows_run * (Lb if use_cache else hi)
            key_reads += rows_run * hi if use_cache else 0  # a block's queries attend to slots [0, hi)
            # cached: the block, both ways, over its cache; uncached: every block up to this one
            pairs += rows_run * (masks.allowed_pairs(Lb, lo, Lb) if use_cache else
                                 sum(masks.allowed_pairs(Lb, a, Lb) for a in range(0, hi, Lb)))
            if use_cache and b < nb - 1:
                # The finished block, clean, writes its keys/values: one more forward.
                if steps is not None:
                    steps.step(block, positions[lo:hi].expand(n, Lb), start=lo, floor=hi)
                else:
                    self.net(block, positions[lo:hi], attend[lo:], cache, commit=Lb)
                cache_writes += 1
                nfe += 1
                per_row += 1
                tokens_computed += n * Lb
                key_reads += n * hi
                pairs += n * masks.allowed_pairs(Lb, lo, Lb)
        extra = {"cache_writes": cache_writes}
        return Generation(x, nfe=nfe, tokens_computed=tokens_computed, nfe_per_sample=per_row, extra=extra,
                          key_reads=key_reads, attention_pairs=pairs, step=step,
                          order=step.argsort(dim=1, stable=True))

    def sample_log_prob(self, generation: Generation, top_p: float = 1.0) -> SampleLogProb:
        """Exact (see :meth:`LanguageModel.sample_log_prob`): pass r feeds z ⊕ x with, in every
        block, the positions of rank < r (their block's :func:`dense_rank`) clean in z, and
        scores those of rank r: under the training mask each block sees its own z and the
        clean earlier blocks, as the cached sampler's block did."""
        x, step = generation.tokens, generation.step
        n, L = x.shape
        rank = dense_rank(step.view(n, self.blocks(L), self.block_size)).view(n, L)
        passes = int(rank.max()) + 1
        positions = torch.arange(L, device=x.device).repeat(2)
        attend = masks.block_diffusion(L, self.block_size, x.device)
        total = torch.zeros(n, dtype=torch.float64, device=x.device)
        for r in range(passes):
            z = torch.where(rank < r, x, self.special.mask)
            logits = self.net(torch.cat([z, x], 1), positions, attend)[:, :L]
            total = total + scored_sum(self.drawn_log_probs(logits, x, top_p), step, rank == r)
        return SampleLogProb(total, passes=passes, tokens_computed=passes * n * 2 * L, exact=True,
                             estimator="exact")

    def elbo_log_prob(self, generation: Generation, draws: int = 1, generator=None) -> SampleLogProb:
        """−NELBO of the drawn positions given the given ones and, under ignore_bos, position 0
        (one t per block), differentiable:
        ``draws`` passes over z ⊕ x.  A lower bound on the marginal log p(x), NOT
        log p(tokens | steps); no top-p."""
        x = generation.tokens
        B, nb = x.shape[0], self.blocks(x.shape[1])
        times = per_sequence_times(B * nb, draws, self.noise.eps, generator, x.device)
        keep = generation.step < 0
        if self.ignore_bos:  # position 0 is context, as in the NELBO the model was trained on
            keep = keep | self.kept_clean(x)
        nats = sum(self.token_nelbo(x, t.view(B, nb), generator, keep).double().sum(1) for t in times) / draws
        return SampleLogProb(-nats, passes=draws, tokens_computed=draws * 2 * x.numel(), exact=False,
                             estimator=f"elbo(draws={draws})")
