"""Attention masks, checked against small matrices written out by hand (1 = may attend).

Rows are queries, columns keys, both in the order the tokens are fed to the network (for
Eso-LM: the sorted order).  For z ⊕ x masks the first half of the rows/columns is z.
"""

import pytest
import torch

from harness.nn import masks


def M(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_causal_and_cached_causal():
    assert torch.equal(masks.causal(3), M([[1, 0, 0], [1, 1, 0], [1, 1, 1]]))
    # 2 new queries after 3 cached keys: all of the cache, causal among themselves.
    assert torch.equal(masks.cached_causal(2, 3), M([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]))


def test_block_diffusion_block_2():
    expected = M([
        # z0 z1 z2 z3  x0 x1 x2 x3
        [1, 1, 0, 0, 0, 0, 0, 0],  # z0: own block of z, no earlier x block
        [1, 1, 0, 0, 0, 0, 0, 0],  # z1
        [0, 0, 1, 1, 1, 1, 0, 0],  # z2: own block of z + x of block 0
        [0, 0, 1, 1, 1, 1, 0, 0],  # z3
        [0, 0, 0, 0, 1, 1, 0, 0],  # x0: x blocks <= own
        [0, 0, 0, 0, 1, 1, 0, 0],  # x1
        [0, 0, 0, 0, 1, 1, 1, 1],  # x2
        [0, 0, 0, 0, 1, 1, 1, 1],  # x3
    ])
    assert torch.equal(masks.block_diffusion(4, 2), expected)


def test_prefix_lm():
    # Prefix of 2 clean tokens: both ways among themselves, never forward; then causal.
    expected = M([
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
    ])
    assert torch.equal(masks.prefix_lm(5, 2), expected)
    # A prefix of 0 or 1 token is plain causal.
    assert torch.equal(masks.prefix_lm(4, 0), masks.causal(4))
    assert torch.equal(masks.prefix_lm(4, 1), masks.causal(4))
    # One prefix length per row.
    batched = masks.prefix_lm(3, torch.tensor([0, 3, 2]))
    assert batched.shape == (3, 3, 3)
    assert torch.equal(batched[0], M([[1, 0, 0], [1, 1, 0], [1, 1, 1]]))
    assert torch.equal(batched[1], M([[1, 1, 1], [1, 1, 1], [1, 1, 1]]))
    assert torch.equal(batched[2], M([[1, 1, 0], [1, 1, 0], [1, 1, 1]]))


def test_cached_prefix_lm_window():
    # (A) sequential phase, first step: empty cache, the 2 clean diffusion tokens written
    # both ways, the first sequential [MASK] sees them and itself.
    assert torch.equal(masks.cached_prefix_lm(3, 0, 2), M([[1, 1, 0], [1, 1, 0], [1, 1, 1]]))
    # Later steps: [previous token | MASK] after 4 cached keys == cached_causal.
    assert torch.equal(masks.cached_prefix_lm(2, 4, 1), M([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]]))
    assert torch.equal(masks.cached_prefix_lm(2, 4, 1), masks.cached_causal(2, 4))
    assert torch.equal(masks.cached_prefix_lm(3, 2, 2), M([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]))


def test_allowed_pairs_counts_the_masks_without_building_them():
    for n_new in range(1, 7):
        for n_cached in range(0, 5):
            for n_prefix in range(0, n_new + 3):
                expected = int(masks.cached_prefix_lm(n_new, n_cached, n_prefix).sum())
                assert masks.allowed_pairs(n_new, n_cached, n_prefix) == expected, (n_new, n_cached, n_prefix)
            assert masks.allowed_pairs(n_new, n_cached) == int(masks.cached_causal(n_new, n_cached).sum())
        assert masks.allowed_pairs(n_new, 0, n_new) == int(masks.bidirectional(n_new).sum()) == n_new ** 2


def test_esolm_diffusion_term():
    # Sorted z_t = [c0 c1 | m2 m3]: 2 clean then 2 masked.
    # (B): causal — c1 sees c0; m3 sees c0, c1, m2 and itself.
    expected_b = M([
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 1, 0],
        [1, 1, 1, 1],
    ])
    # (A): clean both ways among clean (not the masks), masks causal.
    expected_a = M([
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 1, 0],
        [1, 1, 1, 1],
    ])
    assert torch.equal(masks.esolm_diffusion(4, 2, "B"), expected_b)
    assert torch.equal(masks.esolm_diffusion(4, 2, "A"), expected_a)
    assert masks.esolm_diffusion(4, torch.tensor([2, 0]), "A").shape == (2, 4, 4)
    with pytest.raises(ValueError, match="variant"):
        masks.esolm_diffusion(4, 2, "C")


def test_esolm_sequential_term():
    # z_0 ⊕ x over the sorted order [c0 c1 | m2] (2 clean, 1 masked), length 3.
    # (B) = block_diffusion(3, 1): z_j sees itself and x before it; x causal.
    expected_b = M([
        # z0 z1 z2  x0 x1 x2
        [1, 0, 0, 0, 0, 0],
        [0, 1, 0, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],  # the masked query: both clean x tokens + itself
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1, 1],
    ])
    # (A): the clean x prefix (x0, x1) attends both ways; z rows unchanged.
    expected_a = M([
        [1, 0, 0, 0, 0, 0],
        [0, 1, 0, 1, 0, 0],
        [0, 0, 1, 1, 1, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1, 1],
    ])
    assert torch.equal(masks.block_diffusion(3, 1), expected_b)
    assert torch.equal(masks.esolm_sequential(3, 2, "B"), expected_b)
    assert torch.equal(masks.esolm_sequential(3, 2, "A"), expected_a)
    # (A) with no clean prefix is (B).
    assert torch.equal(masks.esolm_sequential(3, 0, "A"), expected_b)
    batched = masks.esolm_sequential(3, torch.tensor([2, 0, 3]), "A")
    assert batched.shape == (3, 6, 6)
    assert torch.equal(batched[0], expected_a)
    assert torch.equal(batched[1], expected_b)
    # All clean: the whole x half is bidirectional.
    assert torch.equal(batched[2][3:, 3:], torch.ones(3, 3, dtype=torch.bool))
    assert torch.equal(batched[2][:3], expected_b[:3])


@pytest.mark.parametrize("variant", ["A", "B"])
def test_every_query_has_a_key(variant):
    for n_clean in range(6):
        assert masks.esolm_diffusion(5, n_clean, variant).any(-1).all()
        assert masks.esolm_sequential(5, n_clean, variant).any(-1).all()
