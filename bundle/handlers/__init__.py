from bundle.handlers.checkpoint import AtomicCheckpointSaver, ResumableCheckpoint, atomic_save, latest_checkpoint
from bundle.handlers.progress import LossProgressBar

__all__ = ["AtomicCheckpointSaver", "LossProgressBar", "ResumableCheckpoint", "atomic_save", "latest_checkpoint"]
