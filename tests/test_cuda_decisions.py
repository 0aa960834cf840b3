"""The CUDA path's decisions, checked without a GPU: what the configs choose when CUDA is there (AMP, the device,
how often the loss is read, where the epoch means accumulate, the memory format) and when it is not. What needs a
GPU to run is in tests/test_cuda.py (scripts/gpu_check.sh runs it where one is)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

import bundle.engines.trainer as trainer_module

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("train.yaml", "train_teacher.yaml", "inference.yaml")


def parsed(config: str, cuda: bool, monkeypatch, key: str):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / config))
    return parser.get_parsed_content(key)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("cuda", [True, False])
def test_amp_and_the_device_follow_cuda(config, cuda, monkeypatch):
    assert parsed(config, cuda, monkeypatch, "amp") is cuda
    assert torch.device(parsed(config, cuda, monkeypatch, "device")).type == ("cuda" if cuda else "cpu")
    assert parsed(config, cuda, monkeypatch, "memory_format") is torch.channels_last  # both: channels_last on


@pytest.mark.parametrize("config", ["train.yaml", "train_teacher.yaml"])
@pytest.mark.parametrize("cuda, every", [(True, 10), (False, 1)])
def test_the_loss_is_read_every_iteration_on_the_cpu_and_every_tenth_on_a_gpu(config, cuda, every, monkeypatch):
    assert parsed(config, cuda, monkeypatch, "log_interval") == every


@pytest.mark.parametrize("cuda", [True, False])
def test_epoch_means_accumulate_on_the_training_device(cuda, monkeypatch):
    """On a GPU, sums kept on the CPU (Ignite's default) would copy every iteration's loss off the GPU. Ignite's
    ``Average`` allocates on its device when built, which a machine without CUDA cannot: its arguments are recorded."""
    devices = []

    class Recorded:
        def __init__(self, output_transform, device) -> None:
            devices.append(torch.device(device).type)

    monkeypatch.setattr(trainer_module, "Average", Recorded)
    metrics = parsed("train.yaml", cuda, monkeypatch, "train#key_metric")
    assert set(metrics) >= {"epoch_loss", "epoch_loss_kd", "epoch_loss_fidelity"}
    assert devices and set(devices) == {"cuda" if cuda else "cpu"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script runs the checks")
def test_the_prepared_gpu_check_refuses_to_run_without_cuda(tmp_path):
    done = subprocess.run(
        ["bash", "scripts/gpu_check.sh", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr
    assert not (tmp_path / "out").exists()
