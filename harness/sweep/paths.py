"""Named paths in a sweep config: a config that reads many files under a few roots (the
released checkpoints, a dataset, an evaluator) names each root once under ``paths:`` and
writes ``${name}`` wherever it is used, and ``import_defaults:`` is merged into every
imported entry's ``import_args`` (as ``train_defaults`` is into every ``train`` block).
A user then edits three lines, or passes ``--set paths.released=/data/released``, instead
of counting model indices."""

from __future__ import annotations

import re

from harness.config import ConfigError

REFERENCE = re.compile(r"\$\{([^}]*)\}")


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``, mappings merged key by key (the config's *_defaults)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def expand_paths(data: dict, source: str) -> dict:
    """A copy of the raw config with every ``${name}`` replaced from ``paths`` and
    ``import_defaults`` merged into checkpoint entries; unknown names are one-line errors."""
    paths = data.get("paths") or {}
    if not isinstance(paths, dict) or not all(isinstance(v, str) for v in paths.values()):
        raise ConfigError(f"{source}: field 'paths': expected a mapping of names to path strings, "
                          "e.g. {released: /data/released}")

    def expand(node, where: str):
        if isinstance(node, dict):
            return {k: expand(v, f"{where}.{k}" if where else str(k)) for k, v in node.items()}
        if isinstance(node, list):
            return [expand(v, f"{where}.{i}") for i, v in enumerate(node)]
        if isinstance(node, str) and "${" in node:
            def lookup(match):
                name = match[1]
                if name not in paths:
                    known = ", ".join(sorted(paths)) or "none defined"
                    raise ConfigError(f"{source}: field '{where}': ${{{name}}} is not in paths ({known}); add "
                                      f"paths.{name} or fix the name")
                return paths[name]
            return REFERENCE.sub(lookup, node)
        return node

    out = {k: (v if k == "paths" else expand(v, k)) for k, v in data.items()}
    defaults = out.pop("import_defaults", None)
    if defaults is not None:
        if not isinstance(defaults, dict):
            raise ConfigError(f"{source}: field 'import_defaults': expected a mapping of import_args keys")
        if isinstance(out.get("models"), list):
            out["models"] = [{**e, "import_args": deep_merge(defaults, e.get("import_args") or {})}
                             if isinstance(e, dict) and e.get("checkpoint") is not None else e
                             for e in out["models"]]
    return out
