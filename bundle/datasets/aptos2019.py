"""APTOS 2019 Blindness Detection (Kaggle): ``train.csv`` with ``id_code,diagnosis`` and ``train_images/``."""

from __future__ import annotations

from typing import Any

from .common import (
    DR_GRADES,
    PathLike,
    _datalist,
    _existing_dir,
    _existing_file,
    _int_label,
    _read_csv,
    _require_items,
    _split,
    _warn_missing,
)


def convert_aptos2019(
    root: PathLike, out_dir: PathLike, *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, Any]:
    """APTOS 2019 (Kaggle): ``train.csv`` (id_code,diagnosis) + ``train_images/<id_code>.png``; no patient ids.

    The labelled images are split into training/validation/test by the fractions; the unlabelled Kaggle test set
    (``test.csv`` + ``test_images/``), if present, becomes ``unlabeled``.
    """
    root = _existing_dir(root, "aptos2019")
    csv_path = _existing_file(root / "train.csv", "aptos2019", "APTOS 2019's train.csv (id_code,diagnosis)")
    items, missing = [], []
    for line, row in _read_csv(csv_path, ["id_code", "diagnosis"]):
        label = _int_label(row["diagnosis"], len(DR_GRADES), csv_path, line, "diagnosis")
        image = root / "train_images" / f"{row['id_code']}.png"
        if image.is_file():
            items.append({"image": str(image), "label": label})
        else:
            missing.append(image.name)
    _warn_missing("aptos2019", missing, csv_path, root / "train_images")
    _require_items(items, "aptos2019", csv_path)
    unlabeled = []
    if (root / "test.csv").is_file() and (root / "test_images").is_dir():
        missing = []
        for _, row in _read_csv(root / "test.csv", ["id_code"]):
            image = root / "test_images" / f"{row['id_code']}.png"
            if image.is_file():
                unlabeled.append({"image": str(image)})
            else:
                missing.append(image.name)
        _warn_missing("aptos2019", missing, root / "test.csv", root / "test_images")
    splits = _split("aptos2019", items, val_fraction, test_fraction, seed)
    return _datalist("aptos2019", "multiclass", DR_GRADES, splits, unlabeled, root, seed=seed)
