"""Large inference in small: nothing the run keeps grows with the number of images, and a real SIGKILL mid-run
followed by the same command predicts no finished file again (scripts/benchmarking/inference_scale.py, the code
behind docs/results/inference_scale_cpu.md, on a few dozen 32 px images)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image

from scripts.benchmarking.inference_scale import measure_streaming_inference
from tests.test_inference import CLASSES, reference_parser

N_IMAGES = 40
# per-image state the writer must keep: the output names already taken, so that two sources with one stem get
# rgb_* and rgb_1_* (a short string per file, as a resumed run names them)
PER_IMAGE_BY_DESIGN = {"SaliencyWriter._stems"}


def sized_attributes(obj: Any, name: str, depth: int = 2) -> Iterator[tuple[str, int]]:
    """``(Class.attribute[.attribute], len)`` of every list, tuple, set and dict reachable from ``obj`` through
    attributes, ``depth`` levels down (the containers' own items are not searched: they are what is measured)."""
    for key, value in vars(obj).items():
        path = f"{name}.{key}"
        if isinstance(value, (list, tuple, set, frozenset, dict)):
            yield path, len(value)
        elif depth > 1 and hasattr(value, "__dict__") and not isinstance(value, (type, torch.nn.Module)):
            yield from sized_attributes(value, path, depth - 1)


def test_no_handler_or_engine_state_keeps_per_image_outputs(tmp_path):
    """After a run over N images, nothing in the evaluator's state or in its handlers holds N things (a list of
    predictions, CSV rows, metadata ...) but the output names the writer needs: memory stays flat on any folder."""
    inputs, out, models = tmp_path / "in", tmp_path / "out", tmp_path / "models"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(inputs / f"img{i:03d}.png")
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"name": "t", "task": "multiclass", "classes": CLASSES, "test": []}))
    parser = reference_parser(datalist)
    torch.manual_seed(0)
    models.mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), models / "model.pt")
    parser.update(
        {"input_dir": str(inputs), "output_dir": str(out), "ckpt_dir": str(models), "batch_size": 4, "num_workers": 0}
    )
    evaluator = parser.get_parsed_content("evaluator")
    evaluator.run()
    assert len((out / "predictions.csv").read_text().splitlines()) == N_IMAGES + 1

    handlers = [h for h in parser.get_parsed_content("handlers") if h is not None]
    found = [
        item
        for handler in handlers
        for item in sized_attributes(handler, type(handler).__name__)
        if item[0] not in PER_IMAGE_BY_DESIGN
    ]
    found += list(sized_attributes(evaluator, type(evaluator).__name__, depth=1))
    found += list(sized_attributes(evaluator.state, "state"))
    growing = [(path, n) for path, n in found if n >= N_IMAGES]
    assert not growing, f"kept per image, so memory grows with the folder: {growing}"
    assert {type(h).__name__ for h in handlers} >= {"SaliencyWriter", "CheckpointLoader"}


def test_sigkill_mid_run_then_the_same_command_predicts_no_finished_file_again(tmp_path):
    """A real subprocess killed with SIGKILL part-way (process group: workers too), then started again: every file
    is listed once, none of those finished before the kill is predicted again, values as an uninterrupted run."""
    result = measure_streaming_inference(
        n_images=40, image_size=32, workdir=tmp_path, num_workers=0, batch_size=1, sample_seconds=0.02
    )
    resume = result["resume"]
    assert resume["killed"] and 0 < resume["files_done_when_killed"] < 40, resume
    assert resume["files_predicted_again"] == 0
    assert resume["files_predicted_by_restart"] == 40 - resume["files_done_when_killed"]
    assert resume["rows_in_predictions_csv"] == 40 and resume["each_file_once"]
    assert resume["same_values_as_uninterrupted"]
    assert result["progress_bar_with_time_left"]
    assert all(pss is not None and pss > 0 for pss in result["pss_mib_at_fraction_done"].values())
    log = (tmp_path / "full.log").read_text()
    final = "inference outputs (predictions.csv, errors.csv, overlays, saliency maps): "
    assert log.rstrip().splitlines()[-1] == f"{final}{tmp_path / 'out_full'}"  # what was written where, last
