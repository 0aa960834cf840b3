"""MONAI JSON datalists: the one file format every converter writes and every config reads.

Layout (a superset of MONAI's decathlon datalist)::

    {
      "name": "aptos2019", "task": "multiclass" | "multilabel", "classes": ["0", "1", ...],
      "training":   [{"image": "rel/or/abs.png", "label": 2, "mask": "optional.png", "patient": "optional"}],
      "validation": [...], "test": [...],
      "unlabeled":  [{"image": "..."}]
    }

Labels are an int for multi-class tasks and a list of 0/1 for multi-label tasks; -1 in a multi-label list
means "unknown" (CheXpert's ``ignore`` policy) and must be masked out by losses and metrics.
Relative paths resolve against the datalist file's folder, so a data set folder can be moved as a whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SPLIT_KEYS = ("training", "validation", "test", "unlabeled")
PATH_KEYS = ("image", "mask")
TASKS = ("multiclass", "multilabel")


def load_datalist(path: str | os.PathLike, key: str = "training", base_dir: str | os.PathLike | None = None) -> list[dict]:
    """Return the items of one split with ``image`` and ``mask`` paths made absolute.

    MONAI's ``load_decathlon_datalist`` resolves only ``image`` (and ``label`` for segmentation), not ``mask``,
    and fails on a missing key; here a missing split is an empty list so that optional splits stay optional.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"datalist not found: {path} (build one with scripts/prepare_datalist.py)")
    with open(path) as f:
        content = json.load(f)
    if key not in SPLIT_KEYS:
        raise ValueError(f"{path}: unknown split {key!r}, expected one of {SPLIT_KEYS}")
    base = Path(base_dir) if base_dir is not None else path.parent
    items = []
    for item in content.get(key, []):
        item = dict(item)
        for k in PATH_KEYS:
            if k in item and item[k] is not None and not os.path.isabs(item[k]):
                item[k] = str(base / item[k])
        items.append(item)
    return items


def read_datalist_info(path: str | os.PathLike) -> dict[str, Any]:
    """Return the datalist's header (everything except the split lists): name, task, classes."""
    with open(path) as f:
        content = json.load(f)
    return {k: v for k, v in content.items() if k not in SPLIT_KEYS}


def save_datalist(path: str | os.PathLike, datalist: dict[str, Any]) -> Path:
    """Validate and write a datalist; paths inside the datalist's folder are stored relative to it."""
    path = Path(path)
    validate_datalist(datalist, source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.parent.resolve()
    out = {k: v for k, v in datalist.items() if k not in SPLIT_KEYS}
    for key in SPLIT_KEYS:
        if key not in datalist:
            continue
        rows = []
        for item in datalist[key]:
            item = dict(item)
            for k in PATH_KEYS:
                if item.get(k) is not None:
                    item[k] = _relative_if_inside(item[k], root)
            rows.append(item)
        out[key] = rows
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    return path


def validate_datalist(datalist: dict[str, Any], source: str = "datalist") -> None:
    """Raise ``ValueError`` naming the first item whose label does not fit the task and classes."""
    task = datalist.get("task")
    if task not in TASKS:
        raise ValueError(f"{source}: 'task' must be one of {TASKS}, got {task!r}")
    classes = datalist.get("classes")
    if not classes:
        raise ValueError(f"{source}: 'classes' must list the class names")
    n = len(classes)
    for key in SPLIT_KEYS:
        for i, item in enumerate(datalist.get(key, [])):
            if "image" not in item:
                raise ValueError(f"{source}: {key}[{i}] has no 'image'")
            if "label" not in item:
                if key != "unlabeled":
                    raise ValueError(f"{source}: {key}[{i}] ({item['image']}) has no 'label'")
                continue
            label = item["label"]
            if task == "multiclass":
                if not isinstance(label, int) or not 0 <= label < n:
                    raise ValueError(f"{source}: {key}[{i}] ({item['image']}) label {label!r} is not an int in [0, {n})")
            elif not (isinstance(label, list) and len(label) == n and all(v in (0, 1, -1) for v in label)):
                raise ValueError(f"{source}: {key}[{i}] ({item['image']}) label {label!r} is not a list of {n} 0/1/-1")


def _relative_if_inside(p: str, root: Path) -> str:
    absolute = Path(p).resolve()
    try:
        return absolute.relative_to(root).as_posix()
    except ValueError:
        return str(absolute)
