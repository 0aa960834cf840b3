"""configs/multi_gpu_train.yaml and multi_gpu_evaluate.yaml under torchrun with 2 CPU processes (gloo): both ranks
train on their half of the data (with ``compile``), only rank 0 writes, the weights load into network_def, and the
distributed evaluation gives the single-process metrics."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.networks.nets import DenseNet121

from bundle.datasets.demo import generate_demo_data
from bundle.networks.teacher import load_weights
from tests.conftest import inference_network

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY = {"image_size": 32, "batch_size": 4, "num_workers": 0, "cache_rate": 0.0, "preflight": False}
N_TRAIN, N_UNLABELED, N_TEST = 16, 8, 6
DIST_STEPS = [
    "$torch.distributed.is_initialized() or torch.distributed.init_process_group(backend=@dist_backend)",
    "$torch.cuda.set_device(@device) if @device.type == 'cuda' else None",
]


def torchrun(logs: Path, workflow: str, configs: list[str], **override: object) -> None:
    """``torchrun --standalone --nnodes=1 --nproc_per_node=2 -m monai.bundle run ...`` on CPU, per-rank logs."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    command += ["--log-dir", str(logs), "--tee", "3", "-m", "monai.bundle", "run", workflow]
    command += ["--config_file", str([f"configs/{c}" for c in configs])]
    for key, value in {**TINY, **override}.items():
        command += [f"--{key}", str(value)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{result.stdout[-4000:]}\n{result.stderr[-6000:]}"


def rank_log(logs: Path, rank: int) -> str:
    """What rank ``rank`` printed (torchrun --log-dir ... --tee 3)."""
    files = sorted(logs.glob(f"*/attempt_0/{rank}/std*.log"))
    assert files, f"no logs of rank {rank} under {logs}"
    return "".join(f.read_text() for f in files)


def read_metrics(path: Path) -> dict[str, float]:
    with open(path) as f:
        return {row[0]: float(row[1]) for row in csv.reader(f)}


RANK0_ONLY = {"StatsHandler", "TensorBoardStatsHandler", "bundle.handlers.LossProgressBar"}
RANK0_ONLY |= {"bundle.handlers.AtomicCheckpointSaver"}


def test_overrides_keep_the_single_gpu_steps_and_switch_handlers_off_by_flag(monkeypatch):
    """The multi-GPU files repeat train.yaml's and evaluate.yaml's steps (keep in step); the handlers that only rank 0
    runs carry ``_disabled_: '@is_not_rank0'`` where they are defined, so adding a handler moves nothing."""
    train = ConfigParser.load_config_files([CONFIGS / "train.yaml"])
    multi = ConfigParser.load_config_file(CONFIGS / "multi_gpu_train.yaml")
    expected = [s.replace("@train#trainer.network,", "@train#trainer.network.module,") for s in train["initialize"]]
    assert multi["initialize"] == DIST_STEPS + expected
    evaluate = ConfigParser.load_config_file(CONFIGS / "evaluate.yaml")
    multi_eval = ConfigParser.load_config_file(CONFIGS / "multi_gpu_evaluate.yaml")
    assert multi_eval["initialize"] == DIST_STEPS + evaluate["initialize"]

    assert train["is_not_rank0"] is False and multi["is_not_rank0"].startswith("$")
    handlers = [*train["train"]["handlers"], *train["validate"]["handlers"], *evaluate["validate#handlers"]]
    flagged = {h["_target_"] for h in handlers if h.get("_disabled_") == "@is_not_rank0"}
    assert flagged == RANK0_ONLY
    assert not any(h["_target_"] in RANK0_ONLY and "_disabled_" not in h for h in handlers)
    for overlay in ("multi_gpu_train.yaml", "multi_gpu_evaluate.yaml"):  # no handler named by its position
        assert "handlers#" not in (CONFIGS / overlay).read_text(), overlay
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.yaml"), str(CONFIGS / "multi_gpu_train.yaml")])
    monkeypatch.setenv("RANK", "1")
    assert parser.get_parsed_content("is_not_rank0") is True


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("multi_gpu")
    data, models = work / "data", work / "models"
    generate_demo_data(
        "fundus", data, n_train=N_TRAIN, n_val=6, n_test=N_TEST, n_unlabeled=N_UNLABELED, size=32, seed=0, domain="B"
    )
    models.mkdir()
    torch.manual_seed(0)
    torch.save({"model": DenseNet121(spatial_dims=2, in_channels=3, out_channels=5).state_dict()}, work / "t.pt")
    where = {"dataset_dir": str(data), "ckpt_dir": str(models)}
    torchrun(
        work / "train_logs",
        "training",
        ["train.yaml", "multi_gpu_train.yaml"],
        **where,
        max_epochs="1",
        teacher_ckpt=str(work / "t.pt"),
        output_dir=str(work / "run"),
        # the student and teacher compiled inside the DDP wrapper (graph capture only: "eager" backend)
        compile="True",
        compile_kwargs="{'backend':'eager'}",
    )
    return {"work": work, "data": data, "models": models, "run": work / "run", "logs": work / "train_logs"}


def test_both_ranks_train_on_half_of_the_data_and_only_rank_0_writes(trained):
    # the full checkpoint's trainer state: per epoch, each rank ran over half of the images (24 / 2 / batch 4 = 3)
    (checkpoint,) = trained["run"].glob("train_checkpoint_epoch=*.pt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert state["trainer"]["epoch_length"] == state["trainer"]["iteration"] == (N_TRAIN + N_UNLABELED) // 2 // 4
    assert not any(k.startswith("module.") for k in state["network"])  # saved without the DDP wrapper

    for rank in (0, 1):  # both ranks ran the training epoch and its validation
        log = rank_log(trained["logs"], rank)
        assert "MedTexTrainer - INFO - Epoch[1] Complete" in log, rank
        assert "SupervisedEvaluator - INFO - Epoch[1] Complete" in log, rank
        assert "torch.compile({'backend': 'eager'}) of the explainer, the student, the teacher" in log
    rank0, rank1 = rank_log(trained["logs"], 0), rank_log(trained["logs"], 1)
    assert "Epoch[1] Metrics -- epoch_loss" in rank0 and "Iteration: [3/3]" in rank0  # statistics, progress bar
    assert "Metrics --" not in rank1 and "Iteration:" not in rank1

    # one writer: the TensorBoard event files all come from one process (names end in <host>.<pid>.<n>)
    events = list(trained["run"].glob("events.out.tfevents.*"))
    assert len(events) == 2 and len({re.sub(r"\.\d+$", "", e.name).rsplit(".", 1)[-1] for e in events}) == 1
    assert sorted(p.name for p in trained["models"].iterdir()) == ["model.pt"]


def test_the_weights_load_into_network_def(trained):
    network = inference_network()  # the deployed network at the tests' 32 px
    network.load_state_dict(load_weights(trained["models"] / "model.pt"))  # strict: same keys, no "module."
    with torch.no_grad():
        logits, mask = network.eval().explain(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 5) and mask.shape == (2, 1, 32, 32) and torch.isfinite(logits).all()


def test_distributed_evaluation_gives_the_single_process_metrics(trained):
    where = {"dataset_dir": str(trained["data"]), "ckpt_dir": str(trained["models"])}
    multi_dir, single_dir = trained["work"] / "eval_multi", trained["work"] / "eval_single"
    torchrun(
        trained["work"] / "eval_logs",
        "evaluating",
        ["train.yaml", "evaluate.yaml", "multi_gpu_evaluate.yaml"],
        **where,
        output_dir=str(multi_dir),
    )
    single = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")],
        workflow_type="train",
        **{**TINY, **where},
        output_dir=str(single_dir),
        device="cpu",
    )
    single.initialize()
    single.run()
    multi, reference = read_metrics(multi_dir / "metrics.csv"), read_metrics(single_dir / "metrics.csv")
    assert set(multi) == set(reference)
    assert {"test_auc", "accuracy", "kappa", "sensitivity", "specificity", "pointing_game"} <= set(multi)
    for name, value in reference.items():
        assert multi[name] == pytest.approx(value, abs=1e-6, nan_ok=True), name
    assert "test_auc" in rank_log(trained["work"] / "eval_logs", 0)
    assert "Metrics --" not in rank_log(trained["work"] / "eval_logs", 1)
