"""Inference over a large folder through the bundle CLI: throughput, memory as the files are done, and resuming.

``measure_streaming_inference`` writes ``n_images`` random PNG images and a randomly initialised explainer + student
(the time and memory do not depend on the weights), then runs ``python -m monai.bundle run inference`` on the folder
as a subprocess, twice:

- uninterrupted: wall seconds, images/s, and the PSS of the process tree (the run and its DataLoader workers,
  ``memory.tree_memory_mib``) sampled while it runs, read off at 10 %, 50 % and 90 % of the files done: flat when
  nothing grows with the number of images;
- killed (SIGKILL to the whole process group) once ``kill_after_fraction`` of the files are in ``predictions.csv``,
  then started again with the same command: how many files were done when killed, how many the restarted run
  predicted again (it should predict none of them), and whether the final ``predictions.csv`` lists every file
  once with the values of the uninterrupted run.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image

from .memory import tree_memory_mib
from .settings import ROOT

CONFIG = ROOT / "configs" / "inference.yaml"
MARKS = (0.1, 0.5, 0.9)  # fractions of the files done at which the memory is read off
SAMPLE_SECONDS = 0.25


def write_images(folder: Path, n_images: int, image_size: int, seed: int = 0) -> list[Path]:
    """``n_images`` random RGB PNG files of ``image_size`` px, named in order (``img000000.png`` ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n_images):
        path = folder / f"img{i:06d}.png"
        if not path.is_file():
            pixels = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def save_random_model(path: Path, image_size: int, seed: int = 0) -> None:
    """The inference config's ``network_def`` at ``image_size``, randomly initialised, saved where it loads it."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIG))
    parser["bundle_root"] = str(ROOT)
    parser["image_size"] = image_size
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)


def inference_command(
    inputs: Path, output_dir: Path, models: Path, image_size: int, batch_size: int, num_workers: int
) -> list[str]:
    """The command a user runs (CPU, no datalist: classes numbered)."""
    return [
        sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", str(CONFIG),
        "--bundle_root", str(ROOT), "--input_dir", str(inputs), "--output_dir", str(output_dir),
        "--ckpt_dir", str(models), "--datalist", str(models / "no_datalist.json"), "--image_size", str(image_size),
        "--batch_size", str(batch_size), "--num_workers", str(num_workers), "--device", "cpu", "--amp", "False",
    ]  # fmt: skip


def count_rows(csv_path: Path) -> int:
    """Complete rows (ending with a newline) of a CSV file after its header; 0 when it does not exist yet."""
    try:
        with open(csv_path, "rb") as f:
            return max(0, f.read().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def read_predictions(csv_path: Path) -> list[list[str]]:
    """The complete rows of ``predictions.csv`` (a last row a kill cut short is not one)."""
    with open(csv_path, newline="") as f:
        lines = f.read().splitlines(keepends=True)
    return list(csv.reader(line for line in lines[1:] if line.endswith("\n")))


def monitored_run(
    command: list[str],
    output_dir: Path,
    log: Path,
    kill_at: int | None = None,
    sample_seconds: float = SAMPLE_SECONDS,
) -> dict[str, Any]:
    """Run ``command``, sampling the PSS of its process tree and the rows of ``predictions.csv``; with ``kill_at``,
    SIGKILL its process group once that many rows are written. Returns the samples, wall seconds and exit code."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    predictions = output_dir / "predictions.csv"
    samples: list[dict[str, float]] = []
    with open(log, "w") as out:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        tree = psutil.Process(process.pid)
        killed = False
        while process.poll() is None:
            rows = count_rows(predictions)
            memory = tree_memory_mib(tree)
            samples.append({"seconds": time.perf_counter() - start, "rows": rows, **memory})
            if kill_at is not None and rows >= kill_at:
                os.killpg(process.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(sample_seconds)
        returncode = process.wait()
        wall = time.perf_counter() - start
    if not killed and returncode != 0:
        raise RuntimeError(f"inference failed ({returncode}): see {log}\n{log.read_text()[-3000:]}")
    return {"samples": samples, "wall_seconds": wall, "returncode": returncode, "killed": killed}


def pss_at(samples: list[dict[str, float]], rows: int) -> float | None:
    """PSS (MiB) of the first sample with at least ``rows`` files done."""
    for sample in samples:
        if sample["rows"] >= rows:
            return round(sample["pss_mib"], 1)
    return None


def measure_streaming_inference(
    n_images: int,
    image_size: int,
    workdir: Path,
    num_workers: int = 2,
    batch_size: int = 32,
    kill_after_fraction: float = 0.5,
    sample_seconds: float = SAMPLE_SECONDS,
) -> dict[str, Any]:
    """Throughput, memory while the files are done, and the resume check of ``configs/inference.yaml`` on a folder
    of ``n_images`` random PNG images (the module docstring says how). ``workdir`` holds the images and outputs;
    memory and rows are sampled every ``sample_seconds``."""
    if n_images < 10:
        raise ValueError("n_images must be at least 10 (memory is read off at 10 % steps)")
    if not 0.0 < kill_after_fraction < 1.0:
        raise ValueError("kill_after_fraction must be between 0 and 1")
    workdir = Path(workdir)
    inputs, models = workdir / "images", workdir / "models"
    write_images(inputs, n_images, image_size)
    save_random_model(models / "model.pt", image_size)

    full_out, resumed_out = workdir / "out_full", workdir / "out_resumed"
    for folder in (full_out, resumed_out):
        if folder.exists():
            subprocess.run(["rm", "-rf", str(folder)], check=True)
    command = inference_command(inputs, full_out, models, image_size, batch_size, num_workers)
    full = monitored_run(command, full_out, workdir / "full.log", sample_seconds=sample_seconds)
    full_log = (workdir / "full.log").read_text()
    samples = full["samples"]
    reference = {row[0]: row[1:-2] for row in read_predictions(full_out / "predictions.csv")}
    # images/s while files are being written (model load and start-up left out) and over the whole command
    first = next((s for s in samples if s["rows"] >= n_images * MARKS[0]), None)
    last = next((s for s in samples if s["rows"] >= n_images * MARKS[-1]), None)
    steady = None
    if first is not None and last is not None and last["seconds"] > first["seconds"]:
        steady = (last["rows"] - first["rows"]) / (last["seconds"] - first["seconds"])

    command = inference_command(inputs, resumed_out, models, image_size, batch_size, num_workers)
    kill_at = max(1, int(n_images * kill_after_fraction))
    killed = monitored_run(command, resumed_out, workdir / "killed.log", kill_at, sample_seconds)
    done_when_killed = count_rows(resumed_out / "predictions.csv")
    before = {row[0]: row for row in read_predictions(resumed_out / "predictions.csv")}
    restarted = monitored_run(command, resumed_out, workdir / "restarted.log", sample_seconds=sample_seconds)
    final = read_predictions(resumed_out / "predictions.csv")
    restarted_rows = final[len(before) :]
    files = [row[0] for row in final]
    # a file predicted again shows as a second row, or a row of the restarted run for a file the killed one finished
    predicted_again = len(files) - len(set(files)) + sum(row[0] in before for row in restarted_rows)
    same_values = len(final) == len(reference) and all(reference.get(row[0]) == row[1:-2] for row in final)
    return {
        "n_images": n_images,
        "image_size": image_size,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "wall_seconds": round(full["wall_seconds"], 1),
        "images_per_s": round(n_images / full["wall_seconds"], 2),
        "images_per_s_while_writing": round(steady, 2) if steady is not None else None,
        "peak_pss_mib": round(max(s["pss_mib"] for s in samples), 1),
        "peak_rss_mib": round(max(s["rss_mib"] for s in samples), 1),
        "pss_mib_at_fraction_done": {f"{int(100 * m)}%": pss_at(samples, int(n_images * m)) for m in MARKS},
        "progress_bar_with_time_left": "inference: [" in full_log and "<" in full_log.split("inference: [")[-1],
        "memory_samples": len(samples),
        "sample_seconds": sample_seconds,
        "resume": {
            "kill_after_fraction": kill_after_fraction,
            "killed": killed["killed"],
            "files_done_when_killed": done_when_killed,
            "files_predicted_by_restart": len(restarted_rows),
            "files_predicted_again": predicted_again,
            "rows_in_predictions_csv": len(final),
            "each_file_once": len(files) == len(set(files)) == n_images,
            "same_values_as_uninterrupted": same_values,
            "restart_wall_seconds": round(restarted["wall_seconds"], 1),
        },
    }
