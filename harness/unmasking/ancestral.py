"""The ancestral sampler of masked diffusion on a window (docs/models.md §2), shared by MDLM
(the window is the sequence) and BD3-LM (each block): the reveal plan drawn up front, the
denoising loop that follows it, and the rank of each drawn position for exact scoring."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from harness.sampling import Drawer
from harness.schedules import LogLinear, uniform


def dense_rank(step: torch.Tensor) -> torch.Tensor:
    """Rank of each entry's step among the distinct steps >= 0 of its last dimension
    (0, 1, …), −1 where step < 0 (given).  A position of rank r was drawn by the r-th forward
    its row (or block) took part in, given the positions of rank < r."""
    s, where = step.sort(-1)
    new = torch.ones_like(s, dtype=torch.bool)
    new[..., 1:] = s[..., 1:] != s[..., :-1]
    rank = (new & (s >= 0)).cumsum(-1) - 1
    return torch.empty_like(rank).scatter_(-1, where, rank)


@dataclass
class RevealPlan:
    """When each position of one all-[MASK] window (n, W) is revealed.  ``due[k][r]`` (on the
    host) counts the positions row r reveals at step k; ``rows``/``cols`` list every reveal in
    (step, row, position) order, so step k's reveals are one contiguous slice."""

    due: list[list[int]]
    rows: torch.Tensor
    cols: torch.Tensor
    when: torch.Tensor | None = None  # (n, W): each position's step; the number of steps where given
    # ReMDM: (rows, cols) each step masks again after its draws (empty lists: no remasking)
    remask: list[tuple[torch.Tensor, torch.Tensor]] | None = None


def plan_reveals(n: int, width: int, *, noise: LogLinear, steps: int | None, first_hitting: bool,
                 generator, device, windows: int = 1, given: int = 0) -> list[RevealPlan]:
    """One :class:`RevealPlan` per window (MDLM: the sequence; BD3-LM: each block), drawn up front.

    Ancestral step k (t = 1 − k/T → s = 1 − (k+1)/T) reveals each still-masked position with
    probability (alpha_s − alpha_t) / (1 − alpha_t), whatever the tokens and the other
    positions do.  So a position is first revealed by step k with probability
    (alpha_{s_k} − alpha_1) / (1 − alpha_1) (the last step, s = 0, takes the rest), and one
    inverse-CDF draw per position gives the same process as a coin per position per step.
    (For the log-linear schedule that CDF is (k+1)/T: the step is uniform.)  First hitting
    reveals one uniformly chosen still-masked position per row per step: a random order.
    The counts are read back to the host once for all windows (none for first hitting).
    The first ``given`` positions of the first window are clean already (a prefix): they get
    a step past the last, so they sort after every reveal and are never drawn.
    """
    u = uniform((n, windows, width), generator, device, torch.float64)  # a RowNoise: each row its own stream
    if first_hitting:
        n_steps = width
        u[:, 0, :given] = 2.0  # ranked last, behind the positions still to reveal
        when = u.argsort(dim=2).argsort(dim=2)  # each position's rank in a uniform random order
    else:
        n_steps = steps
        a1 = noise.alpha(1.0)
        cdf = [(noise.alpha(1 - (k + 1) / steps) - a1) / (1 - a1) for k in range(steps - 1)] + [1.0]
        when = torch.searchsorted(torch.tensor(cdf, dtype=torch.float64, device=device), u, right=True)
    when[:, 0, :given] = n_steps  # never
    per_position = when
    when = when.transpose(0, 1).reshape(windows, n * width)  # window-major, then row, then position
    order = when.argsort(dim=1, stable=True)
    if first_hitting:
        due = [[[1] * n] * (n_steps - (given if w == 0 else 0)) for w in range(windows)]
    else:  # due[w][k][r] — the one read-back
        counts = torch.zeros(windows, n, n_steps + 1, dtype=torch.long, device=device)
        due = counts.scatter_add_(2, when.view(windows, n, width), torch.ones_like(when).view(windows, n, width))
        due = due[:, :, :n_steps].transpose(1, 2).tolist()
    return [RevealPlan(due[w], order[w] // width, order[w] % width, per_position[:, w]) for w in range(windows)]


def ancestral_denoise(
    z: torch.Tensor,
    denoiser: Callable[[torch.Tensor | None], torch.Tensor],
    plan: RevealPlan,
    *,
    mask_id: int,
    generator,
    top_p: float,
    every_row: bool,
    all_rows: bool = False,
    chunk: int | None = None,
    on_step: Callable[[int], None] | None = None,
    after_draws: Callable | None = None,
) -> tuple[int, int, torch.Tensor]:
    """Denoise z (n, W), [MASK] on entry where the plan reveals, in place — the MDLM sampler
    on a window.

    ``plan`` (:func:`plan_reveals`) says which positions each step reveals: at step k the
    denoiser runs and those positions take Gumbel-max draws from its logits, in (row,
    position) order.  The plan's counts are already on the host, so the loop never waits on
    the device: which rows run at a step, and how many draws it takes, are known.

    ``denoiser(rows)`` returns raw logits (len(rows), W, V) for z[rows] (rows=None: all rows).
    With ``every_row`` it is called for every row at every step (no reuse).  Otherwise a row is
    run only at a step where it reveals something: since the denoiser is time-agnostic and the
    row changed at its previous reveal, that is exactly "reuse p_θ while nothing changed", and
    no stale logits need storing.  With ``all_rows`` (fixed-shape steps, harness.nn.steps) a
    step where any row reveals runs every row, and is counted so.  ``chunk``: at most that
    many rows per denoiser call (a memory budget, harness.memory); a step's draws wait until
    all its chunks ran.  All modes and chunkings draw the same Gumbel noise for the same
    reveals (:class:`Drawer`), so they produce the same tokens.

    ``on_step(k)`` is called before step k (an approximate cache counts its steps);
    ``after_draws(rows, cols, tokens, noise)`` after a step's draws, with the Gumbel noise
    they took (the cache probe); a plan's ``remask`` entries are masked after step k's draws.

    Returns (forwards run, Σ rows over forwards, forwards per row).
    """
    n = z.shape[0]
    per_row = [0] * n
    forwards = rows_run = offset = 0
    for k, due in enumerate(plan.due):  # one step: due[r] positions of row r
        if on_step is not None:
            on_step(k)
        need = [r for r, count in enumerate(due) if count]
        if every_row or len(need) == n or (all_rows and need):
            ran = list(range(n))
        elif need:
            ran = need
        else:
            remask(z, plan, k, mask_id)
            continue  # nobody reveals anything: no forward
        forwards, rows_run = forwards + 1, rows_run + len(ran)
        for r in ran:
            per_row[r] += 1
        total = sum(due)
        starts = [0] * (n + 1)  # step-local offset of each row's first reveal (plan order: row, position)
        for r in range(n):
            starts[r + 1] = starts[r] + due[r]
        r_all, c_all = plan.rows[offset : offset + total], plan.cols[offset : offset + total]
        offset += total
        drawer = None
        size = len(ran) if chunk is None else max(1, chunk)
        for i in range(0, len(ran), size):
            part = ran[i : i + size]
            whole = len(part) == n
            logits = denoiser(None if whole else torch.tensor(part, device=z.device))
            lo, hi = starts[part[0]], starts[part[-1] + 1]
            if hi == lo:
                continue
            r, c = r_all[lo:hi], c_all[lo:hi]
            local = r
            if not whole:  # batch row -> its index among the rows that were run
                slot = torch.zeros(n, dtype=torch.long, device=z.device)
                slot[torch.tensor(part, device=z.device)] = torch.arange(len(part), device=z.device)
                local = slot[r]
            drawer = drawer or Drawer(logits.shape[-1], generator, top_p, mask_id, keep_noise=after_draws is not None)
            for j in range(0, r.numel(), drawer.group):
                g = slice(j, j + drawer.group)
                drawer.push(logits[local[g], c[g]], r[g])
            del logits
        if drawer is not None:
            drawn = drawer.finish().to(z.device)
            z[r_all, c_all] = drawn
            if after_draws is not None:
                after_draws(r_all, c_all, drawn, torch.cat(drawer.noise))
        remask(z, plan, k, mask_id)
    return forwards, rows_run, torch.tensor(per_row, dtype=torch.long, device=z.device)


def remask(z: torch.Tensor, plan: RevealPlan, k: int, mask_id: int) -> None:
    """ReMDM: the positions the plan masks again after step k's draws."""
    if plan.remask is not None and plan.remask[k][0].numel():
        rows, cols = plan.remask[k]
        z[rows, cols] = mask_id
