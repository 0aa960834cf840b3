"""train -> evaluate -> inference end to end on tiny demo data of both tasks, checking the outputs' content."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from bundle.networks.teacher import load_weights
from tests.conftest import predictions_of
from tests.forked import run_python

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = run_python(args, cwd=ROOT, env=env)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout + result.stderr


def bundle_run(workflow: str, configs: list[str], *overrides: str) -> str:
    config = configs[0] if len(configs) == 1 else str(configs)
    common: tuple[str, ...] = ("--image_size", "32", "--batch_size", "8", "--num_workers", "0")
    if workflow != "inference":  # keys inference.yaml does not have (the config check refuses unknown keys)
        common += ("--cache_rate", "0", "--preflight", "False")
    return run("-m", "monai.bundle", "run", workflow, "--config_file", config, *common, *overrides)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    "task, override, n_classes", [("fundus", [], 5), ("cxr", ["configs/datasets/demo_cxr.yaml"], 4)]
)
def test_train_evaluate_infer(tmp_path, task, override, n_classes):
    data, models = tmp_path / "data", tmp_path / "models"
    run(
        "scripts/make_demo_data.py",
        "--task",
        task,
        "--out",
        str(data),
        "--n-train",
        "16",
        "--n-val",
        "8",
        "--n-test",
        "8",
        "--n-unlabeled",
        "8",
        "--size",
        "32",
        "--seed",
        "0",
        "--domain",
        "B",
    )
    where = ("--dataset_dir", str(data), "--ckpt_dir", str(models))
    bundle_run(
        "training",
        ["configs/train_teacher.yaml", *override],
        *where,
        "--max_epochs",
        "1",
        "--output_dir",
        str(tmp_path / "teacher_run"),
    )
    log = bundle_run(
        "training",
        ["configs/train.yaml", *override],
        *where,
        "--max_epochs",
        "2",
        "--teacher_ckpt",
        str(models / "teacher.pt"),
        "--output_dir",
        str(tmp_path / "run"),
    )
    for term in ("loss_ce", "loss_kd", "loss_vid", "loss_mask", "loss_fidelity"):
        assert term in log  # each loss term is logged (teacher fidelity is on by default)
    weights = load_weights(models / "model.pt")
    assert any(k.startswith("explainer.") for k in weights) and any(k.startswith("student.") for k in weights)

    bundle_run(
        "evaluating",
        ["configs/train.yaml", *override, "configs/evaluate.yaml"],
        *where,
        "--output_dir",
        str(tmp_path / "eval"),
    )
    metrics = {row[0]: float(row[1]) for row in csv.reader(open(tmp_path / "eval" / "metrics.csv"))}
    assert 0.0 <= metrics["test_auc"] <= 1.0 and 0.0 <= metrics["accuracy"] <= 1.0
    assert ("kappa" in metrics) == (task == "fundus")
    assert sum(k.startswith("auc_") for k in metrics) == n_classes
    for measure in ("sensitivity", "specificity"):  # at the operating point, macro and one row per class
        per_class = [v for k, v in metrics.items() if k.startswith(f"{measure}_")]
        assert len(per_class) == n_classes and 0.0 <= metrics[measure] <= 1.0
        assert metrics[measure] == pytest.approx(np.nanmean(per_class))
    assert 0.0 <= metrics["pointing_game"] <= 1.0

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    sources = sorted((data / "images").glob("test_*"))[:3]
    for source in sources:
        (inputs / source.name).write_bytes(source.read_bytes())
    (inputs / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "inference"
    bundle_run(
        "inference", ["configs/inference.yaml", *override], *where, "--input_dir", str(inputs), "--output_dir", str(out)
    )
    rows = read_csv(out / "predictions.csv")
    assert [Path(r["file"]).name for r in rows] == [s.name for s in sources]
    errors = read_csv(out / "errors.csv")
    assert [Path(r["file"]).name for r in errors] == ["broken.png"] and errors[0]["reason"]

    # the written probabilities are those of the trained network called directly on training's preprocessing
    class_names = [k for k in rows[0] if k not in ("file", "predicted", "frame", "outputs")]
    assert all(row["outputs"] == "written" and row["frame"] == "" for row in rows)
    assert len(class_names) == n_classes
    overrides = {"dataset_dir": str(data), "image_size": 32, "preflight": False}
    expected = predictions_of(
        models / "model.pt", [str(s) for s in sources], ["configs/train.yaml", *override], overrides
    )
    for row, source, oracle in zip(rows, sources, expected):
        probabilities = np.array([float(row[c]) for c in class_names])
        assert probabilities == pytest.approx(oracle, abs=1e-5)
        if task == "fundus":
            assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)
            assert row["predicted"] == class_names[int(probabilities.argmax())]
        else:
            assert row["predicted"] == ";".join(c for c, p in zip(class_names, probabilities) if p >= 0.5)
        saliency = nib.load(out / f"{source.stem}_saliency.nii.gz").get_fdata()
        assert saliency.shape[:2] == (32, 32) and 0.0 <= saliency.min() and saliency.max() <= 1.0
        overlay = np.asarray(Image.open(out / f"{source.stem}_overlay.png"))
        assert overlay.shape == (32, 32, 3)
    if task == "cxr":  # DICOM sources also get their overlay as a Secondary Capture in the same study
        import pydicom

        capture = pydicom.dcmread(out / f"{sources[0].stem}_overlay.dcm")
        original = pydicom.dcmread(sources[0])
        assert capture.StudyInstanceUID == original.StudyInstanceUID
        assert capture.SeriesInstanceUID != original.SeriesInstanceUID
    assert torch.isfinite(torch.tensor([float(r[c]) for r in rows for c in class_names])).all()
