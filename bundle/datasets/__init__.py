"""Converters from public data sets' published layouts to MONAI JSON datalists, a module per data set (docs/DATA.md).

Every converter is ``convert_<format>(root, out_dir, **options) -> dict`` and returns a datalist dict
``{"name", "task", "classes", "source", "training", "validation", "test"[, "unlabeled"][, "localization"]}`` ready for
:func:`bundle.data.datalist.save_datalist`. ``out_dir`` is the folder the datalist will be written to: converters that
create files (IDRiD union lesion masks, MedMNIST PNGs) write them there, under ``masks/`` and ``images/``.

Image paths in all item lists are absolute; ``save_datalist`` stores those inside the datalist's folder relative to it.
The IDRiD-only ``localization`` list holds segmentation images with their union lesion mask and no grade label.

Splits are seeded, stratified and patient-level (:func:`bundle.data.splits.split_items`); official test lists are kept
as ``test`` where the data set publishes one. Images listed in a CSV but missing on disk are skipped with one logged
warning giving the count. ``CONVERTERS`` maps format names to converters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .aptos2019 import convert_aptos2019
from .chestxray14 import CHESTXRAY14_CLASSES, convert_chestxray14
from .chexpert import CHEXPERT_COMPETITION, CHEXPERT_LABELS, chexpert_value, convert_chexpert
from .common import DR_GRADES, PathLike
from .eyepacs import convert_eyepacs, eyepacs_patient
from .folders import FOLDER_EXTENSIONS, convert_dicom_folder, convert_folder, read_dicom_header
from .idrid import convert_idrid, union_mask
from .medmnist import convert_medmnist

__all__ = [
    "CHESTXRAY14_CLASSES",
    "CHEXPERT_COMPETITION",
    "CHEXPERT_LABELS",
    "CONVERTERS",
    "DR_GRADES",
    "FOLDER_EXTENSIONS",
    "chexpert_value",
    "convert",
    "convert_aptos2019",
    "convert_chestxray14",
    "convert_chexpert",
    "convert_dicom_folder",
    "convert_eyepacs",
    "convert_folder",
    "convert_idrid",
    "convert_medmnist",
    "eyepacs_patient",
    "read_dicom_header",
    "union_mask",
]

CONVERTERS: dict[str, Callable[..., dict[str, Any]]] = {
    "aptos2019": convert_aptos2019,
    "eyepacs": convert_eyepacs,
    "idrid": convert_idrid,
    "chexpert": convert_chexpert,
    "chestxray14": convert_chestxray14,
    "medmnist": convert_medmnist,
    "folder": convert_folder,
    "dicom_folder": convert_dicom_folder,
}


def convert(name: str, root: PathLike, out_dir: PathLike, **options: Any) -> dict[str, Any]:
    """Run the converter registered as ``name``; see ``CONVERTERS``."""
    if name not in CONVERTERS:
        raise ValueError(f"unknown data set format {name!r}; choose one of {sorted(CONVERTERS)}")
    return CONVERTERS[name](root, out_dir, **options)
