"""Inputs for inference: list a folder (or a datalist's test split), and load items without ever stopping the run.

``list_input_files`` finds the images in a folder tree; ``TolerantDataset`` turns an item that fails to load or
preprocess into a zero placeholder marked ``valid: False`` with the reason, so that one bad file in a hospital
export becomes a row in ``errors.csv`` instead of a crashed run.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from monai.data import Dataset
from monai.transforms import apply_transform

from bundle.data.datalist import load_datalist, read_datalist_info
from bundle.data.readers import (
    DICOM_SUFFIXES,
    ITK_SUFFIXES,
    NATURAL_SUFFIXES,
    NIFTI_SUFFIXES,
    read_dicom,
    sniff_format,
)
from bundle.data.transforms import FRAME_KEY
from bundle.files import file_sha256

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = NATURAL_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES + ITK_SUFFIXES
# Never images, so never sniffed: spreadsheets, text, configs, archives, checkpoints, ITK raw side files.
NON_IMAGE_SUFFIXES = (
    ".csv", ".tsv", ".txt", ".json", ".md", ".rst", ".yaml", ".yml", ".xml", ".html", ".htm", ".pdf", ".log",
    ".py", ".ipynb", ".zip", ".tar", ".gz", ".tgz", ".7z", ".pt", ".pth", ".ckpt", ".npz", ".npy", ".raw", ".ini",
    ".cfg", ".xls", ".xlsx", ".doc", ".docx",
)  # fmt: skip
# DICOM media index files carry the DICM magic but no image.
NON_IMAGE_NAMES = ("dicomdir",)
SOURCE_KEY = "source"
RESUME_STATE = ".inference_resume.json"  # hidden: never listed as an input
VALID_KEY = "valid"
ERROR_KEY = "error"
NO_FRAME = -1  # FRAME_KEY of an item read as a whole (every item has the key, so that batches collate)
MULTIFRAME = ("refuse", "per_frame")


def list_input_files(input_dir: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """Return ``[{"image": path}, ...]`` for every image under ``input_dir``, sorted by relative path.

    Files with an image suffix (PNG/JPEG/TIFF/BMP/GIF, DICOM, NIfTI, MetaImage/NRRD) are listed whatever their
    content, so that a broken one is reported rather than silently skipped. Other files are listed only when their
    first bytes say image (DICOM files are often named by UID or have no suffix at all). Hidden files and folders,
    ``DICOMDIR`` and obvious non-images (``.csv``, ``.txt``, ``.json`` ...) are skipped, as is ``exclude`` (e.g.
    the output folder when it lies inside the input folder).
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"input_dir is not a folder: {root}")
    excluded = Path(exclude).resolve() if exclude is not None else None
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        current = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and (current / d).resolve() != excluded]
        for name in filenames:
            path = current / name
            if _is_image_candidate(path):
                found.append(path)
    found.sort(key=lambda p: p.relative_to(root).as_posix())
    return [{"image": str(p)} for p in found]


def _is_image_candidate(path: Path) -> bool:
    name = path.name.lower()
    if name.startswith(".") or name in NON_IMAGE_NAMES:
        return False
    if name.endswith(IMAGE_SUFFIXES):  # first: ".nii.gz" ends with the non-image ".gz"
        return True
    if name.endswith(NON_IMAGE_SUFFIXES):
        return False
    try:
        # sniff_format falls back to "itk" for anything without a recognised magic number
        return sniff_format(path) in ("natural", "dicom", "nifti")
    except Exception:  # unreadable, empty or vanished files without an image suffix are not images
        return False


def inference_items(
    input_dir: str | os.PathLike | None,
    datalist: str | os.PathLike,
    exclude: str | os.PathLike | None = None,
    key: str = "test",
) -> list[dict]:
    """The items to run on: every image under ``input_dir`` when it is set, else the datalist's ``key`` list."""
    items = list_input_files(input_dir, exclude=exclude) if input_dir else load_datalist(datalist, key)
    if not items:
        where = f"input_dir {input_dir}" if input_dir else f"the {key!r} list of {datalist}"
        raise ValueError(f"no images found in {where}")
    return items


def item_key(path: str | os.PathLike, frame: Any = None) -> str:
    """How resuming names an item: its path, and for one frame of a file read per frame ``<path>#frame=<n>``."""
    if frame is None or frame == "" or int(frame) < 0:
        return str(path)
    return f"{path}#frame={int(frame)}"


def finished_sources(output_dir: str | os.PathLike) -> set[str]:
    """The items (``item_key``) a previous run into ``output_dir`` finished: listed in its ``predictions.csv`` or
    ``errors.csv``.

    A row is appended only after all of that file's outputs were written (or failed), so a listed file is
    complete; a last line cut short by a kill (no newline) does not count.
    """
    done: set[str] = set()
    for name in ("predictions.csv", "errors.csv"):
        path = Path(output_dir) / name
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            lines = f.read().splitlines(keepends=True)
        header = next(csv.reader(lines[:1]), [])
        column = header.index(FRAME_KEY) if FRAME_KEY in header else None
        complete = [line for line in lines[1:] if line.endswith("\n")]
        for row in csv.reader(complete):
            if row:
                done.add(item_key(row[0], row[column] if column is not None and column < len(row) else None))
    return done


def expand_frames(items: Sequence[dict], multiframe: str = "refuse", frame: int | None = None) -> list[dict]:
    """With ``multiframe: per_frame``, each multi-frame DICOM file and each NIfTI volume becomes one item per frame
    (slice), ``{"image": path, "frame": i}``, i from 0; other items stay as they are. ``refuse`` (the default)
    leaves every item whole, and the reader refuses files with several frames unless ``frame`` names one.

    Only headers are read here (a file that cannot be read stays one item, for the loader to report). Setting both
    ``frame`` and ``per_frame`` is a contradiction, and stops the run.
    """
    if multiframe not in MULTIFRAME:
        raise ValueError(f"multiframe must be one of {', '.join(MULTIFRAME)}, not {multiframe!r}")
    if multiframe == "refuse":
        return list(items)
    if frame is not None:
        raise ValueError(f"frame is {frame} and multiframe is per_frame: set frame to null to read every frame")
    expanded: list[dict] = []
    for item in items:
        n = _frame_count(item["image"])
        if n > 1:
            expanded.extend({**item, FRAME_KEY: i} for i in range(n))
        else:
            expanded.append(item)
    return expanded


def _frame_count(path: str | os.PathLike) -> int:
    """Frames of a DICOM file, slices of a 3D NIfTI volume (1 for anything else, or unreadable)."""
    try:
        fmt = sniff_format(path)
        if fmt == "dicom":
            return int(read_dicom(path, stop_before_pixels=True).get("NumberOfFrames") or 1)
        if fmt == "nifti":
            import nibabel as nib

            img: Any = nib.load(str(path))  # a NIfTI image (nibabel's stubs say FileBasedImage)
            shape = [int(s) for s in img.shape]
            while len(shape) > 2 and shape[-1] == 1:
                shape.pop()
            return shape[2] if len(shape) == 3 else 1
    except Exception:  # the loader reads it again and reports what is wrong
        return 1
    return 1


def prepare_output_dir(
    output_dir: str | os.PathLike, resume: bool = True, checkpoint: str | os.PathLike | None = None
) -> bool:
    """Get ``output_dir`` ready for a run (an ``initialize`` step): whether it resumes a previous (killed) run.

    The run records the SHA-256 of its ``checkpoint`` in ``output_dir/.inference_resume.json``. When ``resume`` is
    off, or the model differs from the previous run's (retrained weights must not mix with old predictions), the
    previous CSV files are removed so that the writer starts them over. A step of its own, not part of the dataset
    expression, so that reading the config (MONAI Label, ``get_parsed_content("dataset")``) never deletes results.
    """
    out = Path(output_dir)
    stamp = {"checkpoint": str(checkpoint), "sha256": file_sha256(checkpoint)} if checkpoint else {}
    state = out / RESUME_STATE
    previous = json.loads(state.read_text()) if state.is_file() else None
    same_model = previous is not None and previous.get("sha256") == stamp.get("sha256")
    results = [out / "predictions.csv", out / "errors.csv"]
    if resume and not same_model and any(p.is_file() for p in results):
        logger.warning(f"{out}: the previous run used another model (or left no record of it): starting over")
    if not (resume and same_model):
        for path in results:
            path.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps(stamp) + "\n")
    return resume and same_model


def pending_items(items: Sequence[dict], output_dir: str | os.PathLike) -> list[dict]:
    """``items`` less the files already listed in ``output_dir``'s predictions.csv or errors.csv (read only: which
    of those stay is ``prepare_output_dir``'s decision, taken before)."""
    items = list(items)
    done = finished_sources(output_dir)
    pending = [item for item in items if item_key(item["image"], item.get(FRAME_KEY)) not in done]
    if len(pending) < len(items):
        logger.info(
            f"resuming in {output_dir}: {len(items) - len(pending)} of {len(items)} files already done, "
            f"{len(pending)} to go (resume: false starts over)"
        )
    return pending


def require_checkpoint(path: str | os.PathLike) -> None:
    """Stop before any work when the model checkpoint is missing, saying which config values point at it."""
    if not Path(path).is_file():
        raise SystemExit(
            f"model checkpoint not found: {path} (config values 'ckpt_dir' and 'ckpt_name'). Train one with\n  "
            "python -m monai.bundle run training --config_file configs/train.yaml --dataset_dir DIR\n"
            "or point --ckpt_dir at the folder holding model.pt."
        )


def resolve_class_names(datalist: str | os.PathLike | None, num_classes: int) -> list[str]:
    """The datalist header's ``classes`` when the datalist exists and has ``num_classes`` of them, else "0".."N-1"."""
    if datalist and Path(datalist).is_file():
        classes = read_datalist_info(datalist).get("classes") or []
        if len(classes) == num_classes:
            return [str(c) for c in classes]
        logger.warning(f"{datalist} lists {len(classes)} classes but num_classes is {num_classes}: numbering them")
    return [str(i) for i in range(num_classes)]


class TolerantDataset(Dataset):
    """MONAI ``Dataset`` whose items never raise: a failed item becomes a zero placeholder with the reason.

    Each returned item has ``image`` (a plain float tensor of ``image_shape``), ``source`` (the input path, also
    for failed items), ``frame`` (the frame an item of ``expand_frames`` stands for, else -1), ``valid`` (bool)
    and ``error`` (the reason, empty when valid). Only ``keys`` of the input item (and its ``frame``) are passed to
    ``transform``, so that items with different optional fields still batch together.
    MetaTensor metadata is dropped for the same reason: PNG, DICOM and NIfTI metadata have different keys and
    would not collate; writers re-read the source file from ``source``.

    Args:
        data: datalist-style items with an ``image`` path.
        transform: the preprocessing, ending with an ``image`` of ``image_shape``.
        image_shape: ``(channels, height, width)`` of the placeholder and of every valid image.
        keys: item keys given to ``transform``.
    """

    def __init__(
        self,
        data: Sequence[dict],
        transform: Callable | None,
        image_shape: Sequence[int],
        keys: Sequence[str] = ("image",),
    ) -> None:
        super().__init__(data=data, transform=transform)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.keys = tuple(keys)

    def _transform(self, index: int) -> dict[str, Any]:
        item = self.data[index]
        source = str(item["image"])
        frame = int(item.get(FRAME_KEY, NO_FRAME))
        try:
            data = {k: item[k] for k in self.keys if k in item}
            if frame != NO_FRAME:
                data[FRAME_KEY] = frame
            if self.transform is not None:
                # the pre-processing maps one dict to one dict (no transform here returns several samples)
                data = cast(dict[str, Any], apply_transform(self.transform, data))
            image = torch.as_tensor(data["image"]).as_subclass(torch.Tensor).float()
            if tuple(image.shape) != self.image_shape:
                raise ValueError(f"preprocessed image has shape {tuple(image.shape)}, expected {self.image_shape}")
        except Exception as e:  # any failure of any file must not stop the run: it is reported in errors.csv
            reason = failure_reason(e)
            logger.warning(f"{source}{f' frame {frame}' if frame != NO_FRAME else ''}: {reason}")
            placeholder = torch.zeros(self.image_shape)
            return {"image": placeholder, SOURCE_KEY: source, FRAME_KEY: frame, VALID_KEY: False, ERROR_KEY: reason}
        return {**data, "image": image, SOURCE_KEY: source, FRAME_KEY: frame, VALID_KEY: True, ERROR_KEY: ""}


def failure_reason(error: BaseException) -> str:
    """The reason to report: MONAI's ``apply_transform`` wraps the original exception in ``RuntimeError`` per level;
    the first ``ImageReadError`` (which has a ``reason``) in the chain, else the innermost exception."""
    chain = [error]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    for e in chain:
        reason = getattr(e, "reason", None)
        if reason:
            return str(reason)
    return f"{type(chain[-1]).__name__}: {chain[-1]}"
