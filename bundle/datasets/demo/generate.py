"""Write a demo data set (images, lesion masks, datalist.json) or regenerate one sample in memory."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .common import CXR_CLASSES, DOMAINS, FUNDUS_CLASSES, SPLIT_PREFIX, TASKS, DemoSample, _spawn, sample_rng
from .cxr import synth_cxr, write_cxr_dicom
from .fundus import synth_fundus


def save_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an 8-bit PNG (``(H, W)`` grey or ``(H, W, 3)`` RGB; bool is written as 0/255)."""
    from PIL import Image

    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    Image.fromarray(arr.astype(np.uint8)).save(path, format="PNG")


def demo_sample(task: str, split: str, index: int, size: int = 64, seed: int = 0, domain: str = "A") -> DemoSample:
    """Regenerate in memory the sample that :func:`generate_demo_data` writes as ``<split prefix>_<index>``.

    For ``cxr`` the returned image is the display image before DICOM encoding (bright = dense, ``[0, 1]``).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    img_rng = _spawn(sample_rng(seed, task, domain, split, index), 2)[0]
    return synth_fundus(img_rng, size, domain) if task == "fundus" else synth_cxr(img_rng, size, domain)


def generate_demo_data(
    task: str,
    out_dir: str | os.PathLike,
    n_train: int,
    n_val: int,
    n_test: int,
    size: int = 64,
    seed: int = 0,
    domain: str = "A",
    n_unlabeled: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Write ``images/``, ``masks/`` and ``datalist.json`` under ``out_dir``; return the datalist (absolute paths).

    Files are ``images/<prefix>_<index:05d>.png|.dcm`` and ``masks/<same stem>.png`` (0/255) with prefixes ``train``,
    ``val``, ``test``, ``unlabeled``. Unlabelled items carry ``image`` and ``mask`` but no ``label``.
    """
    from bundle.data.datalist import save_datalist

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    if size < 32:
        raise ValueError(f"size must be at least 32 px, got {size}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    counts = {"training": n_train, "validation": n_val, "test": n_test, "unlabeled": n_unlabeled}
    jobs = [(split, i) for split, n in counts.items() for i in range(int(n))]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=f"demo {task} {domain}", unit="img")
    datalist: dict[str, Any] = {
        "name": f"demo_{task}",
        "task": "multiclass" if task == "fundus" else "multilabel",
        "classes": list(FUNDUS_CLASSES if task == "fundus" else CXR_CLASSES),
        "domain": domain,
        **{split: [] for split in counts},
    }
    for split, i in jobs:
        stem = f"{SPLIT_PREFIX[split]}_{i:05d}"
        img_rng, enc_rng = _spawn(sample_rng(seed, task, domain, split, i), 2)
        patient = f"DEMO{task.upper()}{domain}{seed}-{stem}"
        if task == "fundus":
            sample = synth_fundus(img_rng, size, domain)
            image_path = out / "images" / f"{stem}.png"
            save_png(image_path, sample.image)
        else:
            sample = synth_cxr(img_rng, size, domain)
            image_path = out / "images" / f"{stem}.dcm"
            write_cxr_dicom(
                image_path, sample.image, enc_rng, ["medtex-demo", task, domain, seed, split, i], patient, domain, i + 1
            )
        mask_path = out / "masks" / f"{stem}.png"
        save_png(mask_path, sample.mask)
        item: dict[str, Any] = {"image": str(image_path), "mask": str(mask_path)}
        if split != "unlabeled":
            item["label"] = sample.label
        datalist[split].append(item)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    save_datalist(out / "datalist.json", datalist)
    return datalist
