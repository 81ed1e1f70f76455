"""Self-contained checkpoints: weights (+EMA), optimiser state, config, tokenizer, metadata.

One ``checkpoint.pt`` holds everything needed to rebuild the model and its tokenizer on
another machine (the tokenizer's files are stored inside it as bytes), so a checkpoint
can be evaluated, sampled or swept without the run folder around it.  Writes are
atomic (temporary file + rename): an interrupted save never corrupts the last good one.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from harness.models import LanguageModel, SpecialTokens, build_model
from harness.nn.transformer import BackboneConfig

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


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
        "ema_state": ema_state,
        "optimizer_state": optimizer_state,
        "scheduler_state": scheduler_state,
        "rng_state": rng_state,
        "step": step,
        "config": config,
        "tokenizer_files": tokenizer_blobs,
        "meta": {"git_commit": git_commit(), "torch": torch.__version__, **(meta or {})},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(state, tmp)
    os.replace(tmp, path)


def resolve_checkpoint_path(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found; pass a run folder or its {CHECKPOINT_NAME}")
    return path


def read_state(path: str | Path, mmap: bool = False) -> dict:
    """The checkpoint's saved dict; ``mmap`` maps the tensors instead of reading them (to look at its config)."""
    path = resolve_checkpoint_path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as err:  # torch raises many types for a damaged file
        raise ValueError(f"checkpoint {str(path)!r} cannot be read ({type(err).__name__}); re-train or re-copy it") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not an esolm-harness checkpoint (format {FORMAT_VERSION})")
    return state


def check_model(state: dict, path, expect_model: str | None) -> None:
    """``expect_model`` guards mix-ups: a config naming one model pointed at another's checkpoint."""
    if expect_model is not None and expect_model != state["model_name"]:
        raise ValueError(
            f"checkpoint {str(path)!r} holds model {state['model_name']!r}, not {expect_model!r}; "
            f"point the config at a {expect_model} checkpoint or change its model to {state['model_name']!r}"
        )


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", expect_model: str | None = None,
                    use_ema: bool = True) -> Loaded:
    """Rebuild model (EMA weights when present) and tokenizer; ``expect_model`` guards mix-ups."""
    state = read_state(path)
    check_model(state, path, expect_model)
    model = build_model(state["model_name"], BackboneConfig(**state["backbone"]), SpecialTokens(**state["special"]),
                        **state["model_options"])
    weights = state["ema_state"] if use_ema and state.get("ema_state") else state["model_state"]
    model.load_state_dict(weights)
    model.to(device).eval()
    tokenizer = restore_tokenizer(state["tokenizer_files"])
    meta = {**state["meta"], "step": state["step"], "weights": "ema" if weights is state["ema_state"] else "raw"}
    return Loaded(model=model, tokenizer=tokenizer, config=state["config"], meta=meta,
                  path=resolve_checkpoint_path(path))
