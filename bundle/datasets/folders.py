"""Data a hospital already has: a folder per class, or a DICOM folder with an optional labels CSV."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pydicom

from .common import (
    PathLike,
    _csv_header,
    _datalist,
    _existing_dir,
    _existing_file,
    _int_label,
    _read_csv,
    _require_items,
    _split,
    _walk_files,
)

logger = logging.getLogger(__name__)


FOLDER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".nii", ".nii.gz")


def convert_folder(
    root: PathLike, out_dir: PathLike, *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, Any]:
    """A folder per class: ``root/<class_name>/**/<image>`` (png, jpg, jpeg, dcm, nii, nii.gz); classes sorted by name.

    Multi-class; no patient ids, so the split is by image, stratified by class.
    """
    root = _existing_dir(root, "folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = {d.name: _walk_files(d, lambda n: n.lower().endswith(FOLDER_EXTENSIONS)) for d in class_dirs}
    empty = [name for name, files in per_class.items() if not files]
    if empty:
        logger.warning("folder: no images (%s) in %s; not classes", ", ".join(FOLDER_EXTENSIONS), ", ".join(empty))
    classes = [name for name, files in per_class.items() if files]
    if not classes:
        raise ValueError(f"folder: no class folders with images ({', '.join(FOLDER_EXTENSIONS)}) under {root}")
    items = [{"image": str(f), "label": k} for k, name in enumerate(classes) for f in per_class[name]]
    splits = _split("folder", items, val_fraction, test_fraction, seed)
    return _datalist("folder", "multiclass", classes, splits, [], root, name=root.resolve().name, seed=seed)


def convert_dicom_folder(
    root: PathLike,
    out_dir: PathLike,
    *,
    labels_csv: PathLike | None = None,
    classes: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, Any]:
    """A folder of DICOM files (any depth, any or no extension) plus a labels CSV; patient = DICOM PatientID.

    The CSV's key column is ``file`` (path relative to ``root``) or ``SOPInstanceUID``. Labels are either one ``label``
    column (multi-class: an int, or a class name) or one 0/1 column per class (multi-label; blank or -1 = unknown);
    ``classes`` orders/selects the class names. Files without a CSV row (or whose label is blank / all unknown) go to
    ``unlabeled``; rows without a file are reported in a warning. ``labels_csv`` may be absolute, relative to the
    working directory, or relative to ``root``.
    """
    root = _existing_dir(root, "dicom_folder")
    if labels_csv is None:
        raise ValueError(
            "dicom_folder: a labels CSV is required (--labels-csv) with a 'file' or 'SOPInstanceUID' column"
        )
    csv_path = Path(labels_csv)
    if not csv_path.is_file() and not csv_path.is_absolute() and (root / csv_path).is_file():
        csv_path = root / csv_path
    csv_path = _existing_file(csv_path, "dicom_folder", "the labels CSV")
    task, classes, labels, key = _dicom_labels(csv_path, classes)

    skip = csv_path.resolve()
    files = _walk_files(root, lambda n: n.lower() != "dicomdir" and not n.lower().endswith(_NOT_DICOM))
    labelled, unlabeled, used = [], [], set()
    for file in files:
        if file.resolve() == skip:
            continue
        header = read_dicom_header(file)
        if header is None:
            continue
        item: dict[str, Any] = {"image": str(file)}
        patient = str(header.get("PatientID", "") or "").strip()
        if patient:
            item["patient"] = patient
        k = file.relative_to(root).as_posix() if key == "file" else str(header.get("SOPInstanceUID", "")).strip()
        used.add(k)
        if labels.get(k) is not None:
            labelled.append({**item, "label": labels[k]})
        else:
            unlabeled.append(item)
    if not labelled and not unlabeled:
        raise ValueError(f"dicom_folder: no DICOM files found under {root}")
    orphans = [k for k in labels if k not in used]
    if orphans:
        logger.warning(
            "dicom_folder: %d row(s) of %s match no DICOM file under %s (key %s; e.g. %s)",
            len(orphans),
            csv_path,
            root,
            key,
            ", ".join(orphans[:3]),
        )
    _require_items(labelled, "dicom_folder", csv_path)
    splits = _split("dicom_folder", labelled, val_fraction, test_fraction, seed)
    return _datalist("dicom_folder", task, classes, splits, unlabeled, root, name=root.resolve().name, seed=seed)


_NOT_DICOM: tuple[str, ...] = (".csv", ".txt", ".json", ".md", ".yaml", ".yml", ".xml", ".html", ".pdf", ".zip", ".py")
_NOT_DICOM += (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".npz", ".npy", ".nii", ".nii.gz")


_DICOM_CSV_META = {"file", "sopinstanceuid", "patient", "patientid", "studyinstanceuid", "seriesinstanceuid"}


def read_dicom_header(path: PathLike) -> pydicom.Dataset | None:
    """PatientID, SOPInstanceUID and SOPClassUID of a DICOM file (pixels not read), or None when it is not DICOM.

    A file is DICOM when it has the ``DICM`` prefix at offset 128, or (no preamble) when pydicom can parse it and it
    carries a SOP Instance UID, Patient ID or SOP Class UID.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return None
    preamble = len(head) == 132 and head[128:] == b"DICM"
    try:
        ds = pydicom.dcmread(
            path,
            stop_before_pixels=True,
            force=not preamble,
            specific_tags=["PatientID", "SOPInstanceUID", "SOPClassUID"],
        )
        if not preamble and not any(t in ds for t in ("SOPInstanceUID", "PatientID", "SOPClassUID")):
            return None
    except Exception:  # pydicom raises many types on non-DICOM bytes; any of them means "not DICOM"
        return None
    return ds


def _dicom_labels(csv_path: Path, classes: Sequence[str] | None) -> tuple[str, list[str], dict[str, Any], str]:
    """(task, classes, key -> label or None, key column) from a dicom_folder labels CSV."""
    rows = _read_csv(csv_path, [])
    header = _csv_header(csv_path)
    key = "file" if "file" in header else "SOPInstanceUID" if "SOPInstanceUID" in header else None
    if key is None:
        raise ValueError(f"{csv_path}: missing a key column, 'file' or 'SOPInstanceUID'; found {header}")
    keys = [Path(r[key]).as_posix() if key == "file" else r[key] for _, r in rows]
    duplicates = sorted(k for k, n in Counter(keys).items() if n > 1)
    if duplicates:
        raise ValueError(f"{csv_path}: duplicate {key} value(s) {duplicates[:5]}")
    labels: dict[str, Any] = {}
    if "label" in header:
        values = [r["label"] for _, r in rows]
        numeric = all(re.fullmatch(r"-?\d+(\.0*)?", v) for v in values if v)
        if classes:
            classes = list(classes)
        elif numeric:
            classes = [str(i) for i in range(max((int(float(v)) for v in values if v), default=0) + 1)]
        else:
            classes = sorted({v for v in values if v})
        for k, (line, row) in zip(keys, rows):
            v = row["label"]
            if not v:
                labels[k] = None
            elif numeric:
                labels[k] = _int_label(v, len(classes), csv_path, line, "label")
            elif v in classes:
                labels[k] = classes.index(v)
            else:
                raise ValueError(f"{csv_path}, line {line}: label {v!r} is not one of the classes {classes}")
        return "multiclass", classes, labels, key
    columns = list(classes) if classes else [c for c in header if c.lower() not in _DICOM_CSV_META]
    absent = [c for c in columns if c not in header]
    if absent:
        raise ValueError(f"{csv_path}: missing class column(s) {absent}; found {header}")
    if not columns:
        raise ValueError(f"{csv_path}: no 'label' column and no per-class 0/1 columns; found {header}")
    codes = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "-1": -1, "-1.0": -1, "": -1}
    for k, (line, row) in zip(keys, rows):
        bad = [c for c in columns if row[c] not in codes]
        if bad:
            raise ValueError(f"{csv_path}, line {line}: column(s) {bad} must be 0, 1, -1 or blank")
        label = [codes[row[c]] for c in columns]
        labels[k] = label if any(v != -1 for v in label) else None  # nothing known: an unlabelled image
    return "multilabel", columns, labels, key
