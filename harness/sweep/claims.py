"""Point claims: overlapping sweeps into one results folder never compute a point twice.

Each running sweep holds a lock per spec (shard, ``--entries``), so the same command twice is
refused; but a full sweep, a shard and an ``--entries`` subset started at once cover the
same points under different locks.  Before computing a point a sweep therefore takes that
point's own lock, ``<results>/.claims/<key>``, and then re-reads ``points.jsonl``: a point
another sweep holds is left to it, and one another sweep finished meanwhile is skipped.

A claim is an ``flock``, so the kernel drops it when its process dies (``kill -9``
included) and the point is free again for the next run; its file names the holder's pid.
The row is appended before the claim is released, so whoever takes the claim next sees it.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness import locks
from harness.results_store import POINTS_FILE, read_points, safe_name

CLAIMS_DIR = ".claims"


class PointClaims:
    def __init__(self, results_dir: Path, hashes: dict[str, str | None]):
        """``hashes``: key -> config hash of the points this sweep may compute (a row of the
        same key and hash in points.jsonl means the point is finished)."""
        self.results_dir = Path(results_dir)
        self.dir = self.results_dir / CLAIMS_DIR
        self.hashes = hashes
        self.held: dict[str, object] = {}
        self.busy: dict[str, str] = {}  # key -> holder's pid, for points left to another sweep

    def _path(self, key: str) -> Path:
        return self.dir / safe_name(key)

    def _lock(self, key: str):
        """The claim file's handle, locked by us, or None when another process holds it."""
        path = self._path(key)
        while True:
            try:
                handle = locks.take(path)
            except locks.Held as held:
                self.busy[key] = held.holder or "?"
                return None
            try:  # the file we locked may have been released and removed since we opened it
                if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                    return handle
            except FileNotFoundError:
                pass
            handle.close()

    def finished(self, key: str) -> bool:
        want = (key, self.hashes.get(key))
        return any((r["key"], r.get("config_hash")) == want for r in read_points(self.results_dir / POINTS_FILE))

    def claim(self, key: str) -> bool:
        """True when this sweep now holds the point and it is not yet finished: compute it,
        append its row, then :meth:`release` it."""
        handle = self._lock(key)
        if handle is None:
            return False
        self.held[key] = handle
        if self.finished(key):
            self.release(key)
            return False
        return True

    def release(self, key: str) -> None:
        handle = self.held.pop(key, None)
        if handle is None:
            return
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass
        handle.close()

    def release_all(self) -> None:
        for key in list(self.held):
            self.release(key)

    def left_to_others(self) -> str | None:
        """One line on the points another sweep was computing, or None."""
        if not self.busy:
            return None
        pids = ", ".join(sorted(set(self.busy.values())))
        return (f"{len(self.busy)} point(s) were being computed by another sweep into this folder (pid {pids}); "
                "left to it (re-run after it ends to pick up any it did not finish)")
