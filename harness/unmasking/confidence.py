"""Confidence-based parallel decoding on a window (docs/models.md §2.4), shared by MDLM and
BD3-LM: instead of a reveal plan drawn up front, each step looks at the denoiser's
distributions over the still-masked positions and reveals the most confident ones.

rules (confidence = a position's top probability, after SUBS and the nucleus cut; positions
sorted by it, most confident first, ties by position):
  threshold τ      every position with confidence >= τ (Fast-dLLM's threshold rule)
  factor f         the longest run whose i-th (1-based) has confidence >= 1 − f/(i + 1)
                   (Fast-dLLM's factor rule; the first always qualifies)
  entropy_bound γ  the longest run whose summed entropies stay <= γ (the EB sampler)
and always at least the most confident one, so a window of W masked positions takes at
most W steps.  The revealed positions take Gumbel-max draws from the same distributions,
in (row, position) order; with a RowNoise generator each row draws from its own stream.
"""

from __future__ import annotations

from typing import Callable

import torch

from harness.sampling import Drawer, nucleus_threshold


def reveal_counts(confidence: torch.Tensor, entropy: torch.Tensor, masked: torch.Tensor, rule: str,
                  value: float) -> torch.Tensor:
    """(R,) how many of each row's masked positions a step reveals, given their confidence and
    entropy (R, W) sorted by descending confidence and ``masked`` (R,) the count per row."""
    R, W = confidence.shape
    index = torch.arange(1, W + 1, device=confidence.device)
    live = index[None, :] <= masked[:, None]
    if rule == "threshold":
        ok = confidence >= value
    elif rule == "factor":
        ok = confidence >= 1 - value / (index[None, :] + 1)
    elif rule == "entropy_bound":
        ok = entropy.cumsum(-1) <= value
    else:
        raise ValueError(f"unknown confidence rule {rule!r}")
    ok = ok & live
    ok[:, 0] = True  # at least the most confident one
    run = ok.long().cumprod(-1).sum(-1)  # the leading run of qualifying positions
    return torch.minimum(run, masked)


def step_statistics(logits: torch.Tensor, masked: torch.Tensor, mask_id: int, top_p: float):
    """Confidence and entropy (R, W) of each masked position's distribution, −inf / 0 where
    unmasked (only the masked positions are computed: late steps have few)."""
    picked = logits[masked].to(torch.float64)  # (M, V), a copy
    picked[:, mask_id] = float("-inf")
    if top_p < 1.0:
        picked.masked_fill_(picked < nucleus_threshold(picked, top_p), float("-inf"))
    logp = picked.log_softmax(-1)
    p = logp.exp()
    confidence = torch.full(masked.shape, float("-inf"), dtype=torch.float64, device=logits.device)
    entropy = torch.zeros(masked.shape, dtype=torch.float64, device=logits.device)
    confidence[masked] = p.max(-1).values
    entropy[masked] = -(p * logp.nan_to_num(neginf=0.0)).sum(-1)
    return confidence, entropy


def confident_denoise(
    z: torch.Tensor,
    denoiser: Callable[[torch.Tensor | None], torch.Tensor],
    rule: tuple[str, float],
    *,
    mask_id: int,
    generator,
    top_p: float,
    on_step: Callable[[int], None] | None = None,
    after_draws: Callable | None = None,
) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """Denoise the window z (n, W) in place until no [MASK] is left, revealing by ``rule``.

    A step runs the rows that still hold a [MASK] (each reveals at least one position, so
    none is run for nothing) through ``denoiser(rows)`` (raw logits (len(rows), W, V); rows
    None: all).  ``on_step`` and ``after_draws`` as in :func:`ancestral_denoise`.
    Returns (forwards, Σ rows over forwards, forwards per row, step (n, W): the step that
    drew each position, −1 where it was given).
    """
    n, W = z.shape
    name, value = rule
    per_row = torch.zeros(n, dtype=torch.long, device=z.device)
    when = torch.full((n, W), -1, dtype=torch.long, device=z.device)
    forwards = rows_run = k = 0
    while True:
        masked = z == mask_id
        active = masked.any(1).nonzero()[:, 0]
        if active.numel() == 0:
            break
        if on_step is not None:
            on_step(k)
        whole = active.numel() == n
        logits = denoiser(None if whole else active)
        forwards, rows_run = forwards + 1, rows_run + active.numel()
        per_row[active] += 1
        confidence, entropy = step_statistics(logits, masked[active], mask_id, top_p)
        order = confidence.argsort(dim=-1, descending=True, stable=True)
        count = reveal_counts(confidence.gather(-1, order), entropy.gather(-1, order), masked[active].sum(1),
                              name, value)
        chosen = torch.zeros_like(masked[active])
        chosen.scatter_(1, order, torch.arange(W, device=z.device)[None, :] < count[:, None])
        local, cols = chosen.nonzero(as_tuple=True)  # (row, position) order
        rows = active[local]
        drawer = Drawer(logits.shape[-1], generator, top_p, mask_id, keep_noise=after_draws is not None)
        for j in range(0, rows.numel(), drawer.group):
            g = slice(j, j + drawer.group)
            drawer.push(logits[local[g], cols[g]], rows[g])
        drawn = drawer.finish().to(z.device)
        z[rows, cols] = drawn
        when[rows, cols] = k
        if after_draws is not None:
            after_draws(rows, cols, drawn, torch.cat(drawer.noise))
        k += 1
    return forwards, rows_run, per_row, when
