"""Tokenizers (docs/data.md §2): GPT-2 BPE from the vendored, hash-checked files (tiktoken,
never asked to download), and a small byte-level BPE trained on a training split for tiny
CPU models.  Every tokenizer saves itself beside a checkpoint and has a fingerprint."""

from __future__ import annotations

import hashlib
import json
import os
import re
from abc import ABC, abstractmethod
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import torch

from harness.data.corpus import ASSETS

GPT2_DIR = ASSETS / "gpt2"

# The vendored GPT-2 files are checked against these (OpenAI's files; the
# same hashes tiktoken pins for its "gpt2" encoding).
GPT2_ENCODER_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
GPT2_VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
# GPT-2's pre-tokenisation regex (tiktoken's r50k/gpt2 pattern).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ENDOFTEXT = "<|endoftext|>"
MASK_TOKEN = "[MASK]"

TOKENIZER_META = "esolm_tokenizer.json"   # written by every Tokenizer.save
BPE_FILE = "bpe_tokenizer.json"           # the HF `tokenizers` serialisation
_LINE_CUT = re.compile(r"(?<=\S\n)(?=\S)")  # see ByteBPETokenizer.encode_batch


# ---------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------
class Tokenizer(ABC):
    """Common interface of the tokenizers used by every model.

    ``vocab_size`` includes the [MASK] id, which is always the LAST id
    (``mask_id == vocab_size - 1``); ``bos_id == eos_id`` is the end-of-text id
    (docs/models.md §0).  ``decode`` drops [MASK] ids so partially generated samples
    can be printed.  ``fingerprint`` identifies the exact vocabulary (used as
    a cache key).
    """

    name: str
    vocab_size: int
    bos_id: int
    eos_id: int
    mask_id: int

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    @abstractmethod
    def _decode(self, ids: list[int]) -> str: ...

    def decode(self, ids: Iterable[int]) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self._decode([int(i) for i in ids if int(i) != self.mask_id])

    @property
    @abstractmethod
    def fingerprint(self) -> str: ...

    @abstractmethod
    def save(self, directory: str | os.PathLike) -> None: ...

    def _write_meta(self, directory: Path, **extra) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.name, "vocab_size": self.vocab_size, "bos_id": self.bos_id,
                "eos_id": self.eos_id, "mask_id": self.mask_id, **extra}
        (directory / TOKENIZER_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, mask_id={self.mask_id})"


@contextmanager
def _tiktoken_no_cache():
    """tiktoken copies even local files into a temp "data-gym" cache; an empty
    TIKTOKEN_CACHE_DIR makes it read our files directly and write nothing."""
    old = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TIKTOKEN_CACHE_DIR", None)
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = old


@lru_cache(maxsize=1)
def _gpt2_encoding():
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    vocab_bpe, encoder_json = GPT2_DIR / "vocab.bpe", GPT2_DIR / "encoder.json"
    for path in (vocab_bpe, encoder_json):
        if not path.is_file():
            raise FileNotFoundError(f"vendored GPT-2 file missing: {path} (run scripts/build_corpus.py)")
    with _tiktoken_no_cache():
        # Plain local paths (no "://"): tiktoken opens them directly; the
        # hashes make it verify the files.
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(vocab_bpe), encoder_json_file=str(encoder_json),
            vocab_bpe_hash=GPT2_VOCAB_BPE_SHA256, encoder_json_hash=GPT2_ENCODER_SHA256)
    return tiktoken.Encoding(name="gpt2-vendored", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={ENDOFTEXT: 50256}, explicit_n_vocab=50257)


class GPT2Tokenizer(Tokenizer):
    """GPT-2 BPE via tiktoken, built offline from ``assets/gpt2``.

    50257 GPT-2 ids (``<|endoftext|>`` = 50256 is BOS and EOS) + [MASK] = 50257,
    so ``vocab_size`` = 50258.  ``encode`` treats a literal "<|endoftext|>" in
    the text as ordinary text (no special-token injection from data).
    """

    name = "gpt2"
    vocab_size = 50258
    bos_id = eos_id = 50256
    mask_id = 50257

    def __init__(self) -> None:
        self._enc = _gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(list(texts))

    def _decode(self, ids: list[int]) -> str:
        return self._enc.decode(ids)

    @property
    def fingerprint(self) -> str:
        return f"gpt2:{GPT2_ENCODER_SHA256[:16]}:{GPT2_VOCAB_BPE_SHA256[:16]}"

    def save(self, directory: str | os.PathLike) -> None:
        # The vocabulary ships with the package; record which one.
        self._write_meta(Path(directory), encoder_sha256=GPT2_ENCODER_SHA256,
                         vocab_bpe_sha256=GPT2_VOCAB_BPE_SHA256)


class ByteBPETokenizer(Tokenizer):
    """Small byte-level BPE (HF ``tokenizers``) for tiny CPU models.

    Id 0 is ``<|endoftext|>`` (BOS = EOS); ``[MASK]`` is added after training
    so that it is the last id.  Byte-level, so every string round-trips.
    ``vocab_size`` may come out below the requested size when the training
    text does not support that many merges.
    """

    name = "bpe"

    def __init__(self, tokenizer) -> None:
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.bos_id = self.eos_id = tokenizer.token_to_id(ENDOFTEXT)
        self.mask_id = tokenizer.token_to_id(MASK_TOKEN)
        if self.bos_id is None or self.mask_id != self.vocab_size - 1:
            raise ValueError("BPE tokenizer must have <|endoftext|> and [MASK] as the last id")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2) -> "ByteBPETokenizer":
        """Train on ``texts`` (use the TRAIN split only).  Deterministic for
        the same texts and settings."""
        from tokenizers import ByteLevelBPETokenizer

        if vocab_size < 260:
            raise ValueError("vocab_size must be >= 260 (256 bytes + specials)")
        bpe = ByteLevelBPETokenizer()
        bpe.train_from_iterator(list(texts), vocab_size=vocab_size - 1, min_frequency=min_frequency,
                                show_progress=False, special_tokens=[ENDOFTEXT])
        bpe.add_special_tokens([MASK_TOKEN])
        return cls(bpe._tokenizer)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # HF tokenizers parallelises over inputs, and a few 0.9 MB novels make
        # a poor batch: encode line pieces instead (~2x faster on the bundled
        # corpus).  Cutting right after a "\n" that sits between two
        # non-space characters gives identical ids, because such a "\n" is
        # always a pre-token of its own in the byte-level (GPT-2) regex.
        pieces, owners = [], []
        for k, text in enumerate(texts):
            for piece in _LINE_CUT.split(text):
                pieces.append(piece)
                owners.append(k)
        out: list[list[int]] = [[] for _ in texts]
        for k, enc in zip(owners, self._tok.encode_batch(pieces, add_special_tokens=False)):
            out[k].extend(enc.ids)
        return out

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)

    @property
    def fingerprint(self) -> str:
        return "bpe:" + hashlib.sha256(self._tok.to_str().encode("utf-8")).hexdigest()[:32]

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        self._write_meta(directory, file=BPE_FILE)
        self._tok.save(str(directory / BPE_FILE))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ByteBPETokenizer":
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_file(str(Path(directory) / BPE_FILE)))


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Restore a tokenizer written by ``Tokenizer.save`` (either kind)."""
    directory = Path(directory)
    meta_path = directory / TOKENIZER_META
    if not meta_path.is_file():
        raise FileNotFoundError(f"no saved tokenizer: {meta_path}")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta["kind"] == "gpt2":
        if meta.get("encoder_sha256", GPT2_ENCODER_SHA256) != GPT2_ENCODER_SHA256:
            raise ValueError("saved GPT-2 tokenizer refers to a different encoder.json")
        tok: Tokenizer = GPT2Tokenizer()
    elif meta["kind"] == "bpe":
        tok = ByteBPETokenizer.load(directory)
    else:
        raise ValueError(f"unknown tokenizer kind {meta['kind']!r} in {meta_path}")
    if (tok.vocab_size, tok.mask_id, tok.eos_id) != (meta["vocab_size"], meta["mask_id"], meta["eos_id"]):
        raise ValueError(f"tokenizer in {directory} does not match its metadata")
    return tok


def get_tokenizer(name: str, train_texts: Iterable[str] | None = None,
                  vocab_size: int | None = None) -> Tokenizer:
    """``"gpt2"`` (vendored GPT-2 BPE) or ``"bpe"`` (trained on ``train_texts``;
    default 8192 ids)."""
    if name == "gpt2":
        if vocab_size not in (None, GPT2Tokenizer.vocab_size):
            raise ValueError("the GPT-2 tokenizer has a fixed vocab_size of 50258")
        return GPT2Tokenizer()
    if name == "bpe":
        if train_texts is None:
            raise ValueError("the 'bpe' tokenizer needs train_texts (the training split)")
        return ByteBPETokenizer.train(train_texts, vocab_size=vocab_size or 8192)
    raise ValueError(f"unknown tokenizer {name!r} (expected 'gpt2' or 'bpe')")


