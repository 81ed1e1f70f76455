"""Test perplexity on held-out packed sequences (docs/models.md §5.1).

    ppl = exp( Σ_sequences nats / Σ_sequences scored tokens )

The nats come from ``model.nll`` (exact for AR; a NELBO bound or an importance-weighted
estimate for the diffusion models), and the estimator's name travels with the number:
a NELBO perplexity is an upper bound, not the same quantity as an exact one.

Determinism at any batch size: a model whose estimator takes a ``generator`` gets a
:class:`harness.schedules.RowNoise`, one stream per sequence seeded by (seed, the
sequence's index in ``data``), so a sequence's draws (t, masks, orders) never depend on the
batch it sits in.  The whole evaluation also runs inside ``torch.random.fork_rng`` after
``torch.manual_seed(seed)`` (for estimators drawing from the global RNG) and leaves the
caller's RNG untouched.

The standard error: with ``draws`` ≥ 2 each sequence's draws are independent, and the
Monte-Carlo error of the estimate (what another seed would move it by) comes from their
spread within each sequence (``se_kind`` "monte-carlo").  With one draw, or an exact or
importance-weighted estimator, it is the spread over sequences (``se_kind`` "sequences"): the
sampling error of the test set itself, which bounds a single draw's Monte-Carlo error from
above.  Perplexity's SE follows by the delta method: ppl · SE(nats per token).
"""

from __future__ import annotations

import inspect
import math
import sys

import torch

from harness.schedules import RowNoise, row_seed


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

    Returns ``ppl``, ``ppl_se``, ``se_kind``, ``nats_per_token``, ``nats_total``,
    ``n_sequences``, ``n_tokens``, ``estimator`` (e.g. "exact", "nelbo(draws=4)") and
    ``exact`` (True only when every batch was scored exactly).  Extra keyword arguments go to
    ``model.nll`` — or to another estimator of the same shape named by ``method`` (e.g.
    Eso-LM's "nll_exact_order").  The same numbers at any ``batch_size``.
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
    per_sequence, within_var, n_tokens = [], [], 0
    estimators: set[str] = set()
    exact = True
    noisy = "generator" not in nll_kwargs and _accepts(nll, "generator")
    draws = int(nll_kwargs.get("draws", 1))
    # independent draws, one call each, so their spread gives the Monte-Carlo error
    separate = noisy and draws > 1 and method == "nll" and not getattr(model, "exact_loss", False)
    batches = range(0, data.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="test ppl", unit="batch", file=sys.stderr, dynamic_ncols=True)
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for start in batches:
                x = data[start : start + batch_size].to(device)
                rows = range(start, start + x.shape[0])
                runs = []
                for d in range(draws if separate else 1):
                    kwargs = dict(nll_kwargs, draws=1) if separate else dict(nll_kwargs)
                    if noisy:
                        kwargs["generator"] = RowNoise([row_seed(seed, i, d) for i in rows], device)
                    out = nll(x, **kwargs)
                    nats = out.nats.detach().to(torch.float64).cpu()
                    if nats.shape != (x.shape[0],):
                        raise ValueError(f"{type(model).__name__}.nll returned nats of shape {tuple(nats.shape)}, "
                                         f"expected ({x.shape[0]},)")
                    runs.append(nats)
                    exact = exact and bool(out.exact)
                runs = torch.stack(runs)
                per_sequence.append(runs.mean(0))
                if separate:
                    within_var.append(runs.var(0, unbiased=True) / draws)  # variance of each row's mean
                n_tokens += int(out.tokens) * x.shape[0]
                estimators.add(out.estimator.replace("draws=1", f"draws={draws}") if separate else out.estimator)
    finally:
        model.train(was_training)
    if len(estimators) != 1:
        raise ValueError(f"model changed estimator between batches: {sorted(estimators)}")
    nats = torch.cat(per_sequence)
    n = nats.numel()
    nats_per_token = nats.sum().item() / n_tokens
    if separate:
        se_kind, se_nats = "monte-carlo", math.sqrt(torch.cat(within_var).sum().item()) / n_tokens
    else:  # the spread over sequences of their nats per token, as a standard error of the mean
        per_token = nats * n / n_tokens
        se_kind, se_nats = "sequences", (per_token.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan"))
    ppl = math.exp(nats_per_token)
    return {
        "ppl": ppl,
        "ppl_se": ppl * se_nats,
        "se_kind": se_kind,
        "nats_per_token": nats_per_token,
        "nats_total": nats.sum().item(),
        "n_sequences": int(data.shape[0]),
        "n_tokens": n_tokens,
        "estimator": estimators.pop(),
        "exact": exact,
        "seed": seed,
    }


def se_note(result: dict) -> str:
    """What a test_perplexity result's standard error measures, in a few words."""
    if result["se_kind"] == "monte-carlo":
        return "Monte-Carlo SE from the draws"
    more = "" if result["exact"] else "; --draws 2+ gives the Monte-Carlo SE"
    return f"SE over the {result['n_sequences']} sequences{more}"


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
