"""Pre-flight datalist validation: every problem kind found, named with its file, and the policies' exit codes."""

from __future__ import annotations

import importlib.util
import json
import logging
import runpy
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser

from bundle.data.preflight import preflight, preflight_or_exit
from bundle.data.readers import MedicalImageReader
from bundle.datasets.demo import generate_demo_data

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "validate_datalist.py"
_spec = importlib.util.spec_from_file_location("validate_datalist", SCRIPT)
validate_datalist = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(validate_datalist)

# Seed 266 (camera B, 32 px) puts every grade in each labelled split:
# training [1, 0, 3, 4, 0, 1, 2, 0], validation [3, 0, 2, 0, 1, 4], test [2, 1, 0, 4, 3, 2].
SPLITS = {"n_train": 8, "n_val": 6, "n_test": 6, "n_unlabeled": 4}


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """A clean fundus demo set whose labelled items carry a patient id (one patient per image)."""
    out = tmp_path_factory.mktemp("clean")
    generate_demo_data("fundus", out, **SPLITS, size=32, seed=266, domain="B")
    edit(out / "datalist.json", _add_patients)
    return out


def _add_patients(d: dict) -> None:
    for key in ("training", "validation", "test"):
        for item in d[key]:
            item["patient"] = "P-" + Path(item["image"]).stem


def edit(datalist: Path, change: Callable[[dict], None]) -> None:
    content = json.loads(datalist.read_text())
    change(content)
    datalist.write_text(json.dumps(content, indent=1))


@pytest.fixture
def copy(clean, tmp_path) -> Path:
    """A fresh copy of the clean set; returns its datalist."""
    shutil.copytree(clean, tmp_path / "set")
    return tmp_path / "set" / "datalist.json"


def kinds(report) -> set[str]:
    return {p.kind for p in report.problems}


# --- the corruptions, each on a copy of the clean set -------------------------------------------------------------
def missing_file(dl: Path) -> str:
    (dl.parent / "images" / "train_00001.png").unlink()
    return "train_00001.png"


def zero_byte(dl: Path) -> str:
    (dl.parent / "images" / "val_00001.png").write_bytes(b"")
    return "val_00001.png"


def truncated(dl: Path) -> str:
    path = dl.parent / "images" / "test_00000.png"
    path.write_bytes(path.read_bytes()[:40])
    return "test_00000.png"


def text_as_png(dl: Path) -> str:
    (dl.parent / "images" / "train_00000.png").write_text("this is a note, not an image\n")
    return "train_00000.png"


def nan_nifti(dl: Path) -> str:
    array = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    array[5, 7] = np.nan  # one NaN: the reader's min-max scaling alone would make the image all zeros
    nib.save(nib.Nifti1Image(array, np.eye(4)), dl.parent / "images" / "nan_slice.nii.gz")
    edit(dl, lambda d: d["unlabeled"][2].update(image="images/nan_slice.nii.gz"))
    return "nan_slice.nii.gz"


def label_out_of_range(dl: Path) -> str:
    edit(dl, lambda d: d["training"][4].update(label=7))
    return "train_00004.png"


def path_in_two_splits(dl: Path) -> str:
    absolute = str(dl.parent / "images" / "train_00003.png")  # written differently from training's relative path
    edit(dl, lambda d: d["test"].append({"image": absolute, "label": 4}))
    return "train_00003.png"


def patient_in_two_splits(dl: Path) -> str:
    edit(dl, lambda d: d["validation"][2].update(patient="P-train_00000"))
    return "val_00002.png"


def duplicate_content(dl: Path) -> str:
    shutil.copy(dl.parent / "images" / "train_00006.png", dl.parent / "images" / "other_name.png")
    edit(dl, lambda d: d["test"].append({"image": "images/other_name.png", "label": 2}))
    return "other_name.png"


def class_absent_from_training(dl: Path) -> str:
    edit(dl, lambda d: d["training"][3].update(label=0))  # the only grade-4 ("proliferative") training image
    return "proliferative"


CASES = {
    "missing_file": missing_file,
    "zero_byte": zero_byte,
    "unreadable": truncated,
    "non_finite": nan_nifti,
    "label_out_of_range": label_out_of_range,
    "split_overlap_path": path_in_two_splits,
    "split_overlap_patient": patient_in_two_splits,
    "duplicate_content": duplicate_content,
    "class_missing": class_absent_from_training,
}


def test_clean_datalist_passes(copy, tmp_path, capsys):
    report = preflight(copy, task="multiclass", num_classes=5)
    assert report.problems == [] and report.ok, report.format()
    assert report.items == {"training": 8, "validation": 6, "test": 6, "unlabeled": 4}
    assert report.files_checked == 48  # 24 images + 24 masks
    assert validate_datalist.main([str(copy), "--task", "multiclass", "--num-classes", "5"]) == 0
    assert "OK:" in capsys.readouterr().out
    assert preflight_or_exit(str(copy), "multiclass", 5, "error", True).ok  # the report, for the datasets


@pytest.mark.parametrize("kind", list(CASES) + ["text_as_png"])
def test_each_problem_is_reported_with_its_file(copy, kind, capsys):
    name = (CASES.get(kind) or text_as_png)(copy)
    kind = "unreadable" if kind == "text_as_png" else kind
    report = preflight(copy, task="multiclass", num_classes=5)
    assert kinds(report) == {kind}, report.format()
    assert all(p.severity == "error" for p in report.problems)
    assert any(name in p.message for p in report.problems), report.format()
    assert not report.ok
    assert validate_datalist.main([str(copy)]) == 1
    out = capsys.readouterr().out
    assert f"\n{kind} (" in out and name in out and "FAILED" in out


def test_read_errors_give_the_readers_reason(copy):
    truncated(copy)
    text_as_png(copy)
    messages = {Path(p.file).name: p.message for p in preflight(copy).problems}
    assert "truncated" in messages["test_00000.png"] or "cannot decode" in messages["test_00000.png"]
    assert "cannot decode image" in messages["train_00000.png"]


def test_multilabel_dicom_set(tmp_path):
    """Chest X-ray demo (DICOM, 4 findings; seed 19 has a positive of each in every split): -1 counts as unknown."""
    generate_demo_data("cxr", tmp_path, n_train=6, n_val=4, n_test=4, size=32, seed=19, domain="B")
    datalist = tmp_path / "datalist.json"
    assert preflight(datalist, task="multilabel", num_classes=4).problems == []

    def no_effusion_in_training(d: dict) -> None:
        for item in d["training"]:
            item["label"][2] = -1 if item["label"][2] else 0

    edit(datalist, no_effusion_in_training)
    edit(datalist, lambda d: d["validation"][0].update(label=[0, 1, 2, 0]))
    report = preflight(datalist, task="multilabel", num_classes=4)
    assert [(p.kind, p.split) for p in report.errors] == [
        ("label_out_of_range", "validation"),
        ("class_missing", "training"),
    ]
    assert "val_00000.dcm" in report.errors[0].message and "2 (effusion)" in report.errors[1].message


def test_task_and_class_count_mismatch(copy):
    report = preflight(copy, task="multilabel", num_classes=4)
    assert kinds(report) == {"task_mismatch"}
    text = " ".join(p.message for p in report.problems)
    assert "'multiclass' in the datalist but 'multilabel'" in text and "5 classes" in text and "is 4" in text
    assert validate_datalist.main([str(copy), "--num-classes", "4"]) == 1


def test_bad_json_and_bad_header(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"task": "multiclass", ')
    assert kinds(preflight(broken)) == {"bad_json"}
    assert kinds(preflight(tmp_path / "absent.json")) == {"missing_datalist"}
    header = tmp_path / "header.json"
    header.write_text(json.dumps({"task": "segmentation", "classes": [], "training": [], "validation": []}))
    report = preflight(header)
    assert [p.kind for p in report.problems].count("bad_header") == 2
    assert {"empty_split"} <= kinds(report)
    assert validate_datalist.main([str(broken)]) == 1


def skip_corruptions(dl: Path) -> dict[str, list[int]]:
    """Per-item problems on items whose class occurs twice in their split, so no class goes missing when skipped."""
    missing_file(dl)  # training[1]
    text_as_png(dl)  # training[0]
    zero_byte(dl)  # validation[1]
    truncated(dl)  # test[0]
    nan_nifti(dl)  # unlabeled[2]
    edit(dl, lambda d: d["training"][4].update(label=-1))  # label_out_of_range
    (dl.parent / "masks" / "unlabeled_00000.png").unlink()  # a missing mask also drops its item
    return {"training": [0, 1, 4], "validation": [1], "test": [0], "unlabeled": [0, 2], "localization": []}


def test_every_problem_is_collected_and_skip_policy_drops_items(copy, caplog, capsys):
    expected = skip_corruptions(copy)
    report = preflight(copy, policy="error")
    assert kinds(report) == {"missing_file", "unreadable", "zero_byte", "non_finite", "label_out_of_range"}
    assert len(report.errors) == 7 and report.skipped == {}

    with caplog.at_level(logging.WARNING, logger="bundle.data.preflight"):
        report = preflight(copy, policy="skip")
    assert report.ok and report.errors == [] and report.warnings == []
    assert report.skipped == expected
    names = {Path(f).name for f in report.skipped_files}
    assert names == {
        "train_00000.png",
        "train_00001.png",
        "train_00004.png",
        "val_00001.png",
        "test_00000.png",
        "nan_slice.nii.gz",
        "unlabeled_00000.png",
    }
    assert "skipping 7 files" in caplog.text and "missing_file: 2" in caplog.text
    assert validate_datalist.main([str(copy), "--policy", "skip"]) == 0
    out = capsys.readouterr().out
    assert "skip list" in out and "training: [0, 1, 4]" in out and "OK:" in out
    assert validate_datalist.main([str(copy), "--policy", "error"]) == 1
    assert len(preflight_or_exit(str(copy), "multiclass", 5, "skip", True).skipped_files) == 7


class RecordingReader(MedicalImageReader):
    """The bundle's reader, appending the path of every file it decodes to ``log``."""

    def __init__(self, log: str) -> None:
        super().__init__()
        self.log = log

    def read_file(self, path: str, *args: Any, **kwargs: Any) -> Any:
        with open(self.log, "a") as f:
            f.write(f"{path}\n")
        return super().read_file(path, *args, **kwargs)


def _preflight_in_process_group(rank: int, world: int, store: str, datalist: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        report = preflight(datalist, policy="skip", reader=RecordingReader(f"{out}.decoded{rank}"), workers=1)
        problems = [p.message for p in report.problems]
        Path(f"{out}.report{rank}").write_text(json.dumps({"skipped": report.skipped, "problems": problems}))
    finally:
        dist.destroy_process_group()


def test_distributed_processes_share_the_decoding_and_agree_on_the_report(copy, tmp_path):
    import torch.multiprocessing as mp

    skip_corruptions(copy)
    alone = preflight(copy, policy="skip", reader=RecordingReader(str(tmp_path / "alone")), workers=1)
    decoded_alone = (tmp_path / "alone").read_text().splitlines()
    out = str(tmp_path / "rank")
    mp.spawn(_preflight_in_process_group, args=(2, str(tmp_path / "store"), str(copy), out), nprocs=2)
    shares = [Path(f"{out}.decoded{rank}").read_text().splitlines() for rank in (0, 1)]
    # each file decoded once in all (a share each), not once per process
    assert sorted(shares[0] + shares[1]) == sorted(decoded_alone) and len(decoded_alone) > 20
    assert abs(len(shares[0]) - len(shares[1])) <= 1 and not set(shares[0]) & set(shares[1])
    expected = {"skipped": alone.skipped, "problems": [p.message for p in alone.problems]}
    for rank in (0, 1):  # every process gets the whole report, the same as one process alone would
        assert json.loads(Path(f"{out}.report{rank}").read_text()) == expected


@pytest.mark.parametrize("kind", ["split_overlap_path", "split_overlap_patient", "duplicate_content"])
def test_skip_policy_never_skips_leaks(copy, kind):
    missing_file(copy)
    CASES[kind](copy)
    report = preflight(copy, policy="skip")
    assert report.skipped["training"] == [1] and not report.ok
    assert [p.kind for p in report.errors] == [kind]
    assert validate_datalist.main([str(copy), "--policy", "skip"]) == 1


def test_json_report(copy, tmp_path):
    missing_file(copy)
    edit(copy, lambda d: d["test"].pop(3))  # the only grade-4 test image: a warning
    out = tmp_path / "reports" / "report.json"
    assert validate_datalist.main([str(copy), "--json", str(out)]) == 1
    content = json.loads(out.read_text())
    assert content["ok"] is False and content["policy"] == "error" and content["datalist"] == str(copy)
    assert content["counts"] == {"error": 1, "warning": 1, "skipped_items": 0}
    assert content["by_kind"] == {"missing_file": 1, "class_missing": 1}
    missing, absent = content["problems"]
    assert missing == {
        "severity": "error",
        "kind": "missing_file",
        "split": "training",
        "index": 1,
        "file": str(copy.parent / "images" / "train_00001.png"),
        "message": "training[1] image images/train_00001.png: file not found",
        "skipped": False,
    }
    assert absent["severity"] == "warning" and absent["split"] == "test" and "proliferative" in absent["message"]
    assert content["summary"].startswith("FAILED") and content["items"]["test"] == 5


def test_preflight_or_exit_from_a_config(copy):
    missing_file(copy)
    assert preflight_or_exit(str(copy), "multiclass", 5, "error", enabled=False) is None
    parser = ConfigParser(
        {
            "imports": ["$from bundle.data.preflight import preflight_or_exit"],
            "datalist": str(copy),
            "preflight": True,
            "preflight_policy": "error",
            "initialize": ["$preflight_or_exit(@datalist, 'multiclass', 5, @preflight_policy, @preflight)"],
        }
    )
    with pytest.raises(SystemExit) as caught:  # not wrapped in monai's "Failed to evaluate" RuntimeError
        parser.get_parsed_content("initialize")
    text = str(caught.value.code)
    assert str(copy) in text and "preflight_policy='error'" in text and "train_00001.png: file not found" in text


def test_script_entry_point(copy, monkeypatch, capsys):
    duplicate_content(copy)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), str(copy), "--no-decode"])
    with pytest.raises(SystemExit) as caught:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert caught.value.code == 1
    out = capsys.readouterr().out
    assert "duplicate_content (1 error)" in out and "other_name.png" in out and "train_00006.png" in out
    assert "not decoded" in out


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("config", ["train.yaml", "train_teacher.yaml"])
def test_training_configs_run_the_check_and_skip_leaves_bad_items_out(copy, config, tmp_path):
    missing_file(copy)

    def parser(policy: str) -> ConfigParser:
        p = ConfigParser()
        p.read_config(str(CONFIGS / config))
        p.update({"dataset_dir": str(copy.parent), "preflight_policy": policy, "image_size": 32, "cache_rate": 0.0})
        p.update({"teacher_ckpt": str(tmp_path / "unused.pt"), "output_dir": str(tmp_path / "run")})
        return p

    with pytest.raises(SystemExit, match="train_00001.png: file not found"):
        parser("error").get_parsed_content("initialize")
    skipping = parser("skip")
    assert len(skipping.get_parsed_content("preflight_report").skipped["training"]) == 1
    images = [Path(item["image"]).name for item in skipping.get_parsed_content("train#dataset").data]
    assert "train_00001.png" not in images and "train_00000.png" in images
    assert len(skipping.get_parsed_content("validate#dataset")) == SPLITS["n_val"]


def test_paths_outside_the_dataset_folder_are_refused_unless_allowed(copy, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(copy.parent / "images" / "train_00000.png", elsewhere / "outside.png")
    (copy.parent / "images" / "train_00001.png").unlink()
    (copy.parent / "images" / "train_00001.png").symlink_to(elsewhere / "outside.png")  # escapes through a link

    def point_outside(d: dict) -> None:
        d["training"][0]["image"] = str(elsewhere / "outside.png")
        d["validation"][0]["image"] = "../elsewhere/outside.png"

    edit(copy, point_outside)
    refused = preflight(copy, allowed_roots=[])
    outside = sorted((p.split, p.index) for p in refused.problems if p.kind == "outside_root")
    assert outside == [("training", 0), ("training", 1), ("validation", 0)] and not refused.ok
    assert all("data_roots" in p.message for p in refused.problems if p.kind == "outside_root")
    allowed = preflight(copy, allowed_roots=[elsewhere])
    assert not any(p.kind == "outside_root" for p in allowed.problems)
    assert not any(p.kind == "outside_root" for p in preflight(copy).problems)  # the API's default: no check
    assert validate_datalist.main([str(copy)]) == 1
    assert "outside_root" not in {p.kind for p in preflight(copy, allowed_roots=[elsewhere]).problems}

    config = ConfigParser()
    config.read_config(str(CONFIGS / "train_teacher.yaml"))
    config.update({"dataset_dir": str(copy.parent)})
    with pytest.raises(SystemExit, match="outside_root"):
        config.get_parsed_content("preflight_report")
