"""Intermediate features from named layers, collected by forward hooks during one forward pass."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class FeatureRecorder:
    """Record the outputs of ``layers`` (names from ``module.named_modules()``) whenever ``module`` runs.

    Hooks keep the networks unchanged (and scriptable): the recorder is attached for training only.
    ``features`` holds the last pass's outputs in the order of ``layers``.
    """

    def __init__(self, module: nn.Module, layers: Sequence[str]) -> None:
        modules = dict(module.named_modules())
        missing = [name for name in layers if name not in modules]
        if missing:
            known = ", ".join(n for n in modules if n and n.count(".") <= 1)
            raise ValueError(f"layers {missing} not found in {type(module).__name__}; some layer names: {known}")
        self.layers = list(layers)
        self._outputs: dict[str, torch.Tensor] = {}
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in self.layers]

    def _hook(self, name: str):
        def record(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            self._outputs[name] = output

        return record

    @property
    def features(self) -> list[torch.Tensor]:
        missing = [name for name in self.layers if name not in self._outputs]
        if missing:
            raise RuntimeError(f"no output recorded for layers {missing}: did the module run?")
        return [self._outputs[name] for name in self.layers]

    def clear(self) -> None:
        self._outputs.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._outputs.clear()


def feature_channels(module: nn.Module, layers: Sequence[str], in_channels: int, image_size: int = 64) -> list[int]:
    """Channels of the named layers' outputs, found by one forward pass on zeros (for sizing VID regressors)."""
    recorder = FeatureRecorder(module, layers)
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros(1, in_channels, image_size, image_size, device=next(module.parameters()).device))
        return [int(f.shape[1]) for f in recorder.features]
    finally:
        recorder.remove()
        module.train(was_training)
