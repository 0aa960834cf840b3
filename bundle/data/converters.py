"""Converters from public data sets' published layouts to MONAI JSON datalists (see docs/DATA.md).

Every converter is ``convert_<format>(root, out_dir, **options) -> dict`` and returns a datalist dict
``{"name", "task", "classes", "source", "training", "validation", "test"[, "unlabeled"][, "localization"]}`` ready for
:func:`bundle.data.datalist.save_datalist`. ``out_dir`` is the folder the datalist will be written to: converters that
create files (IDRiD union lesion masks, MedMNIST PNGs) write them there, under ``masks/`` and ``images/``.

Image paths in all item lists are absolute; ``save_datalist`` stores those inside the datalist's folder relative to it.
The IDRiD-only ``localization`` list holds segmentation images with their union lesion mask and no grade label.

Splits are seeded, stratified and patient-level (:func:`bundle.data.splits.split_items`); official test lists are kept
as ``test`` where the data set publishes one. Images listed in a CSV but missing on disk are skipped with one logged
warning giving the count. ``CONVERTERS`` maps format names to converters.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image

from bundle.data.splits import split_items

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike

DR_GRADES = ["0", "1", "2", "3", "4"]  # retinopathy grade: none, mild, moderate, severe, proliferative
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
FOLDER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".dcm", ".nii", ".nii.gz")

# IDRiD published layout
IDRID_GRADING = Path("B. Disease Grading")
IDRID_GRADES_CSV = {
    "training": IDRID_GRADING / "2. Groundtruths" / "a. IDRiD_Disease Grading_Training Labels.csv",
    "test": IDRID_GRADING / "2. Groundtruths" / "b. IDRiD_Disease Grading_Testing Labels.csv",
}
IDRID_GRADES_IMAGES = {
    "training": IDRID_GRADING / "1. Original Images" / "a. Training Set",
    "test": IDRID_GRADING / "1. Original Images" / "b. Testing Set",
}
IDRID_SEGMENTATION = Path("A. Segmentation")
IDRID_SETS = {"training": "a. Training Set", "test": "b. Testing Set"}
IDRID_LESIONS = (
    ("1. Microaneurysms", "MA"),
    ("2. Haemorrhages", "HE"),
    ("3. Hard Exudates", "EX"),
    ("4. Soft Exudates", "SE"),
)


# ---------------------------------------------------------------------------------------------------- fundus grading


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


def convert_idrid(
    root: PathLike, out_dir: PathLike, *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> dict[str, Any]:
    """IDRiD: disease grading (sub-challenge B) as the classification splits, lesion segmentation (A) as localization.

    The official grading test set is ``test`` (``test_fraction`` applies only when its CSV is absent); the training
    set is split into training/validation. For each segmentation image the union of its MA, HE, EX and SE masks (a
    missing file means no such lesion; the optic disc is not a lesion) is written to ``out_dir/masks/<set>/<name>.png``
    (0/255) and listed under ``localization`` as ``{"image", "mask", "subset", "lesions"}``.
    """
    root = _existing_dir(root, "idrid")
    out_dir = Path(out_dir)
    train_csv = _existing_file(root / IDRID_GRADES_CSV["training"], "idrid", "the IDRiD grading training labels")
    items = _idrid_grades(root, train_csv, root / IDRID_GRADES_IMAGES["training"])
    _require_items(items, "idrid", train_csv)
    test_csv = root / IDRID_GRADES_CSV["test"]
    if test_csv.is_file():
        splits = _split("idrid", items, val_fraction, 0.0, seed)
        splits["test"] = _idrid_grades(root, test_csv, root / IDRID_GRADES_IMAGES["test"])
    else:
        logger.warning("idrid: %s not found; splitting the test set off the training images", test_csv)
        splits = _split("idrid", items, val_fraction, test_fraction, seed)
    datalist = _datalist("idrid", "multiclass", DR_GRADES, splits, [], root, seed=seed)
    localization = _idrid_localization(root, out_dir)
    if localization:
        datalist["localization"] = localization
    return datalist


def _idrid_grades(root: Path, csv_path: Path, folder: Path) -> list[dict[str, Any]]:
    items, missing = [], []
    for line, row in _read_csv(csv_path, ["Image name", "Retinopathy grade"]):
        label = _int_label(row["Retinopathy grade"], len(DR_GRADES), csv_path, line, "Retinopathy grade")
        image = _find_with_extension(folder, row["Image name"], (".jpg", ".JPG", ".jpeg", ".png", ".tif"))
        if image is None:
            missing.append(row["Image name"])
        else:
            items.append({"image": str(image), "label": label})
    _warn_missing("idrid", missing, csv_path, folder)
    return items


def _idrid_localization(root: Path, out_dir: Path) -> list[dict[str, Any]]:
    items = []
    for subset, set_dir in IDRID_SETS.items():
        image_dir = root / IDRID_SEGMENTATION / "1. Original Images" / set_dir
        truth_dir = root / IDRID_SEGMENTATION / "2. All Segmentation Groundtruths" / set_dir
        if not image_dir.is_dir():
            continue
        for image in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif")):
            lesions = {code: truth_dir / folder / f"{image.stem}_{code}.tif" for folder, code in IDRID_LESIONS}
            lesions = {code: path for code, path in lesions.items() if path.is_file()}
            with Image.open(image) as im:
                width, height = im.size
            mask = union_mask(lesions.values(), (height, width))
            mask_path = out_dir / "masks" / subset / f"{image.stem}.png"
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(mask_path)
            items.append(
                {
                    "image": str(image),
                    "mask": str(mask_path),
                    "subset": subset,
                    "lesions": sorted(lesions),
                }
            )
    if items:
        logger.info("idrid: wrote %d union lesion masks under %s", len(items), out_dir / "masks")
    return items


def union_mask(paths: Iterable[PathLike], shape: tuple[int, int]) -> np.ndarray:
    """Union of binary masks (any non-zero colour channel is foreground) as a uint8 0/255 array of ``shape`` (H, W)."""
    union = np.zeros(shape, dtype=bool)
    for path in paths:
        with Image.open(path) as im:
            if im.mode == "P":
                im = im.convert("RGB")
            elif im.mode in ("RGBA", "LA", "PA"):
                im = im.convert("RGB" if im.mode == "RGBA" else "L")
            arr = np.asarray(im)
        if arr.ndim == 3:
            arr = arr.max(axis=2)
        if arr.shape != union.shape:
            raise ValueError(
                f"{path}: mask size {arr.shape[1]}x{arr.shape[0]} differs from its image's size "
                f"{shape[1]}x{shape[0]}"
            )
        union |= arr > 0
    return union.astype(np.uint8) * 255


# ---------------------------------------------------------------------------------------------------------- chest X-ray


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
        base = next((root / n for n in ("CheXpert-v1.0-small", "CheXpert-v1.0") if (root / n).is_dir()), None)
        if base is None:
            raise FileNotFoundError(f"chexpert: {root} contains neither CheXpert-v1.0-small/ nor CheXpert-v1.0/")
    options = dict(classes=classes, uncertain=uncertain, blank=blank, frontal_only=frontal_only)
    train_csv = _existing_file(base / "train.csv", "chexpert", "CheXpert's train.csv")
    items = _chexpert_items(root, base, train_csv, **options)
    _require_items(items, "chexpert", train_csv)
    if (base / "valid.csv").is_file():
        splits = _split("chexpert", items, val_fraction, 0.0, seed)
        splits["test"] = _chexpert_items(root, base, base / "valid.csv", **options)
    else:
        logger.warning("chexpert: %s not found; splitting the test set off train.csv by patient", base / "valid.csv")
        splits = _split("chexpert", items, val_fraction, test_fraction, seed)
    extra = {"uncertain": uncertain, "blank": blank, "frontal_only": frontal_only}
    return _datalist("chexpert", "multilabel", classes, splits, [], root, seed=seed, **extra)


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


# ------------------------------------------------------------------------------------------------------ generic inputs


def convert_medmnist(
    root: PathLike, out_dir: PathLike, *, npz: PathLike | None = None, classes: Sequence[str] | None = None
) -> dict[str, Any]:
    """MedMNIST ``.npz`` (``{train,val,test}_{images,labels}``): PNGs written to ``out_dir/images/<split>/``.

    ``root`` is the ``.npz`` file, or its folder with ``npz`` naming the file (or the folder's only ``.npz``). Official
    splits are kept. Labels ``(N, 1)`` are multi-class, ``(N, K>1)`` multi-label (e.g. ChestMNIST); ``classes`` names
    them, else ``"0"`` ... ``"K-1"``. 2D images only (``(N, H, W)`` grey or ``(N, H, W, 3)`` RGB).
    """
    path = _medmnist_file(Path(root), npz)
    keys = [f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels")]
    with np.load(path) as data:
        missing = [k for k in keys if k not in data.files]
        if missing:
            raise ValueError(f"{path}: not a MedMNIST file, missing array(s) {missing} (has {sorted(data.files)})")
        arrays = {k: data[k] for k in keys}
    labels = {s: arrays[f"{s}_labels"].reshape(len(arrays[f"{s}_labels"]), -1) for s in ("train", "val", "test")}
    widths = {lab.shape[1] for lab in labels.values()}
    if len(widths) != 1:
        raise ValueError(f"{path}: label arrays disagree on the number of columns: {sorted(widths)}")
    width = widths.pop()
    task = "multilabel" if width > 1 else "multiclass"
    n_classes = width if width > 1 else max(int(lab.max(initial=0)) for lab in labels.values()) + 1
    if classes:
        classes = list(classes)
        if (task == "multilabel" and len(classes) != n_classes) or len(classes) < n_classes:
            raise ValueError(f"{path}: {len(classes)} class names given but the labels need {n_classes}")
    else:
        classes = [str(i) for i in range(n_classes)]
    out_dir = Path(out_dir)
    splits = {}
    for split, name in (("train", "training"), ("val", "validation"), ("test", "test")):
        images = arrays[f"{split}_images"]
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
            raise ValueError(
                f"{path}: {split}_images has shape {images.shape}; only 2D (N,H,W) or (N,H,W,3) is supported"
            )
        if len(images) != len(labels[split]):
            raise ValueError(f"{path}: {len(images)} {split}_images but {len(labels[split])} {split}_labels")
        folder = out_dir / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        items = []
        for i, (image, label) in enumerate(zip(images, labels[split])):
            file = folder / f"{i:06d}.png"
            Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(file)
            value = [int(v) for v in label] if task == "multilabel" else int(label[0])
            items.append({"image": str(file), "label": value})
        splits[name] = items
    logger.info("medmnist: wrote %d PNGs under %s", sum(len(v) for v in splits.values()), out_dir / "images")
    return _datalist("medmnist", task, classes, splits, [], path, name=path.stem)


def _medmnist_file(root: Path, npz: PathLike | None) -> Path:
    if root.is_file():
        return root
    if not root.is_dir():
        raise FileNotFoundError(f"medmnist: {root} is neither a .npz file nor a folder")
    if npz is not None:
        path = Path(npz) if Path(npz).is_absolute() else root / npz
        return _existing_file(path, "medmnist", "the MedMNIST .npz file given by npz")
    found = sorted(root.glob("*.npz"))
    if len(found) != 1:
        raise ValueError(f"medmnist: {root} holds {len(found)} .npz files; name one with --npz")
    return found[0]


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


_NOT_DICOM = (".csv", ".txt", ".json", ".md", ".yaml", ".yml", ".xml", ".html", ".pdf", ".zip", ".py")
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
    values = {"1": 1, "1.0": 1, "0": 0, "0.0": 0, "-1": -1, "-1.0": -1, "": -1}
    for k, (line, row) in zip(keys, rows):
        bad = [c for c in columns if row[c] not in values]
        if bad:
            raise ValueError(f"{csv_path}, line {line}: column(s) {bad} must be 0, 1, -1 or blank")
        label = [values[row[c]] for c in columns]
        labels[k] = label if any(v != -1 for v in label) else None  # nothing known: an unlabelled image
    return "multilabel", columns, labels, key


# ------------------------------------------------------------------------------------------------------------ registry

CONVERTERS: dict[str, Callable[..., dict[str, Any]]] = {
    "aptos2019": convert_aptos2019,
    "eyepacs": convert_eyepacs,
    "idrid": convert_idrid,
    "chexpert": convert_chexpert,
    "chestxray14": convert_chestxray14,
    "medmnist": convert_medmnist,
    "folder": convert_folder,
    "dicom_folder": convert_dicom_folder,
}


def convert(name: str, root: PathLike, out_dir: PathLike, **options: Any) -> dict[str, Any]:
    """Run the converter registered as ``name``; see ``CONVERTERS``."""
    if name not in CONVERTERS:
        raise ValueError(f"unknown data set format {name!r}; choose one of {sorted(CONVERTERS)}")
    return CONVERTERS[name](root, out_dir, **options)


# ------------------------------------------------------------------------------------------------------------- helpers


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
    found = []
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
