"""Ignite's progress bar, showing the training loss (and its terms), attachable from a config's handler list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ignite.engine import Events
from ignite.handlers import ProgressBar


class LossProgressBar(ProgressBar):
    """``ignite.handlers.ProgressBar`` that shows ``output_keys`` (default ``loss``) of MONAI's engine output.

    MONAI engines call ``handler.attach(engine)`` with no other argument, so the output transform that Ignite
    takes at attach time is fixed here. Keys missing from the output are left out. ``every``: update the bar every
    that many iterations (reading the loss off a GPU waits for the iteration: ``log_interval`` in the configs).
    """

    def __init__(
        self, output_keys: Sequence[str] = ("loss",), persist: bool = True, every: int = 1, **kwargs: Any
    ) -> None:
        super().__init__(persist=persist, **kwargs)
        if every < 1:
            raise ValueError(f"every must be a positive number of iterations, got {every}")
        self.output_keys = list(output_keys)
        self.every = every

    def _values(self, output: Any) -> dict[str, float]:
        first = output[0] if isinstance(output, (list, tuple)) else output  # decollated: one dict per image
        return {key: float(first[key]) for key in self.output_keys if key in first}

    def attach(self, engine: Any, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        kwargs.setdefault("output_transform", self._values)
        kwargs.setdefault("event_name", Events.ITERATION_COMPLETED(every=self.every))
        super().attach(engine, *args, **kwargs)
