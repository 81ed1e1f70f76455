"""Corpus, document-level splits, tokenizers and packing (docs/data.md).

Everything here works offline:

* the bundled corpus (``assets/corpus.jsonl.xz``, ~12 MB of English text:
  Wikipedia articles, Jane Austen's novels, Shakespeare's works; rebuilt and
  checked by ``scripts/build_corpus.py``, attribution in ``assets/NOTICE.md``);
* the GPT-2 BPE files vendored in ``assets/gpt2/`` (tiktoken is built from them
  locally and never asked to download anything);
* a small byte-level BPE trained on the training split for tiny CPU models.

Splits are made at the DOCUMENT level (article / novel / play), ordered by a
hash of (seed, source, title), so train/valid/test can never share a document
and the split does not depend on the order of the input list (:mod:`harness.corpus` reads
and splits the documents).  Each split is tokenised and packed independently ("wrap"
packing, :func:`pack`); results are cached on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from abc import ABC, abstractmethod
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import torch

# Documents and splits live in harness.corpus; imported here, where callers have always found them.
from harness.corpus import (ASSETS, BUNDLED_CORPUS, SMALL_SOURCE_PIECES, Document, load_bundled_corpus,  # noqa: F401
                            load_corpus, load_text_files, split_documents)

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
CACHE_FORMAT = 1                          # bump when the packed layout changes


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


# ---------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------
def pack(token_lists: Sequence[Sequence[int]], seq_len: int, bos_id: int, eos_id: int) -> torch.Tensor:
    """The "wrap" packing of docs/data.md §6.

    The documents are concatenated with one EOS BETWEEN consecutive documents
    (none after the last), the stream is cut into chunks of ``seq_len - 2``
    tokens, and each chunk is stored as ``[BOS] + chunk + [EOS]``.  The last,
    incomplete chunk is DROPPED (padding would add tokens that are not text and
    a short row would break the fixed shape), so up to ``seq_len - 3`` tokens
    at the end of a split are not used.  Returns a LongTensor
    ``(N, seq_len)``; ``N`` may be 0.
    """
    if seq_len < 3:
        raise ValueError("seq_len must be >= 3 (BOS + at least one token + EOS)")
    parts: list[torch.Tensor] = []
    sep = torch.tensor([eos_id], dtype=torch.long)
    for i, ids in enumerate(token_lists):
        if i:
            parts.append(sep)
        parts.append(torch.as_tensor(list(ids) if not isinstance(ids, torch.Tensor) else ids, dtype=torch.long))
    stream = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
    width = seq_len - 2
    n = stream.numel() // width
    body = stream[: n * width].view(n, width)
    return torch.cat([torch.full((n, 1), bos_id, dtype=torch.long), body,
                      torch.full((n, 1), eos_id, dtype=torch.long)], dim=1)


# ---------------------------------------------------------------------------
# Convenience: corpus -> packed splits, cached
# ---------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$ESOLM_CACHE`` if set, else ``~/.cache/esolm-harness``."""
    env = os.environ.get("ESOLM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "esolm-harness"


def _corpus_hash(corpus) -> str:
    """Hash of the corpus file CONTENTS (so edited files invalidate the cache)."""
    h = hashlib.sha256()
    if isinstance(corpus, str) and corpus == "bundled":
        paths = [BUNDLED_CORPUS]
    else:
        paths = [Path(p) for p in ([corpus] if isinstance(corpus, (str, os.PathLike)) else corpus)]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"corpus file not found: {p}")
        h.update(p.name.encode("utf-8") + b"\x00" + file_sha256(p).encode("ascii") + b"\x00")
    return h.hexdigest()


def build_splits(corpus: str | os.PathLike | Sequence[str | os.PathLike], tokenizer: Tokenizer,
                 seq_len: int, seed: int = 0, valid_frac: float = 0.05,
                 test_frac: float = 0.05) -> dict[str, torch.Tensor]:
    """Load -> split by document -> tokenize -> pack each split: ``{"train", "valid", "test"}``
    -> LongTensor (N, seq_len), cached by corpus contents, tokenizer, settings and the source
    of this module and harness.corpus (a change to splitting or packing is never served stale data)."""
    key = {"code": file_sha256(Path(__file__)) + file_sha256(Path(__file__).parent / "corpus.py"),
           "corpus": _corpus_hash(corpus),
           "tokenizer": tokenizer.fingerprint, "seq_len": seq_len, "seed": seed,
           "valid_frac": valid_frac, "test_frac": test_frac}

    def build():
        splits = split_documents(load_corpus(corpus), valid_frac=valid_frac, test_frac=test_frac, seed=seed)
        return {name: pack(tokenizer.encode_batch([d.text for d in docs]), seq_len, tokenizer.bos_id, tokenizer.eos_id)
                for name, docs in splits.items()}

    return cached_splits(key, build)


def file_sha256(path: Path) -> str:
    """Read in 1 MiB blocks: also used on multi-GB released weight files (harness.checkpoints.released)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_splits(key: dict, build) -> dict[str, torch.Tensor]:
    """``build()`` once per ``key`` (JSON-able), kept under :func:`cache_dir`; a corrupt file
    is rebuilt and a cache that cannot be written is skipped."""
    name = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **key}, sort_keys=True).encode("utf-8")).hexdigest()[:24]
    path = cache_dir() / f"splits-{name}.pt"
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # corrupt / partial file: rebuild it
            pass
    out = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        torch.save(out, tmp)
        os.replace(tmp, path)  # atomic: concurrent runs never see half a file
    except OSError:
        pass
    return out
