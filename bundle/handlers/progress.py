"""Ignite's progress bar, showing the training loss (and its terms), attachable from a config's handler list."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ignite.handlers import ProgressBar


class LossProgressBar(ProgressBar):
    """``ignite.handlers.ProgressBar`` that shows ``output_keys`` (default ``loss``) of MONAI's engine output.

    MONAI engines call ``handler.attach(engine)`` with no other argument, so the output transform that Ignite
    takes at attach time is fixed here. Keys missing from the output are left out.
    """

    def __init__(self, output_keys: Sequence[str] = ("loss",), persist: bool = True, **kwargs: Any) -> None:
        super().__init__(persist=persist, **kwargs)
        self.output_keys = list(output_keys)

    def _values(self, output: Any) -> dict[str, float]:
        first = output[0] if isinstance(output, (list, tuple)) else output  # decollated: one dict per image
        return {key: float(first[key]) for key in self.output_keys if key in first}

    def attach(self, engine: Any, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        kwargs.setdefault("output_transform", self._values)
        super().attach(engine, *args, **kwargs)
