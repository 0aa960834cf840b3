"""Collect the demo's numbers into summary.json: AUCs from each evaluation, parameter counts from the checkpoints.

python scripts/demo_summary.py --out out/demo
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.data.datalist import load_datalist  # noqa: E402
from bundle.data.readers import MedicalImageReader  # noqa: E402
from bundle.networks.teacher import load_weights  # noqa: E402


def read_metrics(path: Path) -> dict[str, float]:
    """MONAI MetricsSaver's metrics.csv: one ``name,value`` row per metric."""
    with open(path) as f:
        return {row[0]: float(row[1]) for row in csv.reader(f) if len(row) >= 2}


def count_weights(path: Path) -> int:
    """Number of learned parameters in a state dict: buffers excluded (batch-norm statistics, and the explainer's
    scale settings ``input_scale`` and ``input_unshuffle`` and its ``input_hard_gate`` and ``input_keep_fraction``,
    saved so that inference can check them)."""
    buffers = (
        "running_mean",
        "running_var",
        "num_batches_tracked",
        "input_scale",
        "input_unshuffle",
        "input_hard_gate",
        "input_keep_fraction",
    )
    return int(sum(v.numel() for k, v in load_weights(path).items() if not k.endswith(buffers)))


def pointing_game_chance(datalist: Path) -> float:
    """Hit rate of a pointer placed uniformly at random: the mean lesion-area fraction of test images with lesions."""
    reader = MedicalImageReader()
    fractions = []
    for item in load_datalist(datalist, "test"):
        mask = reader.read_file(item["mask"])[0] > 0.5
        if mask.any():
            fractions.append(float(mask.mean()))
    return sum(fractions) / len(fractions) if fractions else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="the demo's output folder")
    parser.add_argument("--student-init", default="", help="the checkpoint the MED-TEX student started from, if any")
    parser.add_argument("--student-config", default="", help="the student overlay of configs/students/, if any")
    args = parser.parse_args(argv)
    out = args.out
    teacher, student, scratch = (
        read_metrics(out / "eval" / name / "metrics.csv") for name in ("teacher", "medtex", "scratch")
    )
    summary = {
        "teacher_auc": teacher["test_auc"],
        "student_auc": student["test_auc"],
        "scratch_auc": scratch["test_auc"],
        "teacher_accuracy": teacher.get("accuracy"),
        "student_accuracy": student.get("accuracy"),
        "scratch_accuracy": scratch.get("accuracy"),
        "teacher_kappa": teacher.get("kappa"),
        "student_kappa": student.get("kappa"),
        "scratch_kappa": scratch.get("kappa"),
        "teacher_params": count_weights(out / "models" / "teacher.pt"),
        "student_params": count_weights(out / "models" / "model.pt"),
        "pointing_game": student.get("pointing_game"),
        "pointing_game_chance": pointing_game_chance(out / "branch_B" / "datalist.json"),
        "student_init": args.student_init or None,
        "student_config": args.student_config or None,
        "torch": torch.__version__,
    }
    summary["params_ratio"] = summary["student_params"] / summary["teacher_params"]
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    for key, value in summary.items():
        print(f"{key:>18}: {value:.4f}" if isinstance(value, float) else f"{key:>18}: {value}")
    print(f"summary written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
