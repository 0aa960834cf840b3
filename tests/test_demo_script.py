"""The README's main command, scripts/demo.sh, end to end at toy size: every step runs, and summary.json holds the
numbers the issue asks for, consistent with the checkpoints and evaluations it was made from."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

from monai.networks.nets import DenseNet121

from tests.conftest import inference_network

ROOT = Path(__file__).resolve().parents[1]
TOY = {
    "SIZE": "32",
    "N_TEACHER": "40",
    "TEACHER_EPOCHS": "1",
    "N_LABELED": "10",
    "N_UNLABELED": "10",
    "EPOCHS": "1",
    "SCRATCH_EPOCHS": "1",
    "N_VAL": "20",  # not the 300 + 100 validation and 300 + 300 test images every run would otherwise go through
    "N_TEST": "30",  # more than the 12 images inference is given
    "SKIP_INSTALL": "1",
    "EXTRA_ARGS": "--preflight False",  # toy sizes lack some classes
}


def test_demo_script_at_toy_size(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, **TOY, "OUT": str(out)}
    result = subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    for step in range(1, 8):
        assert f"== {step}/7 " in result.stdout
    assert "done in" in result.stdout and str(out / "summary.json") in result.stdout

    summary = json.loads((out / "summary.json").read_text())
    for key in ("teacher_auc", "student_auc", "scratch_auc", "pointing_game"):
        assert 0.0 <= summary[key] <= 1.0, key
    # each number is the one its evaluation wrote, read here with the csv module (no code shared with the script)
    for name, run in (("teacher", "teacher"), ("student", "medtex"), ("scratch", "scratch")):
        with open(out / "eval" / run / "metrics.csv") as f:
            metrics = {row[0]: float(row[1]) for row in csv.reader(f) if row}
        assert summary[f"{name}_auc"] == metrics["test_auc"], name
        assert summary[f"{name}_accuracy"] == metrics["accuracy"] and summary[f"{name}_kappa"] == metrics["kappa"]
        if run == "medtex":
            assert summary["pointing_game"] == metrics["pointing_game"]
    # parameter counts of the networks built directly (learned parameters; batch-norm statistics are buffers)
    teacher = DenseNet121(spatial_dims=2, in_channels=3, out_channels=5)
    assert summary["teacher_params"] == sum(p.numel() for p in teacher.parameters())
    assert summary["student_params"] == sum(p.numel() for p in inference_network(32).parameters())
    assert summary["student_params"] < summary["teacher_params"] / 10
    assert summary["student_init"] == str(out / "models" / "central_student.pt")

    # the MED-TEX student started from the central student (what init_submodule loads: tests/test_baselines.py)
    assert f"initialised MedTex.student from {out / 'models' / 'central_student.pt'}" in result.stdout + result.stderr
    assert all((out / "models" / name).is_file() for name in ("teacher.pt", "model.pt", "scratch.pt"))

    assert (out / "inference" / "predictions.csv").is_file()
    assert len(list((out / "inference").glob("*_overlay.png"))) == 12


def _demo_commands(tmp_path: Path, student_config: str) -> subprocess.CompletedProcess:
    """scripts/demo.sh with a stand-in ``python`` on PATH that only logs its arguments: the runs it would make."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$*" >> "$DEMO_LOG"\n')
    (fake / "python").chmod(0o755)
    env = {
        **os.environ,
        **TOY,
        "OUT": str(tmp_path / "demo"),
        "PATH": f"{fake}:{os.environ['PATH']}",
        "DEMO_LOG": str(tmp_path / "calls.log"),
        "STUDENT_CONFIG": student_config,
    }
    return subprocess.run(["bash", "scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_demo_student_config_reaches_every_run_that_builds_the_student(tmp_path):
    """``STUDENT_CONFIG=configs/students/resnet.yaml bash scripts/demo.sh``: the overlay is the last config file of
    the central student, MED-TEX, scratch, their evaluations and inference, not of the teacher's training, and
    summary.json records it."""
    overlay = "configs/students/resnet.yaml"
    result = _demo_commands(tmp_path, overlay)
    assert result.returncode == 0, result.stderr
    runs = [line for line in (tmp_path / "calls.log").read_text().splitlines() if line.startswith("-m monai.bundle")]
    assert len(runs) == 8  # teacher, central student, MED-TEX, scratch, three evaluations, inference
    with_overlay = [run for run in runs if f",'{overlay}']" in run]
    assert len(with_overlay) == 7 and all("train_teacher.yaml" not in run for run in with_overlay)
    assert any("configs/inference.yaml" in run for run in with_overlay)
    summary = [line for line in (tmp_path / "calls.log").read_text().splitlines() if "demo_summary.py" in line]
    assert summary and summary[0].endswith(f"--student-config {overlay}")

    plain = tmp_path / "plain"
    plain.mkdir()
    assert _demo_commands(plain, "").returncode == 0
    assert "configs/students/" not in (plain / "calls.log").read_text()

    missing = tmp_path / "missing"
    missing.mkdir()
    refused = _demo_commands(missing, "configs/students/nope.yaml")
    assert refused.returncode == 2 and "configs/students/nope.yaml: no such file" in refused.stderr
    assert not (missing / "calls.log").exists()  # refused before any run
