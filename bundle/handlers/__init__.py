from bundle.handlers.checkpoint import (
    AtomicCheckpointSaver,
    ResumableCheckpoint,
    agreed_checkpoint,
    atomic_save,
    latest_checkpoint,
)
from bundle.handlers.progress import LossProgressBar

__all__ = [
    "AtomicCheckpointSaver",
    "LossProgressBar",
    "ResumableCheckpoint",
    "agreed_checkpoint",
    "atomic_save",
    "latest_checkpoint",
]
