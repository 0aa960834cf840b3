from bundle.handlers.checkpoint import ResumableCheckpoint, latest_checkpoint
from bundle.handlers.progress import LossProgressBar

__all__ = ["LossProgressBar", "ResumableCheckpoint", "latest_checkpoint"]
