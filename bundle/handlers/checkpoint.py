"""Full, resumable training checkpoints: save every epoch, resume a killed run from the newest one."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

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
        CheckpointSaver(
            save_dir=str(self.directory),
            save_dict=state,
            file_prefix=self.prefix,
            save_interval=self.save_interval,
            n_saved=self.n_saved,
        ).attach(engine)
