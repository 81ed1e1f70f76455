"""log π(y | prompt) for RL on diffusion LMs: every estimator behind one function
(docs/likelihood.md).

    est = estimate(model, gen_or_tokens, "elbo_mc", draws=4, generator=g)
    est.log_prob      # (n,) float64, differentiable
    est.forwards, est.tokens_computed, est.kind, est.quantity

Estimators (what each estimates is in ``est.kind`` / ``est.quantity``):
  exact       log p(y | order, steps) of a model's own sample (``sample_log_prob``)
  trajectory  the same with ``shrink`` consecutive steps merged (TraceRL; fewer passes)
  mean_field  d1's one-step estimate: completion all-[MASK], one forward (an approximation)
  elbo_mc     −NELBO over K times t (a lower bound on the order-marginal log p(y))
  coupled     complementary mask pairs, each token scored once per pair (a lower bound)
  eubo        SPG's token-wise upper-bound surrogate
  iw          log (1/K) Σ_k p(y | order_k) (K = 1: exact given the order; K → ∞: log p(y))

:func:`backward` runs ``Σ weights · log_prob`` backward a chunk of passes (or draws) at a
time, so memory stays that of one chunk, not of every pass's graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.likelihood.estimators import BUILDERS, Plan
from harness.models import Generation

ESTIMATORS = tuple(BUILDERS)


@dataclass
class Estimate:
    """Per-sample log-probability estimates and what they cost.  ``forwards``: network
    forwards run (each over the whole batch, or a batch of orders); ``tokens_computed``:
    query positions run through the network, summed over forwards and rows (a backward runs
    through the same positions)."""

    log_prob: torch.Tensor
    forwards: int
    tokens_computed: int
    estimator: str
    kind: str
    quantity: str


def given_positions(model, sample, prompt) -> tuple[torch.Tensor, torch.Tensor, Generation | None]:
    """(tokens, given (n, L) bool, generation or None).  A Generation's given positions are
    those its sampler did not draw (step < 0); for bare tokens ``prompt`` is the number of
    leading given positions (or an (n, L) bool mask), default none (AR: its BOS)."""
    if isinstance(sample, Generation):
        if prompt is not None:
            raise ValueError("prompt: a Generation records its own given positions; give prompt only with bare tokens")
        return sample.tokens, sample.step < 0, sample
    x = torch.as_tensor(sample)
    if x.dim() != 2 or x.dtype != torch.long:
        raise ValueError(f"sample must be a Generation or an (n, L) LongTensor of token ids, got {tuple(x.shape)} "
                         f"{x.dtype}")
    n, L = x.shape
    if isinstance(prompt, torch.Tensor):
        given = prompt.to(torch.bool).expand(n, L)
    else:
        P = (1 if model.name == "ar" else 0) if prompt is None else int(prompt)
        if not 0 <= P < L:
            raise ValueError(f"prompt: {P} given positions leave nothing to score in length {L}; use 0 <= prompt < {L}")
        given = (torch.arange(L, device=x.device) < P).expand(n, L)
    gen = None
    if model.name == "ar":  # AR's trajectory is fixed: position i drawn at step i - 1
        step = torch.arange(-1, L - 1, device=x.device).expand(n, L)
        gen = Generation(x, nfe=0, tokens_computed=0, step=torch.where(given, -1, step),
                         order=torch.arange(L, device=x.device).expand(n, L))
    return x, given.to(x.device), gen


def plan(model, sample, estimator: str, prompt=None, **kw) -> Plan:
    if estimator not in BUILDERS:
        raise ValueError(f"estimator: unknown {estimator!r}; choose from {', '.join(ESTIMATORS)}")
    x, given, gen = given_positions(model, sample, prompt)
    if model.name == "ar" and estimator != "exact":
        raise ValueError(f"estimator {estimator!r}: AR's log p(y) is exact in one forward; use 'exact'")
    kept = getattr(model, "kept_clean", None)
    if estimator != "exact" and kept is not None and kept(x) is not None:
        given = given | kept(x)  # positions its forward process never masks (BD3-LM's BOS)
    return BUILDERS[estimator](model, x, given, gen, **kw)


def _finish(p: Plan, values: list[torch.Tensor]) -> torch.Tensor:
    return p.combine(values) if p.combine is not None else torch.stack(values).sum(0)


def estimate(model, sample, estimator: str = "exact", prompt=None, **kw) -> Estimate:
    """log π(y) per sample by ``estimator`` (see the module docstring), differentiable when
    gradients are enabled.  ``kw``: the estimator's own settings (draws, pairs, orders,
    chunk, beta, prompt_mask, sampling, top_p) and ``generator`` for its noise."""
    p = plan(model, sample, estimator, prompt, **kw)
    values = [part.fn() for part in p.parts]
    return Estimate(_finish(p, values), sum(q.forwards for q in p.parts), sum(q.tokens for q in p.parts),
                    p.label, p.kind, p.quantity)


def backward(model, sample, estimator: str, weights: torch.Tensor, chunk: int | None = 1, prompt=None,
             on_chunk=None, **kw) -> Estimate:
    """Backpropagate Σ_b weights_b · log π(y_b) and return the (detached) estimate.

    For an additive estimator (exact, trajectory, elbo_mc, coupled, mean_field) the parts run ``chunk``
    at a time, each chunk's graph freed by its own backward: the gradients accumulate in
    ``.grad`` and equal one backward through the whole graph.  ``chunk=None`` keeps one graph
    (the plain way).  iw and eubo combine their parts non-linearly and always keep one graph.
    ``on_chunk()``, if given, runs after each chunk's backward (the benchmark's memory probe)."""
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1 (passes per backward) or None, got {chunk}")
    p = plan(model, sample, estimator, prompt, **kw)
    weights = weights.detach().to(torch.float64)
    if p.combine is not None or chunk is None:
        value = _finish(p, [part.fn() for part in p.parts])
        (weights * value).sum().backward()
        total = value.detach()
        on_chunk() if on_chunk else None
    else:
        total = None
        for start in range(0, len(p.parts), chunk):
            value = torch.stack([part.fn() for part in p.parts[start:start + chunk]]).sum(0)
            (weights * value).sum().backward()
            total = value.detach() if total is None else total + value.detach()
            on_chunk() if on_chunk else None
    return Estimate(total, sum(q.forwards for q in p.parts), sum(q.tokens for q in p.parts), p.label, p.kind,
                    p.quantity)
