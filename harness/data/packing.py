"""The documents protocol's rows (docs/data.md §6): "wrap" packing of each split, and the
on-disk cache of packed splits that every protocol shares (keyed by the corpus contents,
the tokenizer, the settings and the code that builds them, so a change is never served
stale rows)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from harness.data.corpus import BUNDLED_CORPUS, load_corpus, split_documents
from harness.data.tokenizers import Tokenizer

CACHE_FORMAT = 1                          # bump when the packed layout changes


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


def corpus_hash(corpus) -> str:
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
    of this module and harness.data.corpus (a change to splitting or packing is never served stale data)."""
    key = {"code": file_sha256(Path(__file__)) + file_sha256(Path(__file__).parent / "corpus.py"),  # this module's
           "corpus": corpus_hash(corpus),
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
