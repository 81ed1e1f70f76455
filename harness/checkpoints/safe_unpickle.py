"""Reading other code's pickles (official Lightning ``.ckpt`` files) without running them.

A Lightning checkpoint pickles, next to its tensors, objects of classes this project does
not have and must never import: the Hydra/OmegaConf config, the tokenizer, loop states.
``torch.load(weights_only=True)`` refuses any class it does not know; here every such
class or function the file names is first listed by scanning the pickle's opcodes
(nothing runs) and then stood in for by an :class:`Inert` placeholder that only records
its arguments and state.  So the load builds tensors and plain containers, plus inert
records of everything else, and :func:`plain` turns the records of an OmegaConf config
back into dicts, lists and values.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch


class Inert:
    """Stands in for a class or function a foreign pickle names: calling it, building it or
    setting its state records the values and does nothing else."""

    name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.name}>"


def _empty_dict(*args, **kwargs) -> dict:
    """``collections.defaultdict(...)`` read as a plain dict, so its items can still be set."""
    return {}


def placeholders(names: list[str]) -> list[tuple]:
    """(stand-in, "module.Name") pairs for torch's safe_globals."""
    pairs = []
    for name in names:
        if name == "collections.defaultdict":
            pairs.append((_empty_dict, name))
        else:
            pairs.append((type(f"Inert_{len(pairs)}", (Inert,), {"name": name}), name))
    return pairs


def load_foreign(path: Path):
    """The pickle's contents with every foreign class or function inert (see module docstring).
    A file torch cannot read this way (a damaged file, opcodes the safe reader lacks) raises
    ValueError naming the file."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as err:
        raise ValueError(f"{str(path)!r} is not a torch checkpoint that can be read safely ({type(err).__name__}); "
                         f"export the weights as a Hugging Face folder (model.safetensors) instead") from None
    try:
        with torch.serialization.safe_globals(placeholders(names)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise ValueError(f"{str(path)!r} cannot be read without running code ({first}); nothing in it was run; "
                         f"export the weights as a Hugging Face folder (model.safetensors) instead") from None


def plain(obj, depth: int = 0, seen: dict | None = None):
    """Dicts, lists and values out of a loaded foreign object: an OmegaConf container's record
    becomes its ``_content``, a value node its ``_val``; any other inert record becomes None.
    Each object is converted once (``seen``, by id): a pickle's memo lets a few kilobytes
    share one list 2^40 times over (x = [x, x]), which a tree walk would never finish; a
    cycle back into an object still being converted becomes None."""
    if depth > 50:
        return None
    seen = {} if seen is None else seen
    if id(obj) in seen:
        return seen[id(obj)]
    seen[id(obj)] = None  # until converted: a reference back to it reads as None
    if isinstance(obj, Inert):
        state = obj.state
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]  # (dict state, slot state)
        result = None
        if isinstance(state, dict) and "_content" in state:
            result = plain(state["_content"], depth + 1, seen)
        elif isinstance(state, dict) and "_val" in state:
            result = plain(state["_val"], depth + 1, seen)
    elif isinstance(obj, dict):
        result = {k: plain(v, depth + 1, seen) for k, v in obj.items() if isinstance(k, (str, int))}
    elif isinstance(obj, (list, tuple)):
        result = [plain(v, depth + 1, seen) for v in obj]
    elif isinstance(obj, (str, int, float, bool)) or obj is None:
        result = obj
    else:
        result = None
    seen[id(obj)] = result
    return result


_REFERENCE = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")


def lookup(config: dict | None, dotted: str):
    """config["a"]["b"] for "a.b", following a plain ``${x.y}`` reference once; None if absent
    or not resolvable (an OmegaConf resolver such as ``${eval:...}`` is never evaluated)."""
    value = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if isinstance(value, str):
        match = _REFERENCE.fullmatch(value)
        if match:
            target = lookup(config, match.group(1))
            return None if isinstance(target, str) and _REFERENCE.search(target) else target
    return value
