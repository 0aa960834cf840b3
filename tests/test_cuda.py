"""The CUDA path: automatic mixed precision, channels_last, metrics of GPU outputs, NCCL. Skipped without a GPU (CI
has none); run on a GPU machine with ``python -m pytest tests/test_cuda.py``. docs/RESULTS.md ("The training fast
path") says when it last ran there and what it found."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from bundle.engines.metrics import ROCAUCKnownLabelsMetric
from bundle.networks.teacher import load_weights
from tests.conftest import inference_network
from tests.test_foreign_teacher import forms, made, matched_teacher, parser_for  # noqa: F401 (made: a fixture)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY = {"image_size": 32, "batch_size": 4, "num_workers": 0, "max_epochs": 2, "preflight": False}


def test_auc_of_half_precision_gpu_predictions_and_cpu_labels_is_the_cpu_auc():
    generator = torch.Generator().manual_seed(0)
    labels = torch.nn.functional.one_hot(torch.arange(40) % 5, 5).float()
    scores = labels * 0.5 + torch.rand(40, 5, generator=generator)
    on_cpu, mixed = ROCAUCKnownLabelsMetric(), ROCAUCKnownLabelsMetric()
    on_cpu(scores, labels)
    mixed(scores.half().cuda(), labels)  # what an AMP evaluator can hand the metric
    assert 0.6 < on_cpu.aggregate() and mixed.aggregate() == pytest.approx(on_cpu.aggregate(), abs=2e-3)


def test_medtex_training_runs_with_amp_and_channels_last_on_the_gpu(data, teacher_ckpt, tmp_path):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    parser.update({**TINY, "dataset_dir": str(data), "teacher_ckpt": str(teacher_ckpt)})
    parser.update({"output_dir": str(tmp_path / "run"), "ckpt_dir": str(tmp_path / "models")})
    parser.parse()
    assert parser.get_parsed_content("amp") is True and parser.get_parsed_content("channels_last") is True
    network = parser.get_parsed_content("network")
    conv = network.student.features.conv0.weight
    assert conv.is_cuda and conv.is_contiguous(memory_format=torch.channels_last)
    trainer = parser.get_parsed_content("train#trainer")
    trainer.run()

    assert trainer.state.epoch == 2 and trainer.scaler is not None  # gradient scaling: AMP was on
    for term in ("loss", "loss_ce", "loss_kd", "loss_vid", "loss_mask", "loss_fidelity"):
        assert torch.isfinite(torch.as_tensor(trainer.state.output[0][term])).all(), term
    validator = parser.get_parsed_content("validate#evaluator")
    assert 0.0 <= validator.state.metrics["val_auc"] <= 1.0

    # the saved weights load into the CPU network_def and give the GPU's fp32 answers. model.pt holds the epoch with the
    # best validation AUC, not necessarily the last: the GPU network gets the same weights (on the H200 on 2026-12-04
    # the comparison with the last epoch's weights failed once, when epoch 1 was the best)
    saved = load_weights(tmp_path / "models" / "model.pt")
    network.load_state_dict(saved)
    cpu_network = inference_network().eval()
    cpu_network.load_state_dict(saved)
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        cpu_logits, cpu_mask = cpu_network.explain(image)
        gpu_logits, gpu_mask = network.eval().explain(image.cuda())
    # cuDNN convolutions use TF32 by default: agreement to about 1e-3, not to fp32 rounding (seen on an H100)
    assert torch.allclose(cpu_logits, gpu_logits.float().cpu(), atol=5e-3, rtol=1e-2)
    assert torch.allclose(cpu_mask, gpu_mask.float().cpu(), atol=5e-3, rtol=1e-2)


def test_teacher_training_and_inference_run_on_the_gpu(data, model_ckpt, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    teacher = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train_teacher.yaml"]
    teacher += ["--dataset_dir", str(data), "--output_dir", str(tmp_path / "teacher"), "--ckpt_dir", str(tmp_path)]
    teacher += [arg for key, value in TINY.items() for arg in (f"--{key}", str(value))]
    result = subprocess.run(teacher, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "val_auc" in result.stderr + result.stdout and (tmp_path / "teacher.pt").is_file()

    inference = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.yaml"]
    inference += ["--input_dir", str(data / "images"), "--output_dir", str(tmp_path / "inference")]
    inference += ["--ckpt_dir", str(model_ckpt.parent), "--image_size", "32"]
    result = subprocess.run(inference, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = (tmp_path / "inference" / "predictions.csv").read_text().splitlines()
    assert len(rows) - 1 == len(list((data / "images").glob("*.png")))


def test_ddp_training_with_nccl(data, teacher_ckpt, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.yaml"), str(CONFIGS / "multi_gpu_train.yaml")])
    assert parser.get_parsed_content("dist_backend") == "nccl"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=1"]
    command += ["-m", "monai.bundle", "run", "training"]
    command += ["--config_file", "['configs/train.yaml','configs/multi_gpu_train.yaml']"]
    command += ["--dataset_dir", str(data), "--teacher_ckpt", str(teacher_ckpt)]
    command += ["--output_dir", str(tmp_path / "run"), "--ckpt_dir", str(tmp_path / "models")]
    command += [arg for key, value in TINY.items() for arg in (f"--{key}", str(value))]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "models" / "model.pt").is_file()


def test_benchmark_times_training_with_amp_beside_fp32(tmp_path):
    """scripts/benchmark.py on the GPU (issue 5, item 3): teacher and MED-TEX training images/s, AMP against fp32."""
    from scripts import benchmark

    argv = ["--quick", "--device", "cuda", "--image-size", "64", "--batch-size", "4", "--repeats", "2"]
    argv += ["--num-workers", "0", "--json", str(tmp_path / "benchmark.json"), "--md", str(tmp_path / "benchmark.md")]
    assert benchmark.main(argv) == 0
    record = json.loads((tmp_path / "benchmark.json").read_text())["training_throughput"]
    assert record["precisions"] == ["fp32", "amp"]
    for workflow in ("teacher", "medtex"):
        fp32, amp = record[workflow]["fp32"], record[workflow]["amp"]
        assert fp32["amp"] is False and amp["amp"] is True
        ratio = amp["images_per_second"] / fp32["images_per_second"]
        assert record[workflow]["amp_speedup"] == pytest.approx(ratio, rel=1e-9)
    assert record["medtex"]["fp32"]["teacher_bf16"] is False  # fp32 means the frozen teacher's passes too
    assert "| training | AMP images/s | fp32 images/s |" in (tmp_path / "benchmark.md").read_text()


def test_a_foreign_teacher_gives_the_same_targets_on_the_gpu_and_distils_with_amp(made, tmp_path):  # noqa: F811
    """A teacher from elsewhere (tests/test_foreign_teacher.py) on CUDA: its view of the image, bfloat16 passes and
    label map give the CPU's probabilities, and MED-TEX trains through it with AMP (the fidelity pass included)."""
    parser = parser_for(made, forms(made)["state_dict"])
    # nearest: the view is exact (tests/test_foreign_teacher.py), so what is left is the GPU's bfloat16 and TF32
    parser.update({"output_dir": str(tmp_path / "run"), "ckpt_dir": str(tmp_path / "models"), **TINY})
    parser.update({"teacher_resize_mode": "nearest"})
    teacher = parser.get_parsed_content("teacher")
    image = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        cpu = torch.sigmoid(matched_teacher(made)(image))
        gpu = torch.sigmoid(teacher.cuda()(image.cuda())[0]).float().cpu()
    assert torch.allclose(gpu, cpu, atol=1e-2)  # bfloat16 logits: close, not equal
    trainer = parser.get_parsed_content("train#trainer")
    trainer.run()
    assert trainer.scaler is not None and trainer.state.epoch == 2
    for term in ("loss", "loss_kd", "loss_vid", "loss_fidelity"):
        assert torch.isfinite(torch.as_tensor(trainer.state.output[0][term])).all(), term
