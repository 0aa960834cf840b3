"""Ignite's progress bar, showing the training loss, attachable from a config's handler list."""

from __future__ import annotations

from typing import Any

from ignite.handlers import ProgressBar
from monai.handlers import from_engine


class LossProgressBar(ProgressBar):
    """``ignite.handlers.ProgressBar`` that shows ``loss`` from MONAI's per-sample engine output.

    MONAI engines call ``handler.attach(engine)`` with no other argument, so the output transform that Ignite
    takes at attach time is fixed here.
    """

    def __init__(self, output_key: str = "loss", persist: bool = True, **kwargs: Any) -> None:
        super().__init__(persist=persist, **kwargs)
        self.output_key = output_key

    def attach(self, engine: Any, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        loss = from_engine([self.output_key], first=True)
        kwargs.setdefault("output_transform", lambda output: {self.output_key: loss(output)})
        super().attach(engine, *args, **kwargs)
