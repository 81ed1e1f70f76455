"""Typed configs loaded from YAML, with one-line errors that name the field and the fix.

Every config section forbids unknown keys, so a typo (``stpes: 100``) is an error rather
than a silently ignored setting.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.nn.transformer import PRESETS


class ConfigError(ValueError):
    """A bad config value; the message names the field and how to fix it."""


def resolve_device(name: str, field: str = "device") -> torch.device:
    """'auto' -> cuda when visible, else cpu; a CUDA request without a GPU names ``field``."""
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{field}: {name!r} requested but no CUDA device is visible; use 'auto' or 'cpu'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{field}: unknown device {name!r}; use 'auto', 'cpu' or 'cuda[:N]'") from None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackboneSpec(Strict):
    preset: str = Field("tiny", description=f"one of {sorted(PRESETS)}")
    n_layers: int | None = Field(None, ge=1)
    d_model: int | None = Field(None, ge=2)
    n_heads: int | None = Field(None, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    adaln: bool = True
    max_len: int | None = Field(None, ge=2, description="defaults to data.seq_len")

    @model_validator(mode="after")
    def _known_preset(self):
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; use one of {sorted(PRESETS)}")
        return self

    def overrides(self) -> dict:
        return self.model_dump(exclude={"preset", "max_len"}, exclude_none=True)


class DataSpec(Strict):
    corpus: str | list[str] = Field("bundled", description="'bundled' or a list of .txt/.jsonl paths")
    tokenizer: Literal["bpe", "gpt2"] = "bpe"
    bpe_vocab_size: int = Field(2048, ge=260)
    seq_len: int = Field(128, ge=4)
    split_seed: int = 0
    hf_dataset: str | None = Field(None, description="a local Hugging Face dataset folder (save_to_disk, or "
                                   ".parquet/.arrow files), read offline, instead of corpus")
    text_field: str = Field("text", description="hf_dataset: the column holding the text")
    protocol: Literal["documents", "owt", "lm1b"] = Field(
        "documents", description="documents: whole documents hashed into train/valid/test, wrapped; owt: the "
        "papers' OpenWebText split (last valid_docs documents held out) and wrap; lm1b: padded sentences, the "
        "dataset's own train/test splits (harness/data/protocols.py)")
    valid_docs: int = Field(100_000, ge=1, description="owt: documents held out for validation (the papers' 100k)")
    framing: Literal["bos_eos", "raw"] | None = Field(
        None, description="owt: how a row is framed.  bos_eos (the default): [BOS] + L - 2 tokens + [EOS], the mdlm "
        "repository's; raw: L tokens with nothing added (Eso-LMs' and bd3lms' OpenWebText runs).  esolm import "
        "picks the family's own (harness/data/protocols.py)")

    @model_validator(mode="after")
    def _one_source(self):
        if self.hf_dataset is not None and self.corpus != "bundled":
            raise ValueError("give data.corpus or data.hf_dataset, not both")
        if self.framing is not None and self.protocol != "owt":
            raise ValueError(f"data.framing: {self.framing!r} applies to protocol 'owt' only; set data.protocol: owt "
                             "or remove it")
        if self.protocol == "lm1b" and self.hf_dataset is None:
            raise ValueError("protocol 'lm1b' reads the train and test splits of a data.hf_dataset folder; set one")
        return self

    @property
    def row_framing(self) -> str:
        """'raw' or 'bos_eos': every protocol but owt's raw framing puts [BOS] first and [EOS] last."""
        return self.framing or "bos_eos"

    @property
    def is_default_protocol(self) -> bool:
        return self.protocol == "documents" and self.hf_dataset is None


class OptimSpec(Strict):
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-4, gt=0)
    warmup_steps: int = Field(100, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    ema: float = Field(0.9999, ge=0, lt=1, description="0 disables the EMA")
    eval_every: int = Field(200, ge=1)
    eval_batches: int = Field(8, ge=1)
    ckpt_every: int = Field(500, ge=1)
    seed: int = Field(0, ge=0, le=2**32 - 1, description="seeds torch and the data order (seed·1000003 + epoch)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 autocast on CUDA, fp32 on CPU")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    compile: bool = Field(False, description="torch.compile the trunk (fused kernels; each input shape compiles "
                                             "once, up front); numerics match eager to float tolerance")


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # names that become folder or file names
SEED_MAX = 2**63 - 1  # torch seeds its generators with a 64-bit integer: --seed and every config seed


def check_name(value: str, field: str = "name") -> str:
    """A name that becomes a path: one plain folder name, never '..' or a path."""
    if not re.match(NAME_PATTERN, value) or value in (".", ".."):
        raise ValueError(f"{value!r} becomes a folder name: use letters, digits, '_', '.' and '-' only, starting "
                         "with a letter or digit (no '/' or '..')")
    return value


class TrainConfig(Strict):
    name: str
    model: str = Field(description="registry name (ar, mdlm, bd3lm, esolm-a, esolm-b) or package.module:Class")
    model_args: dict[str, Any] = Field(default_factory=dict)
    backbone: BackboneSpec = Field(default_factory=BackboneSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    train: OptimSpec = Field(default_factory=OptimSpec)
    out_dir: str | None = Field(None, description="defaults to runs/<name>")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value):
        return value if value is None else check_name(value)

    @model_validator(mode="after")
    def _lengths_fit(self):
        if self.backbone.max_len is not None and self.data.seq_len > self.backbone.max_len:
            raise ValueError(
                f"data.seq_len {self.data.seq_len} exceeds backbone.max_len {self.backbone.max_len}; "
                "raise backbone.max_len or lower data.seq_len"
            )
        return self

    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")


def fields_at(model_cls: type[BaseModel] | None, loc: tuple) -> list[str]:
    """Field names of the config section at ``loc`` (through nested sections, lists and
    optionals), or [] where that is not a known section."""
    tp = model_cls
    for part in (*loc, None):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
            tp = args[0]  # X | None
        if part is None:
            break
        if isinstance(part, int) and typing.get_origin(tp) is list:
            tp = typing.get_args(tp)[0]
        elif isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        else:
            return []
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def format_validation_error(err: ValidationError, source: str, where=None, model_cls=None) -> str:
    """One problem of a pydantic error as 'source: field a.b: message', an unknown key first
    (a misspelt key also shows up as a missing field: the typo is the news), with the closest
    valid key; ``where(loc)`` may name the field as the user wrote it (e.g. a key merged in
    from elsewhere)."""
    errors = err.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    field = (where(first["loc"]) if where else None) or ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")  # pydantic's wording around our own messages
    if first["type"] == "extra_forbidden":
        valid = fields_at(model_cls, first["loc"][:-1])
        close = difflib.get_close_matches(str(first["loc"][-1]), valid, n=1, cutoff=0.6)
        if close:
            message = f"unknown key; did you mean '{close[0]}'?"
        else:
            message = "unknown key; remove it or check its spelling" + (f" (valid keys: {', '.join(valid)})" if valid else "")
    elif first["type"] == "missing":
        message = "required field is missing; add it"
    elif "input" in first and first["type"] not in ("value_error",):
        message = f"{message} (got {first['input']!r})"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: field '{field}': {message}{more}"


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; pass the path of a YAML config")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}; fix the config's syntax there") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return data


def parse(model_cls: type[BaseModel], data: dict, source: str):
    try:
        return model_cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source, model_cls=model_cls)) from err


def load_train_config(path: str | Path) -> TrainConfig:
    return parse(TrainConfig, read_yaml(path), str(path))
