"""MAUVE between generated and held-out text, on evaluator features (docs/models.md §5.4).

Uses ``mauve-text``'s ``compute_mauve(p_features=…, q_features=…)`` on features from a
harness evaluator (:meth:`harness.evaluators.CausalLMEvaluator.features`: final hidden
state at the last token), so it works offline; mauve-text's own featuriser only accepts
Hugging Face hub names.  mauve-text is GPL-3.0 and therefore an optional extra: without
it every result says ``"not available: install the 'mauve' extra …"`` instead of failing.

Settings for small sample counts (the harness often has tens to hundreds of samples):
- ``num_buckets``: mauve-text's 'auto' is n/10 clusters; we use max(2, min(n_p, n_q) // 10)
  (the same rule, but from the smaller set and never fewer than 2 clusters);
- ``kmeans_num_redo=1`` and ``kmeans_max_iter=100`` (defaults 5 and 500): the run time on
  CPU drops several-fold and the score moves by far less than its sampling noise at these
  sample sizes (mauve-text's own docs suggest the same reduction);
- the PCA keeps 90 % of the variance (mauve-text's default).
MAUVE with fewer than a few hundred samples per side is noisy: compare runs with the same
n, the same seed and the same evaluator, and report n with the score.

Degenerate scores (``degenerate`` says why; the raw value is kept): MAUVE compares the two
cluster histograms, so it says nothing about the texts when
- no cluster holds both generated and reference texts: every such pair of histograms
  scores the same constant, :data:`DISJOINT_MAUVE` (about 0.0041 at scaling 5), and with
  only one text of a side in a shared cluster the score is nearly that constant;
- all generated (or all reference) texts fall into one cluster: the score is a function
  of one count;
- there are fewer than 2 texts per cluster on the smaller side: the clusters are not
  estimated from the data.
"""

from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager

import numpy as np

MAUVE_EXTRA_HINT = "not available: install the 'mauve' extra: pip install -e '.[mauve]' (mauve-text is GPL-3.0)"


def _compute_mauve():
    try:
        from mauve import compute_mauve
    except ImportError:
        return None
    return compute_mauve


def mauve_available() -> bool:
    return _compute_mauve() is not None


# MAUVE of two histograms with no cluster in common (scaling factor 5, mauve-text's 25-point
# divergence curve): independent of the texts.  Rows written before ``mauve_degenerate`` was
# recorded are recognised by this value.
DISJOINT_MAUVE = 0.0040720962619612555


def degenerate_reason(p_hist, q_hist, n_p: int, n_q: int) -> str | None:
    """Why a MAUVE computed from these cluster histograms says nothing about the texts (None: it does)."""
    p, q = np.asarray(p_hist, dtype=float), np.asarray(q_hist, dtype=float)
    k = len(p)
    if min(n_p, n_q) < 2 * k:
        return f"fewer than 2 texts per cluster ({min(n_p, n_q)} texts, {k} clusters)"
    if not np.any((p > 0) & (q > 0)):
        return "no cluster holds both generated and reference texts (a constant score)"
    shared = min(round(n_p * p[q > 0].sum()), round(n_q * q[p > 0].sum()))
    if shared <= 1:
        side = "generated" if round(n_p * p[q > 0].sum()) <= 1 else "reference"
        return f"only one {side} text shares a cluster with the other side (a near-constant score)"
    if np.count_nonzero(p) == 1 or np.count_nonzero(q) == 1:
        side = "generated" if np.count_nonzero(p) == 1 else "reference"
        return f"all {side} texts fall into one of {k} clusters"
    return None


def recorded_degenerate(metrics: dict) -> str | None:
    """Why a results row's MAUVE (its metrics, flat) says nothing about its texts, or None."""
    reason = metrics.get("mauve_degenerate")
    if isinstance(reason, str) and reason:
        return reason
    if "mauve_degenerate" not in metrics and metrics.get("mauve") == DISJOINT_MAUVE:
        return "no cluster holds both generated and reference texts (a constant score; recognised by its value)"
    return None


# faiss's k-means says this at every small sample size (it writes to the C stderr, past
# Python's sys.stderr and the commands' --quiet, and through their progress bars); the
# degenerate check above says what matters about few texts per cluster.
FAISS_SMALL_SAMPLE = "please provide at least"


@contextmanager
def quiet_native_stderr():
    """Hold what native code writes to file descriptor 2 while the block runs, then pass on
    every line but faiss's small-sample warning."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 (an embedding host): nothing to hold
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode(errors="replace").splitlines()
                    if line.strip() and FAISS_SMALL_SAMPLE not in line]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def default_num_buckets(n_p: int, n_q: int) -> int:
    return max(2, min(n_p, n_q) // 10)


def mauve_from_features(p_features: np.ndarray, q_features: np.ndarray, *, num_buckets: int | str | None = None,
                        kmeans_num_redo: int = 1, kmeans_max_iter: int = 100, seed: int = 25,
                        scaling_factor: float = 5.0) -> dict:
    """MAUVE of P (generated) against Q (reference) feature sets, (n, d) arrays."""
    p = np.asarray(p_features, dtype=np.float32)
    q = np.asarray(q_features, dtype=np.float32)
    result = {"mauve": None, "frontier_integral": None, "n_p": int(len(p)), "n_q": int(len(q)), "num_buckets": None,
              "kmeans_num_redo": kmeans_num_redo, "kmeans_max_iter": kmeans_max_iter, "seed": seed, "reason": None,
              "degenerate": None}
    compute_mauve = _compute_mauve()
    if compute_mauve is None:
        result["reason"] = MAUVE_EXTRA_HINT
        return result
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1]:
        raise ValueError(f"features must be (n, d) arrays of the same width, got {p.shape} and {q.shape}")
    if len(p) < 2 or len(q) < 2:
        raise ValueError(f"MAUVE needs at least 2 samples on each side, got {len(p)} and {len(q)}")
    buckets = default_num_buckets(len(p), len(q)) if num_buckets is None else num_buckets
    with quiet_native_stderr():
        out = compute_mauve(p_features=p, q_features=q, num_buckets=buckets, kmeans_num_redo=kmeans_num_redo,
                            kmeans_max_iter=kmeans_max_iter, seed=seed, mauve_scaling_factor=scaling_factor,
                            verbose=False, device_id=-1)
    result.update(mauve=float(out.mauve), frontier_integral=float(out.frontier_integral),
                  num_buckets=int(out.num_buckets),
                  degenerate=degenerate_reason(out.p_hist, out.q_hist, len(p), len(q)))
    return result


def mauve_score(evaluator, generated: list[str], reference: list[str], **kwargs) -> dict:
    """MAUVE between ``generated`` and ``reference`` texts on ``evaluator``'s features.

    Returns the :func:`mauve_from_features` dict plus the evaluator's name; when mauve-text
    is missing, no features are computed and ``reason`` says how to install it.
    """
    if not mauve_available():
        result = mauve_from_features(np.zeros((0, 1)), np.zeros((0, 1)))
        result.update(n_p=len(generated), n_q=len(reference), evaluator=evaluator.name)
        return result
    result = mauve_from_features(evaluator.features(generated), evaluator.features(reference), **kwargs)
    result["evaluator"] = evaluator.name
    result["features"] = "final hidden state at the last token"
    return result
