"""Checkpoints, one module per kind of file:

- :mod:`harness.checkpoints.own_format`: the harness's own ``checkpoint.pt`` (save, load,
  resume; loading never executes code from the file);
- :mod:`harness.checkpoints.released`: ``esolm import``, which reads the checkpoints the
  official MDLM, BD3-LM and Eso-LM code releases publish and folds them onto the trunk;
- :mod:`harness.checkpoints.released_checks`: what a released ``config.json`` and its
  tensors must hold before the importer uses them;
- :mod:`harness.checkpoints.safe_unpickle`: reads a Lightning ``.ckpt`` without running any
  class or function it names.

docs/checkpoints.md describes the formats.
"""

from harness.checkpoints.own_format import CHECKPOINT_NAME, Loaded, load_checkpoint, save_checkpoint

__all__ = ["CHECKPOINT_NAME", "Loaded", "load_checkpoint", "save_checkpoint"]
