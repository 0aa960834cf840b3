"""Converters, splits and the prepare_datalist CLI against tiny fixtures in each data set's published layout."""

from __future__ import annotations

import ast
import csv
import json
import logging
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from bundle.data.datalist import load_datalist, save_datalist
from bundle.data.splits import item_stratum, select_labeled, split_items
from bundle.datasets import (
    CHESTXRAY14_CLASSES,
    CONVERTERS,
    chexpert_value,
    convert,
    convert_aptos2019,
    convert_chestxray14,
    convert_chexpert,
    convert_dicom_folder,
    convert_eyepacs,
    convert_folder,
    convert_idrid,
    convert_medmnist,
    eyepacs_patient,
)
from tests.forked import run_python

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("training", "validation", "test")


# ------------------------------------------------------------------------------------------------------------ helpers


def png(path: Path, value: int = 0, size: int = 8, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value if mode == "L" else (value, value, value)).save(path)
    return path


def write_csv(path: Path, header: list[str] | str, rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        if isinstance(header, str):  # a raw header line, e.g. with unquoted commas
            f.write(header + "\n")
        else:
            csv.writer(f).writerow(header)
        csv.writer(f).writerows(rows)
    return path


def names(items: list[dict]) -> list[str]:
    return [Path(i["image"]).name for i in items]


def patients(items: list[dict]) -> set:
    return {i["patient"] for i in items}


def assert_patient_level(datalist: dict) -> None:
    sets = [patients(datalist[k]) for k in SPLITS]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def label_of(datalist: dict, file_name: str, splits: tuple[str, ...] = SPLITS):
    found = [i for k in splits for i in datalist[k] if Path(i["image"]).name == file_name]
    assert len(found) == 1, file_name
    return found[0]["label"]


GRADES = [0] * 40 + [1] * 10 + [2] * 25 + [3] * 10 + [4] * 15  # 100 images, imbalanced


@pytest.fixture
def aptos(tmp_path: Path) -> Path:
    root = tmp_path / "aptos"
    rows = [[f"img{i:03d}", g] for i, g in enumerate(GRADES)]
    write_csv(root / "train.csv", ["id_code", "diagnosis"], rows)
    for i, g in enumerate(GRADES):
        if i not in (5, 6):  # two listed images missing on disk
            png(root / "train_images" / f"img{i:03d}.png", g * 50)
    write_csv(root / "test.csv", ["id_code"], [["t0"], ["t1"], ["t2"]])
    for i in range(3):
        png(root / "test_images" / f"t{i}.png")
    return root


# ------------------------------------------------------------------------------------------------------------- splits


def _items(n_per_class: list[int], group: int = 1) -> list[dict]:
    labels = [c for c, n in enumerate(n_per_class) for _ in range(n)]
    return [{"image": f"{i}.png", "label": y, "patient": f"p{i // group}"} for i, y in enumerate(labels)]


def test_split_items_sizes_stratification_and_seed():
    items = [{"image": f"{i}.png", "label": y} for i, y in enumerate(GRADES)]
    a = split_items(items, (0.7, 0.1, 0.2), seed=1)
    assert [len(a[k]) for k in SPLITS] == [70, 10, 20]
    assert sorted(i["image"] for k in SPLITS for i in a[k]) == sorted(i["image"] for i in items)
    per_class = Counter(GRADES)
    for key, frac in zip(SPLITS, (0.7, 0.1, 0.2)):
        counts = Counter(i["label"] for i in a[key])
        for c, n in per_class.items():
            assert abs(counts[c] - frac * n) <= 1, (key, c, counts[c], frac * n)
    assert split_items(items, (0.7, 0.1, 0.2), seed=1) == a
    assert split_items(items, (0.7, 0.1, 0.2), seed=2) != a


def test_split_items_patient_level_grouped_and_stratified():
    items = _items([40, 40, 20, 20, 20], group=2)  # 70 patients with two eyes each, same grade
    out = split_items(items, (0.6, 0.2, 0.2), seed=0)
    assert [len(patients(out[k])) for k in SPLITS] == [42, 14, 14]
    assert_patient_level(out)
    assert Counter(i["label"] for i in out["test"]) == {0: 8, 1: 8, 2: 4, 3: 4, 4: 4}


def test_split_items_multilabel_surrogate():
    counts = [50, 3, 10]
    assert item_stratum([1, 1, 1], counts) == "class 1"  # the rarest positive
    assert item_stratum([1, -1, 0], counts) == "class 0"  # unknown is not positive
    assert item_stratum([0, 0, 0], counts) == "none"
    items = [{"image": f"{i}.png", "label": [int(i % 2 == 0), int(i % 10 == 0), 0]} for i in range(100)]
    out = split_items(items, (0.8, 0.0, 0.2), seed=0)
    assert [len(out[k]) for k in SPLITS] == [80, 0, 20]
    assert sum(i["label"][1] for i in out["test"]) == 2  # 10 rare positives -> 2 in a 20% test split


def test_split_items_tiny_sets_and_bad_input(caplog):
    items = _items([6, 3, 1])  # a class with a single example
    with caplog.at_level(logging.WARNING):
        out = split_items(items, (0.6, 0.2, 0.2), seed=0)
    assert [len(out[k]) for k in SPLITS] == [6, 2, 2]
    assert "pooled" in caplog.text
    one = split_items(_items([1]), (1.0, 0.0, 0.0))
    assert len(one["training"]) == 1 and one["test"] == []
    with pytest.raises(ValueError, match="cannot split 2 items"):
        split_items(_items([1, 1]), (0.6, 0.2, 0.2))
    with pytest.raises(ValueError, match="cannot split 4 items \\(2 patients\\)"):
        split_items(_items([2, 2], group=2), (0.6, 0.2, 0.2))
    with pytest.raises(ValueError, match="sum to 1"):
        split_items(items, (0.8, 0.2, 0.2))


def test_select_labeled_subset_moves_rest_to_unlabeled():
    items = [{"image": f"{i}.png", "label": y} for i, y in enumerate(GRADES)]
    datalist = {"task": "multiclass", "classes": list("01234"), "training": items, "test": items[:3]}
    out = select_labeled(datalist, n_labeled=20, seed=0)
    assert len(out["training"]) == 20 and len(out["unlabeled"]) == 80
    assert Counter(i["label"] for i in out["training"]) == {0: 8, 1: 2, 2: 5, 3: 2, 4: 3}
    assert all("label" not in i for i in out["unlabeled"])
    assert {i["image"] for i in out["training"]} | {i["image"] for i in out["unlabeled"]} == {i["image"] for i in items}
    assert out["test"] == datalist["test"] and len(datalist["training"]) == 100  # input untouched
    assert select_labeled(datalist, n_labeled=20, seed=0) == out
    assert select_labeled(datalist, n_labeled=20, seed=1)["training"] != out["training"]
    assert len(select_labeled(datalist, labeled_fraction=0.25, seed=0)["training"]) == 25
    assert len(select_labeled(datalist, n_labeled=3, seed=0)["training"]) == 3  # fewer than the 5 classes
    with pytest.raises(ValueError, match="only 100 training items"):
        select_labeled(datalist, n_labeled=101)
    with pytest.raises(ValueError, match="exactly one"):
        select_labeled(datalist, n_labeled=5, labeled_fraction=0.5)


def test_select_labeled_keeps_patients_whole():
    items = _items([30, 30, 20, 20], group=2)
    out = select_labeled({"task": "multiclass", "classes": list("0123"), "training": items}, n_labeled=31, seed=3)
    assert len(out["training"]) == 31 and len(out["unlabeled"]) == 69
    assert len(patients(out["training"]) & patients(out["unlabeled"])) <= 1  # only the last patient drawn is cut


# ----------------------------------------------------------------------------------------------------- fundus grading


def test_aptos2019(aptos: Path, tmp_path: Path, caplog):
    with caplog.at_level(logging.WARNING):
        dl = convert_aptos2019(aptos, tmp_path, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert "2 image(s) listed in" in caplog.text and "img005.png" in caplog.text
    assert (dl["name"], dl["task"], dl["classes"]) == ("aptos2019", "multiclass", ["0", "1", "2", "3", "4"])
    assert [len(dl[k]) for k in SPLITS] == [69, 10, 19]
    assert sorted(names(dl["unlabeled"])) == ["t0.png", "t1.png", "t2.png"]
    assert label_of(dl, "img000.png") == 0 and label_of(dl, "img045.png") == 1 and label_of(dl, "img099.png") == 4
    per_class = Counter(g for i, g in enumerate(GRADES) if i not in (5, 6))
    for key, frac in zip(SPLITS, (0.7, 0.1, 0.2)):
        counts = Counter(i["label"] for i in dl[key])
        assert all(abs(counts[c] - frac * n) <= 1.5 for c, n in per_class.items()), (key, counts)
    again = convert_aptos2019(aptos, tmp_path, seed=0)
    other = convert_aptos2019(aptos, tmp_path, seed=1)
    assert again == dl and names(other["test"]) != names(dl["test"])


def _eyepacs(root: Path, with_solution: bool) -> None:
    rows = [[f"{p}_{side}", (p * 7 + (side == "right")) % 5] for p in range(10, 50) for side in ("left", "right")]
    write_csv(root / "trainLabels.csv", ["image", "level"], rows)
    for name, _ in rows:
        png(root / "train" / f"{name}.jpeg")
    if with_solution:
        test_rows = [
            [f"{p}_{side}", p % 5, "Public" if p % 2 else "Private"] for p in (1, 2, 3) for side in ("left", "right")
        ]
        write_csv(root / "retinopathy_solution.csv", ["image", "level", "Usage"], test_rows)
        for name, _, _ in test_rows:
            png(root / "test" / f"{name}.jpeg")


def test_eyepacs_official_test_and_patients(tmp_path: Path):
    assert eyepacs_patient("10_left") == "10" and eyepacs_patient("10_right") == "10" and eyepacs_patient("x") == "x"
    _eyepacs(tmp_path / "eyepacs", with_solution=True)
    dl = convert_eyepacs(tmp_path / "eyepacs", tmp_path, val_fraction=0.25, seed=0)
    assert len(dl["test"]) == 6 and patients(dl["test"]) == {"1", "2", "3"}
    assert label_of(dl, "2_right.jpeg") == 2 and label_of(dl, "11_right.jpeg") == (77 + 1) % 5
    assert [len(patients(dl[k])) for k in ("training", "validation")] == [30, 10]
    assert [len(dl[k]) for k in ("training", "validation")] == [60, 20]
    assert_patient_level(dl)


def test_eyepacs_without_solution_splits_test_by_patient(tmp_path: Path):
    _eyepacs(tmp_path / "eyepacs", with_solution=False)
    dl = convert_eyepacs(tmp_path / "eyepacs", tmp_path, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert [len(patients(dl[k])) for k in SPLITS] == [28, 4, 8]
    assert_patient_level(dl)


def _tif(path: Path, pixels: list[tuple[int, int]], rgb: bool = False, one: bool = False) -> None:
    arr = np.zeros((8, 8, 3) if rgb else (8, 8), np.uint8)
    for y, x in pixels:
        arr[y, x] = (255, 0, 0) if rgb else (1 if one else 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_idrid_grades_official_test_and_union_masks(tmp_path: Path):
    root = tmp_path / "IDRiD"
    grading = root / "B. Disease Grading"
    header = ["Image name", "Retinopathy grade", "Risk of macular edema ", "", ""]  # real files: trailing space/cols
    train_rows = [[f"IDRiD_{i:03d}", i % 5, i % 3, "", ""] for i in range(1, 21)]
    test_rows = [[f"IDRiD_{i:03d}", (i + 1) % 5, 0, "", ""] for i in range(1, 6)] + [["", "", "", "", ""]]
    write_csv(grading / "2. Groundtruths" / "a. IDRiD_Disease Grading_Training Labels.csv", header, train_rows)
    write_csv(grading / "2. Groundtruths" / "b. IDRiD_Disease Grading_Testing Labels.csv", header, test_rows)
    for i in range(1, 21):
        png(grading / "1. Original Images" / "a. Training Set" / f"IDRiD_{i:03d}.jpg", mode="RGB")
    for i in range(1, 6):
        png(grading / "1. Original Images" / "b. Testing Set" / f"IDRiD_{i:03d}.jpg", mode="RGB")
    seg = root / "A. Segmentation"
    truth = seg / "2. All Segmentation Groundtruths"
    for name, subset in (
        ("IDRiD_01", "a. Training Set"),
        ("IDRiD_02", "a. Training Set"),
        ("IDRiD_55", "b. Testing Set"),
    ):
        png(seg / "1. Original Images" / subset / f"{name}.jpg", mode="RGB")
        _tif(truth / subset / "5. Optic Disc" / f"{name}_OD.tif", [(7, 7)])  # not a lesion
    _tif(truth / "a. Training Set" / "1. Microaneurysms" / "IDRiD_01_MA.tif", [(1, 1)], one=True)  # 0/1 values
    _tif(truth / "a. Training Set" / "3. Hard Exudates" / "IDRiD_01_EX.tif", [(2, 3)], rgb=True)  # red on black
    _tif(truth / "a. Training Set" / "2. Haemorrhages" / "IDRiD_02_HE.tif", [(4, 4), (4, 5)])
    out_dir = tmp_path / "lists"  # datalist outside the data folder: images absolute, masks relative

    dl = convert_idrid(root, out_dir, val_fraction=0.2, seed=0)
    assert [len(dl[k]) for k in SPLITS] == [16, 4, 5]
    train_val = ("training", "validation")  # the official test set reuses the names IDRiD_001 ... as IDRiD does
    assert label_of(dl, "IDRiD_007.jpg", train_val) == 2 and label_of(dl, "IDRiD_001.jpg", train_val) == 1
    assert [i["label"] for i in sorted(dl["test"], key=lambda i: i["image"])] == [2, 3, 4, 0, 1]
    loc = {Path(i["image"]).stem: i for i in dl["localization"]}
    assert sorted(loc) == ["IDRiD_01", "IDRiD_02", "IDRiD_55"]
    assert loc["IDRiD_01"]["lesions"] == ["EX", "MA"] and loc["IDRiD_55"]["lesions"] == []
    assert (
        loc["IDRiD_01"]["mask"] == str(out_dir / "masks/training/IDRiD_01.png") and loc["IDRiD_55"]["subset"] == "test"
    )
    masks = {k: np.asarray(Image.open(v["mask"])) for k, v in loc.items()}
    assert sorted(zip(*np.nonzero(masks["IDRiD_01"]))) == [(1, 1), (2, 3)]
    assert sorted(zip(*np.nonzero(masks["IDRiD_02"]))) == [(4, 4), (4, 5)]
    assert set(np.unique(masks["IDRiD_01"])) == {0, 255} and not masks["IDRiD_55"].any()
    saved = json.loads(save_datalist(out_dir / "datalist.json", dl).read_text())
    assert saved["localization"][0]["mask"] == "masks/training/IDRiD_01.png"  # inside the datalist's folder
    assert Path(saved["localization"][0]["image"]).is_absolute()  # the images stay where the data set is
    loaded = load_datalist(out_dir / "datalist.json", "localization")
    assert [i["mask"] for i in loaded] == [i["mask"] for i in dl["localization"]]


# -------------------------------------------------------------------------------------------------------- chest X-ray

CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,Lung Opacity,Lung Lesion,"
    "Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,Pleural Effusion,Pleural Other,Fracture,Support Devices"
).split(",")


def _chexpert_row(path: str, view: str, values: dict[str, str]) -> list[str]:
    meta = {
        "Path": path,
        "Sex": "Female",
        "Age": "60",
        "Frontal/Lateral": view,
        "AP/PA": "AP" if view == "Frontal" else "",
    }
    return [meta.get(h, values.get(h, "")) for h in CHEXPERT_HEADER]


VALID_VALUES = {
    "Atelectasis": "0.0",
    "Cardiomegaly": "0.0",
    "Consolidation": "0.0",
    "Edema": "1.0",
    "Pleural Effusion": "0",
}


@pytest.fixture
def chexpert(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    base = root / "CheXpert-v1.0-small"
    rows = [
        _chexpert_row(
            "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg",
            "Frontal",
            {
                "Atelectasis": "-1.0",
                "Cardiomegaly": "1.0",
                "Consolidation": "",
                "Edema": "0.0",
                "Pleural Effusion": "-1.0",
            },
        ),
        _chexpert_row("CheXpert-v1.0-small/train/patient00001/study1/view2_lateral.jpg", "Lateral", {"Edema": "1.0"}),
    ]
    rng = np.random.default_rng(0)
    for p in range(2, 41):
        for s in range(1, 3):
            values = {c: str(rng.choice(["1.0", "0.0", "-1.0", ""])) for c in CHEXPERT_HEADER[5:]}
            rows.append(
                _chexpert_row(f"CheXpert-v1.0-small/train/patient{p:05d}/study{s}/view1_frontal.jpg", "Frontal", values)
            )
    write_csv(base / "train.csv", CHEXPERT_HEADER, rows)
    valid = [
        _chexpert_row(f"CheXpert-v1.0-small/valid/patient{p}/study1/view1_frontal.jpg", "Frontal", VALID_VALUES)
        for p in (64541, 64542, 64543)
    ]
    write_csv(base / "valid.csv", CHEXPERT_HEADER, valid)
    for row in rows + valid:
        png(root / row[0])
    return root


@pytest.mark.parametrize(
    "uncertain, blank, expected",
    [("ones", "zeros", [1, 1, 0, 0, 1]), ("zeros", "zeros", [0, 1, 0, 0, 0]), ("ignore", "ignore", [-1, 1, -1, 0, -1])],
)
def test_chexpert_policies(chexpert: Path, tmp_path: Path, uncertain: str, blank: str, expected: list[int]):
    dl = convert_chexpert(chexpert, tmp_path, uncertain=uncertain, blank=blank, seed=0)
    assert dl["classes"] == ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
    first = [i for k in SPLITS for i in dl[k] if "patient00001/study1/view1_frontal" in i["image"]]
    assert len(first) == 1 and first[0]["label"] == expected and first[0]["patient"] == "patient00001"
    assert not any("lateral" in i["image"] for k in SPLITS for i in dl[k])
    assert len(dl["test"]) == 3 and all(i["label"] == [0, 0, 0, 1, 0] for i in dl["test"])
    assert len(dl["training"]) + len(dl["validation"]) == 79 and len(patients(dl["validation"])) == 4
    assert_patient_level(dl)


def test_chexpert_options_and_errors(chexpert: Path, tmp_path: Path):
    assert (
        chexpert_value("1.0") == 1
        and chexpert_value("-1.0", "ignore") == -1
        and chexpert_value("", blank="ignore") == -1
    )
    dl = convert_chexpert(
        chexpert / "CheXpert-v1.0-small", tmp_path, classes=["Edema", "No Finding"], frontal_only=False
    )
    assert dl["classes"] == ["Edema", "No Finding"]
    assert label_of(dl, "view2_lateral.jpg") == [1, 0]
    with pytest.raises(ValueError, match="unknown class"):
        convert_chexpert(chexpert, tmp_path, classes=["Effusion"])
    write_csv(chexpert / "CheXpert-v1.0-small" / "valid.csv", CHEXPERT_HEADER[:10], [])
    with pytest.raises(ValueError, match=r"valid\.csv: missing required column\(s\) \['Atelectasis', 'Consolidation'"):
        convert_chexpert(chexpert, tmp_path)


CXR14_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)


@pytest.mark.parametrize("layout", ["nih", "flat"])
def test_chestxray14(tmp_path: Path, caplog, layout: str):
    root = tmp_path / "cxr14"
    findings = ["No Finding", "Cardiomegaly|Effusion", "Infiltration", "Mass|Nodule|Hernia", "Pneumothorax"]
    rows, names_ = [], []
    for p in range(1, 41):
        for f in range(p % 3 + 1):
            name = f"{p:08d}_{f:03d}.png"
            names_.append(name)
            rows.append([name, findings[(p + f) % 5], f, p, 50, "M", "PA", 2500, 2048, 0.143, 0.143, ""])  # trailing ,
    write_csv(root / ("Data_Entry_2017.csv" if layout == "nih" else "Data_Entry_2017_v2020.csv"), CXR14_HEADER, rows)
    test_names = [n for n in names_ if int(n[:8]) > 32]
    (root / "test_list.txt").write_text("\n".join(test_names) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(n for n in names_ if n not in test_names) + "\n")
    for k, name in enumerate(names_):
        if name == "00000005_000.png":
            continue  # listed but missing
        png(root / (f"images_{k % 2 + 1:03d}/images" if layout == "nih" else "images") / name)
    (root / "README_CHESTXRAY.pdf").write_bytes(b"%PDF")

    with caplog.at_level(logging.WARNING):
        dl = convert_chestxray14(root, tmp_path, val_fraction=0.2, seed=0)
    assert "1 image(s) listed in" in caplog.text and "00000005_000.png" in caplog.text
    assert dl["classes"] == CHESTXRAY14_CLASSES and dl["task"] == "multilabel"
    assert sorted(names(dl["test"])) == test_names
    assert label_of(dl, "00000001_000.png") == [0, 1, 1] + [0] * 11
    assert label_of(dl, "00000002_001.png") == [0, 0, 0, 0, 1, 1] + [0] * 7 + [1]
    assert label_of(dl, "00000004_001.png") == [0] * 14  # No Finding
    trainval = len(names_) - len(test_names) - 1
    assert len(dl["training"]) + len(dl["validation"]) == trainval
    assert [len(patients(dl[k])) for k in ("training", "validation")] == [26, 6]
    assert_patient_level(dl)


# ----------------------------------------------------------------------------------------------------- generic inputs


def test_medmnist_multiclass_and_multilabel(tmp_path: Path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 3).reshape(n, 1)
    np.savez(tmp_path / "pathmnist.npz", **arrays)
    out_dir = tmp_path / "out"
    dl = convert_medmnist(tmp_path, out_dir, npz="pathmnist.npz")
    assert (dl["name"], dl["task"], dl["classes"]) == ("pathmnist", "multiclass", ["0", "1", "2"])
    assert [len(dl[k]) for k in SPLITS] == [6, 2, 3] and [i["label"] for i in dl["test"]] == [0, 1, 2]
    np.testing.assert_array_equal(np.asarray(Image.open(dl["training"][4]["image"])), arrays["train_images"][4])
    assert Path(dl["validation"][1]["image"]) == out_dir / "images" / "val" / "000001.png"

    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        arrays[f"{split}_labels"] = np.eye(2, dtype=np.uint8)[np.arange(n) % 2]
    np.savez(tmp_path / "chest.npz", **arrays)
    dl = convert_medmnist(tmp_path / "chest.npz", out_dir, classes=["a", "b"])
    assert (dl["task"], dl["classes"]) == ("multilabel", ["a", "b"]) and dl["training"][1]["label"] == [0, 1]
    assert np.asarray(Image.open(dl["test"][0]["image"])).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="2 class names given but the labels need 3"):
        convert_medmnist(tmp_path / "pathmnist.npz", out_dir, classes=["a", "b"])
    np.savez(tmp_path / "bad.npz", train_images=np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match=r"bad\.npz: not a MedMNIST file, missing array"):
        convert_medmnist(tmp_path / "bad.npz", out_dir)


def test_folder(tmp_path: Path, caplog):
    root = tmp_path / "classes"
    for c, n in (("normal", 20), ("abnormal", 10)):
        for i in range(n):
            png(root / c / ("sub" if i % 2 else "") / f"{c}{i}.{'jpg' if i % 3 else 'png'}")
    (root / "normal" / "notes.txt").write_text("not an image")
    (root / "empty").mkdir()
    with caplog.at_level(logging.WARNING):
        dl = convert_folder(root, tmp_path, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert "empty" in caplog.text
    assert dl["classes"] == ["abnormal", "normal"] and dl["name"] == "classes"
    assert [len(dl[k]) for k in SPLITS] == [18, 6, 6]
    assert Counter(i["label"] for i in dl["test"]) == {0: 2, 1: 4}
    assert label_of(dl, "normal3.png") == 1 and label_of(dl, "abnormal1.jpg") == 0


def write_dicom(path: Path, patient: str, uid: str, preamble: bool = True) -> None:
    ds = Dataset()
    ds.PatientID, ds.SOPInstanceUID, ds.SOPClassUID, ds.Modality = patient, uid, "1.2.840.10008.5.1.4.1.1.7", "OT"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelData = 1, "MONOCHROME2", bytes(64)
    path.parent.mkdir(parents=True, exist_ok=True)
    if preamble:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.save_as(path, implicit_vr=True, little_endian=True)
    assert (open(path, "rb").read(132)[128:] == b"DICM") == preamble


@pytest.fixture
def dicoms(tmp_path: Path) -> Path:
    root = tmp_path / "dicom"
    for i in range(40):
        name = [f"IM{i:04d}.dcm", f"IM{i:04d}", f"1.2.3.{i}"][i % 3]  # .dcm, no extension, dotted UID-like name
        write_dicom(root / f"P{i // 2:03d}" / "series" / name, f"P{i // 2:03d}", f"1.2.3.4.{i}", preamble=i != 7)
    (root / "README.txt").write_text("not dicom")
    (root / "P000" / "junk").write_bytes(bytes(range(256)) * 4)  # no extension, not DICOM
    return root


def test_dicom_folder_multiclass_by_file(dicoms: Path, tmp_path: Path, caplog):
    files = sorted(
        p.relative_to(dicoms).as_posix() for p in dicoms.rglob("*") if p.is_file() and p.parent.name == "series"
    )
    assert len(files) == 40
    rows = [[f, ["normal", "pneumonia"][int(f.split("/")[0][1:]) % 2]] for f in files[:36]]
    rows += [[files[36], ""], ["P999/series/gone.dcm", "normal"]]  # a blank label; a row without a file
    write_csv(dicoms / "labels.csv", ["file", "label"], rows)
    with caplog.at_level(logging.WARNING):
        dl = convert_dicom_folder(dicoms, tmp_path, labels_csv=dicoms / "labels.csv", val_fraction=0.2, seed=0)
    assert "1 row(s) of" in caplog.text and "gone.dcm" in caplog.text
    assert (dl["task"], dl["classes"]) == ("multiclass", ["normal", "pneumonia"])
    assert sum(len(dl[k]) for k in SPLITS) == 36 and len(dl["unlabeled"]) == 4
    assert {i["patient"] for i in dl["unlabeled"]} == {"P018", "P019"}
    assert label_of(dl, "IM0007") == 1  # written without the DICM preamble
    assert label_of(dl, "IM0000.dcm") == 0 and label_of(dl, "1.2.3.2") == 1
    assert [len(patients(dl[k])) for k in SPLITS] == [11, 4, 3]
    assert_patient_level(dl)


def test_dicom_folder_multilabel_by_uid(dicoms: Path, tmp_path: Path):
    rows = [[f"1.2.3.4.{i}", int(i % 2 == 0), int(i % 5 == 0) if i != 3 else ""] for i in range(30)]
    csv_path = write_csv(tmp_path / "labels.csv", ["SOPInstanceUID", "effusion", "mass"], rows)
    dl = convert_dicom_folder(dicoms, tmp_path, labels_csv=csv_path, seed=0)
    assert (dl["task"], dl["classes"]) == ("multilabel", ["effusion", "mass"])
    assert sum(len(dl[k]) for k in SPLITS) == 30 and len(dl["unlabeled"]) == 10
    assert label_of(dl, "IM0000.dcm") == [1, 1] and label_of(dl, "IM0003.dcm") == [0, -1]
    write_csv(tmp_path / "bad.csv", ["name", "label"], [["x", 1]])
    with pytest.raises(ValueError, match=r"bad\.csv: missing a key column"):
        convert_dicom_folder(dicoms, tmp_path, labels_csv=tmp_path / "bad.csv")


# -------------------------------------------------------------------------------------------------- registry and CLI


def test_registry_and_errors(tmp_path: Path):
    assert set(CONVERTERS) == {
        "aptos2019",
        "eyepacs",
        "idrid",
        "chexpert",
        "chestxray14",
        "medmnist",
        "folder",
        "dicom_folder",
    }
    with pytest.raises(ValueError, match="unknown data set format"):
        convert("nope", tmp_path, tmp_path)
    write_csv(tmp_path / "train.csv", ["id_code", "grade"], [["a", 1]])
    with pytest.raises(ValueError, match=r"train\.csv: missing required column\(s\) \['diagnosis'\]"):
        convert_aptos2019(tmp_path, tmp_path)
    write_csv(tmp_path / "train.csv", ["id_code", "diagnosis"], [["a", 7]])
    with pytest.raises(ValueError, match=r"train\.csv, line 2: column 'diagnosis' is '7'"):
        convert_aptos2019(tmp_path, tmp_path)


def test_cli_prepare_datalist(aptos: Path):
    out = aptos / "lists" / "datalist.json"
    cmd = [
        sys.executable,
        "scripts/prepare_datalist.py",
        "--format",
        "aptos2019",
        "--root",
        str(aptos),
        "--out",
        str(out),
    ]
    result = subprocess.run(cmd + ["--n-labeled", "20", "--seed", "3"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout and "unlabeled" in result.stdout
    assert "--data_roots \"['" + str(aptos.resolve()) + "']\"" in result.stdout  # images outside lists/
    assert "2 image(s) listed in" in result.stderr
    saved = json.loads(out.read_text())
    assert [len(saved[k]) for k in SPLITS + ("unlabeled",)] == [20, 10, 19, 49 + 3]
    assert Path(saved["training"][0]["image"]).is_absolute()  # the images are outside lists/
    assert load_datalist(out, "training")[0]["image"].startswith(str(aptos))
    assert saved["labeled_subset"] == {"n_labeled": 20, "n_training": 69, "seed": 3}
    bad = subprocess.run(cmd + ["--uncertain", "ones"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and "--uncertain does not apply to --format aptos2019" in bad.stderr


def parse_training_command(line: str) -> tuple[list[str], dict]:
    """The config files and overrides of a printed ``monai.bundle run training`` line, parsed as its command line
    parses them (python-fire: a value that is a Python literal becomes that literal)."""
    words = shlex.split(line)
    assert words[:5] == ["python", "-m", "monai.bundle", "run", "training"], line
    options = dict(zip(words[5::2], words[6::2]))
    assert all(k.startswith("--") for k in options), line
    values = {}
    for key, raw in options.items():
        try:
            values[key[2:]] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            values[key[2:]] = raw
    configs = values.pop("config_file")
    return [configs] if isinstance(configs, str) else configs, values


def test_printed_training_command_passes_the_data_check(tmp_path: Path):
    """The README's pair: a datalist written away from its images. The training command prepare_datalist.py prints
    passes training's pre-flight check (the config's own ``preflight_report`` step, with every override of the
    line) only because it carries ``data_roots``; without that one override every image is refused."""
    root = tmp_path / "aptos2019"
    rng = np.random.default_rng(0)
    rows = [[f"img{i:03d}", i % 5] for i in range(50)]
    for name, _ in rows:  # distinct contents: identical files in two splits would be a leak
        (root / "train_images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / "train_images" / f"{name}.png")
    write_csv(root / "train.csv", ["id_code", "diagnosis"], rows)
    out = tmp_path / "lists" / "aptos2019" / "datalist.json"
    cmd = [
        sys.executable,
        "scripts/prepare_datalist.py",
        "--format",
        "aptos2019",
        "--root",
        str(root),
        "--out",
        str(out),
    ]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines() if "monai.bundle run training" in line]
    assert [parse_training_command(line)[0][0] for line in lines] == [
        "configs/train_teacher.yaml",
        "configs/train.yaml",
    ]
    configs, overrides = parse_training_command(lines[1])
    assert configs == ["configs/train.yaml", "configs/datasets/aptos2019.yaml"]
    assert overrides["data_roots"] == [str((root / "train_images").resolve())]
    assert Path(overrides["dataset_dir"]).resolve() == out.parent.resolve()

    def data_check(overrides: dict):
        parser = ConfigParser()
        parser.read_config([str(REPO / c) for c in configs])
        parser.update(overrides)
        return parser.get_parsed_content("preflight_report")

    assert data_check(overrides).ok
    without = {k: v for k, v in overrides.items() if k != "data_roots"}
    with pytest.raises(SystemExit, match="outside"):
        data_check(without)
    # the stand-alone check agrees: scripts/validate_datalist.py with and without the printed folder
    validate = ["scripts/validate_datalist.py", str(out), "--no-decode"]
    allowed = run_python(validate + ["--allow-root", overrides["data_roots"][0]], cwd=REPO)
    assert allowed.returncode == 0, allowed.stdout
    assert run_python(validate, cwd=REPO).returncode == 1
