"""Helpers the public data set converters share: the datalist dict, seeded splits, CSV reading, file lookup."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bundle.data.splits import split_items

logger = logging.getLogger(__name__)


PathLike = str | os.PathLike


DR_GRADES = ["0", "1", "2", "3", "4"]  # retinopathy grade: none, mild, moderate, severe, proliferative


def _datalist(
    fmt: str,
    task: str,
    classes: Sequence[str],
    splits: dict[str, list[dict[str, Any]]],
    unlabeled: list[dict[str, Any]],
    root: Path,
    name: str | None = None,
    **options: Any,
) -> dict[str, Any]:
    """The datalist dict; ``source`` records the format, the data set's folder and the options used."""
    datalist: dict[str, Any] = {
        "name": name or fmt,
        "task": task,
        "classes": list(classes),
        "source": {"format": fmt, "root": str(Path(root).resolve()), **options},
        "training": splits["training"],
        "validation": splits["validation"],
        "test": splits["test"],
    }
    if unlabeled:
        datalist["unlabeled"] = unlabeled
    return datalist


def _split(
    name: str, items: list[dict[str, Any]], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[dict[str, Any]]]:
    """``split_items`` with fractions (1 - val - test, val, test) and errors prefixed by the format's name."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"{name}: need 0 <= val_fraction, test_fraction and a sum < 1; got {val_fraction}, {test_fraction}"
        )
    try:
        return split_items(items, (1 - val_fraction - test_fraction, val_fraction, test_fraction), seed=seed)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


def _read_csv(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """``(line number, row)`` pairs with stripped header names and values; empty columns and blank rows ignored."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file, expected a CSV header with column(s) {list(required)}")
        columns = [(i, h.strip()) for i, h in enumerate(header) if h.strip()]
        names = [n for _, n in columns]
        missing = [c for c in required if c not in names]
        if missing:
            raise ValueError(f"{path}: missing required column(s) {missing}; found {names}")
        rows = []
        for row in reader:
            if any(cell.strip() for cell in row):
                rows.append((reader.line_num, {n: row[i].strip() if i < len(row) else "" for i, n in columns}))
    return rows


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [h.strip() for h in next(csv.reader(f), []) if h.strip()]


def _int_label(value: str, n_classes: int, path: Path, line: int, column: str) -> int:
    try:
        number: float | None = float(value)
    except ValueError:
        number = None
    if number is None or not number.is_integer() or not 0 <= number < n_classes:
        raise ValueError(f"{path}, line {line}: column {column!r} is {value!r}, expected an int in [0, {n_classes})")
    return int(number)


def _read_list(path: Path) -> set[str]:
    with open(path, encoding="utf-8-sig") as f:
        return {line.strip() for line in f if line.strip()}


def _index_files(root: Path, names: set[str]) -> dict[str, Path]:
    """Map wanted file names to paths with one sorted walk of ``root``; a duplicate keeps the first, with a warning."""
    index: dict[str, Path] = {}
    duplicates = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name in names:
                if name in index:
                    duplicates += 1
                else:
                    index[name] = Path(dirpath) / name
    if duplicates:
        logger.warning(
            "%s: %d image names occur more than once; the first found (sorted walk) is used", root, duplicates
        )
    return index


def _walk_files(root: Path, accept: Callable[[str], bool]) -> list[Path]:
    """Files under ``root`` (any depth, hidden entries skipped) whose name ``accept`` takes, in sorted walk order."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / n for n in sorted(filenames) if not n.startswith(".") and accept(n))
    return found


def _find_with_extension(folder: Path, name: str, extensions: Sequence[str]) -> Path | None:
    if (folder / name).is_file():
        return folder / name
    return next((folder / f"{name}{e}" for e in extensions if (folder / f"{name}{e}").is_file()), None)


def _existing_dir(root: PathLike, name: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: data set folder not found: {root}")
    return root


def _existing_file(path: Path, name: str, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{name}: {what} not found: {path}")
    return path


def _require_items(items: list[dict[str, Any]], name: str, source: Path) -> None:
    if not items:
        raise ValueError(f"{name}: no labelled images found for the rows of {source}")


def _warn_missing(name: str, missing: list[str], source: Path, where: Path) -> None:
    if missing:
        logger.warning(
            "%s: %d image(s) listed in %s were not found under %s and are skipped (e.g. %s)",
            name,
            len(missing),
            source,
            where,
            ", ".join(missing[:3]),
        )
