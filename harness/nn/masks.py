"""Boolean attention masks (True = may attend), one builder per attention pattern.

Every model's mask lives here so the patterns can be printed and checked on small
hand-written matrices (tests/test_masks.py).  Indices are positions in the order the
tokens are fed to the network (for Eso-LM that is the sorted order, not the original
left-to-right positions).
"""

from __future__ import annotations

import torch


def causal(n: int, device=None) -> torch.Tensor:
    """Query i sees keys 0..i (AR)."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def bidirectional(n: int, device=None) -> torch.Tensor:
    """Everyone sees everyone (MDLM)."""
    return torch.ones(n, n, dtype=torch.bool, device=device)


def cached_causal(n_new: int, n_cached: int, device=None) -> torch.Tensor:
    """n_new queries that follow n_cached cached keys: all of the cache, causal among themselves."""
    return torch.cat(
        [torch.ones(n_new, n_cached, dtype=torch.bool, device=device), causal(n_new, device)], dim=1
    )


def allowed_pairs(n_new: int, n_cached: int = 0, n_prefix: int = 0) -> int:
    """Query-key pairs :func:`cached_prefix_lm` (n_new, n_cached, n_prefix) allows, without
    building it: the attention arithmetic a window must do (the report's floors).  n_prefix
    = 0 counts :func:`cached_causal` (and :func:`causal` with no cache); n_prefix = n_new
    counts a bidirectional window (MDLM's forward, a BD3-LM block over its cache)."""
    p = min(max(int(n_prefix), 0), n_new)
    return n_new * n_cached + n_new * (n_new + 1) // 2 + p * (p - 1) // 2


def block_diffusion(length: int, block_size: int, device=None) -> torch.Tensor:
    """BD3-LM's vectorised training mask over the 2L input z_t ⊕ x (docs/models.md §3).

    Block index b(i) = i // block_size.  With rows/columns [z_t half | x half]:
    - z_t query -> z_t key of the same block (block-diagonal),
    - z_t query -> x key of strictly earlier blocks (offset block-causal),
    - x query   -> x key of the same or earlier blocks (block-causal),
    - x query   -> z_t key never.
    block_size = 1 is exactly AR (each noisy token sees the clean prefix and itself);
    block_size = length is MDLM on the z_t half.
    """
    if length % block_size:
        raise ValueError(f"length {length} is not divisible by block_size {block_size}")
    block = torch.arange(length, device=device) // block_size
    q, k = block[:, None], block[None, :]
    same, earlier, upto = q == k, k < q, k <= q
    never = torch.zeros_like(same)
    top = torch.cat([same, earlier], dim=1)
    bottom = torch.cat([never, upto], dim=1)
    return torch.cat([top, bottom], dim=0)


# --- Eso-LM (docs/models.md §4) -------------------------------------------------------
# Indices below are SORTED indices: the tokens are fed in Eso-LM's order (clean /
# diffusion positions first, then the rest), with their original rotary positions.


def _n_prefix(n_prefix, device) -> torch.Tensor:
    """int -> 0-d tensor, (B,) tensor -> (B, 1, 1), so the builders broadcast to (n, n) or (B, n, n)."""
    p = torch.as_tensor(n_prefix, device=device)
    return p if p.dim() == 0 else p[:, None, None]


def prefix_lm(n: int, n_prefix, device=None) -> torch.Tensor:
    """The first n_prefix tokens attend bidirectionally among themselves (never to later
    tokens); every later token attends causally (all of the prefix, later tokens before it,
    itself).  n_prefix is an int -> (n, n), or a (B,) tensor -> (B, n, n).

    This is Eso-LM (A)'s attention: clean tokens see each other both ways, [MASK]
    queries are causal over the sorted order.  n_prefix <= 1 is plain causal.
    """
    i = torch.arange(n, device=device)
    q, k = i[:, None], i[None, :]
    p = _n_prefix(n_prefix, device)
    return (k <= q) | ((q < p) & (k < p))


def cached_prefix_lm(n_new: int, n_cached: int, n_prefix, device=None) -> torch.Tensor:
    """Eso-LM (A) sampler window: n_new queries see every cached key, prefix-LM among themselves.

    With n_cached = 0 this is :func:`prefix_lm`; with n_prefix <= 1 it is :func:`cached_causal`.
    """
    return torch.cat([torch.ones(n_new, n_cached, dtype=torch.bool, device=device),
                      prefix_lm(n_new, n_prefix, device)], dim=1)


def esolm_diffusion(length: int, n_clean, variant: str, device=None) -> torch.Tensor:
    """Diffusion-term mask over the sorted z_t (n_clean clean tokens first, [MASK]s after).

    (B): plain causal — clean tokens attend causally in their (random) order, a [MASK]
         query sees every clean token, the [MASK]s before it in the order, and itself.
    (A): clean tokens attend bidirectionally among the clean tokens (never to [MASK]s),
         [MASK] queries as in (B): :func:`prefix_lm` with prefix n_clean.
    Because a [MASK] query never sees a later [MASK], dropping the [MASK]s that are not
    revealed at a sampling step changes nothing: the sampler's windows compute exactly
    these rows.
    """
    if variant == "B":
        return causal(length, device)
    if variant == "A":
        return prefix_lm(length, n_clean, device)
    raise ValueError(f"unknown Eso-LM variant {variant!r}; use 'A' or 'B'")


def esolm_sequential(length: int, n_clean, variant: str, device=None) -> torch.Tensor:
    """Sequential-term mask over z_0 ⊕ x (2·length), both halves in the sorted order
    (the n_clean clean positions of z_0 first, then the masked ones left to right).

    (B): exactly :func:`block_diffusion` (length, 1) in sorted-index space — z query j sees
         its own z key and the x keys strictly before it in the order; x is causal.
    (A): the same, except that the x half's clean prefix (sorted indices < n_clean, the
         tokens the diffusion phase produced) attends bidirectionally among itself, as the
         (A) sampler writes it into the KV cache in one prefix-LM forward before the
         sequential phase.  z queries are unchanged: a masked query at j >= n_clean sees the
         whole prefix and the sequential x tokens before it.  (z rows j < n_clean are clean
         tokens, never scored; they keep the (B) pattern so every row has a key.)
    n_clean: int -> (2L, 2L), or (B,) tensor -> (B, 2L, 2L) for variant (A).
    """
    full = block_diffusion(length, 1, device)
    if variant == "B":
        return full
    if variant != "A":
        raise ValueError(f"unknown Eso-LM variant {variant!r}; use 'A' or 'B'")
    x_block = prefix_lm(length, n_clean, device)
    top = full[:length].expand(*x_block.shape[:-2], length, 2 * length)
    bottom = torch.cat([torch.zeros_like(x_block), x_block], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def esolm_steps(steps: torch.Tensor) -> torch.Tensor:
    """Eso-LM (B)'s single-pass likelihood mask over z ⊕ x (2L, both halves in the sorted
    order) for a sample whose sorted index j was drawn at step ``steps[..., j]`` (non-
    decreasing; −1 for a given prefix).  (L,) -> (2L, 2L); (B, L) -> (B, 2L, 2L).

    - z query j -> z keys of its own step up to itself: the [MASK] queries of its window,
      causal, as the cached sampler's window holds them;
    - z query j -> x keys drawn at earlier steps: the clean tokens in the cache;
    - x query   -> x keys up to itself: clean tokens are written to the cache causally;
    - x query   -> z key never.
    With one token per step this is :func:`esolm_sequential` (B), i.e. block_diffusion(L, 1).
    """
    L = steps.shape[-1]
    q, k = steps[..., :, None], steps[..., None, :]
    upto = causal(L, steps.device)
    top = torch.cat([(q == k) & upto, k < q], dim=-1)
    bottom = torch.cat([torch.zeros_like(top[..., :L]), upto.expand_as(top[..., :L])], dim=-1)
    return torch.cat([top, bottom], dim=-2)
