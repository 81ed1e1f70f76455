"""``esolm ceilings CONFIG``: measure the ceilings (harness.metrics.ceilings) at a sweep's
trunk shape, device and precision, and store them beside its results for the report's floors."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from harness.metrics.ceilings import measure_ceilings


def sweep_ceilings(config_path: str | Path, results_root: str | Path = "results", repeats: int = 20,
                   tokens: int = 2048, overrides: list[str] | tuple = ()) -> Path:
    """Measure the ceilings for a sweep config's trunk, device and precision; write them
    beside its results.  Returns the path of ceilings.json."""
    from harness.config import ConfigError, resolve_device
    from harness.nn.transformer import PRESETS
    from harness.sweep.schema import entry_train_config, load_sweep_config

    cfg = load_sweep_config(config_path, overrides)
    trains = [entry_train_config(cfg, e) for e in cfg.models if e.train is not None]
    if not trains:
        raise ConfigError(f"{config_path}: no 'train:' entry tells the trunk's shape; ceilings need one")
    backbone = trains[0].backbone
    width = backbone.d_model or PRESETS[backbone.preset]["d_model"]
    data = trains[0].data
    vocab = 50258 if data.tokenizer == "gpt2" else data.bpe_vocab_size + 1  # + [MASK]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    result = measure_ceilings(width, vocab, tokens=tokens, repeats=repeats, device=device,
                              dtype=torch.bfloat16 if bf16 else torch.float32)
    out = Path(results_root) / cfg.name / "ceilings.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return out
