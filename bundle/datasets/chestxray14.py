"""NIH ChestX-ray14: ``Data_Entry_2017.csv`` with pipe-separated findings and the official test list."""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .common import PathLike, _datalist, _existing_dir, _index_files, _read_list, _require_items, _split, _warn_missing

logger = logging.getLogger(__name__)


CHESTXRAY14_CLASSES = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
]


def convert_chestxray14(
    root: PathLike,
    out_dir: PathLike,
    *,
    classes: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """NIH ChestX-ray14: ``Data_Entry_2017.csv`` (pipe-separated findings), official split lists, images anywhere.

    ``test_list.txt`` is the test split; ``train_val_list.txt`` is split by patient into training/validation (without
    the lists everything is split by patient with ``test_fraction``). Images are indexed by file name with one walk of
    ``root`` (``images_001/images/`` ... or a flat ``images/``); rows whose image is not found are skipped.
    """
    root = _existing_dir(root, "chestxray14")
    classes = list(classes) if classes else list(CHESTXRAY14_CLASSES)
    unknown = [c for c in classes if c not in CHESTXRAY14_CLASSES]
    if unknown:
        raise ValueError(f"chestxray14: unknown class(es) {unknown}; the findings are {CHESTXRAY14_CLASSES}")
    csv_path = next(
        (root / n for n in ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv") if (root / n).is_file()), None
    )
    if csv_path is None:
        raise FileNotFoundError(f"chestxray14: neither Data_Entry_2017.csv nor Data_Entry_2017_v2020.csv is in {root}")
    rows = _chestxray14_rows(csv_path, classes)
    index = _index_files(root, {name for name, _, _ in rows})
    items, missing = {}, []
    for name, label, patient in rows:
        if name in index:
            items[name] = {"image": str(index[name]), "label": label, "patient": patient}
        else:
            missing.append(name)
    _warn_missing("chestxray14", missing, csv_path, root)
    _require_items(list(items.values()), "chestxray14", csv_path)

    lists = root / "train_val_list.txt", root / "test_list.txt"
    if all(p.is_file() for p in lists):
        train_val, test = (_read_list(p) for p in lists)
        outside = [n for n in items if n not in train_val and n not in test]
        if outside:
            logger.warning("chestxray14: %d images are in neither %s nor %s; left out", len(outside), *lists)
        trainval_items = [item for n, item in items.items() if n in train_val]
        _require_items(trainval_items, "chestxray14", lists[0])
        splits = _split("chestxray14", trainval_items, val_fraction, 0.0, seed)
        splits["test"] = [item for n, item in items.items() if n in test]
        leaked = {i["patient"] for i in splits["test"]} & {i["patient"] for i in trainval_items}
        if leaked:
            logger.warning("chestxray14: %d patients appear in both official lists", len(leaked))
    else:
        logger.warning("chestxray14: official split lists not found in %s; splitting the test set off by patient", root)
        splits = _split("chestxray14", list(items.values()), val_fraction, test_fraction, seed)
    return _datalist("chestxray14", "multilabel", classes, splits, [], root, seed=seed)


def _chestxray14_rows(csv_path: Path, classes: list[str]) -> list[tuple[str, list[int], str]]:
    """(image name, label, patient) per row; columns are found by header name, since the header's unquoted commas
    (``OriginalImage[Width,Height]``) and the rows' trailing commas make a positional reader the only robust one."""
    required = ["Image Index", "Finding Labels", "Patient ID"]
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise ValueError(f"{csv_path}: missing required column(s) {missing}; found {header}")
        col = {c: header.index(c) for c in required}
        known = set(CHESTXRAY14_CLASSES) | {"No Finding"}
        rows = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) <= max(col.values()):
                raise ValueError(f"{csv_path}, line {reader.line_num}: {len(row)} columns, expected {len(header)}")
            name, findings, patient = (row[col[c]].strip() for c in required)
            found = {f.strip() for f in findings.split("|") if f.strip()}
            if found - known:
                raise ValueError(f"{csv_path}, line {reader.line_num}: unknown finding(s) {sorted(found - known)}")
            rows.append((name, [int(c in found) for c in classes], patient))
    return rows
