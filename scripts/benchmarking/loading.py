"""Data loading: the cached training loader against what training consumes; decoding PNG and DICOM."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import ThreadDataLoader
from PIL import Image

from bundle.data.transforms import LoadMedicalImage  # noqa: E402

from .fixtures import write_rgb_dicom
from .settings import Settings
from .timing import median_seconds, say


def bench_data_loading(settings: Settings, parser: ConfigParser, work: Path) -> dict[str, Any]:
    """Decoding (PNG, DICOM), the training transforms uncached and cached, and the cached training loader."""
    dataset = parser.get_parsed_content("train#dataset")
    loader = parser.get_parsed_content("train#dataloader")
    transform = parser.get_parsed_content("train#preprocessing")
    items = [dict(item) for item in dataset.data][: settings.n_train]
    dicom_dir = work / "dicom"
    dicom_dir.mkdir(exist_ok=True)
    dicom_items = []
    for item in items:
        target = dicom_dir / (Path(item["image"]).stem + ".dcm")
        with Image.open(item["image"]) as image:
            write_rgb_dicom(target, np.asarray(image.convert("RGB")))
        dicom_items.append({**item, "image": str(target)})
    reader = LoadMedicalImage()
    cpu = torch.device("cpu")

    def rate(function: Callable[[dict], Any], data: list[dict]) -> float:
        seconds = median_seconds(lambda: [function(item) for item in data], settings.repeats, settings.warmup, cpu)
        return len(data) / seconds

    results: dict[str, Any] = {
        "decode_png_images_per_second": rate(lambda item: reader(item["image"]), items),
        "decode_dicom_images_per_second": rate(lambda item: reader(item["image"]), dicom_items),
        "uncached_png_images_per_second": rate(lambda item: transform(dict(item)), items),
        "uncached_dicom_images_per_second": rate(lambda item: transform(dict(item)), dicom_items),
        "cached_images_per_second": rate(
            lambda item: dataset[item["index"]], [{"index": i} for i in range(len(items))]
        ),
    }
    results["cached_speedup_vs_uncached_png"] = (
        results["cached_images_per_second"] / results["uncached_png_images_per_second"]
    )

    def epoch() -> None:
        for _ in loader:
            pass

    images_per_epoch = len(loader) * settings.batch_size if loader.drop_last else len(dataset)
    seconds = median_seconds(epoch, settings.repeats, settings.warmup, cpu)
    # MONAI's ThreadDataLoader: the same batches prepared in a background thread instead of worker processes
    thread_loader = ThreadDataLoader(
        dataset, batch_size=settings.batch_size, shuffle=True, drop_last=loader.drop_last, num_workers=0
    )

    def thread_epoch() -> None:
        for _ in thread_loader:
            pass

    thread_seconds = median_seconds(thread_epoch, settings.repeats, settings.warmup, cpu)
    results["thread_loader_images_per_second"] = images_per_epoch / thread_seconds
    results.update(
        loader_images_per_second=images_per_epoch / seconds,
        loader_seconds_per_epoch=seconds,
        loader_images_per_epoch=images_per_epoch,
        loader_num_workers=loader.num_workers,
        dataset_images=len(dataset),
        source_image_size=settings.image_size,
        files_decoded=len(items),
    )
    say(
        f"data: PNG decode {results['decode_png_images_per_second']:.3g}/s, DICOM "
        f"{results['decode_dicom_images_per_second']:.3g}/s, uncached {results['uncached_png_images_per_second']:.3g}"
        f"/s, cached {results['cached_images_per_second']:.3g}/s, loader {results['loader_images_per_second']:.3g}/s,"
        f" ThreadDataLoader {results['thread_loader_images_per_second']:.3g}/s"
    )
    return results
