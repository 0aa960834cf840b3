"""What the measurements are made on: the config parsed with the run's overrides and DICOM copies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from monai.bundle import ConfigParser

from .settings import CONFIG, MEDTEX_ONLY_KEYS, ROOT, Settings


def load_config(
    settings: Settings,
    work: Path,
    teacher_ckpt: Path,
    name: str,
    overlay: str | None = None,
    config: Path = CONFIG,
) -> ConfigParser:
    """``config`` (configs/train.yaml; then ``overlay``, a config file merged over it) with this run's data, sizes,
    device and temporary output folders."""
    parser = ConfigParser()
    parser.read_config([str(config), overlay] if overlay else str(config))
    device = "cuda:0" if settings.device == "cuda" else "cpu"
    overrides: dict[str, Any] = {
        "bundle_root": str(ROOT),
        "dataset_dir": str(work / "data"),
        "image_size": settings.image_size,
        "batch_size": settings.batch_size,
        "num_workers": settings.num_workers,
        "device": f"$torch.device('{device}')",
        "amp": settings.device == "cuda",  # the config's default where the device is the available one
        "teacher_ckpt": str(teacher_ckpt),
        "output_dir": str(work / name / "run"),
        "ckpt_dir": str(work / name / "models"),
        "val_interval": 10**6,  # no validation at the end of the timed epoch: it is not part of an iteration
        "explainer_scale": settings.explainer_scale,
        "explainer_scale_mode": settings.explainer_scale_mode,
    }
    if "preflight" in parser.get(""):  # the datalist check: the benchmark's demo splits lack classes by design
        overrides["preflight"] = False
    if config != CONFIG:
        for key in MEDTEX_ONLY_KEYS:
            del overrides[key]
    for key, value in overrides.items():
        parser[key] = value
    return parser


def write_rgb_dicom(path: Path, rgb: np.ndarray) -> None:
    """An 8-bit RGB Secondary Capture DICOM file with the same pixels as a demo PNG."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.PatientID = "BENCHMARK"
    ds.set_pixel_data(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB", 8, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
