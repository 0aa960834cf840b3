"""Checkpoints that survive a killed run: written atomically, saved every epoch, resumed from the newest one."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from monai.handlers import CheckpointLoader, CheckpointSaver

logger = logging.getLogger(__name__)


def latest_checkpoint(directory: str | Path, prefix: str = "train") -> Path | None:
    """Return the newest ``<prefix>_checkpoint_epoch=N.pt`` (as MONAI's ``CheckpointSaver`` names them) by N."""
    pattern = re.compile(rf"^{re.escape(prefix)}_checkpoint_(?:epoch|final_iteration|iteration)=(\d+)\.pt$")
    found = []
    for path in Path(directory).glob(f"{prefix}_checkpoint_*.pt"):
        match = pattern.match(path.name)
        if match:
            found.append((int(match.group(1)), path.stat().st_mtime, path))
    return max(found)[2] if found else None


def atomic_save(checkpoint: Mapping, path: str | Path, save: Callable = torch.save, **kwargs: Any) -> None:
    """Write ``checkpoint`` to ``path`` so that a reader finds either the old file or the complete new one.

    The bytes go to a temporary file in the same folder, are flushed and fsynced, and the file is renamed over
    ``path`` (atomic on POSIX and Windows); the folder is fsynced too so the rename survives a power cut. A run killed
    mid-write leaves at most a ``.*.part`` file, never a truncated checkpoint.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            save(checkpoint, f, **kwargs)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644 & ~_umask())  # mkstemp makes it owner-only; checkpoints are shared like other files
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # Windows: folders cannot be opened for fsync
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` writing every file with ``atomic_save``.

    MONAI builds its Ignite ``DiskSaver`` with ``atomic=False`` (Ignite's atomic mode leaves files readable by their
    owner only), so a run killed while saving leaves a truncated ``model.pt`` or full checkpoint behind, and resuming
    from it fails. Same arguments and file names as ``CheckpointSaver``; only the write is replaced.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                disk_saver = checkpoint.save_handler
                kw = dict(getattr(disk_saver, "kwargs", {}))
                # DiskSaver.__call__ picks the file name (fixed or Ignite's) and hands the write to _save_func
                disk_saver._save_func = lambda obj, path, func, _kw=kw: atomic_save(obj, path, func, **_kw)


class ResumableCheckpoint:
    """Save ``objects`` plus the trainer every ``save_interval`` epochs; on attach, resume from the newest save.

    It wraps MONAI's ``CheckpointSaver`` and ``CheckpointLoader``. Both need the trainer in their dict, but a
    config cannot hand the trainer to one of the trainer's own handlers (a circular reference), so the trainer
    joins the dict here, when the handler is attached; and the file to resume from is looked up then too, since
    it is whatever the killed run left behind.
    """

    def __init__(
        self,
        directory: str | Path,
        objects: dict[str, Any],
        prefix: str = "train",
        save_interval: int = 1,
        n_saved: int = 1,
        resume: bool = True,
        map_location: Any = "cpu",
    ) -> None:
        self.directory = Path(directory)
        self.objects = dict(objects)
        self.prefix = prefix
        self.save_interval = save_interval
        self.n_saved = n_saved
        self.resume = resume
        self.map_location = map_location
        self.resumed_from: Path | None = None

    def attach(self, engine: Any) -> None:
        state = {**self.objects, "trainer": engine}
        if self.resume:
            self.resumed_from = latest_checkpoint(self.directory, self.prefix)
        if self.resumed_from is not None:
            logger.info(f"resuming from {self.resumed_from}")
            CheckpointLoader(load_path=str(self.resumed_from), load_dict=state, map_location=self.map_location).attach(
                engine
            )
        AtomicCheckpointSaver(
            save_dir=str(self.directory),
            save_dict=state,
            file_prefix=self.prefix,
            save_interval=self.save_interval,
            n_saved=self.n_saved,
        ).attach(engine)
