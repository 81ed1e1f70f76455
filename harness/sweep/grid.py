"""Grid expansion: a config's model entries x lengths x schedules x seeds -> :class:`Point` s.

Schedule values may be lists (expanded as a product) and length expressions ("L", "L/8",
"L*2", resolved per length).  Point indices follow config order, so ``--shard i/n`` picks
the same points on every machine.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from harness.config import ConfigError
from harness.schedules import SamplingSchedule

_LEN_EXPR = re.compile(r"^\s*L\s*(?:([*/])\s*(\d+)\s*)?$")


def is_length_expression(value) -> bool:
    """A string starting with L ("L/8"); other strings are plain values (split: fixed)."""
    return isinstance(value, str) and value.strip().startswith("L")


def resolve_value(value, length: int):
    """'L', 'L/8', 'L*2' -> an int for this length; anything else unchanged."""
    if not is_length_expression(value):
        return value
    m = _LEN_EXPR.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a length expression; use a number or 'L', 'L/8', 'L*2'")
    op, k = m.group(1), int(m.group(2) or 1)
    if op == "/":
        if k == 0 or length % k:
            raise ValueError(f"{value!r} at length {length} is not a whole number; pick a divisor of {length}")
        return length // k
    return length * k if op == "*" else length


def expand_schedules(raw: list[dict]) -> list[dict]:
    """Each dict whose values are lists expands to the product of those lists (in order)."""
    out = []
    for item in raw:
        keys = list(item)
        values = [v if isinstance(v, list) else [v] for v in item.values()]
        for combo in itertools.product(*values):
            out.append(dict(zip(keys, combo)))
    return out


def entry_grid(entry, lengths: list[int]):
    """(length, j, fields) for every length of a model entry (its own, else the sweep's) and
    every schedule its ``schedules`` list expands to (j: the list item it came from; fields
    as written, length expressions unresolved).  The one expansion of an entry's grid: the
    points, the config checks and the cost checks all walk it."""
    for length in entry.lengths or lengths:
        for j, raw in enumerate(entry.schedules):
            for fields in expand_schedules([raw]):
                yield length, j, fields


@dataclass(frozen=True)
class Point:
    index: int
    entry: str
    schedule: dict
    label: str
    length: int
    seed: int
    group: str = ""  # the label with length expressions kept ("T=L/8"): the same curve across lengths
    batch_size: int | None = None  # a throughput point's batch (the config's batch_sizes); None: batch_size

    @property
    def key(self) -> str:
        batch = f"/b{self.batch_size}" if self.batch_size is not None else ""
        return f"{self.entry}/{self.label}/L{self.length}{batch}/s{self.seed}"


def expand_points(cfg) -> list[Point]:  # cfg: a harness.sweep.schema.SweepConfig
    """model entry -> length -> schedule -> batch size -> seed, in config order (stable indices for --shard).

    A schedule written with a length expression that lands on an earlier point (T = L/8 is
    T = 128 at L = 1024) is that point, and is skipped; a literal repeat is a config error."""
    points, seen = [], set()
    for entry in cfg.models:
        for length, _, fields in entry_grid(entry, cfg.lengths):
            resolved = {k: resolve_value(v, length) for k, v in fields.items()}
            schedule = SamplingSchedule(**resolved)
            for batch, seed in itertools.product(cfg.batches_at(length), cfg.seeds):
                point = Point(len(points), entry.name, schedule.model_dump(exclude_defaults=True),
                              schedule.label(), length, seed, group_label(schedule, fields), batch)
                if point.key in seen:
                    if any(map(is_length_expression, fields.values())):
                        continue
                    raise ConfigError(f"sweep {cfg.name}: point {point.key} appears twice; "
                                      "remove the repeated schedule")
                seen.add(point.key)
                points.append(point)
    return points


def group_label(schedule: SamplingSchedule, raw: dict) -> str:
    """Like ``schedule.label()`` but with the config's length expressions ("T=L/8")."""
    return schedule.label({k: v for k, v in raw.items() if is_length_expression(v)})


