"""A training run killed with SIGKILL resumes from its last full checkpoint and finishes its planned epochs; every
checkpoint is written atomically, so a kill during a save never leaves a truncated file to resume from."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bundle.handlers import atomic_save, latest_checkpoint
from tests.conftest import inference_network

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 5


def test_atomic_save_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "model.pt"
    atomic_save({"w": torch.ones(3)}, path)

    def dies_half_way(obj, f, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # what a kill looks like from inside the process

    with pytest.raises(KeyboardInterrupt):
        atomic_save({"w": torch.zeros(3)}, path, dies_half_way)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644 & ~umask  # readable like any other output, not owner-only


def training_command(data: Path, teacher: Path, tmp: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        "configs/train.yaml",
        "--dataset_dir",
        str(data),
        "--teacher_ckpt",
        str(teacher),
        "--output_dir",
        str(tmp / "run"),
        "--ckpt_dir",
        str(tmp / "models"),
        "--image_size",
        "32",
        "--batch_size",
        "2",
        "--num_workers",
        "0",
        "--max_epochs",
        str(EPOCHS),
        "--preflight",
        "False",  # toy data lacks some classes
    ]


def test_killed_training_resumes_and_finishes_its_epochs(tmp_path, data, teacher_ckpt):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = training_command(data, teacher_ckpt, tmp_path)
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while latest_checkpoint(tmp_path / "run") is None and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # into the next epoch
    assert first.poll() is None, "the run ended before it could be killed: make it longer"
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    log.close()
    assert first.returncode == -signal.SIGKILL
    killed_at = latest_checkpoint(tmp_path / "run")
    done = int(killed_at.stem.split("=")[1])
    assert 1 <= done < EPOCHS

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-5000:]
    assert f"resuming from {killed_at}" in output
    assert f"Epoch[{done}] Complete" not in output and f"Epoch[{EPOCHS}] Complete" in output  # no epoch trained twice
    final = torch.load(tmp_path / "run" / f"train_checkpoint_epoch={EPOCHS}.pt", weights_only=True)
    assert final["trainer"]["iteration"] == EPOCHS * final["trainer"]["epoch_length"]
    # the best model loads into the deployed network and gives finite outputs
    network = inference_network().eval()
    network.load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))
    logits, mask = network.explain(torch.randn(2, 3, 32, 32))
    assert torch.isfinite(logits).all() and torch.isfinite(mask).all()
    leftovers = [p.name for p in (tmp_path / "run").glob(".part-*")]
    assert len(leftovers) <= 1  # at most the file being written when the kill came, never read


def test_checkpoint_saver_of_the_configs_writes_through_atomic_save(tmp_path, monkeypatch):
    from ignite.engine import Engine

    import bundle.files as atomic
    import bundle.handlers.checkpoint as checkpoint

    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (renamed.append(Path(b).name), real_replace(a, b)))
    net = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    checkpoint.AtomicCheckpointSaver(str(tmp_path), {"model": net}, save_final=True, final_filename="model.pt").attach(
        engine
    )
    checkpoint.ResumableCheckpoint(tmp_path / "run", {"network": net}).attach(engine)
    engine.run([0, 1], max_epochs=2)
    assert "model.pt" in renamed and "train_checkpoint_epoch=2.pt" in renamed
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], net.weight.detach())
