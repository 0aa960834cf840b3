"""Intermediate features from named layers, collected by forward hooks during one forward pass."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

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

    def _hook(self, name: str) -> Callable[[nn.Module, object, torch.Tensor], None]:
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
    if not layers:
        return []
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


def output_shapes(module: nn.Module, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Output shape of every submodule returning a tensor, in the order their forwards finish (containers after
    their children), from one pass on zeros of ``(1, *input_shape)``."""
    shapes: dict[str, tuple[int, ...]] = {}

    def hook(name: str) -> Callable[[nn.Module, object, object], None]:
        def record(_module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor):
                shapes.pop(name, None)  # a module run twice counts where it last finished
                shapes[name] = tuple(output.shape)

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in module.named_modules() if n]
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros(1, *input_shape, device=next(module.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
        module.train(was_training)
    return shapes


def match_feature_layers(
    teacher: nn.Module,
    teacher_input_shape: Sequence[int],
    student: nn.Module,
    student_layers: Sequence[str],
    student_input_shape: Sequence[int],
) -> list[str]:
    """For each student layer, the teacher layer at the same output stride (input side / map side, each network on its
    own input): among the teacher's 4-D outputs at the nearest stride, the one with the most channels, and of those
    the last to finish (a block rather than a layer inside it). VID then pools the larger map to the smaller one."""
    student_shapes = output_shapes(student, student_input_shape)
    teacher_shapes = {n: s for n, s in output_shapes(teacher, teacher_input_shape).items() if len(s) == 4}
    if not teacher_shapes:
        raise ValueError(f"{type(teacher).__name__} has no layer with a (B, C, H, W) output to pair for VID")
    order = {name: i for i, name in enumerate(teacher_shapes)}
    chosen = []
    for layer in student_layers:
        if layer not in student_shapes or len(student_shapes[layer]) != 4:
            raise ValueError(f"student_feature_layers: {layer!r} has no (B, C, H, W) output in the student")
        stride = student_input_shape[-1] / student_shapes[layer][-1]

        def rank(name: str) -> tuple[float, int, int]:
            teacher_stride = teacher_input_shape[-1] / teacher_shapes[name][-1]
            return (abs(math.log2(teacher_stride / stride)), -teacher_shapes[name][1], -order[name])

        chosen.append(min(teacher_shapes, key=rank))
    return chosen
