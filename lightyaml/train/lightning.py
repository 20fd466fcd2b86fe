"""AtomicCheckpointIO: Lightning's checkpoint writer, with the temporary file beside its destination.

Lightning's own TorchCheckpointIO writes through an fsspec transaction whose temporary file is made
in $TMPDIR and then moved; when $TMPDIR is on another file system (a node-local /tmp) the move is a
copy, and a kill during it leaves half a `last.ckpt`. Here the file is written as `<dest>.tmp` in the
destination folder and renamed over the destination, which is atomic on one file system.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from lightning_fabric.plugins import TorchCheckpointIO

from lightyaml.run.checkpoint_files import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose writes are a kill-safe `<dest>.tmp` + rename in the destination folder."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f'{type(self).__name__} takes no storage_options')
        atomic_torch_save(checkpoint, Path(path))
