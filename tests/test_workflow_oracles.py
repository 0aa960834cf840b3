"""What evaluation and inference write, checked against independent oracles: the network called directly on the
training pipeline's preprocessing of the same files, and scikit-learn's metrics on those predictions.

The demo images are 64 px and the runs 32 px, so the resizing is part of what is checked (a different resize mode in
inference than in training changes the predictions)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.bundle import run as run_bundle
from sklearn.metrics import accuracy_score, cohen_kappa_score, roc_auc_score

from bundle.data.datalist import load_datalist
from bundle.datasets.demo import generate_demo_data
from tests.conftest import predictions_of

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
TASKS = {"fundus": [], "cxr": ["configs/datasets/demo_cxr.yaml"]}


def training_parser(task: str, data: Path) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(ROOT / f) for f in ["configs/train.yaml", *TASKS[task]]])
    parser.update({"dataset_dir": str(data), "image_size": SIZE, "preflight": False})
    return parser


@pytest.fixture(scope="module", params=list(TASKS))
def setup(request, tmp_path_factory) -> dict:
    """64 px demo data, and explainer + student weights whose predictions spread over the classes."""
    task = request.param
    root = tmp_path_factory.mktemp(task)
    generate_demo_data(task, root / "data", n_train=4, n_val=4, n_test=24, size=64, seed=1, domain="B")
    parser = training_parser(task, root / "data")
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").eval()
    # a random student predicts nearly one class for every image: its last layer is rescaled so that each class's
    # logit has mean 0 and sd 1 over the test images, which spreads the predictions over the classes
    preprocessing = parser.get_parsed_content("preprocessing")
    items = load_datalist(root / "data" / "datalist.json", "test")
    images = torch.stack([torch.as_tensor(preprocessing({"image": i["image"]})["image"]).float() for i in items])
    with torch.no_grad():
        logits = network(images)
        out = network.student.class_layers.out
        mean, sd = logits.mean(0), logits.std(0)
        out.weight.div_(sd[:, None])
        out.bias.sub_(mean).div_(sd)
    (root / "models").mkdir()
    torch.save({"model": network.state_dict()}, root / "models" / "model.pt")  # as CheckpointSaver writes it
    return {"task": task, "root": root, "data": root / "data", "parser": parser}


def direct_predictions(setup: dict, files: list[str]) -> np.ndarray:
    configs = ["configs/train.yaml", *TASKS[setup["task"]]]
    overrides = {"dataset_dir": str(setup["data"]), "image_size": SIZE, "preflight": False}
    return predictions_of(setup["root"] / "models" / "model.pt", files, configs, overrides)


def bundle(setup: dict, workflow: str, configs: list[str], **overrides) -> None:
    """The bundle workflow run in this process (``python -m monai.bundle run`` is tested elsewhere), so that a mutation
    run (docs/RELIABILITY.md) sees which code these oracles reach; the logging config is left as pytest set it."""
    common = {"dataset_dir": str(setup["data"]), "ckpt_dir": str(setup["root"] / "models"), "image_size": SIZE}
    config_files = [str(ROOT / c) for c in configs]
    run_bundle(workflow, config_file=config_files, logging_file=False, **common, num_workers=0, **overrides)


def test_evaluation_metrics_are_scikit_learns_on_the_networks_own_predictions(setup):
    task = setup["task"]
    out = setup["root"] / "eval"
    configs = ["configs/train.yaml", *TASKS[task], "configs/evaluate.yaml"]
    bundle(setup, "evaluating", configs, output_dir=str(out), saliency_metrics=False, preflight=False)
    with open(out / "metrics.csv") as f:
        metrics = {row[0]: float(row[1]) for row in csv.reader(f) if len(row) >= 2}

    items = load_datalist(setup["data"] / "datalist.json", "test")
    p = direct_predictions(setup, [item["image"] for item in items])
    classes = setup["parser"].get_parsed_content("class_names")
    if task == "fundus":
        y = np.array([item["label"] for item in items])
        assert len(set(p.argmax(1))) >= 3 and len(set(y)) >= 3  # the metrics are not degenerate
        onehot = np.eye(len(classes))[y]
        per_class = [
            roc_auc_score(onehot[:, c], p[:, c]) for c in range(len(classes)) if 0 < onehot[:, c].sum() < len(y)
        ]
        assert metrics["accuracy"] == pytest.approx(accuracy_score(y, p.argmax(1)), abs=1e-6)
        assert metrics["kappa"] == pytest.approx(cohen_kappa_score(y, p.argmax(1), weights="quadratic"), abs=1e-5)
        sensitivity = [
            ((p.argmax(1) == c) & (y == c)).sum() / (y == c).sum() for c in range(len(classes)) if (y == c).any()
        ]
        assert metrics["sensitivity"] == pytest.approx(np.mean(sensitivity), abs=1e-6)
    else:
        y = np.array([item["label"] for item in items])
        per_class = [roc_auc_score(y[:, c], p[:, c]) for c in range(len(classes)) if 0 < y[:, c].sum() < len(y)]
        assert metrics["accuracy"] == pytest.approx(((p >= 0.5) == (y == 1)).mean(), abs=1e-6)
        assert "kappa" not in metrics
    assert len(per_class) >= 2
    assert metrics["test_auc"] == pytest.approx(np.mean(per_class), abs=1e-5)
    for c, name in enumerate(classes):
        key = f"auc_{name.replace(' ', '_')}"
        column = y[:, c] if task == "cxr" else (y == c).astype(int)
        if 0 < column.sum() < len(column):
            assert metrics[key] == pytest.approx(roc_auc_score(column, p[:, c]), abs=1e-5), key


def test_inference_writes_the_networks_predictions_on_the_training_preprocessing(setup):
    items = load_datalist(setup["data"] / "datalist.json", "test")[:6]
    inputs = setup["root"] / "inputs"
    inputs.mkdir(exist_ok=True)
    for item in items:
        (inputs / Path(item["image"]).name).write_bytes(Path(item["image"]).read_bytes())
    out = setup["root"] / "inference"
    configs = ["configs/inference.yaml", *TASKS[setup["task"]]]
    bundle(setup, "inference", configs, input_dir=str(inputs), output_dir=str(out))
    with open(out / "predictions.csv") as f:
        rows = {Path(r["file"]).name: r for r in csv.DictReader(f)}
    classes = setup["parser"].get_parsed_content("class_names")
    expected = direct_predictions(setup, [str(inputs / Path(item["image"]).name) for item in items])
    for item, probabilities in zip(items, expected):
        row = rows[Path(item["image"]).name]
        written = [float(row[c]) for c in classes]
        assert written == pytest.approx(probabilities.tolist(), abs=1e-5)
