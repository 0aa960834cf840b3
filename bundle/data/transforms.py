"""MONAI transforms for the bundle's image pipeline: load any supported file, then match channels.

Everything else in the pipeline (intensity normalisation, resizing, augmentation, caching) is MONAI's own and
is wired in the configs.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, Transform

from bundle.data.readers import MedicalImageReader

# ITU-R BT.601 luma weights, as PIL's convert("L") uses: RGB photographs to one gray channel.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


class LoadMedicalImage(LoadImage):
    """MONAI ``LoadImage`` fixed to ``MedicalImageReader``: channel-first float32 ``MetaTensor`` in [0, 1].

    MONAI's ``LoadImage`` turns a constructor-given reader's exception into a generic ``RuntimeError`` that
    lists every registered reader; passing the reader at call time keeps our ``ImageReadError`` (file + reason).

    Args:
        reader: the reader and its settings (frame, 16-bit scaling, VOI, size limits); the configs build one,
            ``image_reader``, and hand it to the loader, the overlay writer and the pre-flight check alike.
            ``None``: ``MedicalImageReader()`` with its defaults.
    """

    def __init__(self, reader: MedicalImageReader | None = None) -> None:
        self.medical_reader = reader if reader is not None else MedicalImageReader()
        # LoadImage takes a torch dtype too, though its annotation names numpy's
        dtype: Any = torch.float32
        super().__init__(reader=self.medical_reader, image_only=True, dtype=dtype, ensure_channel_first=True)

    def __call__(self, filename: Sequence[os.PathLike | str] | os.PathLike | str, reader: Any = None) -> MetaTensor:
        return super().__call__(filename, reader=reader or self.medical_reader)


FRAME_KEY = "frame"


class LoadMedicalImaged(MapTransform):
    """Dictionary version of ``LoadMedicalImage`` (e.g. keys ``image`` and ``mask``), with the same ``reader``.

    An item with an integer ``frame`` of 0 or more (inference's ``multiframe: per_frame`` lists one item per frame)
    is read at that frame or slice, whatever the reader's own ``frame``.
    """

    def __init__(
        self, keys: KeysCollection, reader: MedicalImageReader | None = None, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadMedicalImage(reader)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        frame = d.get(FRAME_KEY)
        reader = None
        if frame is not None and int(frame) >= 0:
            reader = self.loader.medical_reader.with_frame(int(frame))
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key], reader=reader)
        return d


class MatchChannels(Transform):
    """Give a channel-first image the number of channels the network expects.

    Gray is replicated to 3 channels; RGB becomes gray with BT.601 luma weights; matching counts pass through.
    """

    def __init__(self, channels: int) -> None:
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.channels = channels

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        have = img.shape[0]
        if have == self.channels:
            return img
        if have == 1 and self.channels == 3:
            return img.repeat(3, *([1] * (img.ndim - 1)))
        if have == 3 and self.channels == 1:
            weights = torch.as_tensor(LUMA_WEIGHTS, dtype=img.dtype, device=img.device).view(3, *([1] * (img.ndim - 1)))
            return (img * weights).sum(dim=0, keepdim=True)
        source = img.meta.get("filename_or_obj", "image") if isinstance(img, MetaTensor) else "image"
        raise ValueError(f"{source}: cannot convert {have} channels to {self.channels}")


class MatchChannelsd(MapTransform):
    """Dictionary version of ``MatchChannels``."""

    def __init__(self, keys: KeysCollection, channels: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = MatchChannels(channels)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class FillMissingLabeld(MapTransform):
    """Give unlabelled items (e.g. the datalist's ``unlabeled`` list) an all-unknown label so they batch with
    labelled ones: ``-1`` for ``multiclass``, a list of ``-1`` for ``multilabel``. Losses and metrics skip -1."""

    def __init__(self, keys: KeysCollection, task: str, num_classes: int) -> None:
        super().__init__(keys, allow_missing_keys=True)
        if task not in ("multiclass", "multilabel"):
            raise ValueError(f"task must be 'multiclass' or 'multilabel', got {task!r}")
        self.unknown = -1 if task == "multiclass" else [-1] * num_classes

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.keys:
            if d.get(key) is None:
                d[key] = self.unknown
        return d
