"""Masked diffusion language model, MDLM (docs/models.md §2): the shared trunk, bidirectional.

forward process   z_t keeps each token of x with probability alpha_t and replaces it by
                  [MASK] otherwise; log-linear alpha_t = 1 − (1 − eps)·t.
denoiser          p_θ(x_i | z_t) with SUBS: the [MASK] logit is −inf and clean positions
                  carry over, so only masked positions are scored.  There is no time input
                  (the network is time-agnostic), which is what lets the sampler reuse work.
loss / NELBO      E_{t~U[eps,1]} [ −alpha'_t / (1 − alpha_t) · Σ_{i masked} −log p_θ(x_i | z_t) ]
                  (weight 1/t for this schedule), t antithetic across the batch.
sample            ancestral, T steps on t_k = 1 − k/T.  Every position starts as [MASK],
                  position 0 included, exactly as the loss masks it: BOS is generated, not
                  given.  (With rotary positions only, an all-[MASK] input gives every
                  position the same prediction, so the first reveals are position-agnostic;
                  BOS at 0 is learned only relative to tokens already revealed.)
sample_log_prob   exact log p(tokens | reveal steps): one bidirectional pass per distinct
                  step of a row (≤ min(T, L); the rows' j-th steps share pass j), each scoring
                  the positions that step drew given those revealed before it.  The usual
                  cheaper quantity is the NELBO: ``elbo_log_prob`` (a bound on the marginal
                  log p(x), not the order-conditional one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness.models import NLL, Generation, LanguageModel, SampleLogProb, scored_sum
from harness.nn import masks
from harness.nn.steps import static_steps
from harness.memory import row_chunk
from harness.unmasking.ancestral import ancestral_denoise, dense_rank, plan_reveals  # noqa: F401  (re-exported)
from harness.unmasking.remdm import remdm_plan
from harness.unmasking.blocks import sample_blocks
from harness.sampling import SAMPLE_CHUNK_ELEMENTS, Drawer  # noqa: F401  (re-exported)
from harness.schedules import LogLinear, SamplingSchedule, antithetic_times, per_sequence_times, uniform  # noqa: F401



class MDLM(LanguageModel):
    name = "mdlm"
    display_name = "MDLM"
    color = "#1f77b4"
    schedule_fields = ("steps", "first_hitting", "block_length", "cache", "refresh", "threshold", "factor",
                       "entropy_bound", "remdm_eta")
    importable = True
    fixed_steps_count_every_row = True

    @classmethod
    def check_schedule(cls, schedule: SamplingSchedule, options: dict | None = None) -> None:
        super().check_schedule(schedule, options)
        schedule.check_masked_decoding("mdlm")
        if schedule.first_hitting:
            extra = [k for k in ("steps", "block_length", "threshold", "factor", "entropy_bound", "remdm_eta")
                     if getattr(schedule, k) is not None]
            if extra:
                raise ValueError(f"mdlm: schedule field 'first_hitting' reveals one position per step over the whole "
                                 f"sequence; drop {extra}")
        elif schedule.steps is None and schedule.confidence_rule() is None:
            raise ValueError("mdlm needs 'steps' in every schedule (or 'first_hitting', or a confidence rule: "
                             "'threshold', 'factor' or 'entropy_bound'), e.g. schedules: [{steps: [8, 32]}]")

    @classmethod
    def default_schedule(cls, schedule, new_positions, options=None):
        """T = L: one grid step per position, the finest the ancestral sampler takes."""
        if schedule.steps is not None or schedule.first_hitting or schedule.confidence_rule() is not None:
            return schedule
        return schedule.model_copy(update={"steps": new_positions})

    def cache_capacity(self, length: int) -> int:
        return 0  # every step is a full forward

    def __init__(self, backbone, special, eps: float = 1e-3):
        super().__init__(backbone, special)
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        self.noise = LogLinear(eps)

    def options(self) -> dict:
        return {"eps": self.noise.eps}

    # --- training / likelihood ----------------------------------------------------------
    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, generator=None) -> torch.Tensor:
        """z_t: mask each token independently with probability 1 − alpha_t (t: (B,) or (B, L))."""
        t = t[:, None] if t.dim() == 1 else t
        drop = uniform(x0.shape, generator, x0.device) < 1 - self.noise.alpha(t)
        return x0.masked_fill(drop, self.special.mask)

    def token_ce(self, x0: torch.Tensor, zt: torch.Tensor) -> torch.Tensor:
        """(B, L) −log p_θ(x_i | z_t) at masked positions, 0 at clean ones (SUBS carry-over)."""
        L = x0.shape[1]
        logits = self.subs_logits(self.net(zt, torch.arange(L, device=x0.device), masks.bidirectional(L, x0.device)))
        ce = F.cross_entropy(logits.transpose(1, 2), x0, reduction="none")
        return ce * (zt == self.special.mask)

    def token_nelbo(self, x0: torch.Tensor, t: torch.Tensor, generator=None, keep=None) -> torch.Tensor:
        """(B, L) one-sample NELBO terms weight(t)·[i masked]·(−log p_θ(x_i | z_t)) at times t (B,);
        positions where ``keep`` (B, L) is True are never masked (a given prefix)."""
        zt = self.corrupt(x0, t, generator)
        zt = zt if keep is None else torch.where(keep, x0, zt)
        return self.noise.weight(t)[:, None] * self.token_ce(x0, zt)

    def loss(self, x0: torch.Tensor, generator=None) -> torch.Tensor:
        """Per-token NELBO: t antithetic across the batch, averaged over all B·L tokens."""
        t = antithetic_times(x0.shape[0], self.noise.eps, generator, x0.device)
        return self.token_nelbo(x0, t, generator).mean()

    @torch.no_grad()
    def nll(self, x0: torch.Tensor, draws: int = 1, generator=None) -> NLL:
        """Per-sequence NELBO (nats over all L tokens), averaged over ``draws`` t per sequence."""
        times = per_sequence_times((x0.shape[0],), draws, self.noise.eps, generator, x0.device)
        nats = sum(self.token_nelbo(x0, t, generator).double().sum(dim=1) for t in times) / draws
        return NLL(nats, tokens=x0.shape[1], exact=False, estimator=f"nelbo(draws={draws})")

    # --- sampling ---------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n, length, schedule: SamplingSchedule, generator=None, use_cache=True,
               prefix=None) -> Generation:
        """Ancestral sampling from all-[MASK] (but the given prefix) with T = schedule.steps
        (any T ≥ 1, T > L allowed), or first hitting: one uniformly chosen masked position per
        step, the T → ∞ limit of the ancestral sampler with its empty steps skipped (NFE = the
        positions to generate).

        use_cache=True runs a row only at steps where it reveals a token (time-agnostic reuse);
        use_cache=False runs every row at every step.  Same tokens for the same generator.
        Counters: nfe = forwards run (over any subset of rows, each counts once);
        nfe_per_sample = forwards each row took part in, ≤ min(T, L) with reuse — the final
        fill is the grid's last step (s = 0), not an extra forward; tokens_computed =
        Σ over forwards of rows·L (every forward runs all L query positions).
        """
        self.check_schedule(schedule)
        self.check_length(length)
        if schedule.block_length is not None or schedule.confidence_rule() is not None:
            return sample_blocks(self, n, length, schedule, generator, use_cache, prefix)
        device = self.device
        prefix = self.given_prefix(n, length, schedule, prefix)
        given = 0 if prefix is None else prefix.shape[1]
        z = torch.full((n, length), self.special.mask, dtype=torch.long, device=device)
        if prefix is not None:
            z[:, :given] = prefix
        positions = torch.arange(length, device=device)
        attend = masks.bidirectional(length, device)

        steps = static_steps(self, n, length) if use_cache else None  # keyed by length; no cache is allocated
        chunk = row_chunk(self, n, length, length)  # rows per forward within the memory budget

        def denoiser(rows):
            if steps is not None:  # every row at a fixed shape (a CUDA graph on a GPU)
                if rows is None:
                    return steps.full(z, positions.expand(n, length))
                # a chunk of rows, padded to the chunk size: one more fixed shape
                padded = torch.cat([rows, rows[-1:].expand(max(chunk, len(rows)) - len(rows))])
                return steps.full(z[padded], positions.expand(len(padded), length))[: len(rows)]
            return self.net(z if rows is None else z[rows], positions, attend)

        if schedule.remdm_eta is not None:  # remasking: the same loop on a plan that also masks again
            plan = remdm_plan(n, length, noise=self.noise, steps=schedule.steps, eta=schedule.remdm_eta,
                              generator=generator, device=device, given=given)
        else:
            plan = plan_reveals(n, length, noise=self.noise, steps=schedule.steps,
                                first_hitting=schedule.first_hitting, generator=generator, device=device, given=given)[0]
        forwards, rows_run, per_row = ancestral_denoise(
            z, denoiser, plan, mask_id=self.special.mask, generator=generator, top_p=schedule.top_p,
            every_row=not use_cache, all_rows=steps is not None, chunk=chunk,
        )
        step = torch.where(plan.when < (length if schedule.first_hitting else schedule.steps), plan.when, -1)
        return Generation(z, nfe=forwards, tokens_computed=rows_run * length, nfe_per_sample=per_row,
                          attention_pairs=rows_run * masks.allowed_pairs(length, 0, length),
                          step=step, order=step.argsort(dim=1, stable=True), extra={"row_chunk": chunk})

    def sample_log_prob(self, generation: Generation, top_p: float = 1.0) -> SampleLogProb:
        """Exact (see :meth:`LanguageModel.sample_log_prob`): pass r runs every row with the
        positions of rank < r clean (:func:`dense_rank`) and scores those of rank r — what the
        sampler's r-th forward of that row saw, reuse or not.  Passes: the most forwards any
        row took (≤ min(T, L))."""
        x, step = generation.tokens, generation.step
        n, L = x.shape
        rank = dense_rank(step)
        passes = int(rank.max()) + 1
        positions, attend = torch.arange(L, device=x.device), masks.bidirectional(L, x.device)
        total = torch.zeros(n, dtype=torch.float64, device=x.device)
        for r in range(passes):
            z = torch.where(rank < r, x, self.special.mask)
            logp = self.drawn_log_probs(self.net(z, positions, attend), x, top_p)
            total = total + scored_sum(logp, step, rank == r)
        return SampleLogProb(total, passes=passes, tokens_computed=passes * n * L, exact=True, estimator="exact")

    def elbo_log_prob(self, generation: Generation, draws: int = 1, generator=None) -> SampleLogProb:
        """−NELBO of the drawn positions given the given ones, differentiable: ``draws``
        bidirectional passes (t stratified per row).  A lower bound on the marginal log p(x)
        over all orders, NOT log p(tokens | steps): the cheap quantity MDLM fine-tuning
        usually uses in its place; no top-p."""
        x = generation.tokens
        keep = generation.step < 0
        times = per_sequence_times(x.shape[0], draws, self.noise.eps, generator, x.device)
        nats = sum(self.token_nelbo(x, t, generator, keep).double().sum(1) for t in times) / draws
        return SampleLogProb(-nats, passes=draws, tokens_computed=draws * x.numel(), exact=False,
                             estimator=f"elbo(draws={draws})")
