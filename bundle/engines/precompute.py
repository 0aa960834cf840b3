"""Teacher outputs computed once per training image and cached with it (configs/precompute_teacher.yaml).

Without augmentation every epoch shows the frozen teacher the same images, so its logits and VID features are the
same every epoch too. A transform at the end of the training chain's deterministic part lets MONAI's
``CacheDataset`` compute them once, while it caches the images, and ``MedTexTrainer`` then skips the teacher's pass
on the clean image in every iteration. The teacher still classifies the masked image when the fidelity term is on
(that pass depends on the explainer being trained).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

from bundle.networks.teacher import FrozenTeacher

TEACHER_LOGITS = "teacher_logits"
TEACHER_FEATURES = "teacher_features"


class TeacherOutputsd(MapTransform):
    """Add the frozen teacher's logits (``teacher_logits``) and features (``teacher_features``) of one image.

    The outputs are kept on the CPU, in bfloat16 when the teacher computes in bfloat16 (nothing is lost: its outputs
    are bfloat16 values), else in float32. The teacher runs one image at a time, under a lock: ``CacheDataset``
    fills its cache from several threads and the teacher's feature hooks keep one pass's outputs at a time.

    Args:
        teacher: the frozen teacher the trainer would otherwise run.
        device: where the teacher runs (the training device).
        keys: the image key.
    """

    def __init__(self, teacher: FrozenTeacher, device: str | torch.device, keys: str = "image") -> None:
        super().__init__(keys)
        self.teacher = teacher
        self.device = torch.device(device)
        self._lock = threading.Lock()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        item = dict(data)
        image = item[self.keys[0]]
        image = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
        with self._lock, torch.no_grad():
            self.teacher.to(self.device)
            logits, features = self.teacher(image.unsqueeze(0).to(self.device, torch.float32))
            dtype = torch.bfloat16 if self.teacher.computes_in_bf16(self.device.type) else torch.float32
            item[TEACHER_LOGITS] = logits[0].to("cpu", dtype)
            item[TEACHER_FEATURES] = [f[0].to("cpu", dtype).contiguous() for f in features]
        return item


def teacher_output_transforms(
    precompute: bool,
    teacher: FrozenTeacher | None,
    device: str | torch.device,
    augmentation: Sequence[Any],
    cache_rate: float,
    cache: str = "memory",
) -> list[TeacherOutputsd]:
    """``[TeacherOutputsd]`` for the training chain when ``precompute`` is on, else ``[]``.

    Raises:
        ValueError: the cached outputs would be wrong (random augmentation changes the image every epoch) or would
            not be cached (``cache_rate`` below 1 recomputes them per item and epoch, slower than the trainer's
            batched pass; a disk cache would run the teacher in the loader's worker processes), or no teacher is
            used.
    """
    if not precompute:
        return []
    if any(isinstance(transform, Randomizable) for transform in augmentation):
        raise ValueError(
            "precompute_teacher needs augmentation off (augmentation: [], as configs/precompute_teacher.yaml sets it): "
            "with random augmentation the teacher sees a different image every epoch, so its outputs cannot be "
            "computed once"
        )
    if cache_rate < 1.0:
        raise ValueError(
            f"precompute_teacher needs cache_rate: 1.0 (got {cache_rate}): the teacher outputs are kept in the cache; "
            "uncached items would run the teacher one image at a time in every epoch"
        )
    if cache != "memory":
        raise ValueError(
            f"precompute_teacher needs cache: memory (got {cache!r}): the teacher computes while the cache is filled, "
            "in this process; a disk cache fills in the loader's worker processes"
        )
    if teacher is None:
        raise ValueError("precompute_teacher: this run uses no teacher (KD and VID weights are 0)")
    return [TeacherOutputsd(teacher, device)]
