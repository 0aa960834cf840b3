#!/usr/bin/env python
"""Build a MONAI JSON datalist from a data set in its published layout (see docs/DATA.md).

Example::

    python scripts/prepare_datalist.py --format aptos2019 --root data/aptos2019 --out data/aptos2019/datalist.json \
        --n-labeled 500 --seed 0

It ends by printing the training commands this datalist needs, run from the repository root: the format's dataset
override, and ``--data_roots "['/data/aptos2019']"`` when the images lie outside the datalist's folder (written with
absolute paths; the pre-flight check refuses them otherwise).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `bundle` is not pip-installed

import argparse  # noqa: E402
import inspect  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
from typing import Any  # noqa: E402

import yaml  # noqa: E402

from bundle.data.datalist import ITEM_LIST_KEYS, SPLIT_KEYS, load_datalist, save_datalist  # noqa: E402
from bundle.data.splits import select_labeled  # noqa: E402
from bundle.datasets import CONVERTERS  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# command-line option -> converter keyword; an option a format's converter does not take is an error
FORMAT_OPTIONS = {
    "val_fraction": "--val-fraction",
    "test_fraction": "--test-fraction",
    "uncertain": "--uncertain",
    "blank": "--blank",
    "classes": "--classes",
    "frontal_only": "--all-views",
    "labels_csv": "--labels-csv",
    "npz": "--npz",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--format", required=True, choices=sorted(CONVERTERS), help="data set format")
    p.add_argument("--root", required=True, type=Path, help="data set folder (medmnist: the .npz file or its folder)")
    p.add_argument("--out", required=True, type=Path, help="datalist JSON to write; written files go next to it")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--n-labeled", type=int, help="keep N labelled training items, move the rest to 'unlabeled'")
    group.add_argument("--labeled-fraction", type=float, help="keep this fraction of training items labelled")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits and of the labelled subset (default 0)")
    p.add_argument("--val-fraction", type=float, help="validation fraction (default 0.1)")
    p.add_argument("--test-fraction", type=float, help="test fraction where no official test set exists (default 0.2)")
    p.add_argument("--uncertain", choices=["ones", "zeros", "ignore"], help="chexpert: -1 -> 1, 0 or -1 (default ones)")
    p.add_argument("--blank", choices=["zeros", "ignore"], help="chexpert: blank -> 0 or -1 (default zeros)")
    p.add_argument("--classes", help="comma-separated class names (chexpert, chestxray14, medmnist, dicom_folder)")
    p.add_argument("--all-views", action="store_true", help="chexpert: keep lateral views too (default frontal only)")
    p.add_argument("--labels-csv", type=Path, help="dicom_folder: labels CSV (key column 'file' or 'SOPInstanceUID')")
    p.add_argument("--npz", help="medmnist: the .npz file name inside --root")
    return p.parse_args(argv)


def converter_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments for the chosen converter from the options given; ValueError for one it does not take."""
    converter = CONVERTERS[args.format]
    accepted = inspect.signature(converter).parameters
    given: dict[str, Any] = {
        "val_fraction": args.val_fraction,
        "test_fraction": args.test_fraction,
        "uncertain": args.uncertain,
        "blank": args.blank,
        "classes": [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None,
        "frontal_only": False if args.all_views else None,
        "labels_csv": args.labels_csv,
        "npz": args.npz,
    }
    given = {k: v for k, v in given.items() if v is not None}
    wrong = [FORMAT_OPTIONS[k] for k in given if k not in accepted]
    if wrong:
        raise ValueError(f"{', '.join(wrong)} does not apply to --format {args.format}")
    if "seed" in accepted:
        given["seed"] = args.seed
    return given


def summary(datalist: dict[str, Any]) -> str:
    """Items per split and per class (multi-label: positives, with unknown -1 counted on extra rows) as a table."""
    classes = datalist["classes"]
    multilabel = datalist["task"] == "multilabel"
    width = max([6] + [len(c) for c in classes])

    def row(name: str, n_items: Any, cells: list[Any]) -> str:
        return f"{name:<16}{n_items:>8}  " + "  ".join(f"{c:>{width}}" for c in cells)

    lines = [row("split", "items", classes)]
    unknown_lines = []
    for key in SPLIT_KEYS:
        items = datalist.get(key, [])
        if key == "unlabeled":
            if items:
                lines.append(row(key, len(items), ["-"] * len(classes)))
            continue
        counts = [0] * len(classes)
        unknown = [0] * len(classes)
        for item in items:
            if multilabel:
                for j, v in enumerate(item["label"]):
                    counts[j] += v == 1
                    unknown[j] += v == -1
            else:
                counts[item["label"]] += 1
        lines.append(row(key, len(items), counts))
        if any(unknown):
            unknown_lines.append(row(f"{key} (-1)", "", unknown))
    if "localization" in datalist:
        lines.append(f"{'localization':<16}{len(datalist['localization']):>8}  images with lesion masks, no labels")
    return "\n".join(lines + unknown_lines)


def outside_roots(path: Path) -> list[str]:
    """The one folder (common to all) that the datalist's images and masks lie in outside its own folder, if any."""
    folder = path.parent.resolve()
    outside = {
        str(Path(item[k]).resolve().parent)
        for key in ITEM_LIST_KEYS
        for item in load_datalist(path, key)
        for k in ("image", "mask")
        if item.get(k) and not Path(item[k]).resolve().is_relative_to(folder)
    }
    return [os.path.commonpath(sorted(outside))] if outside else []


def py_list(values: list[str]) -> str:
    """A list of strings as the Python literal MONAI's command line parses, without spaces: ``['a','b']``."""
    return "[" + ",".join(repr(v) for v in values) + "]"


def quoted(value: str) -> str:
    """``value`` as one shell word: in double quotes where that is safe (keeps a Python list literal readable)."""
    if not any(c in value for c in '"$`\\!'):
        return f'"{value}"' if any(c in value for c in " '[]*?;&|<>()") else value
    return shlex.quote(value)


def training_command(config: str, fmt: str, path: Path, datalist: dict[str, Any], roots: list[str]) -> str:
    """The ``monai.bundle run training`` command for this datalist: the format's dataset override when there is one,
    task and classes where it does not set them, the datalist when not ``<dataset_dir>/datalist.json``, and
    ``data_roots`` for images outside the datalist's folder (else the pre-flight check refuses every one)."""
    override = REPO / "configs" / "datasets" / f"{fmt}.yaml"
    configs = [config] + ([override.relative_to(REPO).as_posix()] if override.is_file() else [])
    preset = yaml.safe_load((REPO / config).read_text())
    preset.update(yaml.safe_load(override.read_text()) if override.is_file() else {})
    folder = path.parent if not path.is_absolute() and Path.cwd().resolve() == REPO else path.parent.resolve()
    words = [
        "python -m monai.bundle run training --config_file",
        quoted(py_list(configs) if len(configs) > 1 else config),
    ]
    words += ["--dataset_dir", quoted(folder.as_posix())]
    if path.name != "datalist.json":
        words += ["--datalist", quoted((folder / path.name).as_posix())]
    for key, value in (("task", datalist["task"]), ("num_classes", len(datalist["classes"]))):
        if preset.get(key) != value:
            words += [f"--{key}", str(value)]
    if roots:
        words += ["--data_roots", quoted(py_list(roots))]
    return " ".join(words)


def main(argv: list[str] | None = None) -> int:
    """Convert, optionally keep a labelled subset, write the datalist and print what was written."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    out = args.out
    try:
        if out.suffix.lower() != ".json":
            raise ValueError(f"--out must be a .json file, got {out}")
        options = converter_options(args)
        datalist = CONVERTERS[args.format](args.root, out.parent, **options)
        if args.n_labeled is not None or args.labeled_fraction is not None:
            datalist = select_labeled(datalist, args.n_labeled, args.labeled_fraction, seed=args.seed)
        path = save_datalist(out, datalist)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"prepare_datalist.py: error: {e}")
    task = f"{datalist['task']}, {len(datalist['classes'])} classes"
    print(f"wrote {path} ({args.format}: {datalist['name']}, {task}, seed {args.seed})")
    print(summary(datalist))
    roots = outside_roots(path)
    if roots:  # training refuses paths outside the datalist's folder unless their folder is in data_roots
        print(f"images lie outside {path.parent}: training needs --data_roots (docs/DATA.md, 'Where the images lie')")
    print("train from the repository root with (teacher first, unless you bring one: docs/TEACHERS.md):")
    for config in ("configs/train_teacher.yaml", "configs/train.yaml"):
        print("  " + training_command(config, args.format, path, datalist, roots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
