"""MONAI JSON datalists: the one file format every converter writes and every config reads.

Layout (a superset of MONAI's decathlon datalist)::

    {
      "name": "aptos2019", "task": "multiclass" | "multilabel", "classes": ["0", "1", ...],
      "training":   [{"image": "rel/or/abs.png", "label": 2, "mask": "optional.png", "patient": "optional"}],
      "validation": [...], "test": [...],
      "unlabeled":  [{"image": "..."}],
      "localization": [{"image": "...", "mask": "..."}]
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
# Item lists beside the splits: "localization" holds images with a ground-truth mask but no label (IDRiD).
ITEM_LIST_KEYS = SPLIT_KEYS + ("localization",)
PATH_KEYS = ("image", "mask")
TASKS = ("multiclass", "multilabel")


def load_datalist(
    path: str | os.PathLike, key: str = "training", base_dir: str | os.PathLike | None = None
) -> list[dict]:
    """Return the items of one list (a split or ``localization``) with ``image`` and ``mask`` paths made absolute.

    MONAI's ``load_decathlon_datalist`` resolves only ``image`` (and ``label`` for segmentation), not ``mask``,
    and fails on a missing key; here a missing split is an empty list so that optional splits stay optional.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"datalist not found: {path} (build one with scripts/prepare_datalist.py)")
    with open(path) as f:
        content = json.load(f)
    if key not in ITEM_LIST_KEYS:
        raise ValueError(f"{path}: unknown item list {key!r}, expected one of {ITEM_LIST_KEYS}")
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
    """Return the datalist's header (everything except the item lists): name, task, classes."""
    with open(path) as f:
        content = json.load(f)
    return {k: v for k, v in content.items() if k not in ITEM_LIST_KEYS}


def save_datalist(path: str | os.PathLike, datalist: dict[str, Any]) -> Path:
    """Validate and write a datalist; paths inside the datalist's folder are stored relative to it."""
    path = Path(path)
    validate_datalist(datalist, source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.parent.resolve()
    header = {k: v for k, v in datalist.items() if k not in ITEM_LIST_KEYS}
    lists = {}
    for key in ITEM_LIST_KEYS:
        if key not in datalist:
            continue
        rows = []
        for item in datalist[key]:
            item = dict(item)
            for k in PATH_KEYS:
                if item.get(k) is not None:
                    item[k] = _relative_if_inside(item[k], root)
            rows.append(item)
        lists[key] = rows
    with open(path, "w") as f:
        f.write(_format_datalist(header, lists))
    return path


def _format_datalist(header: dict[str, Any], lists: dict[str, list[dict]]) -> str:
    """JSON with one item per line: diffable and compact even for 200k multi-label items."""
    parts = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in header.items()]
    for key, rows in lists.items():
        body = ",\n".join(f"    {json.dumps(row)}" for row in rows)
        parts.append(f"  {json.dumps(key)}: [\n{body}\n  ]" if rows else f"  {json.dumps(key)}: []")
    return "{\n" + ",\n".join(parts) + "\n}\n"


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
                if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < n:
                    raise ValueError(
                        f"{source}: {key}[{i}] ({item['image']}) label {label!r} is not an int in [0, {n})"
                    )
            elif not (isinstance(label, list) and len(label) == n and all(_is_binary_or_unknown(v) for v in label)):
                raise ValueError(
                    f"{source}: {key}[{i}] ({item['image']}) label {label!r} is not a list of {n} values 0/1/-1"
                )


def _is_binary_or_unknown(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value in (0, 1, -1)


def _relative_if_inside(p: str, root: Path) -> str:
    absolute = Path(p).resolve()
    try:
        return absolute.relative_to(root).as_posix()
    except ValueError:
        return str(absolute)


def check_task(path: str | os.PathLike, task: str, num_classes: int) -> None:
    """Fail early, naming the config values to change, when a config's task disagrees with its datalist."""
    info = read_datalist_info(path)
    problems = []
    if info.get("task") != task:
        problems.append(f"task is {info.get('task')!r} in the datalist but {task!r} in the config")
    if len(info.get("classes", [])) != num_classes:
        problems.append(f"the datalist has {len(info.get('classes', []))} classes but num_classes is {num_classes}")
    if problems:
        raise ValueError(
            f"{path}: " + "; ".join(problems) + ". Use the matching configs/datasets/*.yaml override or set "
            "--task and --num_classes."
        )
