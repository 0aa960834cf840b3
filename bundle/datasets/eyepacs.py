"""EyePACS / Kaggle Diabetic Retinopathy Detection: ``trainLabels.csv`` with ``image,level``, two eyes per patient."""

from __future__ import annotations

import re
from pathlib import Path
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


def convert_eyepacs(
    root: PathLike, out_dir: PathLike, *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, Any]:
    """EyePACS (Kaggle 2015): ``trainLabels.csv`` (image,level), ``train/<image>.jpeg``; patient ``10`` of ``10_left``.

    With ``retinopathy_solution.csv`` (image,level,Usage) and ``test/`` present, those are the ``test`` split (public
    and private rows) and the training images are split into training/validation only; otherwise test is split off too.
    """
    root = _existing_dir(root, "eyepacs")
    csv_path = _existing_file(root / "trainLabels.csv", "eyepacs", "EyePACS trainLabels.csv (image,level)")
    items = _eyepacs_items(root, csv_path, root / "train")
    _require_items(items, "eyepacs", csv_path)
    solution = root / "retinopathy_solution.csv"
    if solution.is_file() and (root / "test").is_dir():
        test = _eyepacs_items(root, solution, root / "test")
        splits = _split("eyepacs", items, val_fraction, 0.0, seed)
        splits["test"] = test
    else:
        splits = _split("eyepacs", items, val_fraction, test_fraction, seed)
    return _datalist("eyepacs", "multiclass", DR_GRADES, splits, [], root, seed=seed)


def eyepacs_patient(image: str) -> str:
    """Patient id of an EyePACS image name: the part before ``_left``/``_right`` (the name itself otherwise)."""
    match = re.fullmatch(r"(.+)_(left|right)", image)
    return match.group(1) if match else image


def _eyepacs_items(root: Path, csv_path: Path, folder: Path) -> list[dict[str, Any]]:
    items, missing = [], []
    for line, row in _read_csv(csv_path, ["image", "level"]):
        label = _int_label(row["level"], len(DR_GRADES), csv_path, line, "level")
        image = folder / f"{row['image']}.jpeg"
        if image.is_file():
            items.append({"image": str(image), "label": label, "patient": eyepacs_patient(row["image"])})
        else:
            missing.append(image.name)
    _warn_missing("eyepacs", missing, csv_path, folder)
    return items
