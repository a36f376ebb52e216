"""Lightning's checkpoint IO for selfsup runs: atomic saves, safe loads (``runtime.files``)."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from selfsup.runtime.files import atomic_torch_save, load_checkpoint_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO whose saves are atomic (write, fsync, rename) and whose loads
    (``--resume``) never run code from the file unless ``trust``."""

    def __init__(self, trust: bool = False) -> None:
        super().__init__()
        self.trust = trust

    def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: Any = None
    ) -> dict[str, Any]:
        # Lightning's weights_only is ignored: whether to trust the file is the user's call
        return load_checkpoint_file(path, trust=self.trust, map_location=map_location or "cpu")
