"""scripts/pretrain_generic.py and the transfer_generic_* methods of scripts/learning_curve.py on tiny data: the
recorded validation accuracy is the pretrained network's own, called directly; a second call trains nothing; a
learning curve fine-tunes from the pretrained weights and records which ones."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bundle.data.datalist import load_datalist
from bundle.datasets.demo import GENERIC_CLASSES
from bundle.files import file_sha256
from bundle.networks import MedTex, Student
from bundle.networks.teacher import load_weights, weights_sha256
from bundle.provenance import numerics_record
from scripts import learning_curve, pretrain_generic
from scripts.learning_curves import experiment
from tests.forked import ForkingSubprocess

TINY = ["--image-size", "32", "--batch-size", "8", "--num-workers", "0"]


@pytest.fixture(scope="module", autouse=True)
def forked_bundle_runs() -> Iterator[None]:
    """The scripts' bundle runs in forks of this process (tests/forked.py), for the suite's time."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment, "subprocess", ForkingSubprocess)
        yield


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("generic")
    argv = ["--out", str(out / "models"), "--work", str(out / "work"), "--n-train", "30", "--n-val", "20"]
    assert pretrain_generic.main([*argv, "--epochs", "2", *TINY]) == 0
    return out


def test_recorded_accuracy_is_the_student_called_directly_on_the_validation_images(pretrained):
    record = json.loads((pretrained / "models" / "generic_pretraining.json").read_text())
    assert set(record) == {"student", "teacher"}
    assert record["student"]["numerics"] == record["teacher"]["numerics"] == numerics_record()  # what a rerun needs
    network = MedTex(Student(in_channels=3, out_channels=len(GENERIC_CLASSES)))
    network.load_state_dict(load_weights(pretrained / "models" / "generic_student.pt"))
    network.eval()
    datalist = next((pretrained / "work" / "data").glob("generic_32px_seed0_*")) / "datalist.json"
    items = load_datalist(datalist, "validation")
    assert len(items) == 20
    # the bundle's reading: display intensities in [0, 1], then (x - 0.5) / 0.25 (train.yaml's defaults)
    images = np.stack([np.asarray(Image.open(item["image"]).convert("RGB"), dtype=np.float32) for item in items])
    x = (torch.from_numpy(images).permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.25
    with torch.no_grad():
        logits = network(x)
    logits = logits[0] if isinstance(logits, tuple) else logits
    accuracy = float((logits.argmax(1) == torch.tensor([item["label"] for item in items])).float().mean())
    assert record["student"]["validation_accuracy"] == pytest.approx(accuracy, abs=1e-4)
    for part in ("student", "teacher"):
        assert record[part]["sha256"] == file_sha256(pretrained / "models" / f"generic_{part}.pt")
        assert record[part]["weights_sha256"] == weights_sha256(pretrained / "models" / f"generic_{part}.pt")
        assert record[part]["settings"]["n_train"] == 30 and record[part]["classes"] == GENERIC_CLASSES


def test_a_second_call_trains_nothing(pretrained, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in (pretrained / "models").glob("*.pt")}
    argv = ["--out", str(pretrained / "models"), "--work", str(pretrained / "work"), "--n-train", "30"]
    assert pretrain_generic.main([*argv, "--n-val", "20", "--epochs", "2", *TINY]) == 0
    assert "pretraining the" not in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (pretrained / "models").glob("*.pt")} == before


def test_learning_curve_fine_tunes_the_given_generic_weights_and_records_them(pretrained, tmp_path):
    out = tmp_path / "lc"
    student = pretrained / "models" / "generic_student.pt"
    args = ["--task", "fundus", "--sizes", "8", "--seeds", "0", "--n-unlabeled", "0", "--n-val", "8", "--n-test", "16"]
    args += ["--epochs", "1", "--out", str(out), "--generic-student-ckpt", str(student), *TINY]
    assert learning_curve.main([*args, "--methods", "transfer_generic_student"]) == 0
    meta = json.loads((out / "learning_curve_fundus.json").read_text())
    assert meta["networks_sha256"]["generic_student"] == weights_sha256(student)
    log = (out / "logs" / "fundus" / "transfer_generic_student" / "n8_seed0.log").read_text()
    assert f"--init_ckpt {student}" in log and "weights left random (class_layers\\.out\\.)" in log
    assert not (out / "data" / "fundus_teacher_A").exists()  # no teacher, no teacher's data
    context = (out / "learning_curve_fundus.md").read_text().splitlines()[2]
    assert "no teacher" in context and "teacher trained on" not in context
