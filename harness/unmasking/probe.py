"""The cache-exactness metric (docs/models.md §2.4): how far a cached step's distributions are
from what the same step computes without the cache.

For each draw measured, with c the cached logits and u the uncached ones at the drawn
position (both after SUBS):
  max |Δ logit|    max over the vocabulary of |u − c| (the largest over all draws);
  KL               KL(softmax u ‖ softmax c), averaged over the draws;
  flip             whether the Gumbel-max draw with the same noise picks another token
                   from u than it did from c (averaged: the fraction of draws that change).
Two ways to obtain u:
  :class:`CacheProbe`   in the sampler, at the same state: each cached forward is re-run
                        without the cache (the approximate caches of MDLM's block decoding);
  :func:`twin_run`      the sampler run twice with the same generator, cached and
                        uncached, draws compared in order (any model: its ``use_cache``
                        switch).  While the two runs agree token for token they visit the
                        same states, so an exact cache reads 0; after a row's first differing
                        token its draws are left out (their states differ).
"""

from __future__ import annotations

import torch

from harness.sampling import nucleus_threshold, record_draws

# Draws the twin run keeps from the cached run (float64 logits of each), ~128 MB at most.
PROBE_ELEMENTS = 1 << 24


class CacheProbe:
    """Accumulates the metric over the draws it is shown."""

    def __init__(self, mask_id: int | None = None, top_p: float = 1.0):
        self.mask_id, self.top_p = mask_id, top_p
        self.max_logit, self.kl_sum, self.flips, self.draws = 0.0, 0.0, 0, 0

    def add(self, cached: torch.Tensor, reference: torch.Tensor, tokens: torch.Tensor,
            noise: torch.Tensor | None = None) -> None:
        """cached, reference (m, V) logits of m draws; tokens (m,) the tokens drawn from the
        cached ones; noise (m, V) their Gumbel noise, to count the draws the reference would
        change (None: the caller counts the flips)."""
        if not cached.shape[0]:
            return
        c, u = cached.to(torch.float64).clone(), reference.to(torch.float64).clone()
        if self.mask_id is not None:
            c[:, self.mask_id] = u[:, self.mask_id] = float("-inf")
        finite = torch.isfinite(c) & torch.isfinite(u)
        self.max_logit = max(self.max_logit, float((u - c).abs().where(finite, torch.zeros((), dtype=c.dtype)).max()))
        log_u, log_c = u.log_softmax(-1), c.log_softmax(-1)
        kl = (log_u.exp() * (log_u - log_c)).where(log_u.exp() > 0, torch.zeros((), dtype=c.dtype)).sum(-1)
        self.kl_sum += float(kl.clamp_min(0).sum())
        if noise is not None:
            scores = u + noise.to(u.device)
            if self.top_p < 1.0:
                scores = scores.masked_fill(u < nucleus_threshold(u, self.top_p), float("-inf"))
            self.flips += int((scores.argmax(-1) != tokens.to(u.device)).sum())
        self.draws += cached.shape[0]

    def result(self, method: str) -> dict:
        """The row's columns (None when nothing was measured)."""
        if not self.draws:
            return {"cache_error_max_logit": None, "cache_error_kl": None, "cache_error_flip": None,
                    "cache_error_draws": 0, "cache_error_method": method}
        return {"cache_error_max_logit": self.max_logit, "cache_error_kl": self.kl_sum / self.draws,
                "cache_error_flip": self.flips / self.draws, "cache_error_draws": self.draws,
                "cache_error_method": method}


def twin_run(sample, mask_id: int | None = None) -> dict:
    """The metric from two runs of ``sample(use_cache)`` (the same generator seed in both):
    the cached run's draws (up to PROBE_ELEMENTS logits) against the uncached run's, in draw
    order.  A draw flips when the two runs drew different tokens (the same noise by the seed);
    from its first flip on a row's states differ between the runs, so its later draws are
    left out of the comparison (a float-level difference that tips one near-tie is one flip,
    not a misaligned rest of the sample)."""
    kept: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    room = [PROBE_ELEMENTS]

    def keep(logits, tokens, rows):
        if room[0] >= logits.numel():
            kept.append((logits.detach().cpu().clone(), tokens.detach().cpu().clone(), rows.detach().cpu().clone()))
            room[0] -= logits.numel()

    with record_draws(keep):
        sample(True)
    probe, seen, diverged = CacheProbe(mask_id), [0], set()

    def compare(logits, tokens, rows):
        i = seen[0]
        seen[0] += 1
        if i >= len(kept) or kept[i][0].shape != logits.shape or not torch.equal(kept[i][2], rows.cpu()):
            return
        cached, drawn, where = kept[i]
        aligned = torch.tensor([int(r) not in diverged for r in where.tolist()], dtype=torch.bool)
        probe.add(cached[aligned], logits.detach().cpu()[aligned], drawn[aligned])
        changed = aligned & (tokens.detach().cpu() != drawn)
        probe.flips += int(changed.sum())
        diverged.update(int(r) for r in where[changed].tolist())

    with record_draws(compare):
        sample(False)
    return probe.result("twin run (cached against uncached sampler, same seed)")


COLUMNS = ("cache_error_max_logit", "cache_error_kl", "cache_error_flip", "cache_error_draws", "cache_error_method")


def merge(results: list[dict]) -> dict:
    """One row's columns from the probe results of its batches: the largest max |Δ logit|,
    KL and flips averaged over all draws measured."""
    measured = [r for r in results if r.get("cache_error_draws")]
    if not measured:
        return {**dict.fromkeys(COLUMNS), "cache_error_draws": 0,
                "cache_error_method": results[0]["cache_error_method"] if results else None}
    draws = sum(r["cache_error_draws"] for r in measured)
    return {"cache_error_max_logit": max(r["cache_error_max_logit"] for r in measured),
            "cache_error_kl": sum(r["cache_error_kl"] * r["cache_error_draws"] for r in measured) / draws,
            "cache_error_flip": sum(r["cache_error_flip"] * r["cache_error_draws"] for r in measured) / draws,
            "cache_error_draws": draws, "cache_error_method": measured[0]["cache_error_method"]}
