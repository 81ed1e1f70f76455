"""The one transformer trunk every model in the harness shares.

Models differ only in the tokens they feed, the rotary positions they pass (Eso-LM
reorders tokens, so positions travel with them) and the boolean attention mask;
they never keep a private copy of this network (one backbone, many masks;
docs/models.md §0).

Conventions
- ``mask[..., q, k] = True`` means query q may attend to key k.  Shapes
  (Nq, Nk) or (B, Nq, Nk); every query must be allowed at least one key.
- With a :class:`KVCache`, the N new tokens are written to cache slots
  ``[cache.length, cache.length + N)`` and attention runs over slots
  ``[0, cache.length + N)``; afterwards only the first ``commit`` new tokens are
  kept (``cache.length += commit``).  The remaining slots are scratch that the
  next call overwrites, so "append" and "rollback" are both just moving
  ``cache.length``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

PRESETS: dict[str, dict] = {
    # CPU unit tests: well under 1M parameters with a small BPE vocabulary.
    "tiny": dict(n_layers=2, d_model=64, n_heads=4),
    # CPU smoke sweeps: trains in minutes on two cores.
    "mini": dict(n_layers=4, d_model=128, n_heads=4),
    # A small GPU trunk for quality sweeps on the bundled corpus.
    "medium": dict(n_layers=8, d_model=512, n_heads=8),
    # The papers' DiT trunk: 12 layers, 768 wide, 12 heads.
    "small": dict(n_layers=12, d_model=768, n_heads=12),
}


@dataclass
class BackboneConfig:
    vocab_size: int
    max_len: int = 1024
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    rope_base: float = 10_000.0
    adaln: bool = True  # adaLN-Zero modulation fed a constant (no time conditioning)
    # A bias on the output head: the released DiT checkpoints have one (harness/checkpoints/released.py);
    # off by default so every checkpoint saved before the option existed loads unchanged.
    head_bias: bool = False

    @classmethod
    def from_preset(cls, preset: str, vocab_size: int, **overrides) -> "BackboneConfig":
        if preset not in PRESETS:
            raise ValueError(f"unknown backbone preset {preset!r}; choose one of {sorted(PRESETS)}")
        return cls(vocab_size=vocab_size, **{**PRESETS[preset], **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Pre-allocated keys/values: one (B, heads, capacity, head_dim) tensor per layer.

    Separate tensors, not slices of one stacked tensor: a compiled step (torch.compile)
    then writes each layer's new keys in place, where a slice of a shared tensor makes
    it copy the whole layer's cache in every step.
    """

    def __init__(self, cfg: BackboneConfig, batch: int, capacity: int, device, dtype):
        head_dim = cfg.d_model // cfg.n_heads
        shape = (batch, cfg.n_heads, capacity, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.capacity = capacity
        self.length = 0

    def rows(self, rows: slice) -> "KVCache":
        """A view of some rows: writes through it land in this cache (a memory-budget chunk)."""
        view = KVCache.__new__(KVCache)
        view.k, view.v = [t[rows] for t in self.k], [t[rows] for t in self.v]
        view.capacity, view.length = self.capacity, self.length
        return view

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back to {length}: cache holds {self.length}")
        self.length = length


def rotary_cos_sin(positions: torch.Tensor, head_dim: int, base: float, dtype):
    """Rotary tables for explicit integer positions (B, N) -> (B, 1, N, head_dim), laid out
    for :func:`apply_rotary`: cos = [cos, cos], sin = [−sin, sin]."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.to(torch.float32)[..., None] * inv_freq
    cos, sin = angles.cos().to(dtype)[:, None], angles.sin().to(dtype)[:, None]
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the halves (x1, x2) by the angle: (x1·cos − x2·sin, x2·cos + x1·sin), as
    x·cos + (x2, x1)·sin — four kernels instead of seven, the same numbers."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([x2, x1], dim=-1) * sin


def additive_mask(mask: torch.Tensor | None, dtype) -> torch.Tensor | None:
    """Boolean mask -> 0 / −inf in ``dtype``, what SDPA would build from it in every layer."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def modulated_norm(h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """LayerNorm(h)·scale + shift with the modulation as the norm's affine: one kernel where
    norm, multiply and add were three (a batch-1 decode step is kernel-latency-bound)."""
    return F.layer_norm(h, h.shape[-1:], scale, shift)


class Block(nn.Module):
    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.norm1 = nn.LayerNorm(d, elementwise_affine=not cfg.adaln)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=not cfg.adaln)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.proj = nn.Linear(d, d, bias=False)
        self.mlp = nn.Sequential(
            nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(approximate="tanh"), nn.Linear(cfg.mlp_ratio * d, d)
        )
        self.dropout = nn.Dropout(cfg.dropout)
        # adaLN-Zero with a constant conditioning vector reduces to learned per-channel
        # shift/scale/gate, zero-initialised so every block starts as the identity.
        self.modulation = nn.Parameter(torch.zeros(6, d)) if cfg.adaln else None

    def forward(self, h, cos, sin, mask, cache: KVCache | None, layer: int, slots=None, keys: int = 0):
        """``slots`` (N,) long: the static-shape path writes K/V at these cache slots and
        attends over the first ``keys`` slots (see :meth:`Transformer.forward_static`)."""
        B, N, D = h.shape
        if self.modulation is not None:
            shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation
            x = modulated_norm(h, 1 + scale1, shift1)
        else:
            x = self.norm1(h)
        qkv = self.qkv(x).view(B, N, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rotary(qkv[:2], cos, sin)  # q and k rotated together
        v = qkv[2]
        if cache is not None and slots is not None:
            cache.k[layer].index_copy_(2, slots, k)
            cache.v[layer].index_copy_(2, slots, v)
            k, v = cache.k[layer][:, :, :keys], cache.v[layer][:, :, :keys]
        elif cache is not None:
            start = cache.length
            cache.k[layer][:, :, start : start + N] = k
            cache.v[layer][:, :, start : start + N] = v
            k, v = cache.k[layer][:, :, : start + N], cache.v[layer][:, :, : start + N]
        if mask is not None and mask.dim() == 3:
            mask = mask[:, None]
        if mask is not None and mask.dtype != torch.bool and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)  # -inf and 0 are exact in every float dtype
        attn = self.dropout(self.proj(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                                      .transpose(1, 2).reshape(B, N, D)))
        if self.modulation is None:
            h = h + attn
            return h + self.dropout(self.mlp(self.norm2(h)))
        h = torch.addcmul(h, gate1, attn)
        return torch.addcmul(h, gate2, self.dropout(self.mlp(modulated_norm(h, 1 + scale2, shift2))))


class Transformer(nn.Module):
    """Token embedding -> blocks (pre-LN, rotary, masked SDPA) -> final norm -> untied head
    (with a bias when ``cfg.head_bias``)."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        if cfg.d_model % cfg.n_heads or (cfg.d_model // cfg.n_heads) % 2:
            raise ValueError("d_model must split into an even head dimension per head")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model, elementwise_affine=not cfg.adaln)
        self.final_modulation = nn.Parameter(torch.zeros(2, cfg.d_model)) if cfg.adaln else None
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.head_bias)
        self.apply(self._init)

    @staticmethod
    def _init(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        p = self.head.weight
        return KVCache(self.cfg, batch, capacity, p.device, p.dtype)

    def forward(self, tokens, positions, mask, cache: KVCache | None = None, commit: int = 0):
        """tokens, positions: (B, N) ints; mask: bool (Nq, Nk) or (B, Nq, Nk), or None for full
        attention without a cache. Returns float32 logits (float64 for a float64 model)."""
        B, N = tokens.shape
        n_keys = N + (cache.length if cache is not None else 0)
        if mask is None and cache is not None:
            raise ValueError("a cached forward needs an explicit mask")
        if mask is not None and mask.shape[-2:] != (N, n_keys):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match {N} queries x {n_keys} keys")
        if cache is not None and cache.length + N > cache.capacity:
            raise ValueError(f"KV cache overflow: {cache.length} + {N} > capacity {cache.capacity}")
        logits = self._run(tokens, positions, mask, cache)
        if cache is not None:
            cache.length += commit
        return logits

    def forward_static(self, tokens, positions, cache: KVCache, start: torch.Tensor, floor: torch.Tensor, keys: int):
        """The cached forward with every shape fixed and no Python value read from the device,
        so one call can be captured as a CUDA graph and replayed (harness.nn.steps).

        start, floor: 1-element long tensors.  The N tokens' K/V go to cache slots
        start + [0, N); query j attends to slots [0, max(start + j + 1, floor)) within the
        first ``keys`` slots — causal over the slots, with a bidirectional prefix up to
        ``floor`` (0: plain causal; start + N: a whole block; the clean prefix: prefix-LM).
        ``cache.length`` is not used: the caller tracks what is committed.
        """
        N = tokens.shape[1]
        if keys > cache.capacity:
            raise ValueError(f"keys {keys} > cache capacity {cache.capacity}")
        slots = start + torch.arange(N, device=tokens.device)
        limit = torch.maximum(slots + 1, floor)
        mask = torch.arange(keys, device=tokens.device) < limit[:, None]
        return self._run(tokens, positions, mask, cache, slots, keys)

    def _run(self, tokens, positions, mask, cache, slots=None, keys: int = 0):
        B, N = tokens.shape
        if positions.dim() == 1:
            positions = positions.expand(B, N)
        h = self.embed(tokens)
        cos, sin = rotary_cos_sin(positions, self.cfg.d_model // self.cfg.n_heads, self.cfg.rope_base, h.dtype)
        mask = additive_mask(mask, self._attention_dtype(h))  # once, not in every layer
        for layer, block in enumerate(self.blocks):
            h = block(h, cos, sin, mask, cache, layer, slots, keys)
        if self.final_modulation is not None:
            shift, scale = self.final_modulation
            h = modulated_norm(h, 1 + scale, shift)
        else:
            h = self.norm(h)
        logits = self.head(h)
        return logits if logits.dtype == torch.float64 else logits.float()

    def _attention_dtype(self, h: torch.Tensor):
        """The dtype q will have: autocast's for float32 weights under autocast, else the weights'."""
        weight = self.blocks[0].qkv.weight if len(self.blocks) else h
        if weight.dtype == torch.float32 and torch.is_autocast_enabled(h.device.type):
            return torch.get_autocast_dtype(h.device.type)
        return weight.dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
