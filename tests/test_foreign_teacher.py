"""Teachers from elsewhere, made offline (scripts/make_foreign_teacher.py): the demo chest X-ray teacher re-packaged
with another contract (1 channel at twice the student's size, [-1024, 1024] input, sigmoid scores for 6 findings of
which 4 are the local ones under other names and in another order) as (a) a state dict, (b) TorchScript and (c) a
MONAI bundle folder. Oracle: the same teacher called directly with the bundle's own contract."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import DenseNet121

from bundle.datasets.demo import generate_demo_data
from bundle.engines.precompute import TEACHER_LOGITS
from bundle.networks.teacher import load_weights

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32
BASE = ["configs/train.yaml", "configs/datasets/demo_cxr.yaml"]
EXACT = {"teacher_resize_mode": "nearest", "teacher_bf16": False}  # nearest x2 then the wrapper's area /2: lossless


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """Tiny demo chest X-rays, a matched teacher (random weights, the bundle's contract) and its foreign forms."""
    root = tmp_path_factory.mktemp("foreign")
    generate_demo_data("cxr", root / "data", n_train=8, n_val=6, n_test=4, n_unlabeled=4, size=SIZE, seed=0, domain="B")
    torch.manual_seed(3)
    torch.save({"model": DenseNet121(spatial_dims=2, in_channels=1, out_channels=4).state_dict()}, root / "teacher.pt")
    subprocess.run(
        [sys.executable, "scripts/make_foreign_teacher.py", "--teacher", str(root / "teacher.pt"), "--datalist",
         str(root / "data" / "datalist.json"), "--image-size", str(SIZE), "--out", str(root / "foreign")],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    return {"root": root, "data": root / "data", "teacher": root / "teacher.pt", "foreign": root / "foreign"}


def forms(made: dict[str, Path]) -> dict[str, list[str]]:
    """The config files stacked on train.yaml + demo_cxr.yaml for each foreign form."""
    foreign = made["foreign"]
    return {
        "state_dict": [str(foreign / "teacher_state_dict.yaml")],
        "torchscript": ["configs/teachers/torchscript.yaml", str(foreign / "teacher_torchscript.yaml")],
        "bundle": ["configs/teachers/monai_bundle.yaml", str(foreign / "teacher_bundle.yaml")],
    }


def parser_for(made: dict[str, Path], files: list[str], **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(ROOT / f) if not os.path.isabs(f) else f for f in BASE + files])
    settings = {"bundle_root": str(ROOT), "dataset_dir": str(made["data"]), "image_size": SIZE, "preflight": False}
    parser.update({**settings, **overrides})
    return parser


def matched_teacher(made: dict[str, Path]) -> DenseNet121:
    net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=4)
    net.load_state_dict(load_weights(made["teacher"]))
    return net.eval()


@pytest.mark.parametrize("form", ["state_dict", "torchscript", "bundle"])
def test_the_foreign_teacher_read_through_its_contract_is_the_matched_teacher(made, form):
    parser = parser_for(made, forms(made)[form], **EXACT)
    teacher = parser.get_parsed_content("teacher")
    image = torch.randn(3, 1, SIZE, SIZE)
    with torch.no_grad():
        logits, features = teacher(image)
        expected = torch.sigmoid(matched_teacher(made)(image))
    assert logits.shape == (3, 4)  # the 4 local findings, in the local order, of the 6 outputs
    assert torch.allclose(torch.sigmoid(logits), expected, atol=1e-5)
    assert teacher.contract.labels.covered == [0, 1, 2, 3]
    vid_layers = parser.get_parsed_content("teacher_vid_layers")
    if form == "torchscript":
        assert vid_layers == [] and features == []  # nothing to hook: VID off
    else:
        assert len(vid_layers) == 2 and [f.shape[-1] for f in features] == [SIZE * 2 // 8, SIZE * 2 // 16]


def test_precomputed_outputs_of_an_adapted_teacher_are_the_matched_teachers(made, tmp_path):
    parser = parser_for(made, forms(made)["state_dict"] + ["configs/precompute_teacher.yaml"], **EXACT)
    # on the CPU: a GPU's TF32 convolutions differ from the oracle's by 1e-4 (seen on an H200)
    parser.update({"preflight": False, "num_workers": 0, "output_dir": str(tmp_path / "run"), "device": "cpu"})
    dataset = parser.get_parsed_content("train#dataset")
    net = matched_teacher(made)
    for item in [dataset[i] for i in range(len(dataset))]:
        with torch.no_grad():
            expected = torch.sigmoid(net(torch.as_tensor(item["image"])[None].float()))[0]
        assert torch.allclose(torch.sigmoid(item[TEACHER_LOGITS].float()), expected, atol=1e-5)


def run_bundle(made: dict[str, Path], command: str, files: list[str], *options: str) -> subprocess.CompletedProcess:
    config = "[" + ",".join(f"'{f}'" for f in BASE + files) + "]"
    arguments = ["--dataset_dir", str(made["data"]), "--image_size", str(SIZE), "--preflight", "False"]
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", command, "--config_file", config, *arguments, *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.mark.parametrize("form", ["state_dict", "torchscript", "bundle"])
def test_each_foreign_form_distils_a_student_with_monai_bundle_run_training(made, tmp_path, form):
    done = run_bundle(
        made, "training", forms(made)[form], "--max_epochs", "1", "--batch_size", "4", "--num_workers", "0",
        "--output_dir", str(tmp_path / "run"), "--ckpt_dir", str(tmp_path / "models"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "label map: multilabel teacher -> multilabel task: nodule <- 'Lung Nodule'" in log
    assert ("VID off: the TorchScript teacher" in log) == (form == "torchscript")
    assert ("VID layer pairs (by output stride)" in log) == (form != "torchscript")
    if form == "bundle":
        assert re.search(
            r"from \S+bundle: read channels, mean, names, output, size, std, value_range; assumed task", log
        )
    network = parser_for(made, []).get_parsed_content("network_def")
    network.load_state_dict(load_weights(tmp_path / "models" / "model.pt"))  # the deployable explainer + student


@pytest.mark.parametrize(
    "options, message",
    [
        (["--label_map", "{'nodule': 'Nodules'}"], "label_map: 'Nodules' is not one of the teacher's output names"),
        (["--label_map", "{'nodule': None}", "--ce_weight", "0.0"], r"local classes \[0\] \(label_map\) and ce_weight"),
        (["--teacher_input_channels", "3"], "teacher_input_channels, teacher_input_size"),
    ],
)
def test_teachers_that_do_not_fit_stop_the_run_naming_the_config_value(made, tmp_path, options, message):
    done = run_bundle(made, "training", forms(made)["state_dict"], "--output_dir", str(tmp_path / "run"), *options)
    assert done.returncode != 0 and re.search(message, done.stdout + done.stderr), (done.stdout + done.stderr)[-3000:]


def test_check_teacher_prints_the_matched_teachers_probabilities_under_the_local_names(made):
    files = forms(made)["bundle"] + ["configs/check_teacher.yaml"]
    done = run_bundle(made, "check_teacher", files, "--teacher_resize_mode", "nearest", "--teacher_bf16", "False")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("val_")]
    assert len(rows) == 6 and "nodule   consolidation        effusion    pneumothorax" in done.stdout
    parser = parser_for(made, [])
    preprocessing = parser.get_parsed_content("preprocessing")
    items = parser.get_parsed_content("validate#dataset#data")
    net = matched_teacher(made)
    for row, item in zip(rows, items):
        assert row[0] == Path(item["image"]).name
        image = preprocessing(item)["image"].as_tensor()[None]
        with torch.no_grad():
            expected = torch.sigmoid(net(image))[0].tolist()
        printed = [float(v) for v in row[1::2]]
        assert printed == pytest.approx(expected, abs=6e-4)  # printed with 3 decimals
        assert [int(v.strip("[]")) for v in row[2::2]] == item["label"]
