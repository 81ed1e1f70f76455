"""What ``esolm import`` accepts from a released checkpoint before it looks at its values:
config fields of the right type and range, and finite floating-point weights.

A value of the wrong type used to flow into int(), float() or a shape check and surface as
a traceback or a message naming neither field nor file (or, worse, be accepted: ``2.5``
read as 2, ``true`` as one head, NaN weights as a model whose perplexity is nan).  Each
check here refuses in one line naming the file and the field.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import torch

CONFIG_LIMIT = 1 << 20  # a released config.json is about 1 KB
VOCAB = 50258  # GPT-2's 50257 ids + [MASK]
MASK_ID = 50257
# config.json fields Hugging Face itself writes; they say nothing about the network.
HF_BOOKKEEPING = {"architectures", "auto_map", "model_type", "torch_dtype", "dtype", "transformers_version",
                  "return_dict", "_name_or_path"}
POSITIVE = "a positive integer"
INDEX = "a non-negative integer"
FLAG = "true or false"
FRACTION = "a number in [0, 1)"
UNIT = "a number in [0, 1]"
TEXT = "a string"
# config.json field -> what its value must be (model_type is bookkeeping but names the family).
HF_FIELDS = {"vocab_size": POSITIVE, "mask_index": INDEX, "text_vocab_size": POSITIVE, "model_length": POSITIVE,
             "hidden_size": POSITIVE, "hidden_dim": POSITIVE, "cond_dim": POSITIVE, "n_blocks": POSITIVE,
             "n_heads": POSITIVE, "dropout": FRACTION, "time_conditioning": FLAG, "block_size": POSITIVE,
             "cross_attn": FLAG, "adaln": FLAG, "causal": FLAG, "attn_backend": TEXT, "var_min": FLAG,
             "sampling_eps_min": UNIT, "sampling_eps_max": UNIT, "backbone": TEXT, "model_type": TEXT}
# The Lightning config's entries the importer reads (null there means "not given").
LIGHTNING_FIELDS = {"model.n_heads": POSITIVE, "model.length": POSITIVE, "model.hidden_size": POSITIVE,
                    "model.dropout": FRACTION, "model.n_blocks": POSITIVE, "model.cond_dim": POSITIVE,
                    "algo.name": TEXT, "parameterization": TEXT, "algo.diffusion_attn_mode": TEXT,
                    "algo.sequential_attn_mode": TEXT, "algo.ignore_bos": FLAG}
# causal: true (an AR DiT in the BD3-LM-style config) is checked against --model by the importer
SUPPORTED = {"backbone": {"dit"}, "attn_backend": {"flex", "sdpa"}}


def shown(value) -> str:
    """The value as the file spells it (JSON), cut short."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def fits(value, kind: str) -> bool:
    if kind == TEXT:
        return isinstance(value, str)
    if kind == FLAG:
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if kind in (POSITIVE, INDEX):
        return isinstance(value, int) and value >= (1 if kind == POSITIVE else 0)
    return 0 <= value < 1 if kind == FRACTION else 0 <= value <= 1  # NaN fails both


def check_fields(values: dict, kinds: dict, where: str) -> None:
    """Every known field present in ``values`` holds a value of its kind, else one line."""
    for name, value in values.items():
        if name in kinds and not fits(value, kinds[name]):
            raise ValueError(f"{where} field {name!r}: must be {kinds[name]}, got {shown(value)}; fix the file")


def read_config_json(folder: Path) -> dict:
    """config.json as a dict of checked fields: a regular file of at most ``CONFIG_LIMIT``
    bytes (a link to /dev/zero would otherwise be read until memory runs out), UTF-8, a JSON
    object, no unknown field, every known one of its type and range, GPT-2's vocabulary."""
    path = folder / "config.json"
    where = f"{path}"
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ValueError(f"{where} is not a regular file; a Hugging Face folder needs a config.json file")
        with open(path, "rb") as handle:
            raw = handle.read(CONFIG_LIMIT + 1)
    except OSError as err:
        raise ValueError(f"{where} cannot be read ({type(err).__name__}); a Hugging Face folder needs one") from None
    if len(raw) > CONFIG_LIMIT:
        raise ValueError(f"{where} is larger than {CONFIG_LIMIT >> 20} MiB; not a model config")
    try:
        config = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not UTF-8 text; save it as UTF-8 JSON") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(config, dict):
        kind = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(config), "a number")
        raise ValueError(f"{where} must hold a JSON object, got {kind}; a config.json maps field names to values")
    unknown = sorted(set(config) - HF_BOOKKEEPING - set(HF_FIELDS))
    if unknown:
        raise ValueError(f"{where} has field(s) {unknown[:4]} this importer does not understand; refusing rather "
                         f"than guessing what they change")
    check_fields(config, HF_FIELDS, where)
    if config.get("vocab_size", VOCAB) != VOCAB or config.get("mask_index", MASK_ID) != MASK_ID \
            or config.get("text_vocab_size", VOCAB - 1) != VOCAB - 1:
        raise ValueError(f"{where}: vocab_size {config.get('vocab_size')} / mask_index {config.get('mask_index')} "
                         f"is not GPT-2 + [MASK] ({VOCAB} ids, [MASK] = {MASK_ID})")
    for key, allowed in SUPPORTED.items():
        if key in config and config[key] not in allowed:
            raise ValueError(f"{where}: {key} = {config[key]!r} is not supported (expected one of "
                             f"{sorted(allowed, key=str)})")
    if "hidden_size" in config and "hidden_dim" in config and config["hidden_size"] != config["hidden_dim"]:
        raise ValueError(f"{where}: hidden_size {config['hidden_size']} and hidden_dim {config['hidden_dim']} "
                         f"disagree; fix the file")
    return config


def check_tensors(tensors: dict, where) -> None:
    """Names are strings and every tensor is floating point and finite (one pass): complex
    weights would lose their imaginary parts, integers cannot be a trunk, NaN/inf give a
    model whose every likelihood is nan."""
    for name, tensor in tensors.items():
        if not isinstance(name, str):
            raise ValueError(f"{where}: weight name {shown(name)} is not a string; not an official DiT checkpoint")
        if not tensor.is_floating_point():
            raise ValueError(f"{where}: {name} is {str(tensor.dtype).removeprefix('torch.')}; only floating-point "
                             f"weights import (re-export the checkpoint in float32 or bfloat16)")
        bad = tensor.numel() - int(torch.isfinite(tensor).sum())
        if bad:
            raise ValueError(f"{where}: {name} has {bad} NaN/inf value(s); the file is damaged or the run diverged: "
                             f"re-download it or import another checkpoint")


def scalar(tensor: torch.Tensor, name: str, where) -> float:
    """A one-number tensor (the learned clip bounds) as a float."""
    if not tensor.is_floating_point() or tensor.numel() != 1:
        raise ValueError(f"{where}: {name} must be one number, got {str(tensor.dtype).removeprefix('torch.')} of "
                         f"shape {tuple(tensor.shape)}; re-export the file")
    value = float(tensor)
    if not math.isfinite(value):
        raise ValueError(f"{where}: {name} is {value}; re-export the file")
    return value
