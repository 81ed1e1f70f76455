"""``esolm import``: the released AR, MDLM, BD3-LM and Eso-LM checkpoints as harness checkpoints.

All of them are one network, the official DiT (docs/checkpoints.md), whose released weights
fold exactly onto the harness trunk:

- the released diffusion models are not time-conditioned: they feed sigma = 0, so the
  conditioning c = silu(sigma_map(0)) is one constant vector and every adaLN output
  (shift, scale, gate) is a constant per block;
- the official LayerNorm has a weight and no bias, applied before the modulation:
  LN(h)·w·(1 + s) + b = LN(h)·(1 + (w·(1 + s) − 1)) + b, so a block's constant
  modulation row is (shift1, w1·(1 + scale1) − 1, gate1, shift2, w2·(1 + scale2) − 1, gate2);
- an AR block has no adaLN: shift 0, scale 0, gate 1;
- the output layer's bias becomes the trunk's head bias (``BackboneConfig.head_bias``).

Two source formats: a Hugging Face folder (config.json + model.safetensors or
pytorch_model.bin) and a Lightning ``.ckpt`` (state_dict + EMA shadow parameters, read
without running its pickled objects: harness.checkpoints.safe_unpickle).  Anything not understood is
refused in one line before anything is written: time conditioning, unknown or missing
weights, shapes that do not fit, a vocabulary other than GPT-2 + [MASK], an unknown
config.json field, AR weights imported as a diffusion model or the reverse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from harness.checkpoints.own_format import foreign_source  # noqa: F401  (sweeps and readers import it from harness.checkpoints.own_format)
from harness.checkpoints.safe_unpickle import load_foreign, lookup, plain
from harness.checkpoints.released_checks import LIGHTNING_FIELDS, VOCAB, check_fields, check_tensors, read_config_json, scalar
from harness.models import importable_models

# model_type (HF) or algo name (Lightning config) -> the harness models it may be imported as.
KINDS = {"EsoLM": ("esolm-a", "esolm-b"), "esolm": ("esolm-a", "esolm-b"), "bd3lm": ("bd3lm",), "mdlm": ("mdlm",),
         "ar": ("ar",)}
BUFFERS = ("rotary_emb.inv_freq",)  # official non-parameter state in the backbone


@dataclass
class Source:
    """What a source file says, in harness terms; None = the source does not say."""

    path: Path
    kind: str  # "hf" or "lightning"
    weights: dict  # official backbone names (no "backbone." prefix) -> tensors
    weights_file: Path
    ema: bool
    n_heads: int | None = None
    max_len: int | None = None
    dropout: float | None = None
    hidden: int | None = None
    time_conditioning: bool | None = None
    kind_name: str | None = None  # model_type / algo name
    options: dict = field(default_factory=dict)  # block_size, alpha_0, batch_split, eps, clip, variant
    declared: dict = field(default_factory=dict)  # n_blocks, cond_dim as the config states them
    causal: bool = False  # config.json's causal: true, a causal (AR) DiT
    step: int = 0


def refuse(message: str):
    raise ValueError(message)


def split_backbone(state: dict, where: str) -> tuple[dict, dict]:
    """``backbone.``-prefixed tensors -> (backbone weights without the prefix, the other tensors)."""
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    rest = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    if not backbone:
        refuse(f"{where} has no 'backbone.*' weights (first keys {list(state)[:3]}); not an official DiT checkpoint")
    return backbone, rest


def read_hf(folder: Path) -> Source:
    """A Hugging Face folder: config.json + model.safetensors (or pytorch_model.bin)."""
    config = read_config_json(folder)
    sizes = {config[k] for k in ("hidden_size", "hidden_dim") if k in config}
    safetensors_file, bin_file = folder / "model.safetensors", folder / "pytorch_model.bin"
    if safetensors_file.is_file():
        from safetensors.torch import load_file

        try:
            state, weights_file = load_file(str(safetensors_file)), safetensors_file
        except Exception as err:
            refuse(f"{safetensors_file} cannot be read ({type(err).__name__}); re-download it")
    elif bin_file.is_file():
        from harness.checkpoints.own_format import foreign_globals

        try:
            state = torch.load(bin_file, map_location="cpu", weights_only=True)
        except Exception:
            refuse(f"{bin_file} holds objects other than tensors ({foreign_globals(bin_file)}); nothing in it "
                   f"was run; use a model.safetensors export")
        weights_file = bin_file
    else:
        refuse(f"{folder} has neither model.safetensors nor pytorch_model.bin (sharded weights are not supported)")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        refuse(f"{weights_file} is not a mapping of names to tensors")
    weights, rest = split_backbone(state, str(weights_file))
    extra = sorted(set(rest) - {"sampling_eps_min", "sampling_eps_max"})
    if extra:
        refuse(f"{weights_file}: unknown weights {extra[:3]}; refusing rather than dropping them")
    options = {"block_size": config["block_size"]} if "block_size" in config else {}
    if "sampling_eps_min" in rest and "sampling_eps_max" in rest:  # the learned clip (BD3-LM var_min)
        options["clip"] = tuple(scalar(rest[k], k, weights_file) for k in ("sampling_eps_min", "sampling_eps_max"))
    time_conditioning = config.get("time_conditioning")
    if time_conditioning is None and config.get("model_type") == "EsoLM":
        time_conditioning = False  # the Eso-LM algorithm asserts it is off; its HF config has no field
    return Source(folder, "hf", weights, weights_file, ema=False, n_heads=config.get("n_heads"),
                  max_len=config.get("model_length"), dropout=config.get("dropout"),
                  hidden=next(iter(sizes), None), time_conditioning=time_conditioning,
                  kind_name=config.get("model_type"), options=options,
                  declared={k: config.get(k) for k in ("n_blocks", "cond_dim")}, causal=config.get("causal") is True)


def read_lightning(path: Path, use_ema: bool) -> Source:
    """An official Lightning .ckpt: EMA shadow parameters (the official evaluation's weights)
    unless ``use_ema`` is False; its Hydra config read as plain values where it can be."""
    ckpt = load_foreign(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        refuse(f"{path} has no state_dict; not a Lightning checkpoint")
    state = {k: v for k, v in ckpt["state_dict"].items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    weights, rest = split_backbone(state, str(path))
    extra = sorted(set(rest) - {"sampling_eps_min", "sampling_eps_max"})
    if extra:
        refuse(f"{path}: unknown weights {extra[:3]} beside the backbone; refusing rather than dropping them")
    ema = ckpt.get("ema")
    if use_ema:
        shadow = ema.get("shadow_params") if isinstance(ema, dict) else None
        if not isinstance(shadow, list):
            refuse(f"{path} has no EMA weights (ema.shadow_params); pass --no-ema to import its raw state_dict")
        # shadow_params follow parameters() order: the state_dict's order without its buffers
        names = [k for k in weights if not k.endswith(BUFFERS)]
        if len(shadow) != len(names):
            refuse(f"{path}: {len(shadow)} EMA tensors for {len(names)} backbone parameters; the file is not an "
                   f"official DiT checkpoint (or pass --no-ema)")
        for name, tensor in zip(names, shadow):
            if not isinstance(tensor, torch.Tensor) or tensor.shape != weights[name].shape:
                refuse(f"{path}: EMA tensor for {name} has shape {getattr(tensor, 'shape', None)}, the weight "
                       f"{tuple(weights[name].shape)}; pass --no-ema or re-export the checkpoint")
            weights[name] = tensor
    config = plain(ckpt.get("hyper_parameters"))
    config = config.get("config") if isinstance(config, dict) else None
    given = {k: lookup(config, k) for k in LIGHTNING_FIELDS}  # None: absent, null or an unresolvable ${...}
    check_fields({k: v for k, v in given.items() if v is not None}, LIGHTNING_FIELDS, f"{path} config")
    tc = [lookup(config, k) for k in ("algo.time_conditioning", "time_conditioning")]
    tc = [v for v in tc if isinstance(v, bool)]
    algo = lookup(config, "algo.name")
    if algo is None:  # the MDLM code base names the parameterisation, not an algorithm
        algo = {"ar": "ar", "subs": "mdlm"}.get(lookup(config, "parameterization"))
    options = {key: lookup(config, where) for key, where in
               (("block_size", "block_size"), ("alpha_0", "algo.alpha_0"), ("batch_split", "algo.batch_split"),
                ("eps", "training.sampling_eps"), ("ignore_bos", "algo.ignore_bos"))}
    modes = (lookup(config, "algo.diffusion_attn_mode"), lookup(config, "algo.sequential_attn_mode"))
    options["variant"] = {("causal", "causal"): "B", ("mixed2", "mixed"): "A"}.get(modes)
    if "sampling_eps_min" in rest and "sampling_eps_max" in rest:
        options["clip"] = tuple(scalar(rest[k], k, path) for k in ("sampling_eps_min", "sampling_eps_max"))
    options = {k: number(v) if k in ("block_size", "alpha_0", "batch_split", "eps") else v
               for k, v in options.items()}
    options = {k: v for k, v in options.items() if v is not None}
    step = ckpt.get("global_step")
    return Source(path, "lightning", weights, path, ema=use_ema, n_heads=lookup(config, "model.n_heads"),
                  max_len=lookup(config, "model.length"), dropout=lookup(config, "model.dropout"),
                  hidden=lookup(config, "model.hidden_size"), time_conditioning=any(tc) if tc else None,
                  kind_name=algo if isinstance(algo, str) else None, options=options,
                  step=step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else 0,
                  declared={k: lookup(config, f"model.{k}") for k in ("n_blocks", "cond_dim")})


def number(value):
    """A config number (YAML may leave "1e-3" a string); None for anything else, NaN and inf included."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def read_source(src: str | Path, use_ema: bool = True) -> Source:
    path = Path(src).expanduser()
    if path.is_dir():
        if not use_ema:
            refuse("--no-ema applies to Lightning .ckpt files; a Hugging Face folder holds one set of weights")
        return read_hf(path)
    if path.is_file():
        return read_lightning(path, use_ema)
    refuse(f"SRC {str(path)!r} not found; pass a Hugging Face folder (config.json + weights) or a Lightning .ckpt")


def expected_shapes(n_layers: int, d: int, cond: int | None, mlp: int) -> dict[str, tuple]:
    """The official DiT's backbone weights (cond None: the AR variant, no sigma_map or adaLN)."""
    shapes = {"vocab_embed.embedding": (VOCAB, d), "output_layer.norm_final.weight": (d,),
              "output_layer.linear.weight": (VOCAB, d), "output_layer.linear.bias": (VOCAB,)}
    if cond is not None:
        shapes.update({"sigma_map.mlp.0.weight": (cond, 256), "sigma_map.mlp.0.bias": (cond,),
                       "sigma_map.mlp.2.weight": (cond, cond), "sigma_map.mlp.2.bias": (cond,),
                       "output_layer.adaLN_modulation.weight": (2 * d, cond),
                       "output_layer.adaLN_modulation.bias": (2 * d,)})
    for i in range(n_layers):
        p = f"blocks.{i}."
        shapes.update({p + "norm1.weight": (d,), p + "attn_qkv.weight": (3 * d, d), p + "attn_out.weight": (d, d),
                       p + "norm2.weight": (d,), p + "mlp.0.weight": (mlp, d), p + "mlp.0.bias": (mlp,),
                       p + "mlp.2.weight": (d, mlp), p + "mlp.2.bias": (d,)})
        if cond is not None:
            shapes.update({p + "adaLN_modulation.weight": (6 * d, cond), p + "adaLN_modulation.bias": (6 * d,)})
    return shapes


def check_weights(source: Source, model: str) -> tuple[int, int, int | None, int]:
    """(n_layers, d, cond_dim or None, mlp width) after checking names, shapes, vocabulary and family."""
    w, where = source.weights, source.weights_file
    check_tensors(w, where)
    if "vocab_embed.embedding" not in w or w["vocab_embed.embedding"].dim() != 2:
        refuse(f"{where}: no vocab_embed.embedding; not an official DiT checkpoint")
    vocab, d = w["vocab_embed.embedding"].shape
    if vocab != VOCAB:
        refuse(f"{where}: vocabulary of {vocab} ids is not GPT-2 + [MASK] ({VOCAB}); only GPT-2 models import")
    adaln = "sigma_map.mlp.0.weight" in w or any(k.endswith("adaLN_modulation.weight") for k in w)
    if source.causal and model != "ar":
        refuse(f"{source.path} is a causal DiT (config.json causal: true), an AR model; import it with --model ar")
    if model == "ar" and adaln:
        refuse(f"{source.path} holds a diffusion DiT (adaLN modulation present), not causal AR weights; import it "
               f"with --model mdlm/bd3lm/esolm-a/esolm-b")
    if model != "ar" and not adaln:
        refuse(f"{source.path} holds causal AR weights (no adaLN modulation); import it with --model ar")
    allowed = KINDS.get(source.kind_name) if source.kind_name else None
    if source.causal:  # the BD3-LM-style config of an AR DiT names model_type bd3lm
        allowed = ("ar",)
    if source.kind_name is not None and allowed is None:
        refuse(f"{source.path} is a {source.kind_name!r} model; this importer knows {sorted(KINDS)}")
    if allowed is not None and model not in allowed and not (model == "mdlm" and source.kind_name == "bd3lm" and
                                                             source.options.get("block_size") == source.max_len):
        refuse(f"{source.path} is a {source.kind_name} checkpoint; import it with --model {' or '.join(allowed)}")
    blocks = {int(k.split(".")[1]) for k in w if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    n_layers = len(blocks)
    if blocks != set(range(n_layers)):  # blocks.{10^12} must not make a 10^12-block shape table
        listed = sorted(blocks)
        refuse(f"{where}: blocks are numbered {listed[:3]}{' ...' if n_layers > 3 else ''}, not 0 to {n_layers - 1}; "
               f"not an official DiT checkpoint")
    cond = None  # the conditioning width, from the first adaLN weight found (all are checked below)
    if "sigma_map.mlp.0.weight" in w:
        cond = w["sigma_map.mlp.0.weight"].shape[0]
    elif adaln:
        cond = next(v.shape[-1] for k, v in w.items() if k.endswith("adaLN_modulation.weight"))
    mlp = w["blocks.0.mlp.0.weight"].shape[0] if "blocks.0.mlp.0.weight" in w else 4 * d
    want = expected_shapes(n_layers, d, cond, mlp)
    have = {k for k in w if not k.endswith(BUFFERS)}
    missing, unknown = sorted(want.keys() - have), sorted(have - want.keys())
    if missing or unknown:
        problems = [f"{what} weights {names[:3]}" for what, names in (("missing", missing), ("unknown", unknown)) if names]
        refuse(f"{where}: {', '.join(problems)}; not an official DiT checkpoint")
    for name, shape in want.items():
        if tuple(w[name].shape) != shape:
            refuse(f"{where}: {name} has shape {tuple(w[name].shape)}, expected {shape} for hidden size {d}")
    if n_layers == 0 or mlp % d:
        refuse(f"{where}: {n_layers} blocks, MLP width {mlp} for hidden size {d}: not a DiT the trunk can hold")
    if not isinstance(source.n_heads, int) or d % source.n_heads or (d // source.n_heads) % 2:
        refuse(f"{source.path}: n_heads {source.n_heads!r} is missing or does not split hidden size {d} into even "
               f"heads")
    head = d // source.n_heads
    want_freq = 1.0 / 10_000.0 ** (torch.arange(0, head, 2, dtype=torch.float64) / head)
    for name in (k for k in w if k.endswith(BUFFERS)):  # the rotary frequencies, when the file keeps them
        # compared at the buffer's own precision: a bf16 release stores them rounded to bf16
        buffer, rtol = w[name], max(1e-5, torch.finfo(w[name].dtype).eps)
        if buffer.shape != want_freq.shape or not torch.allclose(buffer.double(), want_freq.to(buffer.dtype).double(),
                                                                  rtol=rtol):
            refuse(f"{where}: {name} is not rotary base 10000 over head size {head} (n_heads {source.n_heads})")
    return n_layers, d, cond, mlp


def conditioning(w: dict) -> torch.Tensor:
    """c = silu(sigma_map(0)): the 256 sinusoidal features of t = 0 are cos 0 = 1 (first half)
    and sin 0 = 0, through Linear -> SiLU -> Linear, then the SiLU the DiT applies."""
    features = torch.cat([torch.ones(128), torch.zeros(128)]).double()
    h = F.silu(w["sigma_map.mlp.0.weight"].double() @ features + w["sigma_map.mlp.0.bias"].double())
    return F.silu(w["sigma_map.mlp.2.weight"].double() @ h + w["sigma_map.mlp.2.bias"].double())


def fold(w: dict, n_layers: int, adaln: bool) -> dict:
    """Official backbone weights -> the trunk's ``net.*`` state dict (module docstring), in
    float64 arithmetic, stored in the source's dtype."""
    dtype = w["vocab_embed.embedding"].dtype
    c = conditioning(w) if adaln else None

    def modulation(prefix: str, norms: list[torch.Tensor]) -> torch.Tensor:
        """Rows (shift, scale, gate) per norm of a block, (shift, scale) for the final layer."""
        rows = 6 if len(norms) == 2 else 2
        d = norms[0].numel()
        if adaln:
            mod = w[prefix + "adaLN_modulation.weight"].double() @ c + w[prefix + "adaLN_modulation.bias"].double()
            mod = list(mod.view(rows, d))
        else:  # AR: shift 0, scale 0, gate 1
            mod = [torch.ones(d, dtype=torch.float64) if r == 2 else torch.zeros(d, dtype=torch.float64)
                   for r in (0, 1, 2, 0, 1, 2)[:rows]]
        for j, norm in enumerate(norms):  # the scale rows: 1 and 4 in a block, 1 in the final layer
            mod[3 * j + 1] = norm.double() * (1 + mod[3 * j + 1]) - 1
        return torch.stack(mod).to(dtype)

    out = {"net.embed.weight": w["vocab_embed.embedding"]}
    for i in range(n_layers):
        p, q = f"blocks.{i}.", f"net.blocks.{i}."
        out[q + "qkv.weight"] = w[p + "attn_qkv.weight"]
        out[q + "proj.weight"] = w[p + "attn_out.weight"]
        for part in ("mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"):
            out[q + part] = w[p + part]
        out[q + "modulation"] = modulation(p, [w[p + "norm1.weight"], w[p + "norm2.weight"]])
    out["net.final_modulation"] = modulation("output_layer.", [w["output_layer.norm_final.weight"]])
    out["net.head.weight"] = w["output_layer.linear.weight"]
    out["net.head.bias"] = w["output_layer.linear.bias"]
    return {k: v.contiguous() for k, v in out.items()}


def model_options(source: Source, model: str, block_size: int | None, alpha_0: float | None) -> dict:
    """The harness model's constructor options: the flags, else what the source says."""
    opts = source.options
    eps = opts.get("eps", 1e-3)
    if model == "ar":
        return {}
    if model == "mdlm":
        return {"eps": eps}
    if model == "bd3lm":
        given = opts.get("block_size")
        if block_size is not None and given is not None and block_size != given:
            refuse(f"--block-size {block_size} disagrees with the checkpoint's block_size {given}; drop --block-size")
        size = block_size if block_size is not None else given
        if size is None:
            refuse("--block-size: the source does not record its block size; pass the L' it was trained with")
        clip = opts.get("clip")
        clip = list(clip) if clip and 0 < clip[0] < clip[1] <= 1 else None
        if size < 1 or int(size) != size:  # a finite number here: config.json is checked, Lightning's via number()
            refuse(f"block_size {size}: L' must be a positive whole number; pass --block-size")
        kept = {"ignore_bos": opts["ignore_bos"]} if isinstance(opts.get("ignore_bos"), bool) else {}  # else bd3lms'
        return {"block_size": int(size), "clip": clip, "eps": eps, **kept}
    variant = opts.get("variant")
    if variant is not None and model != f"esolm-{variant.lower()}":
        refuse(f"{source.path} is an Eso-LM ({variant}) checkpoint (its attention modes say so); import it with "
               f"--model esolm-{variant.lower()}")
    a = alpha_0 if alpha_0 is not None else opts.get("alpha_0")
    if a is None:
        refuse("--alpha-0: the source does not record alpha_0; pass the value it was trained with "
               "(e.g. 1 for Eso-LM-B-alpha-1, 0.25 for Eso-LM-B-alpha-0_25)")
    split = opts.get("batch_split", 0.5)
    return {"alpha_0": float(a), "batch_split": split if 0 < split < 1 else 0.5, "eps": eps}


def import_checkpoint(src: str | Path, model: str, out: str | Path, *, block_size: int | None = None,
                      alpha_0: float | None = None, use_ema: bool = True, corpus: list[str] | None = None,
                      data: dict | None = None, extra_meta: dict | None = None) -> Path:
    """Write ``out/checkpoint.pt``, an ordinary harness checkpoint of the official ``src``.
    ``corpus`` or ``data`` (DataSpec fields, e.g. ``{hf_dataset: PATH, protocol: owt}``) say what
    text eval and sweeps read for it.  Every check runs before anything is written; an existing
    checkpoint is never replaced."""
    from harness.checkpoints.own_format import CHECKPOINT_NAME, folder_lock, save_checkpoint, tokenizer_files
    from harness.data import GPT2Tokenizer, file_sha256
    from harness.models import SpecialTokens, build_model
    from harness.nn.transformer import BackboneConfig

    if model not in importable_models():
        refuse(f"--model {model!r}: choose one of {importable_models()}")
    data_spec = import_data_spec(corpus, data, model)
    target = Path(out) / CHECKPOINT_NAME
    if target.exists():
        refuse(f"--out {str(out)!r} already holds {CHECKPOINT_NAME}; choose another folder (nothing was written)")
    source = read_source(src, use_ema)
    if source.time_conditioning:
        refuse(f"{source.path} is time-conditioned (time_conditioning: true): the trunk holds constant adaLN "
               f"modulation only, so it cannot be represented")
    if source.time_conditioning is None and model != "ar":
        refuse(f"{source.path} does not say whether it is time-conditioned (no readable time_conditioning); "
               f"refusing rather than assuming sigma = 0")
    n_layers, d, cond, mlp = check_weights(source, model)
    stated = {"hidden size": (source.hidden, d), "n_blocks": (source.declared.get("n_blocks"), n_layers),
              "cond_dim": (source.declared.get("cond_dim"), cond)}  # an AR's config may name an unused cond_dim
    for what, (said, found) in stated.items():
        if said is not None and found is not None and said != found:
            refuse(f"{source.path}: the config's {what} {said} does not fit the weights' {found}")
    max_len = source.max_len if isinstance(source.max_len, int) and source.max_len >= 2 else None
    if max_len is None:
        refuse(f"{source.path}: the sequence length (model_length / model.length) is missing")
    options = model_options(source, model, block_size, alpha_0)
    backbone = BackboneConfig(vocab_size=VOCAB, max_len=max_len, n_layers=n_layers, d_model=d, n_heads=source.n_heads,
                              mlp_ratio=mlp // d, dropout=float(source.dropout or 0.0), adaln=True, head_bias=True)
    tokenizer = GPT2Tokenizer()
    special = SpecialTokens(bos=tokenizer.bos_id, eos=tokenizer.eos_id, mask=tokenizer.mask_id)
    net = build_model(model, backbone, special, **options)
    net.to(source.weights["vocab_embed.embedding"].dtype)
    net.load_state_dict(fold(source.weights, n_layers, adaln=cond is not None))
    data = data_spec.model_copy(update={"seq_len": min(max_len, 1024)})
    meta = {"imported": {"source": str(source.path.resolve()), "format": source.kind,
                         "weights_file": source.weights_file.name, "sha256": file_sha256(source.weights_file),
                         "ema": source.ema, "model_type": source.kind_name, "source_options": dict(source.options)},
            "parameters": net.net.num_parameters(), "tokenizer": tokenizer.name, **(extra_meta or {})}
    config = {"name": Path(out).name, "model": model, "model_args": options, "data": data.model_dump(),
              "imported_from": str(source.path)}
    with folder_lock(Path(out), "--out"):  # another import (or training run) into --out finished first: refuse
        if target.exists():
            refuse(f"--out {str(out)!r} already holds {CHECKPOINT_NAME}, written while this import ran; it was "
                   f"kept (nothing was written)")
        save_checkpoint(target, model=net, model_name=model, tokenizer_blobs=tokenizer_files(tokenizer),
                        config=config, step=source.step, meta=meta)
    return target


def import_data_spec(corpus: list[str] | None, data: dict | None, model: str | None = None):
    """The text an imported checkpoint is evaluated on: the bundled corpus, ``corpus`` files, or
    DataSpec fields such as a local OpenWebText dataset under the papers' ``owt`` protocol, framed
    as the family's own repository framed it unless ``framing`` is given."""
    from pydantic import ValidationError

    from harness.config import DataSpec
    from harness.data.protocols import OWT_FRAMING

    fields = dict(data or {})
    for key in ("tokenizer", "seq_len"):
        if key in fields:
            refuse(f"data.{key}: an imported checkpoint always uses the GPT-2 tokenizer at its own length; remove it")
    if corpus and "corpus" in fields:
        refuse("give the corpus once: --corpus or data.corpus")
    try:
        spec = DataSpec(**{"corpus": corpus or "bundled", **fields, "tokenizer": "gpt2"})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        refuse(message if message.startswith("data.") else f"data{'.' + where if where else ''}: {message}")
    if spec.protocol == "owt" and spec.framing is None and model in OWT_FRAMING:
        spec = spec.model_copy(update={"framing": OWT_FRAMING[model]})
    if spec.hf_dataset is not None and not Path(spec.hf_dataset).is_dir():  # as eval reads it; else it fails there
        refuse(f"data.hf_dataset (--hf-dataset): no dataset folder at {spec.hf_dataset}; pass a local Hugging Face "
               f"dataset folder (nothing was written)")
    return spec


# --- sweep entries naming a released file ---------------------------------------------------
IMPORT_ARGS = {"block_size", "alpha_0", "ema", "corpus", "data"}


def imported_checkpoint(spec: str, model: str | None, out: Path, import_args: dict | None = None) -> Path:
    """The harness checkpoint for a sweep entry naming a released file: imported into ``out``
    on first use, reused afterwards while it records the same source file (path, size and
    modification time), refused when ``out`` holds anything else (nothing is overwritten)."""
    from harness.checkpoints.own_format import CHECKPOINT_NAME, read_state

    src = Path(foreign_source(spec)).expanduser()
    args = dict(import_args or {})
    unknown = sorted(set(args) - IMPORT_ARGS)
    if unknown:
        refuse(f"import_args {unknown}: use {sorted(IMPORT_ARGS)}")
    if model is None:
        refuse(f"checkpoint {spec!r} is a released file: give the entry's 'model:' (ar, mdlm, bd3lm, esolm-a, "
               f"esolm-b) to import it")
    weights = src / "model.safetensors" if src.is_dir() else src
    if src.is_dir() and not weights.is_file():
        weights = src / "pytorch_model.bin"
    stat = weights.stat() if weights.is_file() else None
    stamp = {"source": str(src.resolve()), "model": model, "args": args,
             "file": [stat.st_size, stat.st_mtime_ns] if stat else None}
    target = out / CHECKPOINT_NAME
    if target.exists():
        state = read_state(target, mmap=True)
        if state.get("meta", {}).get("sweep_import") == stamp:
            return target
        refuse(f"{out} already holds a checkpoint that is not the import of {spec!r} as {model} (or the source "
               f"changed since); delete {out} to import again")
    if stat is None:
        refuse(f"checkpoint {spec!r}: {weights} not found")
    path = import_checkpoint(src, model, out, block_size=args.get("block_size"), alpha_0=args.get("alpha_0"),
                             use_ema=args.get("ema", True), corpus=args.get("corpus"), data=args.get("data"),
                             extra_meta={"sweep_import": stamp})
    return path
