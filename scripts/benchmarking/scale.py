"""The scale benchmark's measurements: data sets of N images on disk through configs/train.yaml's training loader
under each cache mode, each run in its own process so that its memory is its own.

A run builds ``train#dataset`` (the caching pass: hashing, estimating, filling the cache) and iterates
``train#dataloader`` (augmentation included, no network) for a number of epochs; the parent samples the proportional
memory (PSS) of the run's process tree (``scripts/benchmarking/memory.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from scripts.benchmarking.memory import PeakTreeMemory

ROOT = Path(__file__).resolve().parents[2]
CHILD_MARK = "SCALE_RESULT "


def write_jpeg_set(folder: Path, n: int, size: int, seed: int = 0, classes: int = 5) -> Path:
    """``n`` 8-bit RGB JPEG images of ``size`` px (smooth random shapes on noise, as fundus photographs are stored)
    and a datalist whose training split holds them all; reused when the folder already holds ``n`` images."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    datalist = folder / "datalist.json"
    if datalist.is_file() and len(json.loads(datalist.read_text())["training"]) == n:
        return folder
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size
    items = []
    for i in range(n):
        cx, cy, r = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.2, 0.45)]
        disc = ((x - cx) ** 2 + (y - cy) ** 2) < r**2
        image = rng.normal(40, 12, (size, size, 3))
        image[disc] += rng.uniform(60, 140, 3)
        name = f"img_{i:06d}.jpg"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / name, quality=90)
        items.append({"image": name, "label": int(rng.integers(classes))})
    info = {"task": "multiclass", "classes": [f"class {c}" for c in range(classes)]}
    datalist.write_text(json.dumps({**info, "training": items, "validation": items[:2], "test": []}))
    return folder


def write_dicom_set(folder: Path, n: int, side: int, seed: int = 0) -> Path:
    """``n`` uncompressed 16-bit monochrome DICOM images of ``side`` x ``side`` px (about the size of a digital
    radiograph) with a datalist of four findings, reused when present."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    datalist = folder / "datalist.json"
    if datalist.is_file() and len(json.loads(datalist.read_text())["training"]) == n:
        return folder
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        pixels = (rng.normal(2000, 300, (side, side)) + np.linspace(0, 1500, side)[None]).clip(0, 4095)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID = "OT", f"scale{i}"
        ds.Rows = ds.Columns = side
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels.astype(np.uint16).tobytes()
        name = f"img_{i:05d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
        items.append({"image": name, "label": rng.integers(0, 2, 4).astype(float).tolist()})
    info = {"task": "multilabel", "classes": ["nodule", "consolidation", "effusion", "pneumothorax"]}
    datalist.write_text(json.dumps({**info, "training": items, "validation": items[:2], "test": []}))
    return folder


def child_main(args: list[str]) -> None:
    """In the run's own process: build the training data set and loader from train.yaml and time them."""
    spec = json.loads(args[0])
    import logging

    import torch
    from monai.bundle import ConfigParser

    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s - %(message)s")
    torch.set_num_threads(1)  # the loader's work is what is measured; the workers use one thread each anyway
    parser = ConfigParser()
    parser.read_config([str(ROOT / f) for f in spec["configs"]])
    parser.update({"bundle_root": str(ROOT), "preflight": False, "use_unlabeled": False, **spec["overrides"]})
    start = time.perf_counter()
    dataset = parser.get_parsed_content("train#dataset")
    build_s = time.perf_counter() - start
    loader = parser.get_parsed_content("train#dataloader")
    epochs = []
    for _ in range(spec["epochs"]):
        start = time.perf_counter()
        images = sum(int(batch["image"].shape[0]) for batch in loader)
        epochs.append(time.perf_counter() - start)
    from bundle.data.caching import estimate_item_bytes

    item_bytes = estimate_item_bytes(dataset.data, dataset.transform)
    result = {
        "mode": type(dataset).__name__,
        "build_s": build_s,
        "epoch_s": epochs,
        "images_per_epoch": images,
        "item_bytes": item_bytes,
    }
    print(CHILD_MARK + json.dumps(result), flush=True)


def run_mode(script: Path, configs: list[str], overrides: dict[str, Any], epochs: int) -> dict[str, Any]:
    """One run in a fresh process, its process tree's peak memory sampled from here."""
    spec = json.dumps({"configs": configs, "overrides": overrides, "epochs": epochs})
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, str(script), "--child", spec],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    with PeakTreeMemory(child.pid, interval=0.25) as memory:
        output, _ = child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"scale run {overrides} failed:\n{output[-3000:]}")
    line = [line for line in output.splitlines() if line.startswith(CHILD_MARK)][-1]
    result = json.loads(line[len(CHILD_MARK) :])
    chosen = [line for line in output.splitlines() if "cache (training):" in line]
    result.update(memory.read())
    result["wall_s"] = time.perf_counter() - start
    result["log"] = chosen[-1].split(" - ")[-1] if chosen else ""
    return result


def summarise(run: dict[str, Any], n: int, num_workers: int) -> dict[str, Any]:
    """Derived figures of one run: images/s of the last epoch, per worker too."""
    last = run["epoch_s"][-1]
    rate = run["images_per_epoch"] / last if last > 0 else float("nan")
    return {
        **run,
        "n": n,
        "loader_images_per_s": rate,
        "loader_images_per_s_per_worker": rate / max(num_workers, 1),
    }
