"""The one lock the harness uses for run folders, results folders and sweep points: an
``flock`` on a file that names its holder's pid.  The kernel drops it when the holder's
process ends (``kill -9`` included), so a crash never leaves a folder locked."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class Held(Exception):
    """Another process holds the lock; ``holder`` is the pid its file names ("" if none)."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


def take(path: Path, wait: bool = False, on_wait=None):
    """Lock ``path`` (created with its folder if missing) and write our pid into it.  Returns
    the open handle: the lock lasts until it is closed.  When another process holds it: raise
    :class:`Held`, or with ``wait`` call ``on_wait(holder)`` and block until it is free."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip()
        if not wait:
            handle.close()
            raise Held(holder) from None
        if on_wait is not None:
            on_wait(holder)
        fcntl.flock(handle, fcntl.LOCK_EX)
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
