"""Tests for harness.data: bundled corpus, document splits, tokenizers, packing, caching."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import socket
import tempfile

import pytest
import torch

from harness import data as D
from harness.data import packing, tokenizers


@pytest.fixture(scope="module")
def corpus():
    return D.load_bundled_corpus()


@pytest.fixture(scope="module")
def gpt2():
    return D.GPT2Tokenizer()


@pytest.fixture(scope="module")
def bpe(corpus):
    """The one BPE trained for this module: small vocab, subset of the train split."""
    train = D.split_documents(corpus)["train"]
    return D.ByteBPETokenizer.train([d.text[:20_000] for d in train], vocab_size=512)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ESOLM_CACHE", str(tmp_path / "cache"))


# --------------------------------------------------------------------- corpus
def test_bundled_corpus_loads(corpus):
    assert len(corpus) >= 100
    assert {d.source for d in corpus} == {"wikipedia", "austen", "shakespeare"}
    keys = [(d.source, d.title) for d in corpus]
    assert len(set(keys)) == len(keys)
    assert keys == sorted(keys)
    assert all(isinstance(d, D.Document) and d.text.strip() for d in corpus)
    assert sum(d.source == "austen" for d in corpus) == 6
    assert sum(len(d.text) for d in corpus) > 10_000_000
    # wiki markup is gone
    wiki = "\n".join(d.text for d in corpus if d.source == "wikipedia")
    for junk in ("{{", "}}", "[[", "]]", "<ref", "&nbsp;", "'''"):
        assert junk not in wiki, junk


def test_bundled_corpus_matches_pinned_hash():
    line = (D.ASSETS / "corpus.sha256").read_text().split()
    assert line[1] == D.BUNDLED_CORPUS.name
    assert hashlib.sha256(D.BUNDLED_CORPUS.read_bytes()).hexdigest() == line[0]


# --------------------------------------------------------------------- splits
def _keys(docs):
    return {(d.source, d.title) for d in docs}


def test_splits_disjoint_and_cover(corpus):
    sp = D.split_documents(corpus)
    assert set(sp) == {"train", "valid", "test"}
    assert all(sp[k] for k in sp)
    tr, va, te = (_keys(sp[k]) for k in ("train", "valid", "test"))
    assert not (tr & va or tr & te or va & te)
    assert tr | va | te == _keys(corpus)
    assert sum(len(v) for v in sp.values()) == len(corpus)
    texts = {k: {d.text for d in v} for k, v in sp.items()}
    assert not (texts["train"] & texts["valid"] or texts["train"] & texts["test"]
                or texts["valid"] & texts["test"])
    # every held-out split draws from every source of the bundled corpus
    for k in ("valid", "test"):
        assert {d.source for d in sp[k]} == {"wikipedia", "austen", "shakespeare"}
    # roughly the requested share of text
    total = sum(len(d.text) for d in corpus)
    for k in ("valid", "test"):
        assert 0.03 < sum(len(d.text) for d in sp[k]) / total < 0.2


def test_splits_deterministic_order_free_and_seeded(corpus):
    a = D.split_documents(corpus, seed=0)
    b = D.split_documents(corpus, seed=0)
    assert a == b
    shuffled = list(corpus)
    random.Random(1).shuffle(shuffled)
    c = D.split_documents(shuffled, seed=0)
    assert {k: _keys(v) for k, v in c.items()} == {k: _keys(v) for k, v in a.items()}
    d = D.split_documents(corpus, seed=1)
    assert _keys(d["test"]) != _keys(a["test"])


def test_splits_small_sources_go_to_train():
    """Text too short to cut into pieces stays whole (and goes to train)."""
    docs = [D.Document("s", "a", "x" * 10), D.Document("s", "b", "y" * 10)]
    sp = D.split_documents(docs)
    assert sp["train"] == docs and not sp["valid"] and not sp["test"]


def test_a_source_of_one_long_document_is_cut_into_pieces_for_every_split():
    """One .txt file used to go entirely to train: an empty validation split and a NaN valid
    loss.  It is cut at line breaks into pieces that split like documents."""
    text = "".join(f"line {i} of the only document\n" for i in range(400))
    sp = D.split_documents([D.Document("file", "book.txt", text)])
    assert sp["valid"] and sp["test"] and sp["train"]
    pieces = sorted(sp["train"] + sp["valid"] + sp["test"], key=lambda d: int(d.title.split("part ")[1].split()[0]))
    assert "".join(d.text for d in pieces) == text  # nothing lost or repeated
    assert all(d.text.endswith("\n") for d in pieces)  # cut at line breaks
    assert len(pieces) == D.SMALL_SOURCE_PIECES
    sizes = {name: sum(len(d.text) for d in docs) / len(text) for name, docs in sp.items()}
    assert 0.04 < sizes["valid"] < 0.16 and 0.04 < sizes["test"] < 0.16


@pytest.mark.parametrize("name, content, fragment", [
    ("bad.jsonl", '{"text": "fine"}\n{"text": 5}\n', "bad.jsonl:2: field 'text' must be a string, got int 5"),
    ("bad.jsonl", '{"text": "fine"}\n{"text": null}\n', "bad.jsonl:2: field 'text' must be a string"),
    ("latin1.txt", "caf\xe9 au lait\n".encode("latin-1"), "latin1.txt:1: not UTF-8 text"),
    ("later.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "later.jsonl:2: not UTF-8 text"),
    ("empty.txt", "", "corpus {dir}/empty.txt is empty (no text in it)"),
    ("blank.jsonl", "\n\n", "corpus {dir}/blank.jsonl is empty"),
])
def test_bad_corpus_files_are_named(tmp_path, name, content, fragment):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(ValueError) as err:
        D.load_text_files([path])
    assert fragment.format(dir=tmp_path) in str(err.value)


# --------------------------------------------------------------------- GPT-2
def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    # " the" is "Ġthe" in the vendored encoder.json, and its id there is 262
    encoder = json.loads((D.GPT2_DIR / "encoder.json").read_text(encoding="utf-8"))
    assert encoder["\u0120the"] == 262
    assert gpt2.encode(" the") == [262]
    # "<|endoftext|>" in data is plain text, never the special id
    assert 50256 not in gpt2.encode("a <|endoftext|> b")
    assert (gpt2.vocab_size, gpt2.bos_id, gpt2.eos_id, gpt2.mask_id) == (50258, 50256, 50256, 50257)


def test_gpt2_vendored_files_hashes():
    assert hashlib.sha256((D.GPT2_DIR / "encoder.json").read_bytes()).hexdigest() == tokenizers.GPT2_ENCODER_SHA256
    assert hashlib.sha256((D.GPT2_DIR / "vocab.bpe").read_bytes()).hexdigest() == tokenizers.GPT2_VOCAB_BPE_SHA256
    assert (D.GPT2_DIR / "LICENSE").is_file()


def test_gpt2_builds_without_network(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # tiktoken's default cache root
    tokenizers._gpt2_encoding.cache_clear()
    try:
        tok = D.GPT2Tokenizer()
        assert tok.encode("Hello world") == [15496, 995]
    finally:
        tokenizers._gpt2_encoding.cache_clear()
    assert not list(tmp_path.iterdir())  # tiktoken wrote no cache copy


def test_gpt2_roundtrip_on_corpus(gpt2, corpus):
    sample = [d.text[:30_000] for d in corpus[::7]]
    sample.append(next(d.text for d in corpus if d.title == "Anarchism"))  # Greek, accents
    for text in sample:
        assert gpt2.decode(gpt2.encode(text)) == text
    assert gpt2.encode_batch(sample[:3]) == [gpt2.encode(t) for t in sample[:3]]


def test_decode_skips_mask(gpt2, bpe):
    for tok in (gpt2, bpe):
        ids = tok.encode("Hello world")
        assert tok.decode([tok.mask_id] + ids + [tok.mask_id]) == "Hello world"
        assert tok.decode(torch.tensor(ids)) == "Hello world"


# --------------------------------------------------------------------- BPE
def test_bpe_special_ids(bpe):
    assert bpe.vocab_size == 512
    assert bpe.mask_id == bpe.vocab_size - 1
    assert bpe.bos_id == bpe.eos_id
    assert bpe.decode([bpe.eos_id]) == "<|endoftext|>"
    assert max(max(ids) for ids in bpe.encode_batch(["The quick brown fox.", "ÆØÅ ✓"])) < bpe.mask_id


def test_bpe_roundtrip_and_batch(bpe, corpus):
    texts = [corpus[0].text[:5000], next(d.text for d in corpus if d.title == "Emma")[:50_000],
             "odd   spacing\n\n\n tabs\t\tand ünïcødé ✓\n"]
    for t in texts:
        assert bpe.decode(bpe.encode(t)) == t
    assert bpe.encode_batch(texts) == [bpe.encode(t) for t in texts]


def test_bpe_save_load_roundtrip(bpe, corpus, tmp_path):
    bpe.save(tmp_path / "tok")
    again = D.load_tokenizer(tmp_path / "tok")
    assert isinstance(again, D.ByteBPETokenizer)
    text = corpus[5].text[:20_000]
    assert again.encode(text) == bpe.encode(text)
    assert (again.vocab_size, again.mask_id, again.eos_id, again.fingerprint) == \
           (bpe.vocab_size, bpe.mask_id, bpe.eos_id, bpe.fingerprint)


def test_bpe_training_deterministic(corpus):
    texts = [d.text[:3000] for d in corpus[:40]]
    a = D.ByteBPETokenizer.train(texts, vocab_size=300)
    b = D.ByteBPETokenizer.train(texts, vocab_size=300)
    assert a.fingerprint == b.fingerprint


def test_gpt2_save_load(gpt2, tmp_path):
    gpt2.save(tmp_path)
    again = D.load_tokenizer(tmp_path)
    assert isinstance(again, D.GPT2Tokenizer) and again.encode("Hello world") == [15496, 995]


def test_get_tokenizer(corpus):
    assert D.get_tokenizer("gpt2").name == "gpt2"
    tok = D.get_tokenizer("bpe", train_texts=[d.text[:2000] for d in corpus[:30]], vocab_size=280)
    assert tok.name == "bpe" and tok.mask_id == tok.vocab_size - 1 <= 279
    with pytest.raises(ValueError):
        D.get_tokenizer("bpe")
    with pytest.raises(ValueError):
        D.get_tokenizer("nope")


# --------------------------------------------------------------------- packing
def test_pack_layout_exact():
    B, E = 100, 101
    rows = D.pack([[1, 2, 3], [4, 5], [6, 7, 8, 9]], seq_len=6, bos_id=B, eos_id=E)
    # stream: 1 2 3 E 4 5 E 6 7 8 9 -> chunks of 4; the incomplete "8 9" is dropped
    assert rows.dtype == torch.long
    assert rows.tolist() == [[B, 1, 2, 3, E, E],
                             [B, 4, 5, E, 6, E]]


def test_pack_content_is_eos_joined_stream():
    gen = random.Random(0)
    docs = [[gen.randrange(50) for _ in range(gen.randrange(0, 40))] for _ in range(30)]
    seq_len, eos = 16, 99
    rows = D.pack(docs, seq_len, bos_id=98, eos_id=eos)
    stream = []
    for i, d in enumerate(docs):
        stream += ([eos] if i else []) + d
    n = len(stream) // (seq_len - 2)
    assert rows.shape == (n, seq_len)
    assert (rows[:, 0] == 98).all() and (rows[:, -1] == eos).all()
    assert rows[:, 1:-1].reshape(-1).tolist() == stream[: n * (seq_len - 2)]


def test_pack_edge_cases():
    assert D.pack([], 8, 0, 0).shape == (0, 8)
    assert D.pack([[1, 2]], 8, 0, 0).shape == (0, 8)
    with pytest.raises(ValueError):
        D.pack([[1, 2, 3]], 2, 0, 0)


# --------------------------------------------------------------------- user files
def test_load_user_files(tmp_path):
    (tmp_path / "a.txt").write_text("First document.\nTwo lines.", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"text": "Line one", "title": "One"}) + "\n\n" + json.dumps({"text": "Line two"}) + "\n",
        encoding="utf-8")
    with gzip.open(tmp_path / "c.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"text": "zipped", "source": "mine"}) + "\n")
    docs = D.load_text_files([tmp_path / "a.txt", str(tmp_path / "b.jsonl"), tmp_path / "c.jsonl.gz"])
    assert [d.text for d in docs] == ["First document.\nTwo lines.", "Line one", "Line two", "zipped"]
    assert docs[0].title == "a.txt" and docs[1].title == "One" and docs[2].title == "b.jsonl:3"
    assert docs[3].source == "mine"
    assert D.load_text_files(tmp_path / "a.txt")[0].text.startswith("First")


def test_missing_file_names_path(tmp_path):
    missing = tmp_path / "nope" / "missing.txt"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        D.load_text_files([missing])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        D.build_splits([str(missing)], D.GPT2Tokenizer(), seq_len=16, seed=0)
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ValueError, match="x.csv"):
        D.load_text_files([tmp_path / "x.csv"])


# --------------------------------------------------------------------- build_splits
def _user_corpus(tmp_path, n=30):
    path = tmp_path / "user.jsonl"
    gen = random.Random(0)
    words = "the cat sat on a mat while dogs ran far away from home".split()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            text = " ".join(gen.choice(words) for _ in range(gen.randrange(50, 200)))
            f.write(json.dumps({"title": f"doc{i}", "text": text}) + "\n")
    return path


def test_build_splits_and_cache(tmp_path, gpt2, monkeypatch):
    path = _user_corpus(tmp_path)
    out = D.build_splits([path], gpt2, seq_len=32, seed=0)
    assert set(out) == {"train", "valid", "test"}
    for rows in out.values():
        assert rows.dtype == torch.long and rows.shape[1] == 32 and rows.shape[0] > 0
        assert (rows[:, 0] == gpt2.bos_id).all() and (rows[:, -1] == gpt2.eos_id).all()
    cached = list((tmp_path / "cache").glob("splits-*.pt"))
    assert len(cached) == 1

    # second call is served from the cache (no splitting / tokenizing)
    def boom(*a, **k):
        raise AssertionError("cache miss")

    monkeypatch.setattr(packing, "split_documents", boom)
    again = D.build_splits([path], gpt2, seq_len=32, seed=0)
    assert all(torch.equal(again[k], out[k]) for k in out)
    monkeypatch.undo()
    monkeypatch.setenv("ESOLM_CACHE", str(tmp_path / "cache"))

    # a different seq_len or edited file contents -> a different cache entry
    D.build_splits([path], gpt2, seq_len=16, seed=0)
    path.write_text(path.read_text(encoding="utf-8") + json.dumps({"text": "new"}) + "\n", encoding="utf-8")
    D.build_splits([path], gpt2, seq_len=32, seed=0)
    assert len(list((tmp_path / "cache").glob("splits-*.pt"))) == 3


def test_build_splits_bundled_gpt2(gpt2):
    out = D.build_splits("bundled", gpt2, seq_len=1024, seed=0)
    n = {k: v.shape[0] for k, v in out.items()}
    assert n["train"] > 2000 and n["valid"] > 100 and n["test"] > 100
    for rows in out.values():
        assert rows.shape[1] == 1024
        assert (rows[:, 0] == 50256).all() and (rows[:, -1] == 50256).all()
        assert int(rows.max()) < gpt2.mask_id


# --------------------------------------------------------------------- hf_dataset sources
def _saved(column):
    return lambda datasets, path: datasets.Dataset.from_dict({"text": column}).save_to_disk(str(path))


def _damaged(damage):
    def build(datasets, path):
        datasets.Dataset.from_dict({"text": ["some text " * 40] * 8}).save_to_disk(str(path))
        damage(path)
    return build


def _lm1b_empty_test(datasets, path):
    path.mkdir()
    datasets.Dataset.from_dict({"text": ["a sentence here"] * 8}).to_parquet(str(path / "train-00000.parquet"))
    empty = datasets.Dataset.from_dict({"text": []}, features=datasets.Features({"text": datasets.Value("string")}))
    empty.to_parquet(str(path / "test-00000.parquet"))


def _corrupt_parquet(datasets, path):
    path.mkdir()
    (path / "train-00000.parquet").write_bytes(b"not a parquet file")


BAD_HF = {
    "ints": (_saved(list(range(8))), "data.text_field: column 'text' of split 'train' in {path} holds int64 values"),
    "nulls": (_saved([None] * 8), "data.text_field: column 'text' of split 'train' in {path} holds null values"),
    "bytes": (_saved([b"abc"] * 8), "holds binary values, not text; name a text column"),
    "structs": (_saved([{"a": "x"}] * 8), "holds struct values, not text"),
    "a null row": (_saved(["text"] * 7 + [None]), "data.text_field: row 7 of split 'train' in {path} is null"),
    "empty strings": (_saved([""] * 8), "data.hf_dataset: split 'train' of {path} holds no text (8 rows, all empty"),
    "empty lm1b test parquet": (_lm1b_empty_test, "data.hf_dataset: {path}/test-00000.parquet holds no rows"),
    "corrupt parquet": (_corrupt_parquet, "data.hf_dataset: {path}/train-00000.parquet is not a readable parquet"),
    "broken state.json": (_damaged(lambda p: (p / "state.json").write_text("{broken")),
                          "data.hf_dataset: {path}/state.json is not valid JSON"),
    "missing arrow file": (_damaged(lambda p: [f.unlink() for f in p.glob("*.arrow")]),
                           "data.hf_dataset: {path}/data-00000-of-00001.arrow is missing"),
}


@pytest.mark.parametrize("case", list(BAD_HF))
def test_bad_hf_datasets_are_one_line_naming_the_field(tmp_path, capsys, case):
    """Each used to raise from the tokenizer or the datasets library naming no field, or (empty
    strings) to be blamed on data.corpus 'bundled'."""
    import yaml

    from harness.cli import main

    datasets = pytest.importorskip("datasets")
    build, fragment = BAD_HF[case]
    path = tmp_path / "hf"
    build(datasets, path)
    protocol = "lm1b" if "lm1b" in case else "documents"
    cfg = {"name": "hf", "model": "ar", "out_dir": str(tmp_path / "run"), "train": {"steps": 1, "device": "cpu"},
           "data": {"hf_dataset": str(path), "protocol": protocol, "seq_len": 16, "bpe_vocab_size": 300}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tmp_path / "cfg.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and "Traceback" not in "\n".join(err), err
    assert err[-1].startswith("esolm: error: ") and fragment.format(path=path) in err[-1], err[-1]
