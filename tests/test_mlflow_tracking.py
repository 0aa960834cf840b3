"""``--tracking mlflow`` (MONAI's bundle tracking settings) on the training and evaluation configs: a local store
under output_dir that holds every loss term and every metric, read back with MLflow's client."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import mlflow
import pytest
import torch
from monai.networks.nets import DenseNet121
from monai.utils import path_to_sqlite_uri

from bundle.datasets.demo import FUNDUS_CLASSES, generate_demo_data
from tests.forked import run_python

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--image_size", "32", "--batch_size", "4", "--num_workers", "0", "--cache_rate", "0", "--preflight", "False"]
LOSS_TERMS = ["loss", "loss_ce", "loss_kd", "loss_vid", "loss_mask", "loss_fidelity"]


def bundle_run(workflow: str, config: str, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    command = ["-m", "monai.bundle", "run", workflow, "--config_file", config, *TINY, *args]
    result = run_python(command, cwd=ROOT, env=env)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"


def only_run(store: Path) -> tuple[mlflow.MlflowClient, mlflow.entities.Run]:
    """The one MLflow run in the SQLite store ``store`` (MONAI's default for ``--tracking mlflow``)."""
    assert store.is_file(), f"no MLflow store at {store}"
    client = mlflow.MlflowClient(tracking_uri=path_to_sqlite_uri(str(store)))
    experiment = client.get_experiment_by_name("monai_experiment")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory) -> dict[str, Path]:
    """A tiny MED-TEX training (2 epochs) and its evaluation, both with ``--tracking mlflow``."""
    work = tmp_path_factory.mktemp("mlflow")
    data, models = work / "data", work / "models"
    generate_demo_data("fundus", data, n_train=8, n_val=4, n_test=4, n_unlabeled=4, size=32, seed=0, domain="B")
    models.mkdir()
    torch.manual_seed(0)
    torch.save({"model": DenseNet121(spatial_dims=2, in_channels=3, out_channels=5).state_dict()}, models / "t.pt")
    where = ["--dataset_dir", str(data), "--ckpt_dir", str(models)]
    run_dir, eval_dir = work / "run", work / "eval"
    bundle_run(
        "training",
        "configs/train.yaml",
        *where,
        "--max_epochs",
        "2",
        "--teacher_ckpt",
        str(models / "t.pt"),
        "--output_dir",
        str(run_dir),
        "--tracking",
        "mlflow",
    )
    bundle_run(
        "evaluating",
        "['configs/train.yaml','configs/evaluate.yaml']",
        *where,
        "--output_dir",
        str(eval_dir),
        "--tracking",
        "mlflow",
    )
    return {"run": run_dir, "eval": eval_dir}


def test_training_logs_every_loss_term_and_the_validation_metric(tracked):
    client, run = only_run(tracked["run"] / "mlruns.db")
    assert run.info.status == "FINISHED"
    assert run.data.params["max_epochs"] == "2"
    iterations = int(run.data.params["epoch_length"]) * 2
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == iterations  # every iteration
    for term in LOSS_TERMS:  # the epoch mean of each term, once per epoch
        history = client.get_metric_history(run.info.run_id, f"epoch_{term}")
        assert [m.step for m in history] == [1, 2], term
        assert all(m.value >= 0 or term == "loss_fidelity" for m in history), term
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_auc")] == [1, 2]
    assert "lr_group_0" in run.data.metrics


def test_evaluation_logs_every_metric_as_written_to_metrics_csv(tracked):
    _, run = only_run(tracked["eval"] / "mlruns.db")
    with open(tracked["eval"] / "metrics.csv") as f:
        saved = {row[0]: float(row[1]) for row in csv.reader(f)}
    expected = {"test_auc", "accuracy", "kappa", "pointing_game"} | {
        f"auc_{c.replace(' ', '_')}" for c in FUNDUS_CLASSES
    }
    assert expected <= set(saved) and set(saved) <= set(run.data.metrics)
    for name, value in saved.items():
        assert run.data.metrics[name] == pytest.approx(value, nan_ok=True), name


def test_the_store_stays_under_output_dir(tracked):
    assert not (ROOT / "mlruns").exists() and not (ROOT / "mlruns.db").exists()
    for folder in tracked.values():
        assert any(folder.glob("config_*.json"))  # the executed config, saved by MONAI's tracking patch
