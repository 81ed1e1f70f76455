"""Self-contained checkpoints: weights (+EMA), optimiser state, config, tokenizer, metadata.

One ``checkpoint.pt`` holds everything needed to rebuild the model and its tokenizer on
another machine (the tokenizer's files are stored inside it as bytes), so a checkpoint
can be evaluated, sampled or swept without the run folder around it.  Writes are
atomic (temporary file + rename): an interrupted save never corrupts the last good one,
and the temporary a killed save leaves behind is removed by the next save into the folder
(its name carries the writer's host and pid, so a live writer's is never touched).

Loading never runs code: the file holds only tensors and plain Python values, read with
``torch.load(weights_only=True)``.  (Checkpoints written before this rule kept torch's
version string as ``torch.torch_version.TorchVersion``, a ``str`` subclass: that one
class is allowed, so they still load.)  ``weights_model`` records which model wrote the
weights; a checkpoint whose ``model_name`` was edited afterwards (say an AR checkpoint
relabelled ``mdlm``: the trunks have the same parameters, so no shape can tell) is
refused.  Checkpoints written before the record existed are checked structurally only.
"""

from __future__ import annotations

import os
import pickle
import re
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.torch_version import TorchVersion

from harness.models import LanguageModel, SpecialTokens, build_model, resolve_model_class
from harness.nn.transformer import BackboneConfig

CHECKPOINT_NAME = "checkpoint.pt"
HOST = re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "host"  # in temporaries' names (no dots)
FORMAT_VERSION = 1
# What load_checkpoint needs; a dict without one of them is refused in one line.
REQUIRED_KEYS = ("model_name", "model_options", "backbone", "special", "model_state", "step", "config",
                 "tokenizer_files")


@dataclass
class Loaded:
    model: LanguageModel
    tokenizer: object
    config: dict
    meta: dict
    path: Path


def git_commit() -> str | None:
    """The checkout's short commit; $ESOLM_GIT_COMMIT where the code runs from a copy
    without its .git (a GPU machine that receives only the working tree)."""
    if os.environ.get("ESOLM_GIT_COMMIT"):
        return os.environ["ESOLM_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def tokenizer_files(tokenizer) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


def restore_tokenizer(files: dict[str, bytes]):
    from harness.data import load_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for name, blob in files.items():
            (Path(tmp) / name).write_bytes(blob)
        return load_tokenizer(tmp)


def save_checkpoint(path: Path, *, model: LanguageModel, model_name: str, tokenizer_blobs: dict[str, bytes],
                    config: dict, step: int, ema_state: dict | None = None, optimizer_state: dict | None = None,
                    scheduler_state: dict | None = None, rng_state: dict | None = None, meta: dict | None = None):
    state = {
        "format": FORMAT_VERSION,
        "model_name": model_name,
        "model_options": model.options(),
        "backbone": model.backbone_config.to_dict(),
        "special": asdict(model.special),
        "model_state": model.state_dict(),
        "weights_model": model_name,
        "ema_state": ema_state,
        "optimizer_state": optimizer_state,
        "scheduler_state": scheduler_state,
        "rng_state": rng_state,
        "step": step,
        "config": config,
        "tokenizer_files": tokenizer_blobs,
        "meta": {"git_commit": git_commit(), "torch": str(torch.__version__), **(meta or {})},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_temporaries(path.parent):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"tmp.{os.getpid()}.{HOST}.", suffix=".tmp")
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, path)


def stale_temporaries(folder: Path) -> list[Path]:
    """save_checkpoint's temporaries (tmp.PID.HOST.*.tmp) left by a writer on this host that
    is no longer alive (killed between writing and renaming).  Another host's are kept: its
    pids cannot be checked from here."""
    stale = []
    for path in folder.glob("tmp.*.tmp"):
        parts = path.name.split(".")
        if len(parts) == 5 and parts[1].isdigit() and parts[2] == HOST and not pid_alive(int(parts[1])):
            stale.append(path)
    return stale


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # alive under another user / not a pid: keep its file
        return True
    return True


@contextmanager
def folder_lock(folder: Path, flag: str):
    """Hold ``folder/.lock``, the run folder's lock harness.train also holds while training:
    one writer at a time.  Another holder is refused in one line naming ``flag`` and its pid."""
    from harness import locks

    try:
        handle = locks.take(folder / ".lock")
    except locks.Held as held:
        raise ValueError(f"{flag} {str(folder)!r} is being written by pid {held.holder or 'another process'}; wait "
                         "for it to finish or choose another folder (nothing was written)") from None
    with handle:
        yield


def foreign_source(spec: str) -> str | None:
    """The released source a sweep ``checkpoint:`` names ('hf:/folder' or a '.ckpt' file), or
    None for an ordinary harness checkpoint."""
    if spec.startswith("hf:"):
        return spec[3:].strip()
    return spec if spec.endswith(".ckpt") else None


def resolve_checkpoint_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found; pass a run folder or its {CHECKPOINT_NAME}")
    return path


def safe_load(path: Path, mmap: bool = False, allow: tuple = ()):
    """``torch.load`` that cannot run code: tensors, plain containers and ``allow``ed classes only."""
    with torch.serialization.safe_globals([TorchVersion, *allow]):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def foreign_globals(path: Path) -> str:
    """The classes/functions a pickle names beyond torch's safe set, found by scanning its
    opcodes (nothing is run), for error messages."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a legacy (non-zip) or damaged file: the scan is best effort
        return "not a torch zip file"
    return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "") if names else "none named"


def read_state(path: str | Path, mmap: bool = False) -> dict:
    """The checkpoint's saved dict; ``mmap`` maps the tensors instead of reading them (to look at its config)."""
    path = resolve_checkpoint_path(path)
    try:
        state = safe_load(path, mmap=mmap)
    except pickle.UnpicklingError:
        raise ValueError(f"checkpoint {str(path)!r} holds objects other than tensors and plain values "
                         f"({foreign_globals(path)}); nothing in it was run or loaded; an official release file is "
                         f"imported with 'esolm import'") from None
    except Exception as err:  # torch raises many types for a damaged file
        raise ValueError(f"checkpoint {str(path)!r} cannot be read ({type(err).__name__}); re-train or re-copy it") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not an esolm-harness checkpoint (format {FORMAT_VERSION}); an official release "
                         f"file is imported with 'esolm import'")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r} lacks {missing}; it was not written by esolm-harness "
                         f"(re-save it with harness.checkpoints.own_format.save_checkpoint)")
    if not isinstance(state["backbone"], dict) or not isinstance(state["model_options"], dict):
        raise ValueError(f"checkpoint {str(path)!r}: backbone and model_options must be mappings")
    return state


def check_model(state: dict, path, expect_model: str | None) -> None:
    """``expect_model`` guards mix-ups: a config naming one model pointed at another's checkpoint.
    ``weights_model`` (written at save) guards a checkpoint whose label was edited."""
    written_by = state.get("weights_model", state["model_name"])
    if written_by != state["model_name"]:
        raise ValueError(f"checkpoint {str(path)!r} is labelled {state['model_name']!r} but its weights were saved "
                         f"by model {written_by!r}; restore model_name {written_by!r} (a trunk trained for one "
                         f"model is not another)")
    if expect_model is not None and expect_model != state["model_name"]:
        raise ValueError(
            f"checkpoint {str(path)!r} holds model {state['model_name']!r}, not {expect_model!r}; "
            f"point the config at a {expect_model} checkpoint or change its model to {state['model_name']!r}"
        )


def build_from_state(state: dict, path) -> LanguageModel:
    """The model the checkpoint describes, refusing a description its weights do not fit."""
    try:
        backbone = BackboneConfig(**state["backbone"])
        special = SpecialTokens(**state["special"])
    except TypeError as err:
        raise ValueError(f"checkpoint {str(path)!r}: bad backbone/special tokens ({err})") from None
    options = resolve_model_class(state["model_name"]).saved_options(state["model_options"])
    model = build_model(state["model_name"], backbone, special, **options)
    check_fits(model, state["model_state"], path)
    return model


def check_fits(model: LanguageModel, weights: dict, path, what: str = "weights") -> None:
    """Every parameter present with its shape, nothing extra: one line naming the first misfit."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in weights.items()}
    missing, extra = sorted(want.keys() - have.keys()), sorted(have.keys() - want.keys())
    wrong = [f"{k} {have[k]} vs {want[k]}" for k in want if k in have and have[k] != want[k]]
    if missing or extra or wrong:
        problem = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
                   else f"shape {wrong[0]}")
        raise ValueError(f"checkpoint {str(path)!r}: its {what} do not fit the backbone it describes ({problem}); "
                         f"the backbone sizes were edited or the file is damaged: re-save it")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", expect_model: str | None = None,
                    use_ema: bool = True) -> Loaded:
    """Rebuild model (EMA weights when present) and tokenizer; ``expect_model`` guards mix-ups."""
    state = read_state(path)
    check_model(state, path, expect_model)
    model = build_from_state(state, path)
    weights = state["ema_state"] if use_ema and state.get("ema_state") else state["model_state"]
    if weights is not state["model_state"]:
        check_fits(model, weights, path, "EMA weights")
    model.load_state_dict(weights)
    model.to(device).eval()
    tokenizer = restore_tokenizer(state["tokenizer_files"])
    meta = {**state.get("meta", {}), "step": state["step"], "weights": "ema" if weights is state["ema_state"] else "raw"}
    return Loaded(model=model, tokenizer=tokenizer, config=state["config"], meta=meta,
                  path=resolve_checkpoint_path(path))
