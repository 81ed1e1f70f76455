"""Which points one process runs: ``--shard i/n`` (every n-th point by config order, so
several machines split one sweep and append to one results file) and ``--entries a,b``."""

from __future__ import annotations

import re

from harness.config import ConfigError
from harness.sweep.grid import Point, expand_points
from harness.sweep.schema import SweepConfig


def parse_shard(shard: str | None) -> tuple[int, int]:
    if shard is None:
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise ConfigError(f"--shard {shard!r}: use i/n with 0 <= i < n, e.g. --shard 0/4")
    return int(m.group(1)), int(m.group(2))


def parse_entries(cfg: SweepConfig, entries: str | list[str] | None) -> set[str] | None:
    """--entries a,b: run only these model entries (e.g. one GPU run trains half the models)."""
    if entries is None:
        return None
    names = [e.strip() for e in (entries.split(",") if isinstance(entries, str) else entries) if e.strip()]
    known = [m.name for m in cfg.models]
    unknown = [e for e in names if e not in known]
    if unknown or not names:
        raise ConfigError(f"--entries {entries!r}: {unknown[0] if unknown else 'nothing'} is not a model entry "
                          f"of sweep {cfg.name}; use a comma-separated subset of {known}")
    return set(names)


def select_points(cfg: SweepConfig, shard: tuple[int, int] = (0, 1), only: set[str] | None = None) -> list[Point]:
    """The points of shard (i, n) (from :func:`parse_shard`) and of the entries ``only``, in config order."""
    shard_i, shard_n = shard
    return [p for p in expand_points(cfg) if p.index % shard_n == shard_i and (only is None or p.entry in only)]
