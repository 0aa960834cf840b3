"""Teacher outputs computed once per training image and cached with it (configs/precompute_teacher.yaml), and the
teacher's occlusion evidence, the explainer's target of configs/explainer/evidence_occlusion.yaml.

Without augmentation every epoch shows the frozen teacher the same images, so its logits and VID features are the
same every epoch too. A transform at the end of the training chain's deterministic part lets MONAI's
``CacheDataset`` (or the disk cache, ``bundle.data.caching``) compute them once, while it caches the images, and
``MedTexTrainer`` then skips the teacher's pass on the clean image in every iteration. The teacher still classifies
the masked image when the fidelity term is on (that pass depends on the explainer being trained).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable

from bundle.explain.saliency import make_saliency
from bundle.networks.teacher import FrozenTeacher

TEACHER_LOGITS = "teacher_logits"
TEACHER_FEATURES = "teacher_features"
TEACHER_EVIDENCE = "teacher_evidence"
# the modules whose code computes the cached outputs: a change to any of them starts a new disk cache
_OUTPUT_CODE = (__name__, "bundle.explain.saliency", "bundle.networks.teacher")


class _PerImageTeacherd(MapTransform):
    """Add what the frozen teacher computes from one image (``outputs``) to its item. The teacher runs one image at a
    time, under a lock: ``CacheDataset`` fills its cache from several threads and the teacher's feature hooks keep one
    pass's outputs at a time. ``cache_identity`` keys a disk cache of the outputs (``bundle.data.caching``) by the
    teacher's weights and this code, so another teacher, device kind or version never reads them;
    ``runs_a_network`` makes the disk cache fill in this process rather than in forked workers."""

    runs_a_network = True

    def __init__(self, teacher: FrozenTeacher, device: str | torch.device, keys: str = "image") -> None:
        super().__init__(keys)
        self.teacher = teacher
        self.device = torch.device(device)
        self._lock = threading.Lock()

    def settings(self) -> dict[str, Any]:
        """What, beside the teacher, decides the outputs (for ``cache_identity``)."""
        return {}

    def cache_identity(self) -> str:
        code = b"".join(Path(sys.modules[m].__file__ or "").read_bytes() for m in _OUTPUT_CODE)
        return json.dumps(
            {
                "transform": type(self).__name__,
                "keys": list(self.keys),
                "device": self.device.type,
                "bf16": self.teacher.computes_in_bf16(self.device.type),
                "teacher": self.teacher.identity,
                "code": hashlib.sha256(code).hexdigest(),
                **self.settings(),
            },
            sort_keys=True,
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        item = dict(data)
        image = item[self.keys[0]]
        image = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
        with self._lock, torch.no_grad():
            self.teacher.to(self.device)
            item.update(self.outputs(image.unsqueeze(0).to(self.device, torch.float32)))
        return item

    def outputs(self, batch: torch.Tensor) -> dict[str, Any]:
        """The entries to add, from the teacher on ``batch`` (the image, ``(1, C, H, W)``), on the CPU."""
        raise NotImplementedError


class TeacherOutputsd(_PerImageTeacherd):
    """Add the frozen teacher's logits (``teacher_logits``) and features (``teacher_features``) of one image.

    The outputs are kept on the CPU, in bfloat16 when the teacher computes in bfloat16 (nothing is lost: its outputs
    are bfloat16 values), else in float32.

    Args:
        teacher: the frozen teacher the trainer would otherwise run.
        device: where the teacher runs (the training device).
        keys: the image key.
    """

    def outputs(self, batch: torch.Tensor) -> dict[str, Any]:
        logits, features = self.teacher(batch)
        dtype = torch.bfloat16 if self.teacher.computes_in_bf16(self.device.type) else torch.float32
        return {
            TEACHER_LOGITS: logits[0].to("cpu", dtype),
            TEACHER_FEATURES: [f[0].to("cpu", dtype).contiguous() for f in features],
        }


def teacher_output_transforms(
    precompute: bool,
    teacher: FrozenTeacher | None,
    device: str | torch.device,
    augmentation: Sequence[Any],
    cache_rate: float,
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
) -> list[TeacherOutputsd]:
    """``[TeacherOutputsd]`` for the training chain when ``precompute`` is on, else ``[]``.

    Raises:
        ValueError: the cached outputs would be wrong (random augmentation changes the image every epoch) or would
            not be cached (``cache: none``, ``auto`` without ``cache_dir``, or a ``cache_rate`` below 1 for a memory
            cache would recompute them per item and epoch, slower than the trainer's batched pass), or no teacher is
            used. A disk cache keeps them keyed by the teacher's weights (``cache_identity``), filled in this process.
    """
    if not precompute:
        return []
    if any(isinstance(transform, Randomizable) for transform in augmentation):
        raise ValueError(
            "precompute_teacher needs augmentation off (augmentation: [], as configs/precompute_teacher.yaml sets it): "
            "with random augmentation the teacher sees a different image every epoch, so its outputs cannot be "
            "computed once"
        )
    _check_cached("precompute_teacher", "the teacher outputs", cache_rate, cache, cache_dir)
    if teacher is None:
        raise ValueError("precompute_teacher: this run uses no teacher (KD and VID weights are 0)")
    return [TeacherOutputsd(teacher, device)]


def _check_cached(
    option: str, what: str, cache_rate: float, cache: str, cache_dir: str | os.PathLike | None = None
) -> None:
    """Raise unless every training item is cached, in this process's memory or on disk (see
    ``teacher_output_transforms``): ``memory`` with ``cache_rate`` 1, ``disk``, or ``auto`` (which picks one of the
    two) with a ``cache_dir`` to fall back on and ``cache_rate`` 1."""
    uncached = "uncached items would run the teacher one image at a time in every epoch"
    if cache not in ("memory", "disk", "auto"):
        raise ValueError(
            f"{option} needs cache: auto, memory or disk (got {cache!r}): {what} are computed once, while the "
            f"cache is filled; {uncached}"
        )
    if cache == "auto" and cache_dir is None:
        raise ValueError(
            f"{option} with cache: auto needs a cache_dir: without one, data past the memory budget would not be "
            f"cached at all ({uncached})"
        )
    if cache in ("memory", "auto") and cache_rate < 1.0:
        raise ValueError(
            f"{option} needs cache_rate: 1.0 with cache: {cache} (got {cache_rate}): {what} are kept in the cache; "
            f"{uncached}"
        )


class TeacherOcclusiond(_PerImageTeacherd):
    """Add the teacher's occlusion map of one image (``teacher_evidence``, ``(1, H, W)`` float32 on the CPU).

    The map is ``bundle.explain.saliency``'s ``occlusion`` (MONAI's ``OcclusionSensitivity``), unnormalised: the drop
    of the probability of the class the teacher predicts when a patch is occluded, negative drops clipped to 0.
    Occlusion asks the teacher once per patch, far too often to compute in every training iteration, but it depends
    on the image alone: computed once while the data set is cached, then moved by the random augmentation together
    with the image (the overlay adds the key to the augmentation's keys).

    Args:
        teacher: the frozen teacher.
        device: where the teacher runs (the training device).
        task: ``multiclass`` or ``multilabel`` (softmax or sigmoid probabilities).
        mask_size, overlap: the occluded patch's side in pixels and the overlap of patches, as
            ``scripts/compare_saliency.py`` scores the post-hoc occlusion maps by default.
        keys: the image key.
    """

    def __init__(
        self,
        teacher: FrozenTeacher,
        device: str | torch.device,
        task: str,
        mask_size: int,
        overlap: float = 0.5,
        keys: str = "image",
    ) -> None:
        super().__init__(teacher, device, keys)
        self.task, self.mask_size, self.overlap = task, mask_size, overlap
        self.occlusion = make_saliency(
            "occlusion", teacher, task, mask_size=mask_size, overlap=overlap, normalize=False
        )

    def settings(self) -> dict[str, Any]:
        return {"task": self.task, "mask_size": self.mask_size, "overlap": self.overlap}

    def outputs(self, batch: torch.Tensor) -> dict[str, Any]:
        return {TEACHER_EVIDENCE: self.occlusion(batch)[0].to("cpu", torch.float32)}

    def stand_in(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """The item as ``__call__`` returns it but with a zero map, for the cache-size estimate
        (``bundle.data.caching.estimate_item_bytes``): the map's size without the teacher's passes."""
        image = data[self.keys[0]]
        return {**data, TEACHER_EVIDENCE: torch.zeros((1, *image.shape[1:]), dtype=torch.float32)}


def teacher_evidence_transforms(
    teacher: FrozenTeacher | None,
    device: str | torch.device,
    task: str,
    image_size: int | Sequence[int],
    cache_rate: float,
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
) -> list[TeacherOcclusiond]:
    """``[TeacherOcclusiond]`` with patches of an eighth of the image's side (the post-hoc occlusion's default), for
    the training chain of configs/explainer/evidence_occlusion.yaml.

    Raises:
        ValueError: the maps would not be cached (as for ``teacher_output_transforms``), or no teacher is used.
    """
    _check_cached("evidence_occlusion", "the teacher's occlusion maps", cache_rate, cache, cache_dir)
    if teacher is None:
        raise ValueError("evidence_occlusion: this run uses no teacher (evidence_weight is 0)")
    size = min(int(s) for s in image_size) if isinstance(image_size, Sequence) else int(image_size)
    return [TeacherOcclusiond(teacher, device, task, mask_size=max(2, size // 8))]
