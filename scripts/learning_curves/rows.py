"""The learning-curve CSV: one row per finished run, appended as runs finish, read back to resume."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from bundle.files import write_atomically

COLUMNS = [
    "task",
    "method",
    "n_labeled",
    "n_unlabeled",
    "seed",
    "auc",
    "accuracy",
    "kappa",
    "teacher_domain",
    "student_domain",
    "image_size",
    "epochs",
    "train_seconds",
    "finished",
    "code_version",
]


KEY = ("task", "method", "n_labeled", "seed", "teacher_domain", "student_domain")


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append at once, so that a killed script keeps every run finished so far. A CSV written before a column was
    added is first rewritten with today's columns (its rows keep their values; the new column stays empty)."""
    new = not path.is_file()
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != COLUMNS:
            write_rows(path, read_rows(path))  # atomic: a kill while rewriting leaves the old file, never half of it
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as a whole CSV with today's columns, replacing any file there."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    write_atomically(path, write)


def row_key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row[k]) for k in KEY)


def _float(value: str) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
