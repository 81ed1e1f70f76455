"""Test perplexity on held-out packed sequences (docs/models.md §5.1).

    ppl = exp( Σ_sequences nats / Σ_sequences scored tokens )

The nats come from ``model.nll`` (exact for AR; a NELBO bound or an importance-weighted
estimate for the diffusion models), and the estimator's name travels with the number:
a NELBO perplexity is an upper bound, not the same quantity as an exact one.

Determinism: Monte-Carlo estimators draw their noise from torch's RNG.  The whole
evaluation runs inside ``torch.random.fork_rng`` after ``torch.manual_seed(seed)``, so the
same seed gives the same number and the caller's RNG state is left untouched.  If the
model's ``nll`` accepts a ``generator`` keyword, a generator seeded with ``seed`` is passed
as well.
"""

from __future__ import annotations

import inspect
import math
import sys

import torch


MAX_DRAWS = 10_000  # Monte-Carlo draws (or IW orders) per sequence: each is another forward over every sequence


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@torch.no_grad()
def test_perplexity(model, data: torch.Tensor, batch_size: int = 16, *, seed: int = 0, progress: bool = False,
                    method: str = "nll", **nll_kwargs) -> dict:
    """Perplexity of ``model`` on ``data`` (N, L) packed sequences.

    Returns ``ppl``, ``nats_per_token``, ``nats_total``, ``n_sequences``, ``n_tokens``,
    ``estimator`` (e.g. "exact", "nelbo(draws=4)") and ``exact`` (True only when every batch
    was scored exactly).  Extra keyword arguments go to ``model.nll`` — or to another
    estimator of the same shape named by ``method`` (e.g. Eso-LM's "nll_exact_order").
    """
    nll = getattr(model, method, None)
    if nll is None:
        raise ValueError(f"{type(model).__name__} has no likelihood estimator {method!r}")
    if data.dim() != 2 or data.shape[0] == 0:
        raise ValueError(f"data must be a non-empty (N, L) LongTensor of token ids, got shape {tuple(data.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    device = model.device
    devices = [device] if device.type == "cuda" else []
    nats_total = 0.0
    n_tokens = 0
    estimators: set[str] = set()
    exact = True
    batches = range(0, data.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="test ppl", unit="batch", file=sys.stderr, dynamic_ncols=True)
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            kwargs = dict(nll_kwargs)
            if "generator" not in kwargs and _accepts(nll, "generator"):
                kwargs["generator"] = torch.Generator(device=device).manual_seed(seed)
            for start in batches:
                x = data[start : start + batch_size].to(device)
                out = nll(x, **kwargs)
                nats = out.nats.detach().to(torch.float64)
                if nats.shape != (x.shape[0],):
                    raise ValueError(f"{type(model).__name__}.nll returned nats of shape {tuple(nats.shape)}, "
                                     f"expected ({x.shape[0]},)")
                nats_total += nats.sum().item()
                n_tokens += int(out.tokens) * x.shape[0]
                estimators.add(out.estimator)
                exact = exact and bool(out.exact)
    finally:
        model.train(was_training)
    if len(estimators) != 1:
        raise ValueError(f"model changed estimator between batches: {sorted(estimators)}")
    nats_per_token = nats_total / n_tokens
    return {
        "ppl": math.exp(nats_per_token),
        "nats_per_token": nats_per_token,
        "nats_total": nats_total,
        "n_sequences": int(data.shape[0]),
        "n_tokens": n_tokens,
        "estimator": estimators.pop(),
        "exact": exact,
        "seed": seed,
    }


def estimator_call(model, draws: int | None = None, alpha_0: float | None = None,
                   iw: int | None = None) -> tuple[str, dict]:
    """The model's likelihood method and its keyword arguments for esolm eval's --draws,
    --alpha-0 and --iw, refusing one the model's estimator does not take (checked before any
    data is loaded)."""
    kwargs = {}
    if draws is not None:
        kwargs["draws"] = draws
    if alpha_0 is not None:
        kwargs["alpha_0"] = alpha_0
    method = "nll"
    if iw:
        if not hasattr(model, "nll_exact_order"):
            raise ValueError(f"--iw needs an Eso-LM checkpoint; {model.name} has no order-based likelihood")
        if draws is not None:
            raise ValueError("--iw and --draws are two estimators (K orders vs NELBO draws); give one of them")
        method, kwargs = "nll_exact_order", {**kwargs, "orders": iw}
    if model.exact_loss and "draws" in kwargs:  # its nll takes draws only to share the call signature
        raise ValueError(f"--draws does not apply to {model.name}: its likelihood is exact; drop --draws")
    accepted = inspect.signature(getattr(model, method)).parameters
    for name, flag in (("alpha_0", "--alpha-0"), ("draws", "--draws")):
        if name in kwargs and name not in accepted:
            raise ValueError(f"{flag} does not apply to {model.name}: its likelihood takes no {name}; "
                             f"drop {flag}" + (" (AR's is exact)" if model.name == "ar" else ""))
    return method, kwargs


def unigram_perplexity(train: torch.Tensor, data: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of ``data`` under the add-one-smoothed unigram distribution of ``train``.

    The floor any trained model must clear.  Position 0 (BOS) is skipped in both, as AR's
    exact NLL skips it, so the figure sits beside AR's perplexity directly.
    """
    counts = torch.bincount(train[:, 1:].flatten(), minlength=vocab_size).double() + 1
    log_p = (counts / counts.sum()).log()
    return math.exp(-log_p[data[:, 1:].flatten()].mean().item())


# pytest collects functions named test_* from modules it imports; this is not a test.
test_perplexity.__test__ = False
