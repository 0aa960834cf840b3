"""scripts/demo_summary.py in this process, on a demo folder made by hand: every number in summary.json is the one
written here, worked out without the script's code (tests/test_demo_script.py runs it inside the real demo)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scripts import demo_summary  # a package module: a mutation run replaces scripts/

ROOT = Path(__file__).resolve().parents[1]

METRICS = {
    "teacher": {"test_auc": 0.91, "accuracy": 0.81, "kappa": 0.71},
    "medtex": {"test_auc": 0.82, "accuracy": 0.72, "kappa": 0.62, "pointing_game": 0.55},
    "scratch": {"test_auc": 0.63, "accuracy": 0.53, "kappa": 0.43},
}
# lesion fractions of the test masks (16 x 16 = 256 pixels); the lesion-free mask does not count towards chance
LESION_PIXELS = [64, 16, 0]


@pytest.fixture
def demo_folder(tmp_path: Path) -> Path:
    out = tmp_path / "demo"
    for run, metrics in METRICS.items():
        (out / "eval" / run).mkdir(parents=True)
        lines = [f"{name},{value}" for name, value in metrics.items()]  # MetricsSaver writes no header
        (out / "eval" / run / "metrics.csv").write_text("\n".join(lines) + "\n")
    (out / "models").mkdir()
    # learned parameters 3*4 + 4 = 16 and 10; buffers (batch-norm statistics, explainer scale settings) not counted
    teacher = {"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(4), "bn.running_mean": torch.zeros(50)}
    teacher["bn.running_var"] = torch.zeros(50)
    teacher["bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    student = {"conv.weight": torch.zeros(2, 5), "explainer.input_scale": torch.zeros(7)}
    student["explainer.input_unshuffle"] = torch.zeros(9)
    torch.save(teacher, out / "models" / "teacher.pt")
    torch.save({"model": student}, out / "models" / "model.pt")  # as CheckpointSaver writes it
    branch = out / "branch_B"
    branch.mkdir()
    items = []
    for i, pixels in enumerate(LESION_PIXELS):
        mask = np.zeros(256, np.uint8)
        mask[:pixels] = 255
        Image.fromarray(mask.reshape(16, 16)).save(branch / f"mask{i}.png")
        items.append({"image": f"image{i}.png", "label": 0, "mask": f"mask{i}.png"})
    (branch / "datalist.json").write_text(json.dumps({"test": items}))
    return out


def test_summary_holds_each_evaluations_numbers_and_the_parameter_counts(demo_folder, capsys):
    argv = ["--out", str(demo_folder), "--student-init", "models/central.pt", "--student-config", "tiny.yaml"]
    assert demo_summary.main(argv) == 0
    summary = json.loads((demo_folder / "summary.json").read_text())
    for name, run in (("teacher", "teacher"), ("student", "medtex"), ("scratch", "scratch")):
        assert summary[f"{name}_auc"] == METRICS[run]["test_auc"]
        assert summary[f"{name}_accuracy"] == METRICS[run]["accuracy"]
        assert summary[f"{name}_kappa"] == METRICS[run]["kappa"]
    assert summary["pointing_game"] == 0.55
    assert summary["teacher_params"] == 16 and summary["student_params"] == 10
    assert summary["params_ratio"] == pytest.approx(10 / 16)
    assert summary["pointing_game_chance"] == pytest.approx((64 / 256 + 16 / 256) / 2)
    assert summary["student_init"] == "models/central.pt" and summary["student_config"] == "tiny.yaml"
    assert summary["torch"] == torch.__version__
    printed = capsys.readouterr().out
    assert "teacher_auc: 0.9100" in printed and "teacher_params: 16" in printed
    assert f"summary written to {demo_folder / 'summary.json'}" in printed


def test_summary_without_optional_numbers_says_none(demo_folder):
    (demo_folder / "eval" / "scratch" / "metrics.csv").write_text("test_auc,0.5\n")
    for mask in (demo_folder / "branch_B").glob("mask*.png"):
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(mask)
    assert demo_summary.main(["--out", str(demo_folder)]) == 0
    summary = json.loads((demo_folder / "summary.json").read_text())
    assert summary["scratch_auc"] == 0.5 and summary["scratch_accuracy"] is None and summary["scratch_kappa"] is None
    assert summary["student_init"] is None and summary["student_config"] is None
    assert np.isnan(summary["pointing_game_chance"])  # no test image has a lesion: chance is undefined
