"""Each family scored under its own repository's protocol: BD3-LM's clean, unscored position 0
(bd3lms' ignore_bos) and each family's log-linear mask rate."""

import pytest
import torch

from harness.nn import masks
from harness.schedules import LogLinear
from tests.helpers import SPECIAL, random_batch, tiny_model

EPS = 1e-3


def recorded_inputs(model):
    """Wrap ``model.token_ce`` so every z_t it is given is kept (the forward process's output)."""
    seen, inner = [], model.token_ce

    def token_ce(x0, zt):
        seen.append(zt.clone())
        return inner(x0, zt)

    model.token_ce = token_ce
    return seen


def official_bd3lm_nelbo(model, x0: torch.Tensor, seed: int) -> torch.Tensor:
    """bd3lms' evaluation estimator, written out in float64 on the draws ``model.nll(draws=1)``
    takes from ``seed`` (per (row, block) one uniform u, t = eps + (1 − eps)·u; then one uniform
    per token): token i is masked when its uniform is <= t of its block, x_t[:, 0] = x0[:, 0],
    loss_i = −(1/t)·log p(x0_i | x_t ⊕ x0) with the [MASK] logit at −inf and clean tokens
    carried over (log p = 0), and position 0 left out of the sum."""
    B, L = x0.shape
    Lb = model.block_size
    g = torch.Generator().manual_seed(seed)
    u = torch.rand((B, L // Lb), generator=g, dtype=torch.float64)
    t = (EPS + (1 - EPS) * u).float().double().repeat_interleave(Lb, dim=1)
    move = torch.rand((B, L), generator=g, dtype=torch.float32).double() <= t
    xt = torch.where(move, SPECIAL.mask, x0)
    xt[:, 0] = x0[:, 0]
    with torch.no_grad():
        logits = model.net(torch.cat([xt, x0], 1), torch.arange(L).repeat(2), masks.block_diffusion(L, Lb))[:, :L]
    logits = logits.double()
    logits[:, :, SPECIAL.mask] = -torch.inf
    log_p = torch.log_softmax(logits, -1).gather(-1, x0[..., None])[..., 0]
    log_p = torch.where(xt == SPECIAL.mask, log_p, 0.0)  # SUBS: a clean token is carried over
    loss = -(1 / t) * log_p
    return loss[:, 1:].sum(dim=1)


@pytest.mark.parametrize("block_size", [1, 4, 16])
def test_bd3lm_nelbo_equals_the_official_estimator(block_size):
    """Default BD3-LM: the per-sequence NELBO is bd3lms' estimator on the same draws, over L − 1 tokens."""
    L = 16
    model = tiny_model("bd3lm", max_len=L, block_size=block_size)
    assert model.options()["ignore_bos"] is True and model.options()["mask_rate"] == "bd3lms"
    x = random_batch(5, L, seed=11)
    for seed in range(3):
        out = model.nll(x, draws=1, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(out.nats, official_bd3lm_nelbo(model, x, seed), rtol=1e-6, atol=0)
        assert out.tokens == L - 1


def test_bd3lm_position_zero_is_never_masked_nor_scored():
    """In training and evaluation alike, z_t[:, 0] = x0[:, 0] at every t (t = 1 masks all the
    rest), so position 0's term is 0; the legacy ignore_bos=False masks and scores it."""
    L = 16
    model = tiny_model("bd3lm", max_len=L, block_size=4)
    x = random_batch(6, L, seed=12)
    seen = recorded_inputs(model)
    with torch.no_grad():
        for seed in range(20):
            model.loss(x, generator=torch.Generator().manual_seed(seed))
            model.nll(x, draws=2, generator=torch.Generator().manual_seed(seed))
        terms = model.token_nelbo(x, torch.ones(6, 4), torch.Generator().manual_seed(0), model.kept_clean(x))
    assert len(seen) == 61
    for zt in seen:
        assert torch.equal(zt[:, 0], x[:, 0])
    assert torch.equal(seen[-1][:, 1:], torch.full_like(x[:, 1:], SPECIAL.mask))  # t = 1
    assert torch.equal(terms[:, 0], torch.zeros(6, dtype=terms.dtype)) and (terms[:, 1:] > 0).all()

    legacy = tiny_model("bd3lm", max_len=L, block_size=4, ignore_bos=False)
    seen = recorded_inputs(legacy)
    with torch.no_grad():
        terms = legacy.token_nelbo(x, torch.ones(6, 4), torch.Generator().manual_seed(0), legacy.kept_clean(x))
        assert legacy.nll(x, generator=torch.Generator().manual_seed(0)).tokens == L
    assert torch.equal(seen[0], torch.full_like(x, SPECIAL.mask)) and (terms[:, 0] > 0).all()
    assert legacy.options()["ignore_bos"] is False
    with pytest.raises(ValueError, match="ignore_bos"):
        tiny_model("bd3lm", block_size=4, ignore_bos="no")
    with pytest.raises(ValueError, match="mask_rate"):
        tiny_model("bd3lm", block_size=4, mask_rate="linear")


TIMES = [EPS, 0.25, 0.5, 1.0]


@pytest.mark.parametrize("family, alpha_0, expected", [
    ("mdlm", 1.0, lambda t: (1 - EPS) * t),                        # the mdlm repository
    ("bd3lm", 1.0, lambda t: t),                                   # bd3lms
    ("esolm-b", 0.25, lambda t: 1 - 0.25 * (1 - (1 - EPS) * t)),   # Eso-LMs: alpha_0 · mdlm's
])
def test_mask_rate_per_family(family, alpha_0, expected):
    """P[mask | t] of each family's forward process at a few t: the noise's probability (exact
    where the arithmetic allows: BD3-LM's is t itself), and the positions a draw masks are
    exactly those whose uniform falls below it."""
    L, B = 16, 64
    model = tiny_model(family, max_len=L, **({"alpha_0": alpha_0} if family == "esolm-b" else {}))
    noise = LogLinear(model.eps, alpha_0) if family == "esolm-b" else model.noise
    for t in TIMES:
        p = noise.mask_prob(torch.tensor([t], dtype=torch.float64)).item()
        assert p == (t if family == "bd3lm" else pytest.approx(expected(t), rel=1e-15, abs=1e-16))
    x = random_batch(B, L, seed=13)
    for t in TIMES[1:]:
        u = torch.rand((B, L), generator=torch.Generator().manual_seed(5))
        if family == "esolm-b":  # Eso-LMs keeps a token when its uniform is below alpha_t
            want = u >= torch.tensor(1 - expected(t), dtype=torch.float32)
        else:
            want = u < torch.tensor(expected(t), dtype=torch.float32)
        got = masked_positions(model, x, t, seed=5)
        if family == "bd3lm":
            want[:, 0] = False  # ignore_bos
        assert torch.equal(got, want), (family, t)


def masked_positions(model, x: torch.Tensor, t: float, seed: int) -> torch.Tensor:
    """The positions the family's forward process masks at time t with the first uniforms of ``seed``."""
    g = torch.Generator().manual_seed(seed)
    B, L = x.shape
    if model.name == "mdlm":
        return model.corrupt(x, torch.full((B,), t), g) == SPECIAL.mask
    if model.name == "bd3lm":
        seen = recorded_inputs(model)
        with torch.no_grad():
            model.token_nelbo(x, torch.full((B, L // model.block_size), t), g, model.kept_clean(x))
        return seen[0] == SPECIAL.mask
    seen, inner = [], model._diffusion_logits  # Eso-LM: z_t arrives sorted; put it back in place

    def diffusion_logits(z, positions, n_clean):
        seen.append(torch.empty_like(z).scatter_(1, positions, z))
        return inner(z, positions, n_clean)

    model._diffusion_logits = diffusion_logits
    with torch.no_grad():
        model.diffusion_term(x, model.alpha_0, torch.full((B,), t), g)
    return seen[0] == SPECIAL.mask


def test_nll_differs_from_the_mdlm_conventions_by_what_the_options_say():
    """mask_rate='mdlm', ignore_bos=False is the harness's earlier BD3-LM: its NELBO at L' = L
    is MDLM's on the same draws, while the default is not (another mask rate, L − 1 tokens)."""
    L = 16
    legacy = tiny_model("bd3lm", max_len=L, block_size=L, ignore_bos=False, mask_rate="mdlm")
    default = tiny_model("bd3lm", max_len=L, block_size=L)
    mdlm = tiny_model("mdlm", max_len=L)
    x = random_batch(4, L, seed=14)
    a = legacy.nll(x, generator=torch.Generator().manual_seed(3))
    b = mdlm.nll(x, generator=torch.Generator().manual_seed(3))
    c = default.nll(x, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.nats, b.nats, rtol=1e-12, atol=0)
    assert (a.tokens, c.tokens) == (L, L - 1) and not torch.allclose(a.nats, c.nats)


# --- OpenWebText framings ---------------------------------------------------------------------
class CharTokenizer:
    """One id per character (a = 1, b = 2, ...), BOS = 30, EOS = 31: rows are readable."""

    bos_id, eos_id = 30, 31
    fingerprint = "chars-30-31"

    def encode_batch(self, texts):
        return [[ord(c) - 96 for c in t] for t in texts]


def test_both_owt_framings_on_a_local_dataset(tmp_path, monkeypatch):
    """bos_eos: [BOS] + L − 2 stream tokens + [EOS] per row; raw: L stream tokens, nothing added.
    The stream is each document + [EOS], the last valid_docs documents held out."""
    datasets = pytest.importorskip("datasets")
    from harness.config import DataSpec
    from harness.data import load_splits

    monkeypatch.setenv("ESOLM_CACHE", str(tmp_path / "cache"))
    texts = ["abcde", "fg", "hijklmn", "op", "qrstu", "vw", "xyz"]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "owt"))
    tok = CharTokenizer()
    stream = {"train": [t for ids in tok.encode_batch(texts[:5]) for t in (*ids, 31)],
              "test": [t for ids in tok.encode_batch(texts[5:]) for t in (*ids, 31)]}
    assert len(stream["train"]) == 26 and len(stream["test"]) == 7
    L = 6
    rows = {}
    for framing in ("bos_eos", "raw"):
        spec = DataSpec(hf_dataset=str(tmp_path / "owt"), protocol="owt", valid_docs=2, seq_len=L, framing=framing)
        assert spec.row_framing == framing
        rows[framing] = load_splits(spec, tok)
    bos_eos, raw = rows["bos_eos"], rows["raw"]
    # bos_eos: 26 // 4 = 6 train rows and 7 // 4 = 1 test row, each 4 stream tokens between BOS and EOS
    assert bos_eos["train"].tolist() == [[30, *stream["train"][4 * i:4 * i + 4], 31] for i in range(6)]
    assert bos_eos["test"].tolist() == [[30, 22, 23, 31, 24, 31]]
    # raw: 26 // 6 = 4 train rows and 7 // 6 = 1 test row of 6 stream tokens; no BOS anywhere
    assert raw["train"].tolist() == [stream["train"][6 * i:6 * i + 6] for i in range(4)]
    assert raw["test"].tolist() == [[22, 23, 31, 24, 25, 26]]
    assert not (raw["train"] == 30).any() and (bos_eos["train"][:, 0] == 30).all()
    text_tokens = {f: int(((r["train"] != 30) & (r["train"] != 31)).sum()) for f, r in rows.items()}
    assert text_tokens == {"bos_eos": 20, "raw": 20}  # the same text, cut differently
    assert DataSpec(protocol="owt").row_framing == "bos_eos"  # the default, as before the field
    assert "framing" not in DataSpec(protocol="owt").model_dump(exclude_defaults=True)  # not in a point's hash
    with pytest.raises(ValueError, match="data.framing: 'raw' applies to protocol 'owt' only"):
        DataSpec(framing="raw")


@pytest.mark.parametrize("model, framing", [("mdlm", "bos_eos"), ("bd3lm", "raw"), ("esolm-b", "raw"),
                                            ("ar", "bos_eos")])
def test_import_picks_the_family_owt_framing(tmp_path, model, framing):
    """esolm import under protocol owt records the family's own framing; a given one is kept."""
    from harness.checkpoints.released import import_data_spec

    spec = import_data_spec(None, {"protocol": "owt"}, model)
    assert spec.framing == framing
    other = {"raw": "bos_eos", "bos_eos": "raw"}[framing]
    assert import_data_spec(None, {"protocol": "owt", "framing": other}, model).framing == other
    assert import_data_spec(None, None, model).framing is None  # the bundled corpus: documents protocol


def test_ar_hf_folder_with_causal_true_imports_as_ar_only(tmp_path, capsys):
    """The BD3-LM-style config of an AR DiT (model_type bd3lm, causal: true, no adaLN): --model ar
    imports it with the official causal logits; --model mdlm (or bd3lm) is refused in one line."""
    from tests.test_official import batch, do_import, official_weights, reference_logits, refused, subs, write_hf

    w = official_weights(adaln=False, seed=5)
    src = write_hf(tmp_path / "hf", w, "bd3lm", causal=True, adaln=False, cross_attn=False, var_min=False)
    model = do_import(src, "ar", tmp_path / "ar").model
    x = batch()
    L = x.shape[1]
    want = subs(reference_logits(w, x, torch.arange(L).expand(2, L), torch.ones(L, L, dtype=torch.bool).tril(),
                                 adaln=False))
    torch.testing.assert_close(model.next_token_logits(x), want, rtol=1e-5, atol=1e-5)
    for other in ("mdlm", "bd3lm"):
        assert "causal: true" in refused(capsys, tmp_path, src, other)


def test_import_cli_records_the_framing(tmp_path, capsys):
    """esolm import --protocol owt: BD3-LM's rows default to raw, --framing overrides it; --framing
    without protocol owt is one line, exit 2."""
    from harness.checkpoints.own_format import read_state
    from tests.test_official import do_import, official_weights, refused, write_hf

    src = write_hf(tmp_path / "hf", official_weights(adaln=True, seed=6), "bd3lm")
    (tmp_path / "owt").mkdir()
    owt = ["--hf-dataset", str(tmp_path / "owt"), "--protocol", "owt"]
    for out, extra, framing in (("a", [], "raw"), ("b", ["--framing", "bos_eos"], "bos_eos")):
        do_import(src, "bd3lm", tmp_path / out, *owt, *extra)
        assert read_state(tmp_path / out / "checkpoint.pt")["config"]["data"]["framing"] == framing
    err = refused(capsys, tmp_path, src, "bd3lm", "--framing", "raw")
    assert "data.framing: 'raw' applies to protocol 'owt' only" in err


def test_lightning_bd3lm_import_follows_its_ignore_bos(tmp_path):
    """A .ckpt's algo.ignore_bos decides position 0 (false: masked and scored, L tokens); without
    the field, bd3lms' default (true)."""
    from tests.test_official import batch, do_import, official_weights, write_lightning

    w = official_weights(adaln=True, seed=7)
    plain = do_import(write_lightning(tmp_path / "a.ckpt", w, "bd3lm", tmp_path / "M"), "bd3lm", tmp_path / "a").model
    off = do_import(write_lightning(tmp_path / "b.ckpt", w, "bd3lm", tmp_path / "M", algo__ignore_bos=False),
                    "bd3lm", tmp_path / "b").model
    x = batch()
    assert plain.ignore_bos is True and plain.nll(x, generator=torch.Generator().manual_seed(0)).tokens == x.shape[1] - 1
    assert off.ignore_bos is False and off.nll(x, generator=torch.Generator().manual_seed(0)).tokens == x.shape[1]
    assert plain.options()["mask_rate"] == off.options()["mask_rate"] == "bd3lms"


def test_a_bd3lm_checkpoint_from_before_the_new_defaults_keeps_what_it_was_trained_with(tmp_path, capsys):
    """A checkpoint saved before ignore_bos and mask_rate existed was trained masking position 0
    at the mdlm rate: it loads that way, and a sweep or --resume does not reuse it under a
    recipe that now means the bd3lms defaults (it would silently score a model as it was not
    trained)."""
    import yaml

    from harness.checkpoints.own_format import CHECKPOINT_NAME, load_checkpoint
    from harness.cli import main

    cfg = {"name": "b", "model": "bd3lm", "model_args": {"block_size": 4}, "out_dir": str(tmp_path / "run"),
           "backbone": {"preset": "tiny"}, "data": {"seq_len": 16, "bpe_vocab_size": 300},
           "train": {"steps": 2, "batch_size": 4, "eval_every": 2, "eval_batches": 1, "ckpt_every": 2,
                     "device": "cpu", "warmup_steps": 1}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    main(["train", str(tmp_path / "cfg.yaml"), "--quiet"])
    path = tmp_path / "run" / CHECKPOINT_NAME
    assert load_checkpoint(tmp_path / "run").model.options()["ignore_bos"] is True
    state = torch.load(path, weights_only=False)
    for key in ("ignore_bos", "mask_rate"):  # as the code before these options saved it
        del state["model_options"][key]
    torch.save(state, path)
    old = load_checkpoint(tmp_path / "run").model
    assert old.options()["ignore_bos"] is False and old.options()["mask_rate"] == "mdlm"
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        main(["train", str(tmp_path / "cfg.yaml"), "--resume", "--quiet"])
    line = capsys.readouterr().err.strip()
    assert err.value.code == 2 and "trained with ignore_bos=False, mask_rate='mdlm'" in line
    assert "model_args {ignore_bos: False, mask_rate: 'mdlm'}" in line
    cfg["model_args"].update(ignore_bos=False, mask_rate="mdlm")  # pinning the old behaviour reuses it
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    main(["train", str(tmp_path / "cfg.yaml"), "--resume", "--quiet"])


def test_points_made_under_an_old_default_are_not_taken_for_the_new_one():
    """The point hash of a BD3-LM entry names the options whose default changed at the values
    they take, so a results folder made before the change re-runs those points; pinning the old
    values is the recipe that made them."""
    from harness.sweep.identity import entry_identity
    from harness.sweep.schema import parse_sweep_config

    def identity(model, model_args):
        cfg = parse_sweep_config({"name": "t", "lengths": [16], "num_samples": 2, "batch_size": 2, "metrics": ["entropy"], "models": [
            {"name": "m", "train": {"model": model, "model_args": model_args, "data": {"seq_len": 16}},
             "schedules": [{"steps": 4}]}]})
        return entry_identity(cfg, cfg.models[0])["recipe"].get("model_args", {})

    assert identity("bd3lm", {"block_size": 4}) == {"block_size": 4, "ignore_bos": True, "mask_rate": "bd3lms"}
    # trained under the old values (pinned)
    assert identity("bd3lm", {"block_size": 4, "ignore_bos": False, "mask_rate": "mdlm"}) == \
        {"block_size": 4, "ignore_bos": False, "mask_rate": "mdlm"}
    assert identity("mdlm", {}) == {}
