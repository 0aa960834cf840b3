"""IDRiD (Indian Diabetic Retinopathy Image Dataset): grading sets, and segmentation sets as lesion masks."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .common import (
    DR_GRADES,
    PathLike,
    _datalist,
    _existing_dir,
    _existing_file,
    _find_with_extension,
    _int_label,
    _read_csv,
    _require_items,
    _split,
    _warn_missing,
)

logger = logging.getLogger(__name__)


# IDRiD published layout
IDRID_GRADING = Path("B. Disease Grading")


IDRID_GRADES_CSV = {
    "training": IDRID_GRADING / "2. Groundtruths" / "a. IDRiD_Disease Grading_Training Labels.csv",
    "test": IDRID_GRADING / "2. Groundtruths" / "b. IDRiD_Disease Grading_Testing Labels.csv",
}


IDRID_GRADES_IMAGES = {
    "training": IDRID_GRADING / "1. Original Images" / "a. Training Set",
    "test": IDRID_GRADING / "1. Original Images" / "b. Testing Set",
}


IDRID_SEGMENTATION = Path("A. Segmentation")


IDRID_SETS = {"training": "a. Training Set", "test": "b. Testing Set"}


IDRID_LESIONS = (
    ("1. Microaneurysms", "MA"),
    ("2. Haemorrhages", "HE"),
    ("3. Hard Exudates", "EX"),
    ("4. Soft Exudates", "SE"),
)


def convert_idrid(
    root: PathLike, out_dir: PathLike, *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, Any]:
    """IDRiD: disease grading (sub-challenge B) as the classification splits, lesion segmentation (A) as localization.

    The official grading test set is ``test`` (``test_fraction`` applies only when its CSV is absent); the training
    set is split into training/validation. For each segmentation image the union of its MA, HE, EX and SE masks (a
    missing file means no such lesion; the optic disc is not a lesion) is written to ``out_dir/masks/<set>/<name>.png``
    (0/255) and listed under ``localization`` as ``{"image", "mask", "subset", "lesions"}``.
    """
    root = _existing_dir(root, "idrid")
    out_dir = Path(out_dir)
    train_csv = _existing_file(root / IDRID_GRADES_CSV["training"], "idrid", "the IDRiD grading training labels")
    items = _idrid_grades(root, train_csv, root / IDRID_GRADES_IMAGES["training"])
    _require_items(items, "idrid", train_csv)
    test_csv = root / IDRID_GRADES_CSV["test"]
    if test_csv.is_file():
        splits = _split("idrid", items, val_fraction, 0.0, seed)
        splits["test"] = _idrid_grades(root, test_csv, root / IDRID_GRADES_IMAGES["test"])
    else:
        logger.warning("idrid: %s not found; splitting the test set off the training images", test_csv)
        splits = _split("idrid", items, val_fraction, test_fraction, seed)
    datalist = _datalist("idrid", "multiclass", DR_GRADES, splits, [], root, seed=seed)
    localization = _idrid_localization(root, out_dir)
    if localization:
        datalist["localization"] = localization
    return datalist


def _idrid_grades(root: Path, csv_path: Path, folder: Path) -> list[dict[str, Any]]:
    items, missing = [], []
    for line, row in _read_csv(csv_path, ["Image name", "Retinopathy grade"]):
        label = _int_label(row["Retinopathy grade"], len(DR_GRADES), csv_path, line, "Retinopathy grade")
        image = _find_with_extension(folder, row["Image name"], (".jpg", ".JPG", ".jpeg", ".png", ".tif"))
        if image is None:
            missing.append(row["Image name"])
        else:
            items.append({"image": str(image), "label": label})
    _warn_missing("idrid", missing, csv_path, folder)
    return items


def _idrid_localization(root: Path, out_dir: Path) -> list[dict[str, Any]]:
    items = []
    for subset, set_dir in IDRID_SETS.items():
        image_dir = root / IDRID_SEGMENTATION / "1. Original Images" / set_dir
        truth_dir = root / IDRID_SEGMENTATION / "2. All Segmentation Groundtruths" / set_dir
        if not image_dir.is_dir():
            continue
        for image in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif")):
            lesions = {code: truth_dir / folder / f"{image.stem}_{code}.tif" for folder, code in IDRID_LESIONS}
            lesions = {code: path for code, path in lesions.items() if path.is_file()}
            with Image.open(image) as im:
                width, height = im.size
            mask = union_mask(lesions.values(), (height, width))
            mask_path = out_dir / "masks" / subset / f"{image.stem}.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(mask_path)
            items.append(
                {
                    "image": str(image),
                    "mask": str(mask_path),
                    "subset": subset,
                    "lesions": sorted(lesions),
                }
            )
    if items:
        logger.info("idrid: wrote %d union lesion masks under %s", len(items), out_dir / "masks")
    return items


def union_mask(paths: Iterable[PathLike], shape: tuple[int, int]) -> np.ndarray:
    """Union of binary masks (any non-zero colour channel is foreground) as a uint8 0/255 array of ``shape`` (H, W)."""
    union = np.zeros(shape, dtype=bool)
    for path in paths:
        with Image.open(path) as opened:
            im: Image.Image = opened
            if im.mode == "P":
                im = im.convert("RGB")
            elif im.mode in ("RGBA", "LA", "PA"):
                im = im.convert("RGB" if im.mode == "RGBA" else "L")
            arr = np.asarray(im)
        if arr.ndim == 3:
            arr = arr.max(axis=2)
        if arr.shape != union.shape:
            raise ValueError(
                f"{path}: mask size {arr.shape[1]}x{arr.shape[0]} differs from its image's size "
                f"{shape[1]}x{shape[0]}"
            )
        union |= arr > 0
    return union.astype(np.uint8) * 255
