"""argparse types shared by the commands: each refuses a bad value with the flag's name
(argparse adds it) and what it must be."""

from __future__ import annotations

import argparse


def at_least(low: int, high: int | None = None):
    """An int >= low (and <= high, a stated budget)."""
    def parse_int(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:,} (each is another forward over every "
                                             f"sequence), got {value}")
        return value
    return parse_int


def seed_int(text: str) -> int:
    """--seed: torch seeds generators with a 64-bit integer."""
    from harness.config import SEED_MAX

    value = int(text)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63 - 1], got {value}")
    return value


def fraction(text: str) -> float:
    """alpha_0: a float in [0, 1]."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1] (the fraction of positions filled by diffusion), got {value}")
    return value


def int_list(text: str) -> list[int]:
    """Comma-separated positive ints (e.g. 64,128)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"give comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"give positive integers, got {text!r}")
    return values


def device(name: str):
    """--device as the library resolves it (auto, cpu, cuda[:N])."""
    from harness.config import resolve_device

    return resolve_device(name, "--device")
