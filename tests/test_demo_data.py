"""Built-in synthetic demo data: layout, determinism, DICOM validity, masks, and that labels are honest.

"Honest" means a classifier on global intensity histograms stays near chance (the lesion colours are budgeted), while
the same classifier does find the label when the compensation is switched off (so the test has teeth).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bundle.data.datalist import load_datalist, read_datalist_info, validate_datalist
from bundle.data.readers import MedicalImageReader
from bundle.datasets.demo import (
    CXR_CLASSES,
    FUNDUS_CLASSES,
    demo_sample,
    generate_demo_data,
    sample_rng,
    synth_cxr,
    synth_fundus,
    write_cxr_dicom,
)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_demo_data.py"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
CR = "1.2.840.10008.5.1.4.1.1.1"


def read_image(path):
    """The bundle's own reader: what training sees."""
    return MedicalImageReader().read_file(path)[0]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------ layout and CLI


@pytest.mark.parametrize("task", ["fundus", "cxr"])
def test_cli_layout_and_datalist(tmp_path: Path, task: str) -> None:
    out = tmp_path / "demo"
    cmd = [sys.executable, str(SCRIPT), "--task", task, "--out", str(out), "--n-train", "4", "--n-val", "2"]
    cmd += ["--n-test", "3", "--size", "40", "--seed", "3", "--n-unlabeled", "2"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "datalist.json" in proc.stdout and "training" in proc.stdout

    content = json.loads((out / "datalist.json").read_text())
    validate_datalist(content)
    info = read_datalist_info(out / "datalist.json")
    assert info["name"] == f"demo_{task}" and info["domain"] == "A"
    assert info["task"] == ("multiclass" if task == "fundus" else "multilabel")
    assert info["classes"] == (FUNDUS_CLASSES if task == "fundus" else CXR_CLASSES)
    counts = {"training": 4, "validation": 2, "test": 3, "unlabeled": 2}
    ext = ".png" if task == "fundus" else ".dcm"
    prefix = {"training": "train", "validation": "val", "test": "test", "unlabeled": "unlabeled"}
    for split, n in counts.items():
        rel = content[split]
        assert len(rel) == n
        assert [r["image"] for r in rel] == [f"images/{prefix[split]}_{i:05d}{ext}" for i in range(n)]
        assert [r["mask"] for r in rel] == [f"masks/{prefix[split]}_{i:05d}.png" for i in range(n)]
        assert all(("label" in r) == (split != "unlabeled") for r in rel)
        for item in load_datalist(out / "datalist.json", split):
            assert Path(item["image"]).is_file()
            with Image.open(item["mask"]) as m:
                assert m.mode == "L" and m.size == (40, 40)
                assert set(np.unique(np.asarray(m))) <= {0, 255}
            if task == "fundus":
                with Image.open(item["image"]) as im:
                    assert im.mode == "RGB" and im.size == (40, 40)
            if "label" in item and task == "cxr":
                assert len(item["label"]) == len(CXR_CLASSES) and set(item["label"]) <= {0, 1}
    assert len(list((out / "images").iterdir())) == len(list((out / "masks").iterdir())) == sum(counts.values())


def test_cli_rejects_bad_arguments(tmp_path: Path) -> None:
    base = [sys.executable, str(SCRIPT), "--out", str(tmp_path / "x"), "--n-train", "1", "--n-val", "1"]
    base += ["--n-test", "1", "--seed", "0"]
    for extra in (["--task", "mri", "--size", "40"], ["--task", "cxr", "--size", "16"], ["--task", "cxr"]):
        assert subprocess.run(base + extra, capture_output=True).returncode != 0


# --------------------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("task", ["fundus", "cxr"])
def test_same_arguments_give_identical_bytes(tmp_path: Path, task: str) -> None:
    kwargs = dict(n_train=5, n_val=2, n_test=2, size=48, seed=11, domain="B", n_unlabeled=1)
    generate_demo_data(task, tmp_path / "a", **kwargs)
    generate_demo_data(task, tmp_path / "b", **kwargs)
    a, b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert len(a) == 2 * 10 + 1 and a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a)
    generate_demo_data(task, tmp_path / "c", **{**kwargs, "seed": 12})
    name = "images/train_00000." + ("png" if task == "fundus" else "dcm")
    assert a[name] != _tree_bytes(tmp_path / "c")[name]


def test_images_do_not_depend_on_split_sizes(tmp_path: Path) -> None:
    generate_demo_data("fundus", tmp_path / "a", 3, 1, 1, size=40, seed=5)
    generate_demo_data("fundus", tmp_path / "b", 3, 4, 0, size=40, seed=5)
    for name in ("images/train_00002.png", "masks/val_00000.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    sample = demo_sample("fundus", "validation", 0, size=40, seed=5)
    with Image.open(tmp_path / "a" / "images" / "val_00000.png") as im:
        assert np.array_equal(np.asarray(im), sample.image)
    with Image.open(tmp_path / "a" / "masks" / "val_00000.png") as im:
        assert np.array_equal(np.asarray(im) > 0, sample.mask)


def test_domains_differ_but_rules_do_not() -> None:
    a = [synth_fundus(sample_rng(0, "fundus", "A", "test", i), 48, "A", grade=0).image for i in range(20)]
    b = [synth_fundus(sample_rng(0, "fundus", "B", "test", i), 48, "B", grade=0).image for i in range(20)]
    ratio = [float(np.mean(x[..., 1]) / np.mean(x[..., 0])) for x in (np.stack(a), np.stack(b))]
    assert ratio[1] > ratio[0] * 1.1  # domain B has a green-yellow cast
    for domain in ("A", "B"):
        for grade in range(5):
            s = synth_fundus(sample_rng(1, "fundus", domain, "test", grade), 48, domain, grade=grade)
            assert s.label == grade and (s.mask.any() == (grade > 0))


# ------------------------------------------------------------------------------------------------ fundus content


@pytest.mark.parametrize("size", [32, 64])
def test_fundus_grades_lesions_and_budgets(size: int) -> None:
    for i in range(15):
        grade = i % 5
        s = synth_fundus(sample_rng(2, "fundus", "A", "training", i), size, grade=grade)
        assert s.image.shape == (size, size, 3) and s.image.dtype == np.uint8
        assert s.mask.shape == (size, size) and s.mask.dtype == bool
        info = s.info
        assert (info["n_ma"] >= 2) if grade == 1 else (info["n_ma"] == 0 or grade >= 2)
        assert (info["n_he"] > 0) == (grade >= 2)
        assert (info["n_ex"] > 0) == (grade >= 3)
        assert (info["n_cws"] > 0) == (grade == 4)
        assert s.mask.any() == (grade > 0)
        if grade:  # every lesion is at least one pixel, even at 32 px
            assert s.mask.sum() >= info["n_ma"] + info["n_he"] + info["n_ex"] + info["n_cws"]
        # the budgets are met exactly, whatever the grade
        assert info["red_pixels"] == info["budget_red"]
        assert info["yellow_pixels"] == info["budget_yellow"]
        assert info["white_pixels"] == info["budget_white"]
    with pytest.raises(ValueError, match=r"grade must be in \[0, 5\), got 5"):
        synth_fundus(sample_rng(0, "fundus", "A", "test", 0), 32, grade=5)


def test_fundus_mask_marks_the_lesions() -> None:
    # haemorrhages (grade 2) are darker than the retina around them; cotton-wool spots (grade 4) brighter in blue
    dark, bright = [], []
    for i in range(10):
        s = synth_fundus(sample_rng(3, "fundus", "A", "test", i), 64, grade=2)
        ring = _ring(s.mask)
        dark.append(s.image[s.mask, 0].mean() < s.image[ring, 0].mean())
        s = synth_fundus(sample_rng(3, "fundus", "A", "test", 100 + i), 64, grade=4)
        bright.append(s.image[s.mask, 2].max() > np.percentile(s.image[..., 2], 99))
    assert all(dark) and all(bright)


def _ring(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=3) & ~ndimage.binary_dilation(mask, iterations=1)


# --------------------------------------------------------------------------------------------------- chest X-ray


def test_cxr_findings_masks_and_budgets() -> None:
    for k in range(len(CXR_CLASSES)):
        labels = [int(j == k) for j in range(len(CXR_CLASSES))]
        for i in range(3):
            s = synth_cxr(sample_rng(4, "cxr", "A", "training", 10 * k + i), 48, labels=labels)
            assert s.image.shape == (48, 48) and s.image.dtype == np.float32
            assert 0.0 <= s.image.min() and s.image.max() <= 1.0
            assert s.label == labels and s.mask.any()
            assert s.info["opacity_pixels"] == s.info["budget_opacity"]
            assert s.info["aerated_pixels"] == s.info["budget_aerated"]
    s = synth_cxr(sample_rng(4, "cxr", "A", "training", 99), 32, labels=[0, 0, 0, 0])
    assert not s.mask.any()
    s = synth_cxr(sample_rng(4, "cxr", "A", "training", 98), 48, labels=[1, 0, 0, 0])
    lung_like = s.image[_ring(s.mask)]
    assert s.image[s.mask].mean() > lung_like.mean()  # a nodule is denser (brighter) than the lung around it


def test_dicom_headers_and_decoding(tmp_path: Path) -> None:
    generate_demo_data("cxr", tmp_path, 24, 0, 0, size=40, seed=7)
    generate_demo_data("cxr", tmp_path / "b", 8, 0, 0, size=40, seed=7, domain="B")
    seen = {"MONOCHROME1": 0, "MONOCHROME2": 0, 8: 0, 12: 0, 16: 0, "rescale": 0}
    uids = set()
    for i in range(24):
        path = tmp_path / "images" / f"train_{i:05d}.dcm"
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID == DX_FOR_PRESENTATION and ds.Modality == "DX"
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Rows == ds.Columns == 40 and len(ds.PixelSpacing) == 2
        assert ds.PatientID and str(ds.PatientName) and ds.BitsAllocated in (8, 16)
        assert ds.BitsStored in (8, 12, 16) and ds.HighBit == ds.BitsStored - 1
        uids |= {ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID}
        seen[ds.PhotometricInterpretation] += 1
        seen[ds.BitsStored] += 1
        seen["rescale"] += "RescaleSlope" in ds
        arr = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
        assert arr.shape == (40, 40) and np.isfinite(arr).all()
        # a correct reader (modality LUT, window, MONOCHROME1 inversion) sees the generated anatomy: bright = dense
        truth = demo_sample("cxr", "training", i, size=40, seed=7).image
        assert np.corrcoef(read_image(path).ravel(), truth.ravel())[0, 1] > 0.97
    assert len(uids) == 3 * 24
    assert all(v > 0 for v in seen.values()), seen
    ds = pydicom.dcmread(tmp_path / "b" / "images" / "train_00000.dcm")
    assert ds.SOPClassUID == CR and ds.Modality == "CR"


def test_monochrome1_is_inverted_on_disk(tmp_path: Path) -> None:
    image = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))  # dense (bright) on the right
    for seed in range(40):
        path = tmp_path / f"{seed}.dcm"
        write_cxr_dicom(path, image, np.random.default_rng(seed), ["t", seed], "P1")
        ds = pydicom.dcmread(path)
        raw = ds.pixel_array.astype(float)
        increasing = raw[:, -1].mean() > raw[:, 0].mean()
        assert increasing == (ds.PhotometricInterpretation == "MONOCHROME2")
        assert read_image(path)[:, -1].mean() > 0.9 and read_image(path)[:, 0].mean() < 0.1


# ------------------------------------------------------------------------------------------ honesty of the labels


def _fundus_histograms(n: int, compensate: bool, domain: str = "A") -> tuple[np.ndarray, np.ndarray]:
    feats, labels = [], []
    for i in range(n):
        s = synth_fundus(sample_rng(21, "fundus", domain, "training", i), 40, domain, compensate=compensate)
        img = s.image.astype(np.float64) / 255
        feats.append(np.concatenate([np.histogram(img[..., c], bins=16, range=(0, 1))[0] for c in range(3)]))
        labels.append(s.label)
    return np.asarray(feats, dtype=np.float64), np.asarray(labels)


def _cv_probabilities(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    return cross_val_predict(clf, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=0), method="predict_proba")


@pytest.mark.parametrize("domain", ["A", "B"])
def test_fundus_grade_is_not_in_the_histogram(domain: str) -> None:
    x, y = _fundus_histograms(300, compensate=True, domain=domain)
    chance = np.bincount(y).max() / len(y)
    accuracy = float((_cv_probabilities(x, y).argmax(1) == y).mean())
    assert accuracy < chance + 0.12, (accuracy, chance)
    if domain == "B":
        return
    # without the colour budgets the same classifier reads the grade off the histogram
    x, y = _fundus_histograms(300, compensate=False)
    assert float((_cv_probabilities(x, y).argmax(1) == y).mean()) > chance + 0.15


def _cxr_histograms(tmp_path: Path, n: int, compensate: bool, domain: str = "A") -> tuple[np.ndarray, np.ndarray]:
    feats, labels = [], []
    for i in range(n):
        rng = sample_rng(22, "cxr", domain, "training", i)
        s = synth_cxr(rng, 40, domain, compensate=compensate)
        path = tmp_path / "x.dcm"
        write_cxr_dicom(path, s.image, rng, ["hist", i], "P", domain)
        img = read_image(path)
        img = (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
        feats.append(np.histogram(img, bins=32, range=(0, 1))[0])
        labels.append(s.label)
    return np.asarray(feats, dtype=np.float64), np.asarray(labels)


@pytest.mark.parametrize("domain", ["A", "B"])
def test_cxr_findings_are_not_in_the_histogram(tmp_path: Path, domain: str) -> None:
    x, y = _cxr_histograms(tmp_path, 300, compensate=True, domain=domain)
    assert all(0.2 < p < 0.5 for p in y.mean(0))  # prevalence per finding
    aucs = [roc_auc_score(y[:, k], _cv_probabilities(x, y[:, k])[:, 1]) for k in range(y.shape[1])]
    assert np.mean(aucs) < 0.65 and max(aucs) < 0.7, aucs
    if domain == "B":
        return
    x, y = _cxr_histograms(tmp_path, 300, compensate=False)
    effusion = CXR_CLASSES.index("effusion")
    assert roc_auc_score(y[:, effusion], _cv_probabilities(x, y[:, effusion])[:, 1]) > 0.75
