"""Fixtures shared by the bundle-level tests: tiny demo data and random checkpoints saved as training saves them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import DenseNet121

from bundle.datasets.demo import generate_demo_data
from bundle.networks import MedTex
from bundle.networks.teacher import load_weights

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# One torch thread per test process and per subprocess a test starts (they inherit this environment): CI runs two
# pytest workers on two cores, and a second thread per process only oversubscribes them; a thread that waits for a core
# at each of DenseNet121's operations made GradCAM 7x slower on this machine, and a 32 px inference subprocess started
# with torch's default two threads beside a busy core took about a second per image. What the tests check does not
# depend on the thread count.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


def inference_network(image_size: int = 32) -> MedTex:
    """``network_def`` of configs/inference.yaml for ``image_size`` (the tests' 32 px: the explainer's default scale
    depends on the size): the deployed explainer + student."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.yaml"))
    parser["image_size"] = image_size
    return parser.get_parsed_content("network_def")


def predictions_of(weights: Path, files: list[str], config_files: list[str], overrides: dict) -> np.ndarray:
    """Oracle for what evaluation and inference write: the saved weights loaded by hand into a fresh network_def of
    the training configs, called on train.yaml's preprocessing of each file; class probabilities ``(N, C)``."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS.parent / f) for f in config_files])
    parser.update(overrides)
    network = parser.get_parsed_content("network_def").eval()
    network.load_state_dict(load_weights(weights))
    preprocessing = parser.get_parsed_content("preprocessing")
    multiclass = parser.get_parsed_content("task") == "multiclass"
    rows = []
    for file in files:
        image = torch.as_tensor(preprocessing({"image": file})["image"])[None].float()
        with torch.no_grad():
            logits = network(image)
        rows.append((torch.softmax(logits, dim=1) if multiclass else torch.sigmoid(logits))[0].numpy())
    return np.stack(rows)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A tiny camera-B fundus demo set at 32 px with every split, unlabelled images included."""
    out = tmp_path_factory.mktemp("data")
    generate_demo_data("fundus", out, n_train=8, n_val=4, n_test=4, n_unlabeled=4, size=32, seed=0, domain="B")
    return out


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    """A teacher as configs/train_teacher.yaml saves it: MONAI CheckpointSaver's ``{'model': state_dict}``."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save({"model": DenseNet121(spatial_dims=2, in_channels=3, out_channels=5).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def model_ckpt(tmp_path_factory) -> Path:
    """Random explainer + student weights as training saves them, with a mask spanning (0, 1)."""
    torch.manual_seed(0)
    network = inference_network()
    with torch.no_grad():
        network.explainer.body.final_conv.bias.zero_()
        network.explainer.body.final_conv.weight.mul_(20.0)
    path = tmp_path_factory.mktemp("models") / "model.pt"
    torch.save(network.state_dict(), path)
    return path
