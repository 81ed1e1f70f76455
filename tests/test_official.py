"""``esolm import``: released official checkpoints become harness checkpoints that compute
what the official network computes.

The reference below is this test's own float64 implementation of the official DiT as
docs/checkpoints.md §3 describes it (time embedder, adaLN fed sigma = 0, weight-only LayerNorm,
rotate-half rotary, output bias), deliberately written apart from the harness trunk.
Random weights with a non-zero output bias and non-trivial adaLN / LayerNorm weights are
written in both official formats, imported through the CLI, and the harness model's own
forwards must give the reference's logits and likelihoods.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from harness.checkpoints.own_format import load_checkpoint, read_state
from harness.cli import main
from harness.checkpoints.released import import_checkpoint
from tests.test_safe_load import Trap

V, D, HEADS, COND, LAYERS, L = 50258, 32, 4, 16, 2, 16
MASK = V - 1


# --- the reference: the official DiT, float64 ----------------------------------------------
def reference_logits(w, tokens, positions, allowed, adaln: bool, sigma: float = 0.0):
    """Official DiT logits for tokens (B, N) at rotary positions (B, N); allowed (N, N) or
    (B, N, N) bool, True = query may attend to key."""
    B, N = tokens.shape
    h = w["vocab_embed.embedding"][tokens]
    c = None
    if adaln:
        freqs = torch.exp(-math.log(10000.0) * torch.arange(128, dtype=torch.float64) / 128)
        t = torch.full((B, 1), sigma, dtype=torch.float64) * freqs
        c = torch.cat([t.cos(), t.sin()], -1) @ w["sigma_map.mlp.0.weight"].T + w["sigma_map.mlp.0.bias"]
        c = F.silu(F.silu(c) @ w["sigma_map.mlp.2.weight"].T + w["sigma_map.mlp.2.bias"])[:, None]  # (B, 1, cond)
    hd = D // HEADS
    angle = positions[..., None].double() / 10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd)
    cos, sin = torch.cat([angle, angle], -1).cos()[:, :, None], torch.cat([angle, angle], -1).sin()[:, :, None]

    def rotate(x):  # (B, N, heads, hd), rotate-half
        return x * cos + torch.cat([-x[..., hd // 2:], x[..., : hd // 2]], -1) * sin

    def norm(x, weight):
        return F.layer_norm(x, (D,)) * weight

    bias = torch.zeros(allowed.shape, dtype=torch.float64).masked_fill(~allowed, float("-inf"))
    bias = bias[:, None] if bias.dim() == 3 else bias
    for i in range(LAYERS):
        p = f"blocks.{i}."
        if adaln:
            mods = (c @ w[p + "adaLN_modulation.weight"].T + w[p + "adaLN_modulation.bias"]).chunk(6, -1)
        else:
            mods = (0.0, 0.0, 1.0, 0.0, 0.0, 1.0)
        x = norm(h, w[p + "norm1.weight"]) * (1 + mods[1]) + mods[0]
        q, k, v = (x @ w[p + "attn_qkv.weight"].T).view(B, N, 3, HEADS, hd).unbind(2)
        q, k, v = rotate(q).transpose(1, 2), rotate(k).transpose(1, 2), v.transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd) + bias, -1) @ v
        h = h + mods[2] * (att.transpose(1, 2).reshape(B, N, D) @ w[p + "attn_out.weight"].T)
        x = norm(h, w[p + "norm2.weight"]) * (1 + mods[4]) + mods[3]
        x = F.gelu(x @ w[p + "mlp.0.weight"].T + w[p + "mlp.0.bias"], approximate="tanh")
        h = h + mods[5] * (x @ w[p + "mlp.2.weight"].T + w[p + "mlp.2.bias"])
    x = norm(h, w["output_layer.norm_final.weight"])
    if adaln:
        shift, scale = (c @ w["output_layer.adaLN_modulation.weight"].T + w["output_layer.adaLN_modulation.bias"]).chunk(2, -1)
        x = x * (1 + scale) + shift
    return x @ w["output_layer.linear.weight"].T + w["output_layer.linear.bias"]


class ReferenceNet(torch.nn.Module):
    """The reference behind the trunk's call signature, so a harness model's own loss code can
    run on it with the same random draws."""

    def __init__(self, w, adaln):
        super().__init__()
        self.w, self.adaln = w, adaln

    def forward(self, tokens, positions, mask, cache=None, commit=0):
        positions = positions.expand(tokens.shape) if positions.dim() == 1 else positions
        mask = torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool) if mask is None else mask
        return reference_logits(self.w, tokens, positions, mask, self.adaln)


def official_mask_block_diffusion(n, block):
    """BD3-LM's training mask over x_t ⊕ x0 from its definition: block-diagonal within a
    half, x_t -> strictly earlier x0 blocks, x0 -> its own and earlier x0 blocks."""
    q, k = torch.arange(2 * n)[:, None], torch.arange(2 * n)[None, :]
    q_clean, k_clean = q >= n, k >= n
    bq, bk = torch.where(q_clean, q - n, q) // block, torch.where(k_clean, k - n, k) // block
    return ((bq == bk) & (q_clean == k_clean)) | ((bq > bk) & k_clean & ~q_clean) | ((bq >= bk) & k_clean & q_clean)


# --- official weights and files -------------------------------------------------------------
def official_weights(adaln: bool, seed: int = 0) -> dict:
    """Backbone weights in the official module order (what parameters() and the EMA list follow)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.3, mean=0.0):
        return mean + scale * torch.randn(*shape, generator=g, dtype=torch.float64)

    w = {"vocab_embed.embedding": r(V, D, scale=1.0)}
    if adaln:
        w.update({"sigma_map.mlp.0.weight": r(COND, 256), "sigma_map.mlp.0.bias": r(COND),
                  "sigma_map.mlp.2.weight": r(COND, COND), "sigma_map.mlp.2.bias": r(COND)})
    w["rotary_emb.inv_freq"] = 1.0 / 10000.0 ** (torch.arange(0, D // HEADS, 2, dtype=torch.float64) / (D // HEADS))
    for i in range(LAYERS):
        p = f"blocks.{i}."
        w.update({p + "norm1.weight": r(D, mean=1.0), p + "attn_qkv.weight": r(3 * D, D),
                  p + "attn_out.weight": r(D, D), p + "norm2.weight": r(D, mean=1.0),
                  p + "mlp.0.weight": r(4 * D, D), p + "mlp.0.bias": r(4 * D), p + "mlp.2.weight": r(D, 4 * D),
                  p + "mlp.2.bias": r(D)})
        if adaln:
            w.update({p + "adaLN_modulation.weight": r(6 * D, COND), p + "adaLN_modulation.bias": r(6 * D)})
    w.update({"output_layer.norm_final.weight": r(D, mean=1.0), "output_layer.linear.weight": r(V, D),
              "output_layer.linear.bias": r(V, scale=1.0)})
    if adaln:
        w.update({"output_layer.adaLN_modulation.weight": r(2 * D, COND),
                  "output_layer.adaLN_modulation.bias": r(2 * D)})
    return w


HF_CONFIGS = {
    "mdlm": {"model_type": "mdlm", "backbone": "dit", "time_conditioning": False},
    "bd3lm": {"model_type": "bd3lm", "block_size": 4, "cross_attn": True, "adaln": True, "causal": False,
              "attn_backend": "sdpa", "time_conditioning": False, "var_min": True, "sampling_eps_min": 1e-3,
              "sampling_eps_max": 1.0},
    "esolm-b": {"model_type": "EsoLM", "mask_index": MASK, "hidden_size": D},
}


def write_hf(folder, w, model, **config_overrides):
    folder.mkdir(parents=True)
    config = {"architectures": ["X"], "vocab_size": V, "model_length": L, "hidden_dim": D, "cond_dim": COND,
              "n_blocks": LAYERS, "n_heads": HEADS, "dropout": 0.1, "return_dict": False,
              **HF_CONFIGS[model], **config_overrides}
    (folder / "config.json").write_text(json.dumps(config))
    tensors = {f"backbone.{k}": v.contiguous() for k, v in w.items()}
    if model == "bd3lm":
        tensors.update({"sampling_eps_min": torch.tensor(0.25), "sampling_eps_max": torch.tensor(0.75)})
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


class AnyNode:
    """Pickles like an OmegaConf value node: state {'_val': value, ...}."""

    def __init__(self, value):
        self._val, self._metadata, self._parent = value, None, None


class DictConfig:
    """Pickles like an OmegaConf DictConfig: state {'_content': {key: node}, ...}."""

    def __init__(self, content: dict):
        self._metadata, self._parent = None, None
        self._content = {k: DictConfig(v) if isinstance(v, dict) else AnyNode(v) for k, v in content.items()}


def write_lightning(path, ema_weights, model, marker, raw_weights=None, ema=True, **config_overrides):
    algo = {"ar": {"name": "ar", "time_conditioning": False, "causal_attention": True},
            "mdlm": {"name": "mdlm", "time_conditioning": False},
            "bd3lm": {"name": "bd3lm", "time_conditioning": False},
            "esolm-b": {"name": "esolm", "time_conditioning": False, "alpha_0": 0.25, "batch_split": 0.5,
                        "diffusion_attn_mode": "causal", "sequential_attn_mode": "causal"}}[model]
    config = {"algo": algo, "model": {"n_heads": HEADS, "length": "${model.max}", "max": L, "hidden_size": D,
                                      "dropout": 0.1}, "block_size": 4, "training": {"sampling_eps": "2e-3"},
              "loader": {"batch_size": "${div_up:${.x}, 2}"}}
    for key, value in config_overrides.items():
        section, _, name = key.partition("__")
        config[section][name] = value
    raw = raw_weights if raw_weights is not None else {  # buffers are not averaged: the state_dict's count
        k: v if k.endswith("inv_freq") else torch.zeros_like(v) for k, v in ema_weights.items()}
    state = {"state_dict": {f"backbone.{k}": v for k, v in raw.items()}, "global_step": 7,
             "hyper_parameters": {"config": DictConfig(config), "tokenizer": Trap(marker)},
             "loops": {"fit_loop": {"state": Trap(marker)}}, "optimizer_states": [{"state": {}}]}
    if ema:
        state["ema"] = {"decay": 0.9999, "num_updates": 7,
                        "shadow_params": [v for k, v in ema_weights.items() if not k.endswith("inv_freq")]}
    torch.save(state, path)
    return path


def do_import(src, model, out, *extra):
    main(["import", str(src), "--model", model, "--out", str(out), *extra])
    path = out / "checkpoint.pt"
    loaded = load_checkpoint(path)
    loaded.model.double().load_state_dict(read_state(path)["model_state"])  # the float64 weights as stored
    return loaded


def subs(logits):
    logits = logits.clone()
    logits[..., MASK] = float("-inf")
    return logits


def batch(seed=0, n=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 50256, (n, L), generator=g)
    x[:, 0] = 50256
    return x


def check_likelihood(model, w, adaln, **kwargs):
    """The model's own likelihood code gives the same numbers on the imported trunk as on the
    reference network, with the same seed."""
    x = batch(1)
    got = model.nll(x, generator=torch.Generator().manual_seed(3), **kwargs).nats
    model.net, trunk = ReferenceNet(w, adaln), model.net
    want = model.nll(x, generator=torch.Generator().manual_seed(3), **kwargs).nats
    model.net = trunk
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # rotary angles are float32 in the trunk


# --- the families --------------------------------------------------------------------------
def test_ar_lightning_import_gives_the_official_logits_and_exact_nll(tmp_path):
    w = official_weights(adaln=False)
    src = write_lightning(tmp_path / "ar.ckpt", w, "ar", tmp_path / "MARKER")
    model = do_import(src, "ar", tmp_path / "ar").model
    x = batch()
    allowed = torch.ones(L, L, dtype=torch.bool).tril()
    want = subs(reference_logits(w, x, torch.arange(L).expand(2, L), allowed, adaln=False))
    torch.testing.assert_close(model.next_token_logits(x), want, rtol=1e-5, atol=1e-5)
    ref_nll = F.cross_entropy(want[:, :-1].transpose(1, 2), x[:, 1:], reduction="none").sum(1)
    torch.testing.assert_close(model.nll(x).nats, ref_nll, rtol=1e-7, atol=1e-7)
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("fmt", ["hf", "lightning"])
def test_mdlm_import_gives_the_official_logits_and_nelbo(tmp_path, fmt):
    w = official_weights(adaln=True, seed=1)
    src = (write_hf(tmp_path / "hf", w, "mdlm") if fmt == "hf"
           else write_lightning(tmp_path / "m.ckpt", w, "mdlm", tmp_path / "MARKER"))
    loaded = do_import(src, "mdlm", tmp_path / "mdlm")
    model = loaded.model
    z = batch().masked_fill(torch.rand(2, L, generator=torch.Generator().manual_seed(0)) < 0.5, MASK)
    want = reference_logits(w, z, torch.arange(L).expand(2, L), torch.ones(L, L, dtype=torch.bool), adaln=True)
    got = model.net(z, torch.arange(L), torch.ones(L, L, dtype=torch.bool))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    ce = F.cross_entropy(subs(want).transpose(1, 2), batch(), reduction="none") * (z == MASK)
    torch.testing.assert_close(model.token_ce(batch(), z), ce, rtol=1e-7, atol=1e-7)
    check_likelihood(model, w, adaln=True, draws=2)
    assert model.noise.eps == (2e-3 if fmt == "lightning" else 1e-3)  # the config's "2e-3", a YAML string
    meta = loaded.meta["imported"]
    assert meta["format"] == fmt and meta["ema"] == (fmt == "lightning") and len(meta["sha256"]) == 64
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("fmt", ["hf", "lightning"])
def test_bd3lm_import_gives_the_official_block_diffusion_logits_and_nelbo(tmp_path, fmt):
    w = official_weights(adaln=True, seed=2)
    src = (write_hf(tmp_path / "hf", w, "bd3lm") if fmt == "hf"
           else write_lightning(tmp_path / "b.ckpt", w, "bd3lm", tmp_path / "MARKER"))
    model = do_import(src, "bd3lm", tmp_path / "bd3").model
    assert model.block_size == 4 and (fmt == "lightning" or model.clip == (0.25, 0.75))
    x = batch()
    zt = x.masked_fill(torch.rand(2, L, generator=torch.Generator().manual_seed(1)) < 0.5, MASK)
    full = torch.cat([zt, x], 1)
    want = reference_logits(w, full, torch.arange(L).repeat(2).expand(2, 2 * L),
                            official_mask_block_diffusion(L, 4), adaln=True)[:, :L]
    ce = F.cross_entropy(subs(want).transpose(1, 2), x, reduction="none") * (zt == MASK)
    torch.testing.assert_close(model.token_ce(x, zt), ce, rtol=1e-7, atol=1e-7)
    check_likelihood(model, w, adaln=True, draws=2)


@pytest.mark.parametrize("fmt", ["hf", "lightning"])
def test_esolm_b_import_gives_the_official_logits_in_both_forwards(tmp_path, fmt):
    """Eso-LM (B): the diffusion forward (causal over the sorted order) and the sequential
    forward (z_0 ⊕ x under BD3-LM's mask with block 1, both halves sorted)."""
    w = official_weights(adaln=True, seed=3)
    src = (write_hf(tmp_path / "hf", w, "esolm-b") if fmt == "hf"
           else write_lightning(tmp_path / "e.ckpt", w, "esolm-b", tmp_path / "MARKER"))
    model = do_import(src, "esolm-b", tmp_path / "eso", *(["--alpha-0", "0.25"] if fmt == "hf" else [])).model
    assert model.alpha_0 == 0.25
    x = batch()
    g = torch.Generator().manual_seed(4)
    perm = torch.stack([torch.randperm(L, generator=g) for _ in range(2)])
    n_clean = 6
    xs = x.gather(1, perm)
    z = xs.clone()
    z[:, n_clean:] = MASK
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    want = subs(reference_logits(w, z, perm, causal, adaln=True))
    torch.testing.assert_close(model._diffusion_logits(z, perm, n_clean), want, rtol=1e-5, atol=1e-5)
    want = subs(reference_logits(w, torch.cat([z, xs], 1), torch.cat([perm, perm], 1),
                                 official_mask_block_diffusion(L, 1), adaln=True)[:, :L])
    torch.testing.assert_close(model._sequential_logits(z, xs, perm, n_clean), want, rtol=1e-5, atol=1e-5)
    check_likelihood(model, w, adaln=True, draws=2)
    check_likelihood(model, w, adaln=True, alpha_0=1.0)


def test_esolm_a_import_gives_the_official_logits_in_both_forwards(tmp_path):
    """Eso-LM (A) (its .ckpt config says diffusion_attn_mode mixed2, sequential mixed): clean
    tokens attend both ways among themselves, in both forwards."""
    w = official_weights(adaln=True, seed=9)
    src = write_lightning(tmp_path / "a.ckpt", w, "esolm-b", tmp_path / "MARKER",
                          algo__diffusion_attn_mode="mixed2", algo__sequential_attn_mode="mixed")
    model = do_import(src, "esolm-a", tmp_path / "eso-a").model
    x, n_clean = batch(), 6
    perm = torch.stack([torch.randperm(L, generator=torch.Generator().manual_seed(s)) for s in (5, 6)])
    xs = x.gather(1, perm)
    z = xs.clone()
    z[:, n_clean:] = MASK
    q, k = torch.arange(L)[:, None], torch.arange(L)[None, :]
    mixed2 = (q >= k) | ((q < n_clean) & (k < n_clean))
    want = subs(reference_logits(w, z, perm, mixed2, adaln=True))
    torch.testing.assert_close(model._diffusion_logits(z, perm, n_clean), want, rtol=1e-5, atol=1e-5)
    q, k = torch.arange(2 * L)[:, None], torch.arange(2 * L)[None, :]
    prefix = (q >= L) & (q < L + n_clean) & (k >= L) & (k < L + n_clean)
    want = subs(reference_logits(w, torch.cat([z, xs], 1), torch.cat([perm, perm], 1),
                                 official_mask_block_diffusion(L, 1) | prefix, adaln=True)[:, :L])
    torch.testing.assert_close(model._sequential_logits(z, xs, perm, n_clean), want, rtol=1e-5, atol=1e-5)
    check_likelihood(model, w, adaln=True, draws=2)


def test_no_ema_takes_the_raw_state_dict(tmp_path):
    ema, raw = official_weights(adaln=True, seed=5), official_weights(adaln=True, seed=6)
    src = write_lightning(tmp_path / "m.ckpt", ema, "mdlm", tmp_path / "MARKER", raw_weights=raw)
    x = batch()
    allowed = torch.ones(L, L, dtype=torch.bool)
    for flag, w in (([], ema), (["--no-ema"], raw)):
        model = do_import(src, "mdlm", tmp_path / f"out{len(flag)}", *flag).model
        want = reference_logits(w, x, torch.arange(L).expand(2, L), allowed, adaln=True)
        torch.testing.assert_close(model.net(x, torch.arange(L), allowed), want, rtol=1e-5, atol=1e-5)


# --- refusals: one line, exit 2, nothing written --------------------------------------------
def refused(capsys, tmp_path, src, model, *extra) -> str:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["import", str(src), "--model", model, "--out", str(out), *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("esolm: error: ") and "\n" not in err
    assert not (out / "checkpoint.pt").exists()
    return err


def edited(w, drop=(), add=None, reshape=None):
    w = {k: v for k, v in w.items() if k not in drop}
    w.update(add or {})
    for k, shape in (reshape or {}).items():
        w[k] = torch.zeros(shape, dtype=torch.float64)
    return w


@pytest.mark.parametrize("case, message", [
    ("time_conditioning", "time-conditioned"),
    ("unknown_field", "does not understand"),
    ("unknown_weight", "unknown weights \\['blocks.0.extra'\\]"),
    ("missing_weight", "missing weights \\['blocks.1.norm2.weight'\\]"),
    ("shape", "blocks.0.mlp.2.bias has shape \\(7,\\)"),
    ("vocab", "not GPT-2 \\+ \\[MASK\\]"),
    ("ar_as_mdlm", "causal AR weights"),
    ("mdlm_as_ar", "diffusion DiT"),
    ("kind", "bd3lm checkpoint; import it with --model bd3lm"),
    ("no_heads", "config.json field 'n_heads': must be a positive integer, got null"),
    ("uneven_heads", "n_heads 3 is missing or does not split hidden size 32"),
    ("n_blocks", "n_blocks 3 does not fit the weights' 2"),
])
def test_hf_refusals(tmp_path, capsys, case, message):
    w = official_weights(adaln=True)
    model, config = "mdlm", {}
    if case == "time_conditioning":
        config = {"time_conditioning": True}
    elif case == "unknown_field":
        config = {"rope_scaling": 2}
    elif case == "unknown_weight":
        w = edited(w, add={"blocks.0.extra": torch.zeros(2, dtype=torch.float64)})
    elif case == "missing_weight":
        w = edited(w, drop=["blocks.1.norm2.weight"])
    elif case == "shape":
        w = edited(w, reshape={"blocks.0.mlp.2.bias": (7,)})
    elif case == "vocab":
        w = edited(w, reshape={"vocab_embed.embedding": (1000, D)})
    elif case == "ar_as_mdlm":
        w = official_weights(adaln=False)
    elif case == "mdlm_as_ar":
        model = "ar"
    elif case == "no_heads":
        config = {"n_heads": None}
    elif case == "uneven_heads":
        config = {"n_heads": 3}
    elif case == "n_blocks":
        config = {"n_blocks": 3}
    src = write_hf(tmp_path / "hf", w, "bd3lm" if case == "kind" else "mdlm", **config)
    assert message.replace("\\", "") in refused(capsys, tmp_path, src, model) or pytest.fail(message)


def test_lightning_refusals(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    w = official_weights(adaln=True)
    src = write_lightning(tmp_path / "a.ckpt", w, "mdlm", marker, ema=False)
    assert "no EMA weights" in refused(capsys, tmp_path, src, "mdlm")
    src = write_lightning(tmp_path / "b.ckpt", w, "mdlm", marker, algo__time_conditioning=True)
    assert "time-conditioned" in refused(capsys, tmp_path, src, "mdlm")
    src = write_lightning(tmp_path / "c.ckpt", w, "esolm-b", marker, algo__diffusion_attn_mode="mixed2",
                          algo__sequential_attn_mode="mixed")
    assert "Eso-LM (A) checkpoint" in refused(capsys, tmp_path, src, "esolm-b")
    src = write_lightning(tmp_path / "d.ckpt", w, "mdlm", marker, algo__time_conditioning="${x}")
    assert "does not say whether it is time-conditioned" in refused(capsys, tmp_path, src, "mdlm")
    assert "--block-size 8 disagrees" in refused(capsys, tmp_path, write_lightning(
        tmp_path / "e.ckpt", w, "bd3lm", marker), "bd3lm", "--block-size", "8")
    assert not marker.exists()


def test_imported_checkpoint_samples_and_is_never_replaced(tmp_path, capsys):
    src = write_hf(tmp_path / "hf", official_weights(adaln=True), "mdlm")
    main(["import", str(src), "--model", "mdlm", "--out", str(tmp_path / "out")])
    main(["sample", str(tmp_path / "out"), "--n", "1", "--length", "8", "--steps", "4", "--device", "cpu"])
    assert "per sample: NFE" in capsys.readouterr().out
    before = (tmp_path / "out" / "checkpoint.pt").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(["import", str(src), "--model", "mdlm", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "already holds checkpoint.pt" in capsys.readouterr().err
    assert (tmp_path / "out" / "checkpoint.pt").read_bytes() == before


def test_sweep_entries_naming_released_files_import_once(tmp_path):
    """A sweep ``checkpoint: hf:/folder`` or ``.ckpt`` entry is imported into the run folder
    on first use and reused afterwards; a changed source is refused, never overwritten."""
    import yaml

    from harness.config import ConfigError
    from harness.sweep import read_points, run_sweep

    w = official_weights(adaln=True, seed=7)
    hf = write_hf(tmp_path / "hf", w, "mdlm")
    ckpt = write_lightning(tmp_path / "e.ckpt", w, "esolm-b", tmp_path / "MARKER")
    cfg = {"name": "s", "lengths": [8], "num_samples": 2, "batch_size": 2, "seeds": [0], "metrics": ["entropy"],
           "runs_dir": str(tmp_path / "runs"), "device": "cpu",
           "models": [{"name": "mdlm", "checkpoint": f"hf:{hf}", "model": "mdlm", "schedules": [{"steps": 4}]},
                      {"name": "eso", "checkpoint": str(ckpt), "model": "esolm-b",
                       "import_args": {"alpha_0": 0.5}, "schedules": [{"steps": 4}]}]}
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run_sweep(config, results_root=tmp_path / "results", report=False, progress=False)
    cached = {name: tmp_path / "runs" / "s" / name / "checkpoint.pt" for name in ("mdlm", "eso")}
    rows = read_points(tmp_path / "results" / "s")
    assert sorted(r["checkpoint"] for r in rows) == sorted(str(p) for p in cached.values())
    assert load_checkpoint(cached["eso"]).model.alpha_0 == 0.5
    stamps = {name: p.stat().st_mtime_ns for name, p in cached.items()}
    run_sweep(config, results_root=tmp_path / "results", report=False, progress=False)
    assert len(read_points(tmp_path / "results" / "s")) == 2  # every point was kept, nothing re-imported
    assert {name: p.stat().st_mtime_ns for name, p in cached.items()} == stamps
    write_hf(tmp_path / "hf2", official_weights(adaln=True, seed=8), "mdlm")
    (hf / "model.safetensors").write_bytes((tmp_path / "hf2" / "model.safetensors").read_bytes())
    with pytest.raises(ConfigError, match="field 'models.0.checkpoint': .*source changed since"):
        run_sweep(config, results_root=tmp_path / "results", report=False, progress=False)
    assert cached["mdlm"].stat().st_mtime_ns == stamps["mdlm"]
    cfg["models"][0].pop("model")
    config.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="give the entry's 'model:'"):
        run_sweep(config, results_root=tmp_path / "results", report=False, progress=False)
    assert not (tmp_path / "MARKER").exists()


def test_paper_checkpoints_config_lists_every_missing_path_before_any_work(tmp_path, capsys):
    """configs/paper_checkpoints.yaml parses; with its placeholder paths the sweep stops at
    once with one line per missing path (7 checkpoints, the OWT dataset folder all of them
    read, the evaluator)."""
    from pathlib import Path

    from harness.config import ConfigError
    from harness.sweep import load_sweep_config, run_sweep

    config = Path(__file__).resolve().parents[1] / "configs" / "paper_checkpoints.yaml"
    cfg = load_sweep_config(config)
    assert {m.model for m in cfg.models} == {"ar", "mdlm", "bd3lm", "esolm-b"}
    with pytest.raises(ConfigError, match="field 'models.0.checkpoint': checkpoint '/path/to/released/ar-owt.ckpt' "
                                          "not found \\(\\+8 more, listed above\\)"):
        run_sweep(config, results_root=tmp_path / "results", report=False, progress=False,
                  overrides=[f"runs_dir={tmp_path / 'runs'}", "device=cpu"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 9 and all(line.startswith("esolm: missing: ") for line in lines)
    assert sum("evaluator" in line for line in lines) == 1
    assert sum("import_args.data.hf_dataset' (and 6 more)" in line for line in lines) == 1
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()


def test_import_reads_a_local_dataset_under_the_papers_protocol(tmp_path, capsys):
    """--hf-dataset/--protocol (import_args.data in sweeps) decide what eval reads for the import;
    a data field the importer cannot honour is one line naming it, and nothing is written."""
    src = write_hf(tmp_path / "hf", official_weights(adaln=True), "mdlm")
    owt = tmp_path / "owt"
    owt.mkdir()
    main(["import", str(src), "--model", "mdlm", "--out", str(tmp_path / "imported"), "--hf-dataset", str(owt),
          "--protocol", "owt"])
    data = read_state(tmp_path / "imported")["config"]["data"]
    assert data["hf_dataset"] == str(owt) and data["protocol"] == "owt" and data["tokenizer"] == "gpt2"
    assert "protocol 'lm1b'" in refused(capsys, tmp_path, src, "mdlm", "--protocol", "lm1b")
    with pytest.raises(ValueError, match="data.seq_len"):
        import_checkpoint(src, "mdlm", tmp_path / "out2", data={"seq_len": 64})
    assert not (tmp_path / "out2").exists()
