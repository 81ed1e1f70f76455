"""Categorical sampling in float64 with nucleus (top-p) filtering.

float32 Gumbel noise is capped near 16.6 (-log(-log(1 - 2^-24))), which silently
removes the tail of the distribution, lowers sample entropy and flatters generative
perplexity as the number of steps grows (Zheng et al., arXiv 2409.02908).  Every
sampler in the harness therefore draws its tokens through :func:`sample_tokens`.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

_RECORDERS: list[torch.Tensor] = []  # active record_log_probs totals (a test hook; empty otherwise)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the smallest set whose probability reaches top_p.

    The sort/cumsum runs in the dtype of ``logits`` (the callers pass float64): a bf16
    cumsum would erode the tail.
    """
    if top_p >= 1.0:
        return logits
    if not 0.0 < top_p < 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # Drop a token when the mass strictly before it already reaches top_p (keeps >= 1 token).
    drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def gumbel_noise(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    u = torch.rand(shape, dtype=torch.float64, generator=generator, device=device)
    return -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))


def sample_tokens(logits: torch.Tensor, generator: torch.Generator | None, top_p: float = 1.0,
                  rows: torch.Tensor | None = None) -> torch.Tensor:
    """Gumbel-max draw of one token per row of ``logits`` (..., V), all in float64.

    ``rows``: the batch row each leading index of ``logits`` belongs to (default: the leading
    index itself), used only by :func:`record_log_probs`."""
    logits = top_p_filter(logits.to(torch.float64), top_p)
    tokens = (logits + gumbel_noise(logits.shape, generator, logits.device)).argmax(dim=-1)
    if _RECORDERS:
        logp = logits.log_softmax(-1).gather(-1, tokens[..., None]).reshape(logits.shape[0], -1).sum(1)
        rows = torch.arange(logits.shape[0], device=logits.device) if rows is None else rows
        for total in _RECORDERS:
            total.index_add_(0, rows.to(total.device), logp.to(total.device))
    return tokens


@contextmanager
def record_log_probs(n: int, device=None):
    """Test hook: within the block, every draw adds the log-probability of its token, at the
    moment it was drawn (float64, after SUBS and top-p renormalisation), to its batch row's
    entry of the yielded (n,) tensor — the reference for ``sample_log_prob``.  Off by default;
    when on it costs a log-softmax per draw, no host read-back."""
    total = torch.zeros(n, dtype=torch.float64, device=device)
    _RECORDERS.append(total)
    try:
        yield total
    finally:
        _RECORDERS.pop()  # nested blocks close in reverse order
