"""The bundle runs from any working directory given bundle_root, as MONAI Label, MONAI Deploy and
``monai.bundle.load`` run it (issue 26, item 4): no PYTHONPATH, a cwd outside the bundle, DataLoader workers included.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def foreign_env() -> dict[str, str]:
    """The caller's environment without PYTHONPATH: only bundle_root may lead to the package."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return env


def run_elsewhere(cwd: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=foreign_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout + result.stderr


def bundle_cli(cwd: Path, workflow: str, config: str, *overrides: str) -> str:
    args = ["-m", "monai.bundle", "run", workflow, "--config_file", str(ROOT / "configs" / config)]
    return run_elsewhere(cwd, *args, "--bundle_root", str(ROOT), *overrides)


def test_inference_from_another_folder(tmp_path, data, model_ckpt):
    out, inputs = tmp_path / "out", tmp_path / "in"
    inputs.mkdir()
    for image in sorted((data / "images").glob("test_*.png")):
        (inputs / image.name).write_bytes(image.read_bytes())
    bundle_cli(
        tmp_path,
        "inference",
        "inference.yaml",
        "--input_dir",
        str(inputs),
        "--output_dir",
        str(out),
        "--ckpt_dir",
        str(model_ckpt.parent),
        "--datalist",
        str(data / "datalist.json"),
        "--image_size",
        "32",
        "--batch_size",
        "4",
        "--num_workers",
        "0",
        "--device",
        "cpu",
        "--amp",
        "False",
    )
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(list(inputs.iterdir())) == 4


@pytest.mark.parametrize("num_workers", ["0", "1"])  # 1: a worker process must import bundle.* transforms too
def test_one_epoch_of_training_from_another_folder(tmp_path, data, teacher_ckpt, num_workers):
    models = tmp_path / "models"
    log = bundle_cli(
        tmp_path,
        "training",
        "train.yaml",
        "--dataset_dir",
        str(data),
        "--ckpt_dir",
        str(models),
        "--teacher_ckpt",
        str(teacher_ckpt),
        "--output_dir",
        str(tmp_path / "run"),
        "--max_epochs",
        "1",
        "--image_size",
        "32",
        "--batch_size",
        "4",
        "--num_workers",
        num_workers,
        "--cache_rate",
        "0",
        "--preflight",
        "False",
        "--device",
        "cpu",
    )
    assert (models / "model.pt").is_file(), log


def test_config_workflow_from_another_folder(tmp_path, data, model_ckpt):
    code = (
        "from monai.bundle import ConfigWorkflow\n"
        f"w = ConfigWorkflow(config_file={str(ROOT / 'configs' / 'inference.yaml')!r}, workflow_type='infer',"
        f" bundle_root={str(ROOT)!r}, ckpt_dir={str(model_ckpt.parent)!r}, output_dir={str(tmp_path / 'out')!r},"
        f" datalist={str(data / 'datalist.json')!r}, image_size=32, device='cpu')\n"
        "w.initialize()\n"
        "assert not w.check_properties(), w.check_properties()\n"
        "net = w.parser.get_parsed_content('network_def')\n"
        "assert type(net).__module__.startswith('bundle.'), type(net)\n"
        "print('ok', type(net).__name__)\n"
    )
    assert "ok MedTex" in run_elsewhere(tmp_path, "-c", code)


@pytest.mark.parametrize("script", ["make_demo_data", "validate_datalist", "prepare_datalist", "export_onnx"])
def test_scripts_answer_help_from_another_folder(tmp_path, script):
    assert "usage" in run_elsewhere(tmp_path, str(ROOT / "scripts" / f"{script}.py"), "--help").lower()


def test_demo_data_and_its_check_from_another_folder(tmp_path):
    out = tmp_path / "demo"
    args = ["--task", "fundus", "--out", str(out), "--n-train", "20", "--n-val", "10", "--n-test", "2"]
    run_elsewhere(tmp_path, str(ROOT / "scripts" / "make_demo_data.py"), *args, "--size", "32", "--seed", "0")
    run_elsewhere(tmp_path, str(ROOT / "scripts" / "validate_datalist.py"), str(out / "datalist.json"))


def test_export_onnx_finds_the_bundle_configs_from_another_folder(tmp_path, model_ckpt):
    """Its default configs and metadata are the bundle's files, not the working directory's."""
    args = ["--ckpt-file", str(model_ckpt), "--filepath", str(tmp_path / "model.onnx"), "--image-size", "32"]
    run_elsewhere(tmp_path, str(ROOT / "scripts" / "export_onnx.py"), *args, "--exporter", "torchscript")
    assert (tmp_path / "model.onnx").stat().st_size > 0
