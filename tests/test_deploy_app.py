"""apps/deploy/app.py (MONAI Deploy App SDK) in a subprocess on a demo chest X-ray DICOM series and a PNG folder.

Oracle: the saved weights loaded into a fresh ``network_def`` of configs/inference.yaml + the cxr dataset override,
called with ``explain()`` on the config's own preprocessing (its loader included) of each file; the overlay drawn
from that mask with the bundle's ``blend_overlay`` on the image its reader reads. Skipped when the SDK is absent
(``apps/install_extras.sh`` installs it; requirements in apps/deploy/requirements-deploy.txt).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Resize
from PIL import Image

from bundle.datasets.demo import generate_demo_data
from bundle.handlers.writers import blend_overlay
from bundle.networks.teacher import load_weights
from tests.forked import run_python

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "deploy" / "app.py"
CLASSES = ["nodule", "consolidation", "effusion", "pneumothorax"]  # the demo cxr datalist's
# tiny explainer + student, set the same way on the app's command line and in the oracle
SMALL = {
    "image_size": 32,
    "student#init_features": 8,
    "student#growth_rate": 4,
    "student#block_config": [1, 1, 1, 1],
    "explainer#features": [4, 4, 4, 8, 8, 4],
}
CONFIGS = ["configs/inference.yaml", "configs/datasets/demo_cxr.yaml"]


def _deploy_importable() -> bool:
    """``monai.deploy`` as the app finds it (it may sit in another site-packages than ``monai``, see app.py)."""
    import monai

    folders = [Path(p or ".") / "monai" for p in sys.path]
    extra = [str(f) for f in folders if (f / "deploy" / "__init__.py").is_file() and str(f) not in monai.__path__]
    return bool(extra or importlib.util.find_spec("monai.deploy")) and importlib.util.find_spec("holoscan") is not None


pytestmark = pytest.mark.skipif(
    not _deploy_importable(), reason="monai-deploy-app-sdk not installed (apps/install_extras.sh)"
)


def oracle_parser(datalist: Path) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(ROOT / f) for f in CONFIGS])
    parser.update({**SMALL, "datalist": str(datalist), "device": "$torch.device('cpu')", "amp": False})
    return parser


def run_app(inputs: Path, out: Path, model: Path, datalist: Path) -> str:
    args = ["-i", str(inputs), "-o", str(out), "-m", str(model), "--config", CONFIGS[1]]
    for key, value in {**SMALL, "datalist": str(datalist), "device": "cpu", "amp": False}.items():
        args += ["--set", key, json.dumps(value) if not isinstance(value, str) else value]
    env = {**os.environ}
    env.pop("PYTHONPATH", None)  # the app puts the bundle on sys.path itself
    result = subprocess.run(
        [sys.executable, str(APP), *args], cwd=out.parent, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("deploy")
    generate_demo_data("cxr", work / "data", n_train=0, n_val=0, n_test=1, size=48, seed=0)
    datalist = work / "data" / "datalist.json"
    parser = oracle_parser(datalist)
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").eval()
    with torch.no_grad():  # a mask spanning (0, 1)
        network.explainer.body.final_conv.bias.zero_()
        network.explainer.body.final_conv.weight.mul_(20.0)
        # freshly initialised, this tiny student's last transition is all ReLU-zero on masked inputs: every
        # score is 0.5 whatever the image; perturbed, its scores depend on the image and differ per class
        for parameter in network.student.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    model = work / "model.pt"
    torch.save(network.state_dict(), model)
    dicom_in, png_in = work / "dicom_in", work / "png_in"
    dicom_in.mkdir()
    png_in.mkdir()
    source = dicom_in / "IM0001.dcm"
    source.write_bytes((work / "data" / "images" / "test_00000.dcm").read_bytes())
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((40, 56)) * 255).astype(np.uint8)).save(png_in / "film.png")
    out_dicom, out_png = work / "out_dicom", work / "out_png"
    logs = [run_app(dicom_in, out_dicom, model, datalist), run_app(png_in, out_png, model, datalist)]
    return {
        "parser": parser,
        "model": model,
        "source": source,
        "png": png_in / "film.png",
        "out_dicom": out_dicom,
        "out_png": out_png,
        "logs": logs,
    }


def expected(deployed: dict, file: Path) -> tuple[list[str], np.ndarray]:
    """Scores as predictions.csv writes them (6 decimals), and the overlay, from the weights called directly."""
    parser = deployed["parser"]
    network = parser.get_parsed_content("network_def").eval()
    network.load_state_dict(load_weights(deployed["model"]))
    image = parser.get_parsed_content("preprocessing")({"image": str(file)})["image"]
    with torch.no_grad():
        logits, mask = network.explain(torch.as_tensor(image)[None].float())
    scores = [f"{v:.6f}" for v in torch.sigmoid(logits)[0].tolist()]  # multilabel
    plain, _ = parser.get_parsed_content("image_reader").read_file(file)
    full = Resize(spatial_size=plain.shape[:2], mode="bilinear", align_corners=False)(mask[0])
    return scores, blend_overlay(plain, np.clip(np.asarray(full)[0], 0, 1), 0.6)


def test_deploy_dicom_writes_text_sr_with_the_bundles_scores(deployed):
    scores, _ = expected(deployed, deployed["source"])
    assert len(set(scores)) > 1  # the scores tell the classes apart, so a swapped order would show
    assert scores != expected(deployed, deployed["png"])[0]  # and depend on the image
    source = pydicom.dcmread(deployed["source"])
    reports = [pydicom.dcmread(f) for f in deployed["out_dicom"].glob("*.dcm")]
    reports = [ds for ds in reports if ds.Modality == "SR"]
    assert len(reports) == 1
    sr = reports[0]
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    text = "\n".join(str(item.TextValue) for item in sr.ContentSequence if "TextValue" in item)
    for name, score in zip(CLASSES, scores):
        assert f"{name}: {score}" in text.splitlines()
    assert [Path(r["file"]).name for r in json.loads((deployed["out_dicom"] / "predictions.json").read_text())] == [
        "IM0001.dcm"
    ]


def test_deploy_dicom_writes_overlay_secondary_capture_in_the_source_study(deployed):
    _, overlay = expected(deployed, deployed["source"])
    source = pydicom.dcmread(deployed["source"])
    sc = pydicom.dcmread(deployed["out_dicom"] / "IM0001_overlay.dcm")
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SeriesInstanceUID not in (source.SeriesInstanceUID, "")
    assert sc.PatientID == source.PatientID
    pixels = sc.pixel_array
    assert pixels.shape == (source.Rows, source.Columns, 3)
    assert np.abs(pixels.astype(int) - overlay.astype(int)).max() <= 1
    plain = np.asarray(Image.fromarray(pixels).convert("L"))  # the heatmap is there: not a gray image
    assert np.abs(pixels.astype(int) - plain[..., None].astype(int)).max() > 20


def test_deploy_png_folder_writes_overlay_png_and_json_with_the_bundles_scores(deployed):
    scores, overlay = expected(deployed, deployed["png"])
    rows = json.loads((deployed["out_png"] / "predictions.json").read_text())
    assert len(rows) == 1 and Path(rows[0]["file"]).name == "film.png"
    assert rows[0]["scores"] == dict(zip(CLASSES, scores))
    assert rows[0]["predicted"] == ";".join(c for c, s in zip(CLASSES, scores) if float(s) >= 0.5)
    png = np.asarray(Image.open(deployed["out_png"] / "film_overlay.png"))
    assert png.shape == (40, 56, 3)
    assert np.abs(png.astype(int) - overlay.astype(int)).max() <= 1
    assert not list(deployed["out_png"].glob("*.dcm"))  # no DICOM objects for a non-DICOM input


def test_deploy_matches_monai_bundle_run_inference_on_the_same_file(deployed, tmp_path):
    """The bundle's own inference (configs/inference.yaml through ``monai.bundle run``) on the DICOM input: the
    same scores to the last written digit and the same overlay pixels, in the PNG and in the Secondary Capture."""
    out = tmp_path / "bundle_out"
    args = ["--input_dir", str(deployed["source"].parent), "--output_dir", str(out)]
    args += ["--ckpt_dir", str(deployed["model"].parent), "--ckpt_name", deployed["model"].name]
    args += ["--datalist", str(deployed["parser"]["datalist"]), "--num_workers", "0", "--device", "cpu"]
    args += ["--amp", "False"]
    for key, value in SMALL.items():
        args += [f"--{key}", str(value).replace(" ", "")]
    config = "['" + "','".join(CONFIGS) + "']"
    command = ["-m", "monai.bundle", "run", "inference", "--config_file", config, *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = run_python(command, cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "predictions.csv", newline="") as f:
        reader = csv.DictReader(f)
        (row,) = list(reader)
    assert reader.fieldnames == ["file", *CLASSES, "predicted", "frame", "outputs"] and row["outputs"] == "written"
    deployed_row = json.loads((deployed["out_dicom"] / "predictions.json").read_text())[0]
    assert list(deployed_row["scores"].values()) == [row[name] for name in CLASSES]
    assert deployed_row["predicted"] == row["predicted"]
    png = "IM0001_overlay.png"
    assert np.array_equal(np.asarray(Image.open(out / png)), np.asarray(Image.open(deployed["out_dicom"] / png)))
    ours, theirs = (pydicom.dcmread(folder / "IM0001_overlay.dcm") for folder in (deployed["out_dicom"], out))
    assert np.array_equal(ours.pixel_array, theirs.pixel_array)
    assert ours.StudyInstanceUID == theirs.StudyInstanceUID
