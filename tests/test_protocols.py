"""The papers' data protocols (harness/data/protocols.py) on small local Hugging Face datasets the
tests write themselves: the OpenWebText split and wrap, LM1B padded sentences, the harness's
document protocol, offline loading, and the names rows and errors carry."""

import pytest
import torch

from harness.data import protocols
from harness.config import ConfigError, DataSpec, TrainConfig, parse
from harness.data import load_splits

datasets = pytest.importorskip("datasets")

BOS = EOS = 0
PAD = 99


class CharTokenizer:
    """One id per character (a = 1, b = 2, ...), BOS = EOS = 0: packing is readable."""

    bos_id = eos_id = 0
    fingerprint = "chars"

    def encode_batch(self, texts):
        return [[ord(c) - 96 for c in t] for t in texts]


def enc(text):
    return [ord(c) - 96 for c in text]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ESOLM_CACHE", str(tmp_path / "cache"))


def owt_folder(tmp_path, n_docs=12):
    texts = ["abcdefg"[: 1 + i % 7] for i in range(n_docs)]
    path = tmp_path / "owt"
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(path))
    return path, texts


def test_wrap_grouped_is_the_papers_wrap():
    docs = [enc("abc"), enc("de"), enc("fghij")]
    # stream a b c EOS d e EOS f g h i j EOS, cut into chunks of L - 2 = 4; remainder dropped
    rows = protocols.wrap_grouped(docs, 6, BOS, EOS)
    assert rows.tolist() == [[0, 1, 2, 3, 0, 0], [0, 4, 5, 0, 6, 0], [0, 7, 8, 9, 10, 0]]
    # groups of 2 documents wrap separately: (abc, de) then (fghij), each dropping its remainder
    rows = protocols.wrap_grouped(docs, 6, BOS, EOS, group=2)
    assert rows.tolist() == [[0, 1, 2, 3, 0, 0], [0, 6, 7, 8, 9, 0]]
    assert protocols.wrap_grouped([enc("a")], 6, BOS, EOS).shape == (0, 6)


def test_pad_sentences():
    rows = protocols.pad_sentences([enc("ab"), enc("abcdefgh")], 6, BOS, EOS, PAD)
    assert rows.tolist() == [[0, 1, 2, 0, 99, 99], [0, 1, 2, 3, 4, 0]]  # truncated to L - 2, EOS kept


def test_owt_protocol_holds_out_the_last_documents(tmp_path):
    path, texts = owt_folder(tmp_path)
    spec = DataSpec(hf_dataset=str(path), protocol="owt", valid_docs=3, seq_len=6)
    split = protocols.protocol_texts(spec)
    assert split["train"] == texts[:9] and split["valid"] == split["test"] == texts[9:]
    rows = load_splits(spec, CharTokenizer())
    assert torch.equal(rows["train"], protocols.wrap_grouped(CharTokenizer().encode_batch(texts[:9]), 6, BOS, EOS))
    assert torch.equal(rows["valid"], protocols.wrap_grouped(CharTokenizer().encode_batch(texts[9:]), 6, BOS, EOS))
    assert torch.equal(rows["test"], rows["valid"])
    assert DataSpec().valid_docs == protocols.OWT_VALID_DOCS == 100_000  # the papers' split by default
    with pytest.raises(ValueError, match="data.valid_docs: 12 held-out documents leave none"):
        protocols.protocol_texts(DataSpec(hf_dataset=str(path), protocol="owt", valid_docs=12))


def test_lm1b_protocol_reads_train_and_test_splits(tmp_path):
    path = tmp_path / "lm1b"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"sentence": ["ab", "cde", "abcdefgh"]}),
                          "test": datasets.Dataset.from_dict({"sentence": ["fg"]})}).save_to_disk(str(path))
    spec = DataSpec(hf_dataset=str(path), text_field="sentence", protocol="lm1b", seq_len=6)
    rows = load_splits(spec, CharTokenizer())
    assert rows["train"].tolist() == [[0, 1, 2, 0, 0, 0], [0, 3, 4, 5, 0, 0], [0, 1, 2, 3, 4, 0]]
    assert rows["valid"].tolist() == rows["test"].tolist() == [[0, 6, 7, 0, 0, 0]]
    with pytest.raises(ValueError, match=r"data.text_field: split 'train' of .* has no column 'text'; use one of"):
        protocols.load_hf_texts(path)


def test_parquet_folder_and_document_protocol(tmp_path):
    path = tmp_path / "pq"
    path.mkdir()
    texts = [f"doc {i} " + "word " * (i % 5 + 3) for i in range(40)]
    datasets.Dataset.from_dict({"text": texts}).to_parquet(str(path / "train-00000.parquet"))
    assert protocols.load_hf_texts(path) == {"train": texts}
    split = protocols.protocol_texts(DataSpec(hf_dataset=str(path)))
    assert sorted(split["train"] + split["valid"] + split["test"]) == sorted(texts)  # whole documents
    assert split["valid"] and split["test"] and not set(split["train"]) & set(split["test"])


def test_bad_sources_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.hf_dataset: no dataset folder"):
        protocols.load_hf_texts(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a saved dataset nor .parquet/.arrow"):
        protocols.load_hf_texts(tmp_path / "empty")
    bad = {"name": "x", "model": "ar"}
    with pytest.raises(ConfigError, match=r"data.protocol"):
        parse(TrainConfig, {**bad, "data": {"protocol": "c4"}}, "cfg.yaml")
    with pytest.raises(ConfigError, match="not both"):
        parse(TrainConfig, {**bad, "data": {"hf_dataset": "d", "corpus": ["a.txt"]}}, "cfg.yaml")
    with pytest.raises(ConfigError, match="'lm1b' reads the train and test splits of a data.hf_dataset"):
        parse(TrainConfig, {**bad, "data": {"protocol": "lm1b"}}, "cfg.yaml")


def test_data_fields_round_trip_and_only_non_defaults_are_hashed():
    assert DataSpec(**DataSpec(protocol="owt", valid_docs=5).model_dump()).valid_docs == 5
    assert DataSpec(protocol="documents", framing=None).model_dump(exclude_defaults=True) == {}  # what a hash reads
    assert DataSpec(protocol="owt", valid_docs=5).model_dump(exclude_defaults=True) == {"protocol": "owt", "valid_docs": 5}


def test_offline_training_on_a_saved_dataset_names_its_protocol(tmp_path, monkeypatch):
    """End to end through the CLI: train a tiny AR on an OWT-protocol folder, then eval."""
    import contextlib
    import io
    import json

    import yaml

    from harness.cli import main

    monkeypatch.chdir(tmp_path)
    texts = [("the cat sat on the mat and looked at the dog. " * (1 + i % 4)) for i in range(30)]
    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(tmp_path / "owt"))
    cfg = {"name": "owt-ar", "model": "ar", "out_dir": str(tmp_path / "run"),
           "backbone": {"preset": "tiny"},
           "data": {"hf_dataset": str(tmp_path / "owt"), "protocol": "owt", "valid_docs": 5, "seq_len": 16,
                    "tokenizer": "bpe", "bpe_vocab_size": 300, "framing": "raw"},
           "train": {"steps": 2, "batch_size": 4, "eval_every": 2, "eval_batches": 1, "ckpt_every": 2,
                     "device": "cpu", "warmup_steps": 1}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    main(["train", str(tmp_path / "cfg.yaml")])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(["eval", str(tmp_path / "run"), "--json", "--split", "valid"])
    result = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert result["data_protocol"] == "owt" and result["data_framing"] == "raw" and result["n_sequences"] > 0
