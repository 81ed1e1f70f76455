"""The estimators of log π(y | prompt) that RL on diffusion LMs uses (docs/likelihood.md §1),
each as a :class:`Plan`: the forwards it runs (:class:`~harness.likelihood.denoisers.Part`)
and how their values combine (a sum, or a non-additive ``combine``).

Every plan draws its noise (times, masks, orders) from ``generator`` in a fixed order, so
two plans built with equally seeded generators use the same noise: the ratio of a policy to
its old copy, or to a frozen reference, then compares like with like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from harness.likelihood.denoisers import (Part, complement_weight, draw_mask, esolm_sequential_log_probs,
                                          exact_parts, family, masked_log_probs, merge_steps, order_generation,
                                          schedule_of, time_shape)
from harness.models import Generation
from harness.schedules import per_sequence_times, uniform


@dataclass
class Plan:
    parts: list[Part]
    combine: Callable[[list[torch.Tensor]], torch.Tensor] | None  # None: the parts add up
    label: str
    kind: str  # "exact", "lower bound", "upper-bound surrogate", "approximation", "estimate"
    quantity: str


def times(shape, draws: int, eps: float, sampling: str, generator, device) -> list[torch.Tensor]:
    """The t of each of ``draws`` draws: "stratified" (one offset, draws evenly spaced, as the
    models' NELBOs), "iid", or "antithetic" (pairs t, 1 + eps − t)."""
    if sampling == "stratified":
        return list(per_sequence_times(shape, draws, eps, generator, device))
    if sampling == "iid":
        return [(eps + (1 - eps) * uniform(shape, generator, device, torch.float64)).float() for _ in range(draws)]
    if sampling == "antithetic":
        if draws % 2:
            raise ValueError(f"draws: antithetic pairs need an even number of draws, got {draws}")
        out = []
        for _ in range(draws // 2):
            t = eps + (1 - eps) * uniform(shape, generator, device, torch.float64)
            out += [t.float(), (1 + eps - t).float()]
        return out
    raise ValueError(f"sampling: use 'stratified', 'iid' or 'antithetic', got {sampling!r}")


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def trajectory(model, x, given, gen: Generation | None, *, shrink: int = 2, top_p: float = 1.0, **_):
    """TraceRL's shrinkage of the trajectory score: ``shrink`` consecutive sampler steps are
    scored as one (each of their tokens given only the tokens of earlier merged steps), so
    the passes drop by that factor; shrink = 1 is ``exact``."""
    _check_positive("shrink", shrink)
    if gen is None:
        raise ValueError("estimator 'trajectory' scores a sample's own trajectory: pass the Generation from "
                         "model.sample, not bare tokens")
    merged = Generation(gen.tokens, nfe=gen.nfe, tokens_computed=gen.tokens_computed, order=gen.order,
                        step=merge_steps(model, gen, shrink), extra=dict(gen.extra))
    if family(model) == "esolm" and "diffusion_steps" in gen.extra:
        merged.extra["diffusion_steps"] = -(-gen.extra["diffusion_steps"] // shrink)
    kind = "exact" if shrink == 1 else "approximation"
    return Plan(exact_parts(model, merged, top_p), None, f"trajectory(shrink={shrink})", kind,
                "log p(y | order, steps)" if shrink == 1 else "log p(y | order, steps) with merged steps")


def _diffusion_only(model, estimator: str) -> None:
    if family(model) == "esolm" and model.alpha_0 < 1:
        raise ValueError(f"{estimator}: {model.name} trained at alpha_0 = {model.alpha_0:g} has a sequential term "
                         f"this estimator's masks do not cover; use a checkpoint trained at alpha_0 = 1 or "
                         f"estimator 'elbo_mc'")


def exact(model, x, given, gen: Generation | None, *, top_p: float = 1.0, **_):
    if gen is None:
        raise ValueError("estimator 'exact' scores a sample under the order and steps it was drawn with: "
                         "pass the Generation from model.sample, not bare tokens")
    return Plan(exact_parts(model, gen, top_p), None, "exact", "exact", "log p(y | order, steps)")


def mean_field(model, x, given, gen, *, prompt_mask: float = 0.15, generator=None, **_):
    """d1 / diffu-GRPO: every completion token masked, each prompt token masked with
    probability ``prompt_mask``; one forward; Σ log p(y_i | z) over the completion.  (BD3-LM:
    the masked positions are masked in its clean context half as well.)"""
    if not 0.0 <= prompt_mask < 1.0:
        raise ValueError(f"prompt_mask must be in [0, 1), got {prompt_mask}")
    n, L = x.shape

    def run():
        masked = ~given | (given & (uniform(x.shape, generator, x.device) < prompt_mask))
        # hidden from BD3-LM's clean context half too: every block sees the completion masked
        return masked_log_probs(model, x, masked, masked, generator).masked_fill(given, 0.0).sum(1)
    tokens = n * L * (2 if family(model) == "bd3lm" else 1)
    return Plan([Part(run, 1, tokens)], None, f"mean_field(p={prompt_mask:g})", "approximation",
                "one-step mean-field log-likelihood")


def _elbo_parts(model, x, given, draws, sampling, generator):
    """One part per draw (two for Eso-LM at alpha_0 < 1: its sequential term), each −NELBO
    of that draw / draws; the same draws, in the same order, as the model's ``nll``."""
    n, L = x.shape
    kind = family(model)
    eps = model.eps if kind == "esolm" else model.noise.eps
    shape = time_shape(model, n, L)
    ts = None

    def draw(d):
        nonlocal ts
        if ts is None:  # drawn on first use, so the noise order is the model's nll's
            ts = times(shape, draws, eps, sampling, generator, x.device)
        masked, weight = draw_mask(model, x, given, ts[d], generator)
        value = (weight * masked_log_probs(model, x, masked, None, generator)).sum(1)
        if kind == "esolm" and model.alpha_0 < 1:
            seq = (uniform(x.shape, generator, x.device) >= model.alpha_0) & ~given
            value = value + esolm_sequential_log_probs(model, x, seq, generator).sum(1)
        return value / draws
    per_draw = 2 if kind == "bd3lm" else 1
    tokens = n * L * per_draw + (n * 2 * L if kind == "esolm" and model.alpha_0 < 1 else 0)
    forwards = 2 if kind == "esolm" and model.alpha_0 < 1 else 1
    return [Part(lambda d=d: draw(d), forwards, tokens) for d in range(draws)]


def elbo_mc(model, x, given, gen, *, draws: int = 1, sampling: str = "stratified", generator=None, **_):
    """Monte-Carlo −NELBO (LLaDA / VRPO's mc_num, SPG's num_t): ``draws`` times t."""
    _check_positive("draws", draws)
    if sampling not in ("stratified", "iid", "antithetic"):
        raise ValueError(f"sampling: use 'stratified', 'iid' or 'antithetic', got {sampling!r}")
    if sampling == "antithetic" and draws % 2:
        raise ValueError(f"draws: antithetic pairs need an even number of draws, got {draws}")
    return Plan(_elbo_parts(model, x, given, draws, sampling, generator), None,
                f"elbo_mc(K={draws}, {sampling})", "lower bound", "ELBO of log p(y) (order-marginal)")


def coupled(model, x, given, gen, *, pairs: int = 1, generator=None, **_):
    """DiffuCoder's coupled sampling: a mask M at time t and its complement, each token masked
    (and scored) in exactly one forward of the pair; the pair's value is
    ½ [w(t) Σ_M log p + w(t') Σ_{M^c} log p], t' the time whose mask rate is alpha_t."""
    _check_positive("pairs", pairs)
    _diffusion_only(model, "coupled")
    n, L = x.shape
    schedule = schedule_of(model)
    shape = time_shape(model, n, L)
    eps = schedule.eps
    state = {}

    def half(p, second):
        if p not in state:
            if "ts" not in state:
                state["ts"] = times(shape, pairs, eps, "stratified", generator, x.device)
            t = state["ts"][p]
            masked, weight = draw_mask(model, x, given, t, generator)
            state[p] = (masked, weight, complement_weight(model, t, L))
        masked, w_first, w_second = state[p]
        if second:
            masked, weight = ~masked & ~given, w_second
        else:
            weight = w_first
        return 0.5 * (weight * masked_log_probs(model, x, masked, None, generator)).sum(1) / pairs
    tokens = n * L * (2 if family(model) == "bd3lm" else 1)
    parts = [Part(lambda p=p, s=s: half(p, s), 1, tokens) for p in range(pairs) for s in (False, True)]
    return Plan(parts, None, f"coupled(pairs={pairs})", "lower bound", "ELBO of log p(y), complementary masks")


def eubo(model, x, given, gen, *, draws: int = 4, beta: float = 1.5, generator=None, **_):
    """SPG's upper-bound side, as its training code forms it: per completion token,
    (1/β) log mean_k [ [i masked in draw k] p_k(y_i)^β / m̂_k ] (m̂_k: the share of the
    completion draw k masks); tokens never masked are left out and the mean over the others
    is scaled to the completion length."""
    _check_positive("draws", draws)
    if beta < 1:
        raise ValueError(f"beta must be >= 1 (the Rényi order of the bound), got {beta}")
    _diffusion_only(model, "eubo")
    n, L = x.shape
    shape = time_shape(model, n, L)
    eps = schedule_of(model).eps
    state = {}

    def draw(d):
        if "ts" not in state:
            state["ts"] = times(shape, draws, eps, "stratified", generator, x.device)
        masked, _ = draw_mask(model, x, given, state["ts"][d], generator)
        share = masked.sum(1, keepdim=True).double() / (~given).sum(1, keepdim=True).clamp_min(1)
        logp = masked_log_probs(model, x, masked, None, generator)
        # p^β / m̂ at masked positions, 0 elsewhere: (n, L) — kept per token, not summed
        return torch.where(masked, (beta * logp).exp() / share.clamp_min(1e-12), torch.zeros((), dtype=logp.dtype,
                                                                                                device=x.device))

    def combine(values):
        mean = torch.stack(values).mean(0)
        scored = mean > 0
        per_token = torch.where(scored, mean.clamp_min(1e-300).log() / beta, torch.zeros((), dtype=mean.dtype,
                                                                                          device=x.device))
        count = scored.sum(1).clamp_min(1)
        return per_token.sum(1) * (~given).sum(1) / count
    tokens = n * L * (2 if family(model) == "bd3lm" else 1)
    return Plan([Part(lambda d=d: draw(d), 1, tokens) for d in range(draws)], combine,
                f"eubo(K={draws}, beta={beta:g})", "upper-bound surrogate", "SPG's token-wise EUBO of log p(y)")


def iw(model, x, given, gen, *, orders: int = 16, chunk: int = 64, generator=None, **_):
    """Eso-LM's importance-weighted estimate log (1/K) Σ_k p(y | order_k), orders from the
    model's own order prior, one token per step; ``chunk`` orders per batched forward."""
    _check_positive("orders", orders)
    _check_positive("chunk", chunk)
    n, L = x.shape
    parts = []
    for start in range(0, orders, chunk):
        c = min(chunk, orders - start)

        def run(c=c):
            xs, gs = x.repeat(c, 1), given.repeat(c, 1)
            synthetic = order_generation(model, xs, gs, generator)
            return model.sample_log_prob(synthetic).log_prob.view(c, n)
        probe = order_generation(model, x[:1], given[:1], torch.Generator(x.device).manual_seed(0))
        per = [p.tokens for p in exact_parts(model, probe)]
        parts.append(Part(run, len(per), sum(per) * c * n))

    def combine(values):
        return torch.logsumexp(torch.cat(values, 0), 0) - math.log(orders)
    kind = "exact" if orders == 1 else "estimate"
    quantity = "log p(y | order)" if orders == 1 else "log p(y) (order-marginal), IW over orders"
    return Plan(parts, combine, f"iw(K={orders})", kind, quantity)


BUILDERS = {"exact": exact, "trajectory": trajectory, "mean_field": mean_field, "elbo_mc": elbo_mc, "coupled": coupled, "eubo": eubo,
            "iw": iw}
