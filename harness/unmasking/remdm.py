"""ReMDM remasking with the cap schedule (docs/models.md §2.4): the ancestral sampler, except
that a revealed token may be masked again and redrawn later.

On the grid t_k = 1 − k/T → s_k = 1 − (k+1)/T, with σ_k = min(η, (1 − α_s)/α_t):
  a clean (revealed) position is masked again with probability σ_k, else kept;
  a masked position is revealed with probability (α_s − (1 − σ_k)·α_t)/(1 − α_t).
σ_k = 0 at the last step (α_s = 1), which reveals everything left.  None of these chances
depends on the tokens or the network, so, like :func:`plan_reveals`, the whole timeline of
reveals and remasks is drawn up front: a position that becomes masked at step j draws one
uniform and is next revealed at the first step whose conditional CDF of the reveal hazards
from j on exceeds it; at each step with σ_k > 0 every row draws one coin per position for
the remask.  With η = 0 no coin is drawn and the reveal CDF is the ancestral one, so the plan,
hence the sample, is the plain ancestral sampler's.
"""

from __future__ import annotations

import torch

from harness.schedules import LogLinear, uniform
from harness.unmasking.ancestral import RevealPlan


def cap_schedule(noise: LogLinear, steps: int, eta: float) -> tuple[list[float], list[float]]:
    """(σ_k, reveal hazard p_k) for k = 0 … T − 1."""
    sigma, hazard = [], []
    for k in range(steps):
        a_t, a_s = noise.alpha(1 - k / steps), noise.alpha(1 - (k + 1) / steps)
        s = min(eta, (1 - a_s) / a_t) if a_t > 0 else eta
        sigma.append(max(0.0, s))
        hazard.append(1.0 if k == steps - 1 else (a_s - (1 - s) * a_t) / (1 - a_t))
    return sigma, hazard


def reveal_cdf(hazard: list[float], start: int, device) -> torch.Tensor:
    """CDF over steps start … T − 1 of the first reveal of a position masked before ``start``."""
    keep = 1 - torch.tensor(hazard[start:], dtype=torch.float64, device=device)
    cdf = 1 - keep.cumprod(0)
    cdf[-1] = 1.0
    return cdf


def remdm_plan(n: int, width: int, *, noise: LogLinear, steps: int, eta: float, generator, device,
               given: int = 0) -> RevealPlan:
    """The reveal-and-remask timeline of one window (n, W); positions [0, given) are given."""
    sigma, hazard = cap_schedule(noise, steps, eta)
    u = uniform((n, width), generator, device, torch.float64)
    reveal_at = torch.searchsorted(reveal_cdf(hazard, 0, device), u, right=True)
    reveal_at[:, :given] = steps  # never
    clean = torch.zeros(n, width, dtype=torch.bool, device=device)
    clean[:, :given] = True
    due, rows, cols, remask = [], [], [], []
    last = reveal_at.clone()
    for k in range(steps):
        now = reveal_at == k
        r, c = now.nonzero(as_tuple=True)  # (row, position) order
        rows.append(r), cols.append(c)
        due.append(torch.bincount(r, minlength=n).tolist())
        last[now] = k
        back = torch.zeros_like(clean)
        if sigma[k] > 0:  # coins only where a remask can happen
            coin, fresh = (uniform((n, width), generator, device, torch.float64) for _ in range(2))
            back = clean & (coin < sigma[k])
            back[:, :given] = False
            if k + 1 < steps:
                later = k + 1 + torch.searchsorted(reveal_cdf(hazard, k + 1, device), fresh, right=True)
                reveal_at = torch.where(back, later, reveal_at)
        remask.append(back.nonzero(as_tuple=True))
        clean = (clean | now) & ~back
    return RevealPlan(due, torch.cat(rows), torch.cat(cols), last, remask=remask)  # when: the last reveal
