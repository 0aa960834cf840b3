"""Inference over a folder, killed part-way, resumes where it stopped: the files already listed keep their rows and
outputs, the rest are added, nothing is listed twice, no half-written file survives; another model starts over."""

from __future__ import annotations

import csv
from pathlib import Path

import pydicom
import torch

from bundle.data.inference import finished_sources
from tests.test_inference import CLASSES, make_inputs, reference_parser, run_inference


def rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))[1:]


def infer(inputs: Path, out: Path, models: Path, datalist: Path) -> str:
    return run_inference(inputs, out, models, datalist, batch_size=2)


def save_model(datalist: Path, path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    network = reference_parser(datalist).get_parsed_content("network_def")
    path.parent.mkdir(exist_ok=True)
    torch.save(network.state_dict(), path)


def test_killed_inference_resumes_and_another_model_starts_over(tmp_path):
    inputs, out, models = tmp_path / "in", tmp_path / "out", tmp_path / "models"
    make_inputs(inputs)
    datalist = tmp_path / "datalist.json"
    datalist.write_text(
        '{"name": "t", "task": "multiclass", "classes": %s, "test": []}' % str(CLASSES).replace("'", '"')
    )
    save_model(datalist, models / "model.pt", seed=0)
    infer(inputs, out, models, datalist)
    complete_predictions, complete_errors = rows(out / "predictions.csv"), rows(out / "errors.csv")
    capture = pydicom.dcmread(out / "ct_overlay.dcm")
    assert len(complete_predictions) == 6 and len(complete_errors) == 3

    # what a kill leaves: two files done, the third's row cut off mid-line, its overlay half-written (hidden name)
    header = (out / "predictions.csv").read_text().splitlines()[0]
    done = complete_predictions[:2]
    cut = ",".join(complete_predictions[2])[:15]
    (out / "predictions.csv").write_text("\n".join([header, *(",".join(r) for r in done)]) + "\n" + cut)
    (out / "errors.csv").write_text("file,reason\n")
    for row in complete_predictions[2:]:
        for produced in out.glob(Path(row[0]).name.split(".")[0] + "*"):
            produced.unlink()
    (out / ".part-slice_overlay.png").write_bytes(b"\x89PNG half")
    assert finished_sources(out) == {r[0] for r in done}

    log = infer(inputs, out, models, datalist)
    assert "resuming in" in log and "2 of 9 files already done, 7 to go" in log
    assert rows(out / "predictions.csv") == complete_predictions  # same rows, same order, each file once
    assert sorted(rows(out / "errors.csv")) == sorted(complete_errors)
    assert not list(out.glob(".part-*"))
    again = pydicom.dcmread(out / "ct_overlay.dcm")
    assert (again.SeriesInstanceUID, again.SOPInstanceUID) == (capture.SeriesInstanceUID, capture.SOPInstanceUID)
    assert "nothing to do" in infer(inputs, out, models, datalist)

    # retrained weights: the old predictions must not stay mixed with new ones
    save_model(datalist, models / "model.pt", seed=1)
    log = infer(inputs, out, models, datalist)
    assert "another model" in log and "resuming in" not in log
    retrained = rows(out / "predictions.csv")
    assert [r[0] for r in retrained] == [r[0] for r in complete_predictions] and retrained != complete_predictions

    # reading the config (as MONAI Label or a script would) deletes nothing, even with resume off: only the
    # workflow's initialize step decides what stays
    parser = reference_parser(datalist)
    parser.update({"input_dir": str(inputs), "output_dir": str(out), "ckpt_dir": str(models), "resume": False})
    assert len(parser.get_parsed_content("dataset")) == 0  # everything listed already
    assert rows(out / "predictions.csv") == retrained
