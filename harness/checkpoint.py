"""The old path of :mod:`harness.checkpoints.own_format`, kept for one release so user code
(``from harness.checkpoint import load_checkpoint``) keeps working; import from
``harness.checkpoints`` instead."""

from harness.checkpoints.own_format import (CHECKPOINT_NAME, Loaded, load_checkpoint, read_state,  # noqa: F401
                                            resolve_checkpoint_path, save_checkpoint)
