"""CheXpert: ``train.csv``/``valid.csv`` with 14 observations coded 1, 0, -1 (uncertain) or blank."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import PathLike, _datalist, _existing_dir, _existing_file, _read_csv, _require_items, _split, _warn_missing

logger = logging.getLogger(__name__)


CHEXPERT_LABELS = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]


CHEXPERT_COMPETITION = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]


def convert_chexpert(
    root: PathLike,
    out_dir: PathLike,
    *,
    classes: Sequence[str] | None = None,
    uncertain: str = "ones",
    blank: str = "zeros",
    frontal_only: bool = True,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """CheXpert: ``CheXpert-v1.0-small/{train,valid}.csv`` under ``root``; ``valid.csv`` is the test split.

    ``uncertain`` maps -1: ``ones`` (U-Ones) -> 1, ``zeros`` (U-Zeros) -> 0, ``ignore`` -> kept as -1 (masked by losses
    and metrics); ``blank`` maps an empty cell: ``zeros`` -> 0, ``ignore`` -> -1. ``classes`` defaults to the five
    competition tasks. ``train.csv`` is split by patient into training/validation (``test_fraction`` applies only when
    ``valid.csv`` is absent).
    """
    root = _existing_dir(root, "chexpert")
    if uncertain not in ("ones", "zeros", "ignore"):
        raise ValueError(f"chexpert: uncertain policy must be ones, zeros or ignore, got {uncertain!r}")
    if blank not in ("zeros", "ignore"):
        raise ValueError(f"chexpert: blank policy must be zeros or ignore, got {blank!r}")
    classes = list(classes) if classes else list(CHEXPERT_COMPETITION)
    unknown = [c for c in classes if c not in CHEXPERT_LABELS]
    if unknown:
        raise ValueError(f"chexpert: unknown class(es) {unknown}; CheXpert's label columns are {CHEXPERT_LABELS}")
    if root.name.startswith("CheXpert-v1.0") and (root / "train.csv").is_file():
        base, root = root, root.parent  # tolerate --root pointing at the CheXpert-v1.0-small folder itself
    else:
        found = next((root / n for n in ("CheXpert-v1.0-small", "CheXpert-v1.0") if (root / n).is_dir()), None)
        if found is None:
            raise FileNotFoundError(f"chexpert: {root} contains neither CheXpert-v1.0-small/ nor CheXpert-v1.0/")
        base = found

    def items_of(csv_path: Path) -> list[dict[str, Any]]:
        return _chexpert_items(
            root, base, csv_path, classes=classes, uncertain=uncertain, blank=blank, frontal_only=frontal_only
        )

    train_csv = _existing_file(base / "train.csv", "chexpert", "CheXpert's train.csv")
    items = items_of(train_csv)
    _require_items(items, "chexpert", train_csv)
    if (base / "valid.csv").is_file():
        splits = _split("chexpert", items, val_fraction, 0.0, seed)
        splits["test"] = items_of(base / "valid.csv")
    else:
        logger.warning("chexpert: %s not found; splitting the test set off train.csv by patient", base / "valid.csv")
        splits = _split("chexpert", items, val_fraction, test_fraction, seed)
    return _datalist(
        "chexpert",
        "multilabel",
        classes,
        splits,
        [],
        root,
        seed=seed,
        uncertain=uncertain,
        blank=blank,
        frontal_only=frontal_only,
    )


def chexpert_value(value: str, uncertain: str = "ones", blank: str = "zeros") -> int:
    """Map one CheXpert cell (``1.0``, ``0.0``, ``-1.0`` or blank) to 1/0/-1 under the uncertain and blank policies."""
    value = value.strip()
    if value == "":
        return 0 if blank == "zeros" else -1
    number = float(value)  # ValueError for anything else; the caller names the file and row
    if number == 1:
        return 1
    if number == 0:
        return 0
    if number == -1:
        return {"ones": 1, "zeros": 0, "ignore": -1}[uncertain]
    raise ValueError(f"not a CheXpert label: {value!r}")


def _chexpert_items(
    root: Path, base: Path, csv_path: Path, *, classes: list[str], uncertain: str, blank: str, frontal_only: bool
) -> list[dict[str, Any]]:
    required = ["Path"] + classes + (["Frontal/Lateral"] if frontal_only else [])
    items, missing = [], []
    for line, row in _read_csv(csv_path, required):
        if frontal_only and row["Frontal/Lateral"].lower() != "frontal":
            continue
        try:
            label = [chexpert_value(row[c], uncertain, blank) for c in classes]
        except ValueError as e:
            raise ValueError(f"{csv_path}, line {line}: {e} (expected 1.0, 0.0, -1.0 or blank)") from None
        rel = row["Path"]
        image = (root if rel.split("/")[0].startswith("CheXpert") else base) / rel
        if not image.is_file():
            missing.append(rel)
            continue
        item = {"image": str(image), "label": label}
        patient = re.search(r"patient\d+", rel)
        if patient:
            item["patient"] = patient.group(0)
        items.append(item)
    _warn_missing("chexpert", missing, csv_path, root)
    return items
