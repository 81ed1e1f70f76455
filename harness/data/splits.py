"""What a run reads: the tokenizer and the train / valid / test rows a data spec names, under
its protocol (the documents protocol of :mod:`harness.data.packing`, or the papers' of
:mod:`harness.data.protocols`).  Training, evaluation, sweeps and re-scoring all come here."""

from __future__ import annotations

import torch

from harness.config import DataSpec
from harness.data.protocols import build_protocol_splits, protocol_texts
from harness.data.corpus import load_bundled_corpus, load_text_files, split_documents
from harness.data.packing import build_splits
from harness.data.tokenizers import get_tokenizer


def build_tokenizer(spec: DataSpec):
    """GPT-2 BPE, or a small byte-level BPE trained on the TRAIN split only."""
    if spec.tokenizer == "gpt2":
        return get_tokenizer("gpt2")
    if not spec.is_default_protocol:
        train_texts = protocol_texts(spec)["train"]
    else:
        docs = load_bundled_corpus() if spec.corpus == "bundled" else load_text_files(spec.corpus)
        train_texts = [d.text for d in split_documents(docs, seed=spec.split_seed)["train"]]
    return get_tokenizer("bpe", train_texts=train_texts, vocab_size=spec.bpe_vocab_size)


def load_splits(spec: DataSpec, tokenizer, seq_len: int | None = None) -> dict[str, torch.Tensor]:
    """train / valid / test rows under the spec's data protocol (harness/data/protocols.py)."""
    if not spec.is_default_protocol:
        return build_protocol_splits(spec, tokenizer, seq_len or spec.seq_len)
    return build_splits(spec.corpus, tokenizer, seq_len or spec.seq_len, spec.split_seed)


def test_texts(data, tokenizer, length: int, n: int) -> list[str]:
    """The first n held-out test sequences of ``length`` tokens as text (MAUVE's references)."""
    rows = load_splits(data, tokenizer, seq_len=length)["test"][:n]
    return [tokenizer.decode(row[1:].tolist()) for row in rows]


test_texts.__test__ = False  # not a test
