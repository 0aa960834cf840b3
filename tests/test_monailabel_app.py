"""The MONAI Label app (apps/monailabel/) through FastAPI's TestClient on ``monailabel.app``: no port is opened.

Oracles: the bundle's own inference (``python -m monai.bundle run inference`` on the same files: predictions.csv,
the NIfTI saliency maps) and the network called here on the bundle's preprocessing. A fundus (multi-class, PNG)
and a chest X-ray (multi-label, DICOM) model with random weights. Skipped when monailabel is not installed
(``bash apps/install_extras.sh``).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from bundle.datasets.demo import generate_demo_data
from bundle.networks.teacher import load_weights
from tests.forked import run_python

ROOT = Path(__file__).resolve().parents[1]
APP_DIR = ROOT / "apps" / "monailabel"
MODEL = "medtex"
# tiny networks, set the same way in the bundle CLI, the served app and the reference network built here
SMALL = {
    "student#init_features": 8,
    "student#growth_rate": 4,
    "student#block_config": [1, 1, 1, 1],
    "explainer#features": [4, 4, 4, 8, 8, 4],
    "image_size": 32,
}
# task -> (demo task, config overlays, demo image size)
TASKS = {"fundus": ("fundus", [], 48), "cxr": ("cxr", ["configs/datasets/demo_cxr.yaml"], 40)}

if importlib.util.find_spec("monailabel") is None:
    pytest.skip("monailabel is not installed (bash apps/install_extras.sh)", allow_module_level=True)


def reference_parser(config_files: list[str], datalist: Path) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / "inference.yaml"), *(str(ROOT / c) for c in config_files)])
    parser.update({**SMALL, "datalist": str(datalist), "device": "$torch.device('cpu')", "amp": False})
    return parser


def bundle_inference(inputs: Path, out: Path, ckpt_dir: Path, config_files: list[str], datalist: Path) -> None:
    """configs/inference.yaml through the bundle CLI, one image a batch, as the server sees them."""
    configs = ",".join(f"'{c}'" for c in ["configs/inference.yaml", *config_files])
    args = ["--input_dir", str(inputs), "--output_dir", str(out), "--ckpt_dir", str(ckpt_dir)]
    args += ["--datalist", str(datalist), "--batch_size", "1", "--num_workers", "0", "--device", "cpu"]
    args += ["--amp", "False", "--write_dicom", "False"]
    for key, value in SMALL.items():
        args += [f"--{key}", str(value).replace(" ", "")]
    command = ["-m", "monai.bundle", "run", "inference", "--config_file", f"[{configs}]", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = run_python(command, cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"


class Served:
    """One app on the shared ``monailabel.app``: its settings are put back before each request, since monailabel
    looks its app up from them (``app_instance()``) on every call."""

    def __init__(self, app: Any, values: dict[str, Any]) -> None:
        from fastapi.testclient import TestClient

        self.values = values
        self.apply()
        self.client = TestClient(app, raise_server_exceptions=False)
        self.client.__enter__()

    def apply(self) -> None:
        from monailabel.config import settings

        for key, value in self.values.items():
            setattr(settings, key, value)

    def get(self, url: str, **kwargs: Any) -> Any:
        self.apply()
        return self.client.get(url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> Any:
        self.apply()
        return self.client.post(url, **kwargs)

    def infer(self, path: Path, output: str, upload: bool = True) -> Any:
        if upload:
            return self.post(f"/infer/{MODEL}?output={output}", files={"file": (path.name, path.read_bytes())})
        return self.post(f"/infer/{MODEL}?output={output}&image={path.stem}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict]]:
    sys.path.insert(0, str(APP_DIR))
    import pydicom_compat

    pydicom_compat.apply()
    from monailabel.app import app
    from monailabel.interfaces.utils.app import clear_cache

    work = tmp_path_factory.mktemp("monailabel")
    runs: dict[str, dict] = {}
    for name, (task, config_files, size) in TASKS.items():
        demo = work / name
        generate_demo_data(task, demo, n_train=0, n_val=0, n_test=2, size=size, seed=0)
        datalist = demo / "datalist.json"
        parser = reference_parser(config_files, datalist)
        torch.manual_seed(0)
        network = parser.get_parsed_content("network_def").eval()
        with torch.no_grad():  # a random explainer whose mask spans [0, 1]
            network.explainer.body.final_conv.bias.zero_()
            network.explainer.body.final_conv.weight.mul_(40.0)
        (demo / "models").mkdir()
        torch.save({"model": network.state_dict()}, demo / "models" / "model.pt")
        bundle_inference(demo / "images", demo / "out", demo / "models", config_files, datalist)
        studies = demo / "studies"  # the datastore writes its index and labels/ there: a copy of the images
        shutil.copytree(demo / "images", studies)
        conf = {
            "model_path": str(demo / "models" / "model.pt"),
            "config_files": ",".join(config_files),
            "overrides": json.dumps({**SMALL, "datalist": str(datalist)}),
        }
        values = {
            "MONAI_LABEL_APP_DIR": str(APP_DIR),
            "MONAI_LABEL_STUDIES": str(studies),
            "MONAI_LABEL_APP_CONF": conf,
            "MONAI_LABEL_DATASTORE_AUTO_RELOAD": False,
            "MONAI_LABEL_SESSIONS": False,
        }
        runs[name] = {"demo": demo, "parser": parser, "studies": studies, "server": Served(app, values)}
    yield runs
    for run in runs.values():
        run["server"].client.__exit__(None, None, None)
    clear_cache()


def images(run: dict) -> list[Path]:
    return sorted(p for p in (run["demo"] / "images").iterdir() if p.is_file())


def bundle_rows(run: dict) -> dict[str, dict]:
    with open(run["demo"] / "out" / "predictions.csv", newline="") as f:
        return {Path(row["file"]).name: row for row in csv.DictReader(f)}


def network_scores(run: dict, path: Path) -> np.ndarray:
    """The saved weights loaded by hand into the config's network_def (with inference.yaml's memory format),
    called on the bundle's preprocessing of ``path``; probabilities as the config's task makes them."""
    parser = run["parser"]
    network = parser.get_parsed_content("network_def").eval()
    network.load_state_dict(load_weights(run["demo"] / "models" / "model.pt"))
    network = network.to(memory_format=parser.get_parsed_content("memory_format"))
    image = parser.get_parsed_content("preprocessing")({"image": str(path)})["image"].as_tensor()[None].float()
    with torch.no_grad():
        logits = network.explain(image)[0][0]
    multiclass = parser.get_parsed_content("task") == "multiclass"
    return (torch.softmax(logits, dim=0) if multiclass else torch.sigmoid(logits)).numpy()


def test_monailabel_info_lists_the_classifier_with_the_class_names(served):
    metadata = json.loads((ROOT / "configs" / "metadata.json").read_text())
    channels = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    model = served["fundus"]["server"].get("/info/").json()["models"][MODEL]
    assert model["type"] == "classification"
    assert model["labels"] == [channels[str(i)] for i in range(len(channels))]
    assert model["task"] == "multiclass"
    cxr = served["cxr"]["server"].get("/info/").json()["models"][MODEL]
    # the metadata describes the 5-class default: the 4-finding model names its outputs as its datalist does
    assert cxr["labels"] == ["nodule", "consolidation", "effusion", "pneumothorax"] and cxr["task"] == "multilabel"


@pytest.mark.parametrize("name", ["fundus", "cxr"])
def test_monailabel_scores_equal_the_bundle_inference(served, name):
    """PNG (fundus) and DICOM (cxr) uploads and the same files from the studies folder: the probabilities of the
    bundle's predictions.csv (6 decimals) and, exactly, those of the network on the bundle's preprocessing."""
    run = served[name]
    rows = bundle_rows(run)
    for path in images(run):
        expected = network_scores(run, path)
        for upload in (True, False):
            response = run["server"].infer(path, "json", upload=upload)
            assert response.status_code == 200, response.text
            result = response.json()
            names = result["class_names"]
            scores = np.array([result["scores"][n] for n in names], dtype=np.float32)
            np.testing.assert_array_equal(scores, expected)
            csv_scores = [float(v) for v in list(rows[path.name].values())[1 : 1 + len(names)]]
            np.testing.assert_allclose(scores, csv_scores, atol=5e-7, rtol=0)
            if name == "fundus":
                assert result["prediction"] == names[int(np.argmax(scores))] == rows[path.name]["predicted"]
                assert scores.sum() == pytest.approx(1.0, abs=1e-5)
            else:  # per-finding probabilities, each finding listed from the threshold on, as predictions.csv does
                assert result["prediction"] == [n for n, p in zip(names, scores) if p >= 0.5]
                assert ";".join(result["prediction"]) == rows[path.name]["predicted"]


@pytest.mark.parametrize("name", ["fundus", "cxr"])
def test_monailabel_mask_png_at_source_size_equals_the_nifti_map(served, name):
    run = served[name]
    for path in images(run):
        response = run["server"].infer(path, "image")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        mask = np.asarray(Image.open(io.BytesIO(response.content)))
        nifti = np.asarray(nib.load(run["demo"] / "out" / f"{path.stem}_saliency.nii.gz").dataobj).T  # (x, y)
        size = TASKS[name][2]
        assert mask.shape == nifti.shape == (size, size) and mask.dtype == np.uint8
        assert np.abs(mask.astype(np.float64) - nifti * 255.0).max() <= 1.0
        assert nifti.max() - nifti.min() > 0.5  # a mask that varies, so that the comparison means something


def test_monailabel_broken_files_are_error_responses_and_the_server_goes_on(served):
    server = served["cxr"]["server"]
    good = images(served["cxr"])[0]
    broken = {"notes.png": b"not an image", "empty.dcm": b"", "half.dcm": good.read_bytes()[: good.stat().st_size // 2]}
    for file_name, content in broken.items():
        response = server.post(f"/infer/{MODEL}?output=json", files={"file": (file_name, content)})
        assert 400 <= response.status_code < 600, (file_name, response.status_code)
        assert response.json()["detail"].startswith("cannot read the image"), response.text
    missing = server.post(f"/infer/{MODEL}?output=json&image=no_such_study")
    assert 400 <= missing.status_code < 600 and missing.json()["detail"]
    response = server.infer(good, "json")
    assert response.status_code == 200 and set(response.json()["scores"]) == set(response.json()["class_names"])


def test_monailabel_datastore_lists_the_dicom_studies(served):
    objects = served["cxr"]["server"].get("/datastore/?output=all").json()["objects"]
    assert sorted(objects) == sorted(p.stem for p in images(served["cxr"]))
    assert {o["image"]["ext"] for o in objects.values()} == {".dcm"}


def test_monailabel_launcher_serves_on_localhost_unless_told():
    sys.path.insert(0, str(APP_DIR))
    from start import server_argv

    args = server_argv(["--studies", "s"])
    assert args[0] == "start_server" and args[args.index("--host") + 1] == "127.0.0.1"
    assert args[args.index("--app") + 1] == str(APP_DIR)
    chosen = server_argv(["start_server", "--studies", "s", "--host", "0.0.0.0", "--app", "a"])
    assert chosen.count("--host") == 1 and chosen.count("--app") == 1
