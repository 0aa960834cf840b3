"""Checkpoints that survive a killed run: written atomically, saved every epoch, resumed from the newest one."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite import distributed as idist
from monai.handlers import CheckpointLoader, CheckpointSaver

from bundle.files import write_atomically

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


def agreed_checkpoint(directory: str | Path, prefix: str = "train") -> Path | None:
    """``latest_checkpoint``, the same in every process of a distributed run: rank 0's choice, which every rank must
    be able to read.

    Each process looks in its own ``directory``; on several machines that is the same folder only if it is on a shared
    filesystem. A node that looked on its local disk would otherwise start from scratch (or from a stale file) while
    rank 0 resumes, and the ranks would train different models. So rank 0's file is sent to all; if any rank cannot
    read it, or rank 0 found none where another rank found one, every rank raises (together, so that none waits at
    the next collective for a rank that stopped). Outside a process group it is ``latest_checkpoint``.
    """
    found = latest_checkpoint(directory, prefix)
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return found
    # Ignite's first rank query creates a process group, a collective every rank must enter; on rank 0 the best-weights
    # saver (disabled on the other ranks) may have made it already. Made here on every rank first, it cannot be
    # paired with this function's collectives (which would hang both ranks).
    idist.get_rank()
    choice: list[str | None] = [str(found) if found is not None else None]
    dist.broadcast_object_list(choice, src=0)
    chosen = choice[0]
    seen: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(seen, (str(found) if found is not None else None, chosen is None or Path(chosen).is_file()))
    problems = [
        f"rank {rank} " + (f"cannot read {chosen}" if not readable else f"found {own} where rank 0 found none")
        for rank, (own, readable) in enumerate(seen)
        if not readable or (chosen is None and own is not None)
    ]
    if problems:
        raise RuntimeError(
            f"the processes do not see the same checkpoints in {directory} ({'; '.join(problems)}): on several "
            "machines output_dir must be one folder on a shared filesystem (docs/SCALING.md)"
        )
    if chosen is not None and found is not None and Path(chosen) != found:
        logger.warning(f"rank 0 resumes from {chosen}, this process saw {found} as the newest: using rank 0's")
    return Path(chosen) if chosen is not None else None


def atomic_save(checkpoint: Mapping, path: str | Path, save: Callable = torch.save, **kwargs: Any) -> None:
    """``save(checkpoint, path)`` through ``write_atomically``: a run killed mid-write leaves the previous file (or
    none) and at most a hidden ``.part-`` file, never a truncated checkpoint to resume from."""
    write_atomically(path, lambda tmp: save(checkpoint, tmp, **kwargs))


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

                def save_func(obj: Mapping, path: Path, func: Callable, _kw: dict[str, Any] = kw) -> None:
                    atomic_save(obj, path, func, **_kw)

                # DiskSaver.__call__ picks the file name (fixed or Ignite's) and hands the write to _save_func, which
                # is replaced on this instance: DiskSaver takes no argument for how it writes
                disk_saver._save_func = save_func  # type: ignore[method-assign,assignment]


class ResumableCheckpoint:
    """Save ``objects`` plus the trainer every ``save_interval`` epochs; on attach, resume from the newest save.

    It wraps MONAI's ``CheckpointSaver`` and ``CheckpointLoader``. Both need the trainer in their dict, but a
    config cannot hand the trainer to one of the trainer's own handlers (a circular reference), so the trainer
    joins the dict here, when the handler is attached; and the file to resume from is looked up then too, since
    it is whatever the killed run left behind. In a distributed run every process resumes from rank 0's file
    (``agreed_checkpoint``); only rank 0 writes (Ignite's ``DiskSaver``).
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
            self.resumed_from = agreed_checkpoint(self.directory, self.prefix)
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
