"""Did other work share the machine while something was timed?

A timing taken while another job held a core can be many times the quiet one (a benchmark
under load gave 60x), and nothing in the number says so.  :class:`SharedMachine` reads, over
the timed window, the CPU time the whole machine spent busy (``/proc/stat``) and the CPU
time of this process (every thread); the difference is what other processes used.  Spread
over the window it is ``other_cores``: how many cores other work kept busy on average.

A window is flagged ``busy`` when other work took cores the timing needed: more than a
quarter of a core beyond the cores this process could leave idle (``cores - threads``).
With 2 torch threads on 2 cores, one busy loop elsewhere is flagged; on a 16-core GPU host
timing with one launching thread, it is not.  Windows shorter than :data:`MIN_WINDOW`
seconds get no verdict (``/proc/stat`` counts in 10 ms ticks).  Without ``/proc/stat``
(not Linux) only the load average is recorded.
"""

from __future__ import annotations

import os
import time

MIN_WINDOW = 0.2
SLACK_CORES = 0.25


def _busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (None where unreadable)."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def load_average() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


class SharedMachine:
    """Context manager around a timed window; :attr:`reading` holds what it saw."""

    def __init__(self, threads: int):
        self.threads = max(1, int(threads))
        self.reading: dict = {}

    def __enter__(self):
        self._wall, self._cpu, self._busy = time.perf_counter(), time.process_time(), _busy_seconds()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self._wall
        cpu = time.process_time() - self._cpu
        busy = _busy_seconds()
        other = None
        if busy is not None and self._busy is not None and wall >= MIN_WINDOW:
            other = max(0.0, (busy - self._busy) - cpu) / wall
        cores = os.cpu_count() or 1
        self.reading = {
            "load_average_1min": load_average(),
            "cpu_seconds": cpu,
            "wall_seconds": wall,
            "other_cores": other,
            "machine_busy": None if other is None else other > max(SLACK_CORES, cores - self.threads + SLACK_CORES),
        }
        return False


def busy_warning(reading: dict, what: str) -> str | None:
    """One stderr line when other work shared the machine during ``what``, else None."""
    if not reading.get("machine_busy"):
        return None
    return (f"warning: {what}: other processes kept {reading['other_cores']:.1f} cores busy while it was timed "
            f"(load average {reading['load_average_1min']:.1f}); its seconds may be inflated, re-time on a quiet "
            "machine")
