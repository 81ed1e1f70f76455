"""The papers' data protocols: which texts are held out, and how they become rows of L tokens.

``data.protocol`` names one (every sweep row and ``esolm eval`` output carries the name):

* ``documents`` (the default): the harness's own protocol — whole documents hashed into
  train/valid/test (:func:`harness.data.corpus.split_documents`), each split wrapped by
  :func:`harness.data.packing.pack` (EOS between documents, the stream's remainder dropped).
* ``owt``: OpenWebText as the MDLM / BD3-LM / Eso-LM code splits and wraps it.  The last
  ``valid_docs`` documents (100 000 in the papers) of the train split are the validation set
  (also served as ``test``: the papers report OpenWebText perplexity on it), the others train.
  Every document is tokenised with EOS appended; consecutive groups of 1 000 documents (the
  batch of the ``datasets.map`` call that wraps them, as with one worker) are concatenated
  and cut into rows; each group's remainder is dropped.  ``data.framing`` names how a row is
  framed, and each family's repository used its own (:data:`OWT_FRAMING`):

  - ``bos_eos``: chunks of L − 2 tokens stored as [BOS] + chunk + [EOS]: the mdlm
    repository's wrap, which the MDLM and AR checkpoints were trained and scored on;
  - ``raw``: chunks of L tokens, nothing added (a row starts and ends mid-text): the Eso-LMs
    and bd3lms OpenWebText runs, which pass ``data.insert_train_special=False`` and
    ``insert_valid_special=False``.
* ``lm1b``: one sentence per row (LM1B unwrapped): [BOS] + its first L − 2 tokens + [EOS],
  right-padded to L with EOS (the tokenizers here have no pad id; pads are scored like
  text, where the papers' loss leaves them out).  The dataset's train split trains; its test
  split is valid and test, as in the papers' code.  LM1B's detokenizer is not applied.

Sources: ``data.corpus`` (the bundled corpus or text files: one document each, in order)
or ``data.hf_dataset``, a local Hugging Face dataset folder — written by
``datasets.save_to_disk`` (a Dataset or a DatasetDict) or holding .parquet / .arrow files
(splits named by file, e.g. ``train-00000.parquet``) — read with the hub switched off.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from harness.data.corpus import Document, load_corpus, split_documents
from harness.data.packing import cache_dir, cached_splits, corpus_hash, file_sha256, pack

OWT_VALID_DOCS = 100_000  # the papers' OpenWebText validation split: the last 100k documents
WRAP_GROUP = 1000          # documents wrapped together (datasets.map's default batch)
# The OpenWebText framing each family's own repository trained and scored with (its scripts'
# insert_*_special flags); ``esolm import`` and the papers' config choose it.
OWT_FRAMING = {"ar": "bos_eos", "mdlm": "bos_eos", "bd3lm": "raw", "esolm-a": "raw", "esolm-b": "raw"}


# ---------------------------------------------------------------------------
# sources
# ---------------------------------------------------------------------------
def load_hf_texts(path: str | os.PathLike, text_field: str = "text") -> dict[str, list[str]]:
    """Split name -> texts of a local Hugging Face dataset folder (a lone Dataset is 'train')."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"  # before datasets is imported: never ask the hub
    os.environ["HF_HUB_OFFLINE"] = "1"
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"data.hf_dataset: no dataset folder at {path}")
    try:
        import datasets
    except ImportError:
        raise ValueError("data.hf_dataset needs the datasets package; pip install 'esolm-harness[data]'") from None
    saved = (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
    if not saved and not any(p.suffix in (".parquet", ".arrow") for p in path.rglob("*")):
        raise FileNotFoundError(f"data.hf_dataset: {path} holds neither a saved dataset nor .parquet/.arrow files")
    library_log = logging.getLogger("datasets")  # it logs what it then raises: the one line below says it
    level = library_log.level
    library_log.setLevel(logging.CRITICAL)
    try:
        loaded = (datasets.load_from_disk(str(path)) if saved
                  else datasets.load_dataset(str(path), cache_dir=str(cache_dir() / "hf")))
    except Exception as err:  # the library's many errors for a damaged folder name no field
        raise ValueError(unreadable(path, err)) from None
    finally:
        library_log.setLevel(level)
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    out = {}
    for name, ds in splits.items():
        if text_field not in ds.column_names:
            raise ValueError(f"data.text_field: split {name!r} of {path} has no column {text_field!r}; "
                             f"use one of {ds.column_names}")
        out[name] = column_texts(ds, text_field, name, path)
    return out


def column_texts(ds, text_field: str, split: str, path: Path) -> list[str]:
    """The text column's values, refused here when they are not all strings: the tokenizer
    would fail on a number, null, bytes or struct mid-run with a message naming nothing."""
    def kind(feature) -> str | None:
        return getattr(feature, "dtype", None) or ("struct" if isinstance(feature, dict) else type(feature).__name__)

    held = kind(ds.features[text_field])
    if held not in ("string", "large_string"):
        text_columns = [c for c, f in ds.features.items() if kind(f) in ("string", "large_string")]
        hint = f"; text columns: {text_columns}" if text_columns else ""
        raise ValueError(f"data.text_field: column {text_field!r} of split {split!r} in {path} holds {held} values, "
                         f"not text; name a text column{hint}")
    texts = list(ds[text_field])
    row = next((i for i, t in enumerate(texts) if t is None), None)
    if row is not None:
        raise ValueError(f"data.text_field: row {row} of split {split!r} in {path} is null in column {text_field!r}; "
                         "drop or fill the null rows")
    return texts


def unreadable(path: Path, err: Exception) -> str:
    """One line for a dataset folder the datasets library could not read, naming the damaged
    file where one can be found (a corrupt or empty parquet file, broken JSON, a missing file)."""
    import json

    import pyarrow.parquet as pq

    for file in sorted(path.rglob("*.parquet")):
        try:
            rows = pq.ParquetFile(file).metadata.num_rows
        except Exception as bad:
            return (f"data.hf_dataset: {file} is not a readable parquet file ({str(bad).splitlines()[0]}); "
                    "replace or remove it")
        if rows == 0:
            return f"data.hf_dataset: {file} holds no rows, so its split is empty; give it rows or remove it"
    for file in sorted(path.rglob("*.json")):
        try:
            json.loads(file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return f"data.hf_dataset: {file} is not valid JSON; re-save the dataset (datasets' save_to_disk)"
    if isinstance(err, FileNotFoundError) and err.filename:
        return f"data.hf_dataset: {err.filename} is missing; re-save the dataset (datasets' save_to_disk)"
    first = str(err).splitlines()[0] if str(err) else ""
    return (f"data.hf_dataset: cannot read {path} ({type(err).__name__}: {first}); re-save it with datasets' "
            "save_to_disk or give a folder of .parquet/.arrow files")


def check_has_text(texts: list[str], split: str, spec) -> None:
    """A split the protocol reads must hold some text (an empty one used to be blamed on data.corpus)."""
    if not any(t.strip() for t in texts):
        held = f"{len(texts)} rows, all empty in column {spec.text_field!r}" if texts else "no rows"
        raise ValueError(f"data.hf_dataset: split {split!r} of {spec.hf_dataset} holds no text ({held}); "
                         "give a dataset with text")


def source_fingerprint(spec) -> object:
    """What identifies the source for the cache: file contents for corpora, and for a
    dataset folder its files' names, sizes and modification times (hashing gigabytes of
    arrow files would take longer than tokenising them)."""
    if spec.hf_dataset is None:
        return corpus_hash(spec.corpus)
    root = Path(spec.hf_dataset)
    return [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()]


def protocol_texts(spec) -> dict[str, list[str]]:
    """train / valid / test texts under ``spec.protocol`` (train is what a BPE is fitted on)."""
    if spec.hf_dataset is not None:
        by_split = load_hf_texts(spec.hf_dataset, spec.text_field)
    else:
        by_split = {"train": [d.text for d in load_corpus(spec.corpus)]}
    if spec.protocol == "lm1b":
        if "train" not in by_split or "test" not in by_split:
            raise ValueError(f"data.protocol: 'lm1b' needs a dataset with train and test splits; "
                             f"{spec.hf_dataset or spec.corpus} has {sorted(by_split)}")
        check_has_text(by_split["train"], "train", spec)
        check_has_text(by_split["test"], "test", spec)
        return {"train": by_split["train"], "valid": by_split["test"], "test": by_split["test"]}
    if "train" not in by_split:
        if len(by_split) != 1:
            raise ValueError(f"data.hf_dataset: no 'train' split among {sorted(by_split)}")
        by_split = {"train": next(iter(by_split.values()))}
    docs = by_split["train"]
    if spec.hf_dataset is not None:
        check_has_text(docs, "train", spec)
    if spec.protocol == "owt":
        if len(docs) <= spec.valid_docs:
            raise ValueError(f"data.valid_docs: {spec.valid_docs} held-out documents leave none of the "
                             f"{len(docs)} to train on; lower it")
        held_out = docs[len(docs) - spec.valid_docs:]
        return {"train": docs[: len(docs) - spec.valid_docs], "valid": held_out, "test": held_out}
    documents = [Document("hf", str(i), t) for i, t in enumerate(docs)]
    split = split_documents(documents, seed=spec.split_seed)
    return {name: [d.text for d in part] for name, part in split.items()}


# ---------------------------------------------------------------------------
# packing
# ---------------------------------------------------------------------------
def wrap_grouped(token_lists, seq_len: int, bos: int, eos: int, group: int = WRAP_GROUP,
                 framing: str = "bos_eos") -> torch.Tensor:
    """The papers' wrap: each document + [EOS]; every ``group`` documents concatenated and cut
    into rows, each group's remainder dropped.  ``bos_eos``: L − 2 token chunks stored as
    [BOS] + chunk + [EOS]; ``raw``: L token chunks as they are."""
    if framing not in ("bos_eos", "raw"):
        raise ValueError(f"data.framing must be 'bos_eos' or 'raw', got {framing!r}")
    if framing == "bos_eos" and seq_len < 3:
        raise ValueError("seq_len must be >= 3 (BOS + at least one token + EOS)")
    width, rows = seq_len - 2 if framing == "bos_eos" else seq_len, []
    for start in range(0, len(token_lists), group):
        stream = [t for ids in token_lists[start:start + group] for t in (*ids, eos)]
        n = len(stream) // width
        if n:
            body = torch.tensor(stream[: n * width], dtype=torch.long).view(n, width)
            rows.append(body if framing == "raw" else
                        torch.cat([torch.full((n, 1), bos), body, torch.full((n, 1), eos)], 1))
    return torch.cat(rows) if rows else torch.empty(0, seq_len, dtype=torch.long)


def pad_sentences(token_lists, seq_len: int, bos: int, eos: int, pad: int) -> torch.Tensor:
    """One row per sentence: [BOS] + its first L − 2 tokens + [EOS], right-padded with ``pad``."""
    if seq_len < 3:
        raise ValueError("seq_len must be >= 3 (BOS + at least one token + EOS)")
    out = torch.full((len(token_lists), seq_len), pad, dtype=torch.long)
    for i, ids in enumerate(token_lists):
        row = [bos, *list(ids)[: seq_len - 2], eos]
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def build_protocol_splits(spec, tokenizer, seq_len: int) -> dict[str, torch.Tensor]:
    """``{"train", "valid", "test"}`` -> LongTensor (N, seq_len) under ``spec.protocol``, cached
    like :func:`harness.data.packing.build_splits` (the key holds this module's source too)."""
    key = {"protocol": spec.protocol, "source": source_fingerprint(spec), "text_field": spec.text_field,
           "valid_docs": spec.valid_docs, "split_seed": spec.split_seed, "tokenizer": tokenizer.fingerprint,
           "framing": spec.row_framing,
           "seq_len": seq_len, "code": file_sha256(Path(__file__))}

    def rows(ids):
        bos, eos = tokenizer.bos_id, tokenizer.eos_id
        if spec.protocol == "documents":
            return pack(ids, seq_len, bos, eos)
        if spec.protocol == "owt":
            return wrap_grouped(ids, seq_len, bos, eos, framing=spec.row_framing)
        return pad_sentences(ids, seq_len, bos, eos, pad=eos)

    def build():
        out, done = {}, {}
        for name, texts in protocol_texts(spec).items():  # valid and test may be one list: packed once
            if id(texts) not in done:
                done[id(texts)] = rows(tokenizer.encode_batch(texts))
            out[name] = done[id(texts)]
        return out

    return cached_splits(key, build)
