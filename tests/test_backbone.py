"""The shared trunk: KV cache append/rollback, explicit rotary positions, mask handling."""

import pytest
import torch

from harness.nn import masks
from tests.helpers import random_batch, tiny_model


def test_kv_cache_matches_full_forward_and_rolls_back():
    net = tiny_model("ar").net
    x = random_batch(3, 12)
    pos = torch.arange(12)
    full = net(x, pos, masks.causal(12))

    cache = net.new_cache(3, 12)
    first = net(x[:, :5], pos[:5], masks.causal(5), cache, commit=5)
    assert cache.length == 5
    # Scratch tokens beyond `commit` are attended in this call but not kept.
    rest = net(x[:, 5:], pos[5:], masks.cached_causal(7, 5), cache, commit=0)
    assert cache.length == 5
    torch.testing.assert_close(torch.cat([first, rest], 1), full, rtol=1e-10, atol=1e-10)

    # Roll back to 3 tokens and recompute from there: same outputs.
    cache.rollback(3)
    again = net(x[:, 3:], pos[3:], masks.cached_causal(9, 3), cache, commit=9)
    torch.testing.assert_close(again, full[:, 3:], rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="roll back"):
        cache.rollback(13)


def test_positions_travel_with_tokens():
    """Feeding a permutation of the tokens with their ORIGINAL positions and the permuted
    mask gives the permuted outputs: the basis of Eso-LM's sorted order."""
    net = tiny_model("ar").net
    x = random_batch(2, 10)
    pos = torch.arange(10)
    mask = masks.causal(10)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    out = net(x, pos, mask)
    out_perm = net(x[:, perm], pos[perm], mask[perm][:, perm])
    torch.testing.assert_close(out_perm, out[:, perm], rtol=1e-10, atol=1e-10)
    # Positions matter: the same tokens at shifted positions give different outputs.
    assert not torch.allclose(net(x, pos + 1, mask), out)


def test_mask_shape_and_cache_capacity_are_checked():
    net = tiny_model("ar").net
    x = random_batch(1, 6)
    with pytest.raises(ValueError, match="mask shape"):
        net(x, torch.arange(6), masks.causal(5))
    cache = net.new_cache(1, 4)
    with pytest.raises(ValueError, match="overflow"):
        net(x, torch.arange(6), masks.causal(6), cache)


def test_adaln_zero_blocks_start_as_identity():
    from harness.nn.transformer import BackboneConfig, Transformer

    net = Transformer(BackboneConfig.from_preset("tiny", vocab_size=20, max_len=8))
    x = torch.randint(0, 20, (2, 8))
    h = net.embed(x)
    cos_sin = __import__("harness.nn.transformer", fromlist=["rotary_cos_sin"]).rotary_cos_sin(
        torch.arange(8).expand(2, 8), 16, 10_000.0, h.dtype)
    for layer, block in enumerate(net.blocks):
        torch.testing.assert_close(block(h, *cos_sin, masks.causal(8), None, layer), h)


def test_rotary_is_the_half_rotation_exactly_and_preserves_norms():
    from harness.nn.transformer import apply_rotary, rotary_cos_sin

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 16, generator=g, dtype=torch.float64)
    positions = torch.randint(0, 100, (2, 5), generator=g)
    cos, sin = rotary_cos_sin(positions, 16, 10_000.0, torch.float64)
    inv_freq = 1.0 / (10_000.0 ** (torch.arange(0, 16, 2, dtype=torch.float32) / 16))
    angle = (positions.float()[..., None] * inv_freq)[:, None]  # float32 angles, tables cast to x's dtype
    c, s = angle.cos().double(), angle.sin().double()
    x1, x2 = x.chunk(2, dim=-1)
    want = torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)
    assert torch.equal(apply_rotary(x, cos, sin), want)
    torch.testing.assert_close(apply_rotary(x, cos, sin).norm(dim=-1), x.norm(dim=-1))


def test_additive_mask_gives_sdpa_the_same_attention_as_the_boolean_mask():
    import torch.nn.functional as F

    from harness.nn.transformer import additive_mask

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 6, 8, generator=g) for _ in range(3))
    mask = masks.cached_prefix_lm(6, 4, 2)
    assert torch.equal(F.scaled_dot_product_attention(q, k[:, :, :1].expand(2, 3, 10, 8).contiguous(), v[:, :, :1]
                                                      .expand(2, 3, 10, 8).contiguous(), attn_mask=mask),
                       F.scaled_dot_product_attention(q, k[:, :, :1].expand(2, 3, 10, 8).contiguous(), v[:, :, :1]
                                                      .expand(2, 3, 10, 8).contiguous(),
                                                      attn_mask=additive_mask(mask, q.dtype)))
    add = additive_mask(mask, torch.bfloat16)
    assert add.dtype == torch.bfloat16 and torch.equal(add == 0, mask) and (add[~mask] == float("-inf")).all()
    assert additive_mask(None, torch.float32) is None


def test_modulated_norm_is_layer_norm_then_scale_and_shift():
    """The adaLN modulation folded into LayerNorm's affine (one kernel instead of three) is
    LayerNorm(h)·scale + shift, and trains the modulation through it."""
    from harness.nn.transformer import modulated_norm

    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 5, 16, generator=g, dtype=torch.float64)
    scale = torch.randn(16, generator=g, dtype=torch.float64, requires_grad=True)
    shift = torch.randn(16, generator=g, dtype=torch.float64, requires_grad=True)
    three_ops = torch.nn.functional.layer_norm(h, (16,)) * scale + shift
    folded = modulated_norm(h, scale, shift)
    torch.testing.assert_close(folded, three_ops, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(folded.square().sum(), (scale, shift))
    expected = torch.autograd.grad(three_ops.square().sum(), (scale, shift))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_head_bias_adds_to_every_logit_and_old_configs_have_none():
    """``head_bias`` (the released DiT checkpoints' output bias) shifts every position's
    logits by the bias, in the plain and the fixed-shape cached forward alike; a backbone dict
    saved before the option existed builds the bias-free head it was trained with."""
    from dataclasses import replace

    from harness.nn.transformer import BackboneConfig, Transformer

    cfg = BackboneConfig.from_preset("tiny", vocab_size=20, max_len=8)
    old = {k: v for k, v in cfg.to_dict().items() if k != "head_bias"}
    assert BackboneConfig(**old) == cfg and cfg.head_bias is False
    assert "head.bias" not in Transformer(cfg).state_dict()

    torch.manual_seed(0)
    plain = Transformer(cfg).double()
    biased = Transformer(replace(cfg, head_bias=True)).double()
    missing, unexpected = biased.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["head.bias"] and unexpected == []
    bias = torch.randn(20, dtype=torch.float64)
    with torch.no_grad():
        biased.head.bias.copy_(bias)
    x, pos = torch.randint(0, 20, (2, 8)), torch.arange(8)
    torch.testing.assert_close(biased(x, pos, masks.causal(8)), plain(x, pos, masks.causal(8)) + bias,
                               rtol=1e-12, atol=1e-12)
    cache = biased.new_cache(2, 8)
    step = biased.forward_static(x, pos.expand(2, 8), cache, torch.tensor([0]), torch.tensor([0]), 8)
    torch.testing.assert_close(step, biased(x, pos, masks.causal(8)), rtol=1e-10, atol=1e-10)
