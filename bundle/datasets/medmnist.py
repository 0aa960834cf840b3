"""MedMNIST v2 ``.npz`` files: arrays written as PNG files under ``images/`` with the published splits."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .common import PathLike, _datalist, _existing_file

logger = logging.getLogger(__name__)


def convert_medmnist(
    root: PathLike, out_dir: PathLike, *, npz: PathLike | None = None, classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """MedMNIST ``.npz`` (``{train,val,test}_{images,labels}``): PNGs written to ``out_dir/images/<split>/``.

    ``root`` is the ``.npz`` file, or its folder with ``npz`` naming the file (or the folder's only ``.npz``). Official
    splits are kept. Labels ``(N, 1)`` are multi-class, ``(N, K>1)`` multi-label (e.g. ChestMNIST); ``classes`` names
    them, else ``"0"`` ... ``"K-1"``. 2D images only (``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB).
    """
    path = _medmnist_file(Path(root), npz)
    keys = [f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels")]
    with np.load(path) as data:
        missing = [k for k in keys if k not in data.files]
        if missing:
            raise ValueError(f"{path}: not a MedMNIST file, missing array(s) {missing} (has {sorted(data.files)})")
        arrays = {k: data[k] for k in keys}
    labels = {s: arrays[f"{s}_labels"].reshape(len(arrays[f"{s}_labels"]), -1) for s in ("train", "val", "test")}
    widths = {lab.shape[1] for lab in labels.values()}
    if len(widths) != 1:
        raise ValueError(f"{path}: label arrays disagree on the number of columns: {sorted(widths)}")
    width = widths.pop()
    task = "multilabel" if width > 1 else "multiclass"
    n_classes = width if width > 1 else max(int(lab.max(initial=0)) for lab in labels.values()) + 1
    if classes:
        classes = list(classes)
        if (task == "multilabel" and len(classes) != n_classes) or len(classes) < n_classes:
            raise ValueError(f"{path}: {len(classes)} class names given but the labels need {n_classes}")
    else:
        classes = [str(i) for i in range(n_classes)]
    out_dir = Path(out_dir)
    splits = {}
    for split, name in (("train", "training"), ("val", "validation"), ("test", "test")):
        images = arrays[f"{split}_images"]
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
            raise ValueError(
                f"{path}: {split}_images has shape {images.shape}; only 2D (N,H,W) or (N,H,W,3) is supported"
            )
        if len(images) != len(labels[split]):
            raise ValueError(f"{path}: {len(images)} {split}_images but {len(labels[split])} {split}_labels")
        folder = out_dir / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        items = []
        for i, (image, label) in enumerate(zip(images, labels[split])):
            file = folder / f"{i:06d}.png"
            Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(file)
            value = [int(v) for v in label] if task == "multilabel" else int(label[0])
            items.append({"image": str(file), "label": value})
        splits[name] = items
    logger.info("medmnist: wrote %d PNGs under %s", sum(len(v) for v in splits.values()), out_dir / "images")
    return _datalist("medmnist", task, classes, splits, [], path, name=path.stem)


def _medmnist_file(root: Path, npz: PathLike | None) -> Path:
    if root.is_file():
        return root
    if not root.is_dir():
        raise FileNotFoundError(f"medmnist: {root} is neither a .npz file nor a folder")
    if npz is not None:
        path = Path(npz) if Path(npz).is_absolute() else root / npz
        return _existing_file(path, "medmnist", "the MedMNIST .npz file given by npz")
    found = sorted(root.glob("*.npz"))
    if len(found) != 1:
        raise ValueError(f"medmnist: {root} holds {len(found)} .npz files; name one with --npz")
    return found[0]
