"""The teacher config runs as written in DESIGN.md on demo data of both tasks, and resumes a stopped run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from monai.networks.nets import DenseNet121

from bundle.data.datalist import check_task
from tests.forked import run_python

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = run_python(args, cwd=cwd, env=env)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def make_demo(task: str, out: Path) -> Path:
    run(
        "scripts/make_demo_data.py",
        "--task",
        task,
        "--out",
        str(out),
        "--n-train",
        "12",
        "--n-val",
        "8",
        "--n-test",
        "4",
        "--size",
        "32",
        "--seed",
        "0",
    )
    return out


def train_teacher(dataset: Path, work: Path, *configs: str, epochs: int = 1) -> subprocess.CompletedProcess:
    config = configs[0] if len(configs) == 1 else str(list(configs))
    return run(
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        config,
        "--dataset_dir",
        str(dataset),
        "--image_size",
        "32",
        "--batch_size",
        "4",
        "--max_epochs",
        str(epochs),
        "--num_workers",
        "0",
        "--cache_rate",
        "0",
        "--preflight",
        "False",
        "--output_dir",
        str(work / "run"),
        "--ckpt_dir",
        str(work / "models"),
    )


@pytest.mark.parametrize(
    "task, configs, channels, classes",
    [
        ("fundus", ["configs/train_teacher.yaml"], 3, 5),
        ("cxr", ["configs/train_teacher.yaml", "configs/datasets/demo_cxr.yaml"], 1, 4),
    ],
)
def test_teacher_trains_one_tiny_epoch_and_saves_loadable_weights(tmp_path, task, configs, channels, classes):
    dataset = make_demo(task, tmp_path / task)
    result = train_teacher(dataset, tmp_path, *configs)
    weights = tmp_path / "models" / "teacher.pt"
    assert weights.is_file(), result.stdout[-2000:]
    assert str(weights) in result.stdout  # the run says what it wrote where
    net = DenseNet121(spatial_dims=2, in_channels=channels, out_channels=classes)
    net.load_state_dict(torch.load(weights, weights_only=True))  # a plain state dict, as the Model Zoo expects
    assert net.eval()(torch.zeros(1, channels, 32, 32)).shape == (1, classes)
    assert (tmp_path / "run" / "train_checkpoint_epoch=1.pt").is_file()
    assert "val_auc" in result.stdout + result.stderr


def test_stopped_run_resumes_from_its_last_full_checkpoint(tmp_path):
    dataset = make_demo("fundus", tmp_path / "fundus")
    train_teacher(dataset, tmp_path, "configs/train_teacher.yaml", epochs=1)
    second = train_teacher(dataset, tmp_path, "configs/train_teacher.yaml", epochs=2)
    log = second.stdout + second.stderr
    assert "resuming from" in log and "train_checkpoint_epoch=1.pt" in log
    assert "Epoch[1] Complete" not in log and "Epoch[2] Complete" in log  # epoch 1 was not trained again
    state = torch.load(tmp_path / "run" / "train_checkpoint_epoch=2.pt", weights_only=True)
    assert state["trainer"]["iteration"] == 2 * state["trainer"]["epoch_length"] and set(state) == {
        "network",
        "optimizer",
        "lr_scheduler",
        "trainer",
    }


def test_config_and_datalist_disagreeing_on_the_task_is_a_clear_error(tmp_path):
    dataset = make_demo("cxr", tmp_path / "cxr")
    with pytest.raises(ValueError, match="multilabel.*in the datalist but 'multiclass' in the config"):
        check_task(dataset / "datalist.json", "multiclass", 4)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = run_python(
        [
            "-m",
            "monai.bundle",
            "run",
            "training",
            "--config_file",
            "configs/train_teacher.yaml",
            "--dataset_dir",
            str(dataset),
            "--output_dir",
            str(tmp_path / "run"),
            "--ckpt_dir",
            str(tmp_path / "m"),
        ],
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert result.returncode != 0 and "configs/datasets" in result.stderr
