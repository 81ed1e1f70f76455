"""What every estimator needs from a model family, built from its public pieces
(docs/likelihood.md §2): log p(x_i | z) for a chosen mask, the forward process's mask and
NELBO weight at a time t, a synthetic one-token-per-step trajectory for an order, and the
exact score split into its passes (for the streaming backward).

Families: AR, MDLM, BD3-LM and Eso-LM (A)/(B).  A plug-in model gets ``exact`` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from baselines.ar import AR
from baselines.bd3lm import BD3LM
from baselines.mdlm import MDLM
from harness.esolm import EsoLM, sort_positions
from harness.models import Generation, LanguageModel, scored_sum
from harness.nn import masks
from harness.schedules import LogLinear, uniform
from harness.unmasking.ancestral import dense_rank


@dataclass
class Part:
    """One unit of work: ``fn()`` returns an (n,) float64 tensor (a pass's or a draw's
    contribution, differentiable); ``forwards`` / ``tokens``: what it runs."""

    fn: Callable[[], torch.Tensor]
    forwards: int
    tokens: int


def family(model: LanguageModel) -> str:
    for cls, name in ((AR, "ar"), (MDLM, "mdlm"), (BD3LM, "bd3lm"), (EsoLM, "esolm")):
        if isinstance(model, cls):
            return name
    return "plugin"


def masked_log_probs(model, x: torch.Tensor, masked: torch.Tensor, hide: torch.Tensor | None = None,
                     generator=None) -> torch.Tensor:
    """(n, L) float64 log p_θ(x_i | z) at the ``masked`` positions (0 elsewhere), z = x with
    them replaced by [MASK]; one forward.  ``hide``: positions also withheld from BD3-LM's
    clean context half (d1's prompt masking); the other models have no separate context.
    Eso-LM sees z sorted clean-first with the masked tokens in a random order (its diffusion
    forward); the log-probabilities come back in original positions."""
    kind = family(model)
    n, L = x.shape
    mask_id = model.special.mask
    z = x.masked_fill(masked, mask_id)
    if kind == "mdlm":
        logits = model.net(z, torch.arange(L, device=x.device), masks.bidirectional(L, x.device))
    elif kind == "bd3lm":
        model.blocks(L)
        context = x if hide is None else x.masked_fill(hide, mask_id)
        logits = model.net(torch.cat([z, context], 1), torch.arange(L, device=x.device).repeat(2),
                           masks.block_diffusion(L, model.block_size, x.device))[:, :L]
    elif kind == "esolm":
        perm, inv = sort_positions(~masked, generator, shuffle_rest=True)
        zs = z.gather(1, perm)
        attend = masks.esolm_diffusion(L, (~masked).sum(1), model.variant, x.device)
        logp = model.drawn_log_probs(model.net(zs, perm, attend), x.gather(1, perm)).gather(1, inv)
        return torch.where(masked, logp, torch.zeros((), dtype=logp.dtype, device=x.device))
    else:
        raise ValueError(f"{model.name}: mask-based estimators need a masked diffusion model "
                         f"(mdlm, bd3lm, esolm-a/b); use estimator 'exact'")
    logp = model.drawn_log_probs(logits, x)
    return torch.where(masked, logp, torch.zeros((), dtype=logp.dtype, device=x.device))


def esolm_sequential_log_probs(model, x: torch.Tensor, masked: torch.Tensor, generator=None) -> torch.Tensor:
    """(n, L) Eso-LM's sequential-term log-probabilities: the clean tokens first (random
    order), then the ``masked`` ones left to right, one forward on z ⊕ x
    (docs/models.md §4.4); 0 at clean positions."""
    n, L = x.shape
    perm, inv = sort_positions(~masked, generator)
    xs, ms = x.gather(1, perm), masked.gather(1, perm)
    zs = xs.masked_fill(ms, model.special.mask)
    attend = masks.esolm_sequential(L, (~ms).sum(1), model.variant, x.device)
    logits = model.net(torch.cat([zs, xs], 1), torch.cat([perm, perm], 1), attend)[:, :L]
    logp = model.drawn_log_probs(logits, xs).gather(1, inv)
    return torch.where(masked, logp, torch.zeros((), dtype=logp.dtype, device=x.device))


def schedule_of(model) -> LogLinear:
    """The forward process whose NELBO the mask estimators use: MDLM's and BD3-LM's own;
    Eso-LM's diffusion phase at its training alpha_0 (scale alpha_0)."""
    if family(model) == "esolm":
        return LogLinear(model.eps, model.alpha_0)
    return model.noise


def time_shape(model, n: int, L: int) -> tuple[int, ...]:
    """One t per row, or per (row, block) for BD3-LM."""
    return (n, model.blocks(L)) if family(model) == "bd3lm" else (n,)


def per_position(model, t: torch.Tensor, L: int) -> torch.Tensor:
    """(n, L) time of each position from (n,) or BD3-LM's (n, blocks)."""
    if t.dim() == 2:
        return t.repeat_interleave(model.block_size, dim=1)
    return t[:, None].expand(-1, L)


def draw_mask(model, x: torch.Tensor, given: torch.Tensor, t: torch.Tensor, generator=None):
    """(masked, weight): the forward process at times t — each free position masked with
    probability mask_prob(t) = 1 − alpha_t (given positions never) — and each position's
    NELBO weight −alpha'_t / (1 − alpha_t), as the models' own NELBOs draw them."""
    schedule = schedule_of(model)
    tt = per_position(model, t, x.shape[1])
    u = uniform(x.shape, generator, x.device)
    # Eso-LM's diffusion term draws 'u >= alpha_t'; MDLM and BD3-LM 'u < 1 - alpha_t': the same law
    masked = (u >= schedule.alpha(tt)) if family(model) == "esolm" else (u < schedule.mask_prob(tt))
    return masked & ~given, schedule.weight(tt).double()


def complement_weight(model, t: torch.Tensor, L: int) -> torch.Tensor:
    """(n, L) NELBO weight of the complement of a mask drawn at t: a mask of rate
    1 − mask_prob(t), i.e. the weight at the time t' whose mask rate that is."""
    schedule = schedule_of(model)
    rate = 1 - schedule.mask_prob(per_position(model, t, L)).double()
    return schedule.scale * schedule.slope / rate


def order_generation(model, x: torch.Tensor, given: torch.Tensor, generator=None) -> Generation:
    """A trajectory that reveals ONE token per step in an order drawn from the model's
    order prior (docs/likelihood.md §3): uniform over the free positions (MDLM), within each
    block, blocks left to right (BD3-LM), or Eso-LM's round(alpha_0·G) random diffusion
    positions then the rest left to right.  ``sample_log_prob`` of it is log p(x | order).
    The given positions must be a prefix for Eso-LM (its sampler's only kind)."""
    kind = family(model)
    n, L = x.shape
    device = x.device
    if kind in ("mdlm", "bd3lm"):
        u = uniform((n, L), generator, device, torch.float64).masked_fill(given, -1.0)
        width = L if kind == "mdlm" else model.block_size
        rank = u.view(n, -1, width).argsort(-1).argsort(-1).view(n, L)
        base = torch.arange(L, device=device) // width * width
        step = torch.where(given, -1, base + rank)
        return Generation(x, nfe=0, tokens_computed=0, step=step, order=step.argsort(dim=1, stable=True))
    if kind == "esolm":
        P = int(given[0].sum())
        if not bool(given[:, :P].all()) or bool(given[:, P:].any()):
            raise ValueError("Eso-LM's orders need the given positions to be a prefix")
        free = L - P
        n_diff = round(model.alpha_0 * free)
        order = P + model.draw_order(n, free, n_diff, generator)
        order = torch.cat([torch.arange(P, device=device).expand(n, P), order], 1)
        sorted_step = torch.cat([torch.full((P,), -1, device=device), torch.arange(free, device=device)])
        step = sorted_step.expand(n, L).gather(1, order.argsort(1))
        return Generation(x, nfe=0, tokens_computed=0, step=step, order=order,
                          extra={"diffusion_steps": n_diff})
    raise ValueError(f"{model.name}: order-based estimates need mdlm, bd3lm or esolm-a/b")


def merge_steps(model, gen: Generation, shrink: int) -> torch.Tensor:
    """(n, L) the sampler's steps with every ``shrink`` consecutive ones (of a row, or of a
    BD3-LM block) merged into one; given positions stay −1."""
    step = gen.step
    if family(model) == "bd3lm":
        n, L = step.shape
        rank = dense_rank(step.view(n, -1, model.block_size)).view(n, L)
        block = torch.arange(L, device=step.device) // model.block_size * model.block_size
        return torch.where(step < 0, -1, block + torch.div(rank, shrink, rounding_mode="floor"))
    return torch.where(step < 0, -1, torch.div(dense_rank(step), shrink, rounding_mode="floor"))


def exact_parts(model, gen: Generation, top_p: float = 1.0) -> list[Part]:
    """``sample_log_prob`` split into its passes, each a :class:`Part` whose values sum to it
    (the tests hold them equal): the streaming backward runs them a chunk at a time.  AR and
    Eso-LM (B) score in one pass; a plug-in model is one part."""
    kind = family(model)
    x, step = gen.tokens, gen.step
    n, L = x.shape
    mask_id = model.special.mask
    one = lambda: model.sample_log_prob(gen, top_p).log_prob  # noqa: E731
    if kind == "mdlm":
        rank = dense_rank(step)
        positions, attend = torch.arange(L, device=x.device), masks.bidirectional(L, x.device)

        def mdlm_pass(r):
            z = torch.where(rank < r, x, mask_id)
            return scored_sum(model.drawn_log_probs(model.net(z, positions, attend), x, top_p), step, rank == r)
        return [Part(lambda r=r: mdlm_pass(r), 1, n * L) for r in range(int(rank.max()) + 1)]
    if kind == "bd3lm":
        rank = dense_rank(step.view(n, model.blocks(L), model.block_size)).view(n, L)
        positions = torch.arange(L, device=x.device).repeat(2)
        attend = masks.block_diffusion(L, model.block_size, x.device)

        def bd3_pass(r):
            z = torch.where(rank < r, x, mask_id)
            logits = model.net(torch.cat([z, x], 1), positions, attend)[:, :L]
            return scored_sum(model.drawn_log_probs(logits, x, top_p), step, rank == r)
        return [Part(lambda r=r: bd3_pass(r), 1, n * 2 * L) for r in range(int(rank.max()) + 1)]
    if kind == "esolm" and model.variant == "A":
        order = gen.order
        xs, s = x.gather(1, order), step.gather(1, order)
        k_max = gen.extra["diffusion_steps"]

        def diffusion_pass(k):
            clean = s < k
            z = torch.where(clean, xs, mask_id)
            logits = model.net(z, order, masks.esolm_diffusion(L, clean.sum(1), "A", x.device))
            return scored_sum(model.drawn_log_probs(logits, xs, top_p), s, s == k)

        def sequential_pass():
            clean = s < k_max
            z = torch.where(clean, xs, mask_id)
            logits = model.net(torch.cat([z, xs], 1), torch.cat([order, order], 1),
                               masks.esolm_sequential(L, clean.sum(1), "A", x.device))[:, :L]
            return scored_sum(model.drawn_log_probs(logits, xs, top_p), s, ~clean)
        parts = [Part(lambda k=k: diffusion_pass(k), 1, n * L) for k in range(k_max)]
        if bool((s >= k_max).any()):
            parts.append(Part(sequential_pass, 1, n * 2 * L))
        return parts
    tokens = n * (L - 1) if kind == "ar" else n * 2 * L
    return [Part(one, 1, tokens)]
