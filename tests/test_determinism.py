"""The same seed gives the same training on CPU, loader workers included; another seed gives another one, and so do
other CPU kernels (why result files name the CPU's vector instructions: bundle.provenance.cpu_capability)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def train(data: Path, teacher_ckpt: Path, out: Path, seed: int, **env_vars: str) -> dict[str, torch.Tensor]:
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml"]
    command += ["--dataset_dir", str(data), "--teacher_ckpt", str(teacher_ckpt), "--seed", str(seed)]
    command += ["--output_dir", str(out / "run"), "--ckpt_dir", str(out / "models"), "--image_size", "32"]
    command += ["--batch_size", "4", "--max_epochs", "2", "--num_workers", "2", "--preflight", "False"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_vars}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)


def test_same_seed_same_weights_other_seed_or_cpu_kernels_other_weights(data, teacher_ckpt, tmp_path):
    first = train(data, teacher_ckpt, tmp_path / "a", seed=3)
    again = train(data, teacher_ckpt, tmp_path / "b", seed=3)
    other = train(data, teacher_ckpt, tmp_path / "c", seed=4)
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first), "same seed, different weights"
    assert not all(torch.equal(first[k], other[k]) for k in first), "the seed changed nothing"
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        return  # this CPU runs the baseline kernels already: nothing to compare them with
    # the same seed on the same machine, torch's and oneDNN's kernels held to the baseline instructions (as on a CPU
    # without AVX): other rounding, other weights, as between an AVX-512 and an AVX2 machine
    baseline = train(
        data, teacher_ckpt, tmp_path / "d", seed=3, ATEN_CPU_CAPABILITY="default", ONEDNN_MAX_CPU_ISA="SSE41"
    )
    assert not all(torch.equal(first[k], baseline[k]) for k in first), "the kernels changed nothing"
