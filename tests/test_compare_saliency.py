"""scripts/compare_saliency.py end to end on tiny demo data with a tiny random teacher and explainer + student."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image
from sklearn.metrics import average_precision_score
from torch import nn

from bundle.data.datalist import load_datalist
from bundle.datasets.demo import generate_demo_data
from bundle.explain import SALIENCY_METHODS
from scripts import compare_saliency  # a package module: a mutation run replaces scripts/

ROOT = Path(__file__).resolve().parents[1]

IMAGE_SIZE = 32
N_IMAGES = 8
# a tiny teacher (a narrow MONAI DenseNet, so GradCAM's default layer class_layers.relu applies) and student;
# the explainer keeps its (small) defaults
TINY = """
teacher_def:
  _target_: DenseNet
  spatial_dims: 2
  in_channels: '@in_channels'
  out_channels: '@num_classes'
  init_features: 8
  growth_rate: 4
  block_config: [1, 1, 1, 1]
student#init_features: 8
student#growth_rate: 4
student#block_config: [1, 1, 1, 1]
"""


@pytest.mark.parametrize("task", ["fundus", "cxr"])
def test_compare_saliency_writes_every_method_with_valid_scores(tmp_path, task, capsys):
    data, models, out = tmp_path / "data", tmp_path / "models", tmp_path / "out"
    generate_demo_data(task, data, n_train=0, n_val=0, n_test=N_IMAGES, size=IMAGE_SIZE, seed=0)
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(TINY)
    configs = [str(ROOT / "configs" / "train.yaml"), str(ROOT / "configs" / "datasets" / f"demo_{task}.yaml")]
    configs.append(str(tiny))
    parser = ConfigParser()
    parser.read_config(configs)
    parser.update({"dataset_dir": str(data), "image_size": IMAGE_SIZE})
    torch.manual_seed(0)
    teacher = parser.get_parsed_content("teacher_def")
    for module in teacher.modules():  # a fresh DenseNet's eval-mode features are all zero: vary the batch norms
        if isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, 0.5)
            nn.init.normal_(module.bias, 0.5, 0.5)
    network = parser.get_parsed_content("network_def")
    mask_head = [m for m in network.explainer.modules() if isinstance(m, nn.Conv2d)][-1]
    with torch.no_grad():  # an explainer whose mask spans [0, 1]
        mask_head.bias.zero_()
        mask_head.weight.mul_(40.0)
    models.mkdir()
    torch.save(teacher.state_dict(), models / "teacher.pt")
    torch.save(network.state_dict(), models / "model.pt")

    # run in this process, so that a mutation run (docs/RELIABILITY.md) sees which code these checks reach
    command = ["--task-name", task, "--config", *configs]
    command += ["--dataset-dir", str(data), "--teacher-ckpt", str(models / "teacher.pt")]
    command += ["--model-ckpt", str(models / "model.pt"), "--image-size", str(IMAGE_SIZE), "--out", str(out)]
    command += ["--n-images", str(N_IMAGES), "--batch-size", "4", "--device", "cpu", "--steps", "8"]
    command += ["--occlusion-mask-size", "8", "--smoothgrad-samples", "3", "--repeats", "1", "--n-grid", "3"]
    assert compare_saliency.main(command) == 0
    printed = capsys.readouterr().out

    with open(out / f"saliency_{task}.csv", newline="") as f:
        rows = {row["method"]: row for row in csv.DictReader(f)}
    assert list(rows) == [*SALIENCY_METHODS, "random"]
    with_lesion = int(rows["random"]["n_with_lesion"])
    assert with_lesion > 0  # else the localisation columns below would be NaN
    for method, row in rows.items():
        assert int(row["n_images"]) == N_IMAGES and int(row["threads"]) >= 1 and row["device"] == "cpu"
        for metric in ("deletion_auc", "insertion_auc", "fidelity", "pointing_game", "iou", "auprc"):
            value = float(row[metric])
            assert math.isfinite(value) and 0.0 <= value <= 1.0, (method, metric, value)
        assert math.isfinite(float(row["maps_per_second"])) and float(row["maps_per_second"]) > 0
    # oracle: the explainer's own masks on the same images, scored by scikit-learn's average precision per image
    parser.update({"lesion_masks": True})
    preprocessing = parser.get_parsed_content("preprocessing")
    items = [item for item in load_datalist(data / "datalist.json", "test") if item.get("mask")][:N_IMAGES]
    precisions = []
    for item in items:
        sample = preprocessing(item)
        with torch.no_grad():
            saliency = network.eval().mask(torch.as_tensor(sample["image"])[None].float())[0]
        lesion = (torch.as_tensor(sample["mask"]) > 0.5).flatten().numpy()
        if lesion.any():
            precisions.append(average_precision_score(lesion, saliency.flatten().numpy()))
    assert float(rows["medtex"]["auprc"]) == pytest.approx(np.mean(precisions), abs=1e-4)
    assert float(rows["medtex"]["auprc"]) != pytest.approx(float(rows["random"]["auprc"]), abs=1e-4)
    # the explainer's mask is never all ones here, so the teacher sees a changed image: fidelity is a real measure
    table = (out / f"saliency_{task}.md").read_text()
    assert all(f"| {method} |" in table for method in rows)
    grid = Image.open(out / f"saliency_{task}.png")
    assert grid.size[0] > grid.size[1] and grid.mode == "RGB"  # 3 rows of images, 2 + 7 columns; opaque
    for suffix in (".csv", ".md", ".png"):
        assert f"saliency_{task}{suffix}" in printed
    html = (out / "report.html").read_text()  # one file for people: the table and the grid embedded
    assert "data:image/png;base64," in html and all(method in html for method in rows)
