"""Categorical sampling in float64 with nucleus (top-p) filtering.

float32 Gumbel noise is capped near 16.6 (-log(-log(1 - 2^-24))), which silently
removes the tail of the distribution, lowers sample entropy and flatters generative
perplexity as the number of steps grows (Zheng et al., arXiv 2409.02908).  Every
sampler in the harness therefore draws its tokens through :func:`sample_tokens`.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from harness.schedules import RowNoise

_RECORDERS: list[torch.Tensor] = []  # active record_log_probs totals (a test hook; empty otherwise)
_DRAW_HOOKS: list = []  # callables (logits (m, V) float64, tokens (m,), rows (m,)) seeing every draw (record_draws)


def descending_values(logits: torch.Tensor) -> torch.Tensor:
    """The last dimension sorted in descending order (values only).  On a CPU numpy's sort,
    ~3x faster than torch's there at a vocabulary row (the top-p sort was a fifth of a
    batch-8 AR sample)."""
    if logits.device.type != "cpu":
        return logits.sort(dim=-1, descending=True).values
    flat = logits.detach().reshape(-1, logits.shape[-1]).numpy()
    return torch.from_numpy(np.sort(flat, axis=-1)[:, ::-1].copy()).reshape(logits.shape)


def nucleus_threshold(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """(..., 1): the smallest logit top-p sampling keeps.  Sorted descending, a token is
    dropped when the mass strictly before it already reaches top_p (so >= 1 token is kept);
    the kept tokens are then those at or above the last kept value — found from the sorted
    values alone, with no argsort and no scatter back.  Tokens tied with that value are all
    kept.  The sort/cumsum runs in the dtype of ``logits`` (the callers pass float64): a bf16
    cumsum would erode the tail."""
    if not 0.0 < top_p < 1.0:
        raise ValueError(f"top_p must be in (0, 1), got {top_p}")
    sorted_logits = descending_values(logits.detach())
    probs = sorted_logits.softmax(dim=-1)
    kept = (probs.cumsum(dim=-1).sub_(probs) < top_p).sum(dim=-1, keepdim=True)
    return sorted_logits.gather(-1, kept - 1)


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set to -inf every logit outside the smallest set whose probability reaches top_p
    (:func:`nucleus_threshold`)."""
    if top_p >= 1.0:
        return logits
    return logits.masked_fill(logits < nucleus_threshold(logits, top_p), float("-inf"))


def gumbel_noise(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    u = torch.rand(shape, dtype=torch.float64, generator=generator, device=device)
    return u.clamp_min_(torch.finfo(torch.float64).tiny).log_().neg_().log_().neg_()  # -log(-log u), in place


def row_gumbel_noise(shape, noise: RowNoise, rows: torch.Tensor, device) -> torch.Tensor:
    """Gumbel noise for draws (m, V), draw i from the stream of batch row ``rows[i]``, one
    draw at a time: a row's noise depends on its own earlier draws only, never on the batch
    or on how the draws were grouped (batch invariance)."""
    out = [gumbel_noise(shape[1:], noise.generators[r], noise.generators[r].device) for r in rows.tolist()]
    return torch.stack(out).to(device) if out else torch.zeros(shape, dtype=torch.float64, device=device)


def first_argmax(scores: torch.Tensor) -> torch.Tensor:
    """Index of the first maximum along the last dimension: torch's argmax, or on a CPU
    numpy's (the same index, ~3-10x faster there)."""
    if scores.device.type != "cpu":
        return scores.argmax(dim=-1)
    return torch.from_numpy(scores.detach().numpy().argmax(axis=-1))


def sample_tokens(logits: torch.Tensor, generator: torch.Generator | RowNoise | None, top_p: float = 1.0,
                  rows: torch.Tensor | None = None, noise_out: list | None = None) -> torch.Tensor:
    """Gumbel-max draw of one token per row of ``logits`` (..., V), all in float64: the
    argmax of logit + noise over the nucleus (the noise is drawn for every token, so the
    random stream does not depend on top_p's cut).

    ``rows``: the batch row each leading index of ``logits`` belongs to (default: the leading
    index itself), used by :func:`record_log_probs` and, with a :class:`RowNoise` generator,
    to draw each row's noise from its own stream.  ``noise_out``: a list the noise is appended
    to (the cache probe re-draws with it, harness.unmasking.probe)."""
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    logits = logits.to(torch.float64)
    if isinstance(generator, RowNoise):
        index = torch.arange(logits.shape[0]) if rows is None else rows
        noise = row_gumbel_noise(logits.shape, generator, index, logits.device)
    else:
        noise = gumbel_noise(logits.shape, generator, logits.device)
    if noise_out is not None:
        noise_out.append(noise.clone())
    scores = noise.add_(logits)
    cut = logits < nucleus_threshold(logits, top_p) if top_p < 1.0 else None
    if cut is not None:  # in place on the scores: one masked pass, no filtered copy of the logits
        scores.masked_fill_(cut, float("-inf"))
    tokens = first_argmax(scores)
    if _DRAW_HOOKS:
        flat = logits.reshape(-1, logits.shape[-1])
        index = torch.arange(flat.shape[0], device=flat.device) if rows is None else rows
        for hook in _DRAW_HOOKS:
            hook(flat, tokens.reshape(-1), index)
    if _RECORDERS:
        kept = logits if cut is None else logits.masked_fill(cut, float("-inf"))
        logp = kept.log_softmax(-1).gather(-1, tokens[..., None])
        logp = logp.reshape(logits.shape[0], -1).sum(1)
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


@contextmanager
def record_draws(hook):
    """Within the block, ``hook(logits, tokens, rows)`` sees every draw in draw order: the
    float64 logits it was drawn from (SUBS applied, before the nucleus cut), the tokens drawn
    and their batch rows (harness.unmasking.probe compares a cached sampler's draws with its
    uncached twin's)."""
    _DRAW_HOOKS.append(hook)
    try:
        yield
    finally:
        _DRAW_HOOKS.remove(hook)


# Bound on one gathered-logits / float64 Gumbel-noise tensor (rows drawn × vocabulary): a
# step that reveals many positions at a large vocabulary (e.g. T = 1 at 512 × 1024 × 50258)
# is drawn in groups of rows instead of one ~200 GB tensor (docs/models.md §0).
SAMPLE_CHUNK_ELEMENTS = 1 << 22


class Drawer:
    """Draws one token per pushed logits row, in push order, in groups of
    SAMPLE_CHUNK_ELEMENTS // V rows whatever the pieces pushed.

    The groups, hence the Gumbel noise each draw takes, do not depend on how the caller
    split its forwards, so a sampler that runs its batch in row chunks (harness.memory)
    draws the tokens it would have drawn unchunked.  ``mask_id``: that logit is set to −inf
    in the copy drawn from (SUBS: never predict [MASK]); the caller's logits are not edited.
    ``rows`` (pushed with the logits): each row's batch row, for :func:`record_log_probs`.
    """

    def __init__(self, vocab: int, generator, top_p: float = 1.0, mask_id: int | None = None,
                 keep_noise: bool = False):
        self.group = max(1, SAMPLE_CHUNK_ELEMENTS // vocab)
        self.generator, self.top_p, self.mask_id = generator, top_p, mask_id
        self.noise: list[torch.Tensor] | None = [] if keep_noise else None  # each group's noise, when kept
        self._pending: list[torch.Tensor] = []
        self._rows: list[torch.Tensor] = []
        self._n = 0
        self._out: list[torch.Tensor] = []

    def push(self, logits: torch.Tensor, rows: torch.Tensor) -> None:
        """logits (m, V): the next m rows to draw; rows (m,): their batch rows."""
        while logits.shape[0]:
            take = min(self.group - self._n, logits.shape[0])
            self._pending.append(logits[:take])
            self._rows.append(rows[:take])
            self._n += take
            logits, rows = logits[take:], rows[take:]
            if self._n == self.group:
                self._flush()

    def _flush(self) -> None:
        if not self._n:
            return
        pieces = [piece.to(torch.float64) for piece in self._pending]  # what sample_tokens draws in
        copied = len(pieces) == 1 and pieces[0] is not self._pending[0]
        picked = pieces[0] if copied else torch.cat(pieces)  # a copy either way: safe to edit
        if self.mask_id is not None:
            picked[:, self.mask_id] = float("-inf")
        self._out.append(sample_tokens(picked, self.generator, self.top_p, rows=torch.cat(self._rows),
                                       noise_out=self.noise))
        self._pending, self._rows, self._n = [], [], 0

    def finish(self) -> torch.Tensor:
        """Every token drawn since the last finish, in push order (long, (rows,))."""
        self._flush()
        out = torch.cat(self._out) if self._out else torch.zeros(0, dtype=torch.long)
        self._out = []
        return out
