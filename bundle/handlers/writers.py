"""Write what inference produced: class probabilities, saliency overlays and maps, DICOM captures, errors.

``SaliencyWriter`` is an Ignite handler for ``bundle.engines.evaluator.ExplainingEvaluator``; it reads the
decollated ``engine.state.batch`` (``source``, ``valid``, ``error`` from ``bundle.data.inference.TolerantDataset``)
and ``engine.state.output`` (``pred`` probabilities after the postprocessing, ``mask``).

Why not MONAI's ``ClassificationSaver``/``SaveImage``: the first writes unnamed raw columns from image metadata
(which failed items do not have), the second writes at the network's resolution; here every output is at the
source image's own resolution, named after the source file, and a failure on one file never ends the run.
"""

from __future__ import annotations

import copy
import csv
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.transforms import Resize
from PIL import Image

from bundle.data.dicom_values import repair_dataset
from bundle.data.inference import ERROR_KEY, FRAME_KEY, IMAGE_SUFFIXES, SOURCE_KEY, VALID_KEY
from bundle.data.readers import MedicalImageReader, read_dicom
from bundle.engines.evaluator import SALIENCY
from bundle.files import PART, write_atomically, write_together

logger = logging.getLogger(__name__)

PREDICTIONS_CSV = "predictions.csv"
ERRORS_CSV = "errors.csv"
ERRORS_COLUMNS = ["file", "reason", FRAME_KEY]
# columns added in 0.9.0, at the end: a folder written before them resumes (``_continue_csv``)
NEW_COLUMNS = {PREDICTIONS_CSV: [FRAME_KEY, "outputs"], ERRORS_CSV: [FRAME_KEY]}
TASKS = ("multiclass", "multilabel")
WRITTEN = "written"  # predictions.csv's outputs column when every output of the row's image was written
# longest first, so that "x.nii.gz" loses ".nii.gz" and not only ".gz"
_STRIP_SUFFIXES = sorted(IMAGE_SUFFIXES, key=len, reverse=True)


def jet(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB in [0, 1] with a jet-like colormap (blue, cyan, yellow, red).

    Written here because ``monai.visualize.blend_images`` needs matplotlib (not a dependency) and rescales each map
    to its own range, which would hide how salient a region is in absolute terms.
    """
    v = np.clip(values, 0.0, 1.0)[..., None] * 4.0
    return np.clip(1.5 - np.abs(v - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)


def saliency_at_source(mask: Any, rows: int, cols: int) -> np.ndarray:
    """The explainer's ``(1, h, w)`` mask at the source's ``(rows, cols)``, bilinear, in [0, 1], float32: the map every
    writer and the serving apps return."""
    resize = Resize(spatial_size=(rows, cols), mode="bilinear", align_corners=False)
    return np.clip(np.asarray(resize(torch.as_tensor(mask).detach().float().cpu()))[0], 0.0, 1.0).astype(np.float32)


def blend_overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Alpha-blend ``jet(mask)`` over ``image`` ((H, W) or (H, W, 3) in [0, 1]); uint8 RGB (H, W, 3).

    The opacity is ``alpha * mask`` per pixel: where the explainer hides the image the original shows through.
    """
    rgb = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image
    weight = alpha * np.clip(mask, 0.0, 1.0)[..., None]
    blended = (1.0 - weight) * np.clip(rgb, 0.0, 1.0) + weight * jet(mask)
    return np.round(blended * 255.0).astype(np.uint8)


# DICOM PS3.15 Annex E, Basic Application Confidentiality Profile: the attributes a capture copies from its source
# that identify the patient or the visit. Removed (Type 3) or emptied (Type 1/2 in the SC IOD).
_IDENTIFYING = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex", "PatientAge", "PatientSize",
    "PatientWeight", "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientAddress",
    "PatientTelephoneNumbers", "PatientMotherBirthName", "EthnicGroup", "PatientComments", "IssuerOfPatientID",
    "AccessionNumber", "ReferringPhysicianName", "StudyID", "StudyDate", "StudyTime", "SeriesDate", "SeriesTime",
    "ContentDate", "ContentTime", "InstitutionName", "InstitutionAddress", "OperatorsName",
    "PerformingPhysicianName", "StudyDescription",
)  # fmt: skip
_EMPTIED = {"PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "ReferringPhysicianName",
            "StudyID", "StudyDate", "StudyTime"}  # fmt: skip


def deidentify_capture(ds: Any) -> None:
    """Strip the patient's identity from a derived DICOM object, keeping its study and series UIDs (PS3.15's Retain
    UIDs option) so that it still sorts into the source study in a PACS that holds it, and say so in the header."""
    for keyword in _IDENTIFYING:
        if keyword not in ds:
            continue
        if keyword in _EMPTIED:
            setattr(ds, keyword, "")
        else:
            delattr(ds, keyword)
    for element in list(ds):  # private tags can carry anything
        if element.tag.is_private:
            del ds[element.tag]
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "PS3.15 Basic Application Confidentiality Profile, Retain UIDs Option (MED-TEX bundle)"


def _continue_csv(path: Path, header: list[str], legacy: list[str] | None = None) -> None:
    """Check that a previous run's CSV has this header, and drop a last row a kill cut short. A CSV with the
    ``legacy`` header (that of bundle versions before the ``frame`` and ``outputs`` columns, a prefix of ``header``)
    gets the new header and empty new cells (not known), so that a folder of an older version resumes."""
    with open(path, newline="") as f:
        lines = f.read().splitlines(keepends=True)
    found = next(csv.reader(lines[:1]), [])
    if legacy is not None and found == legacy and found != header:
        complete = [row for row in csv.reader(line for line in lines[1:] if line.endswith("\n"))]

        def migrate(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                csv.writer(f).writerows([header, *(row + [""] * (len(header) - len(row)) for row in complete)])

        write_atomically(path, migrate)
        return
    if found != header:
        raise ValueError(
            f"{path} was written with other columns ({', '.join(found)}); to resume, run with the same classes, "
            "else choose another output_dir or set resume: false"
        )
    if lines and not lines[-1].endswith("\n"):
        write_atomically(path, lambda tmp: tmp.write_text("".join(lines[:-1]), newline=""))


def source_stem(path: str | os.PathLike) -> str:
    """The file name without its image suffix (``a.nii.gz`` -> ``a``); UID-named DICOM files keep their dots."""
    name = Path(path).name
    lower = name.lower()
    for suffix in _STRIP_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


class SaliencyWriter:
    """Write ``predictions.csv``, ``errors.csv`` and, per image, a saliency overlay and map to ``output_dir``.

    * ``predictions.csv``: ``file``, one probability column per class, ``predicted`` (the arg-max class for
      ``multiclass``; the ``;``-joined classes with probability >= ``threshold`` for ``multilabel``), ``frame``
      (of a file read per frame, else empty) and ``outputs`` (``written``, or ``none written: <reason>``). ``pred``
      must already be probabilities (the config's ``Activationsd`` postprocessing).
    * ``<stem>_overlay.png``: the mask, upsampled bilinearly to the source's size, as a heatmap over the source
      image re-read with the bundle's reader; ``<stem>_saliency.nii.gz``: that float mask. NIfTI stores (x, y),
      the readers (rows, columns): the map is transposed back so that it lies on a NIfTI source's own voxel grid
      (whose affine it copies); for other sources the affine is the identity (pixel units). Stems that occur
      twice get ``_1``, ``_2`` ... in order.
    * ``<stem>_overlay.dcm`` for DICOM sources: the overlay as an RGB Secondary Capture (highdicom) in the source's
      study, one new series per source series per run, patient module copied; header values of the source that do
      not conform to their VR repaired or dropped (``bundle.data.dicom_values``), logged once per source file.
      Frames read per frame are named ``<stem>_f003_*``.
    * ``errors.csv``: ``file,reason,frame`` for items that failed to load (``valid`` False) and for items whose
      outputs failed to write (their prediction row is kept and says so). Always written, header only when nothing
      failed.

    A file's outputs are written all or none, and a killed run leaves no half-written file: each output is written
    under a hidden ``.part-`` name, all are renamed into place once all were written (``write_together``), and a
    file's CSV row is appended only after its outputs. With ``resume`` a run started again on the
    same ``output_dir`` keeps the rows (and so the files) already there and appends the rest; the config feeds it
    only the files not yet listed (``bundle.data.inference.prepare_output_dir`` and ``pending_items``). DICOM
    captures get UIDs derived from the source's and the output folder, so a resumed or repeated run writes the same
    series, not a second one.

    Args:
        output_dir: folder for all outputs (created).
        class_names: one name per class, in the order of the network's outputs.
        task: ``multiclass`` or ``multilabel``.
        threshold: probability from which a ``multilabel`` finding counts as present.
        alpha: maximum opacity of the heatmap.
        reader: the preprocessing's reader (config ``image_reader``): overlays are drawn on the image as it read
            it (its frame, reduced if it was); ``None``: ``MedicalImageReader()``.
        write_dicom: write the Secondary Capture for DICOM sources.
        resume: keep what a previous run wrote to ``output_dir`` (False: start both CSV files over).
        deidentify: DICOM captures without the patient's identity (``deidentify_capture``); study linkage stays.
        series_number: Series Number of the new DICOM series.
        series_description, manufacturer: written into the DICOM captures.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str],
        task: str = "multiclass",
        threshold: float = 0.5,
        alpha: float = 0.6,
        reader: MedicalImageReader | None = None,
        write_dicom: bool = True,
        series_number: int = 9001,
        series_description: str = "MED-TEX saliency overlay",
        manufacturer: str = "MED-TEX MONAI bundle",
        resume: bool = True,
        deidentify: bool = False,
    ) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.output_dir = Path(output_dir)
        self.class_names = [str(c) for c in class_names]
        self.task = task
        self.threshold = threshold
        self.alpha = alpha
        self.reader = reader if reader is not None else MedicalImageReader()
        self.frame = self.reader.frame
        self.write_dicom = write_dicom
        self.series_number = series_number
        self.series_description = series_description
        self.manufacturer = manufacturer
        self.resume = resume
        self.deidentify = deidentify
        self._reset()

    def _reset(self) -> None:
        self.n_predicted = 0
        self.n_errors = 0
        self.n_overlays = 0
        self.n_dicom = 0
        self._stems: set[str] = set()
        self._series: dict[str, str] = {}
        self._instances: dict[str, int] = defaultdict(int)
        self._frame_stems: dict[str, str] = {}
        self._amended: set[str] = set()

    def attach(self, engine: Engine) -> None:
        """Write headers when the run starts, rows after each iteration, a summary at the end."""
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    @property
    def predictions_csv(self) -> Path:
        return self.output_dir / PREDICTIONS_CSV

    @property
    def errors_csv(self) -> Path:
        return self.output_dir / ERRORS_CSV

    @property
    def prediction_columns(self) -> list[str]:
        return ["file", *self.class_names, "predicted", FRAME_KEY, "outputs"]

    def started(self, engine: Engine) -> None:
        """Create the output folder and both CSV files with their headers, or continue those of a previous run."""
        self._reset()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.output_dir.glob(f"{PART}*"):  # a file being written when a previous run was killed
            leftover.unlink()
        headers = {self.predictions_csv: self.prediction_columns, self.errors_csv: ERRORS_COLUMNS}
        if self.resume and all(path.is_file() for path in headers):
            for path, header in headers.items():
                _continue_csv(path, header, header[: -len(NEW_COLUMNS[path.name])])
            with open(self.predictions_csv, newline="") as f:
                for row in csv.DictReader(f):  # the names those files' outputs got, as in one run (streamed)
                    if not row[FRAME_KEY]:
                        self._unique_stem(row["file"])
                    elif row["file"] not in self._frame_stems:  # the frames of a file share its stem
                        self._frame_stems[row["file"]] = self._unique_stem(row["file"])
            return
        for path, header in headers.items():
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(header)

    def __call__(self, engine: Engine) -> None:
        """Write the outputs of every item of the (decollated) batch; rows are appended, so a killed run keeps them."""
        # Ignite annotates State.batch and State.output as int | None; they hold the engine's data
        batch: Any = engine.state.batch
        output: Any = engine.state.output
        if isinstance(batch, dict) or isinstance(output, dict):
            raise ValueError("SaliencyWriter needs decollated engine data (the engine's decollate=True)")
        predictions, errors = [], []
        for item, out in zip(batch, output):
            source = str(item.get(SOURCE_KEY) or getattr(item.get("image"), "meta", {}).get("filename_or_obj", "?"))
            frame = int(item.get(FRAME_KEY, -1))
            frame_column = str(frame) if frame >= 0 else ""
            if not bool(item.get(VALID_KEY, True)):
                errors.append([source, str(item.get(ERROR_KEY) or "unreadable"), frame_column])
                continue
            try:
                row = self.prediction_row(source, out["pred"])
            except Exception as e:  # one file's outputs must never end the run: report it and go on
                logger.exception(f"{source}: no prediction")
                errors.append([source, f"no prediction: {type(e).__name__}: {e}", frame_column])
                continue
            try:
                self.write_saliency(source, out[SALIENCY], frame if frame >= 0 else None)
                outputs = WRITTEN
            except Exception as e:  # none of its image outputs exist (write_together); the row and errors.csv say so
                logger.exception(f"{source}: writing outputs failed, none written")
                reason = " ".join(f"{type(e).__name__}: {e}".split())  # one line: resuming reads the CSV by lines
                outputs = f"none written: {reason}"
                errors.append([source, f"writing outputs failed, none written: {reason}", frame_column])
            predictions.append([*row, frame_column, outputs])
        with open(self.predictions_csv, "a", newline="") as f:
            csv.writer(f).writerows(predictions)
        with open(self.errors_csv, "a", newline="") as f:
            csv.writer(f).writerows(errors)
        self.n_predicted += len(predictions)
        self.n_errors += len(errors)

    def prediction_row(self, source: str, probabilities: Any) -> list[str]:
        """``[file, p_1 ... p_C, predicted]`` for one item (``__call__`` adds ``frame`` and ``outputs``)."""
        p = torch.as_tensor(probabilities).detach().float().cpu().reshape(-1).numpy()
        if p.shape[0] != len(self.class_names):
            raise ValueError(f"{p.shape[0]} outputs but {len(self.class_names)} class names")
        if self.task == "multiclass":
            predicted = self.class_names[int(np.argmax(p))]
        else:
            predicted = ";".join(name for name, v in zip(self.class_names, p) if v >= self.threshold)
        return [source, *(f"{v:.6f}" for v in p), predicted]

    def write_saliency(self, source: str, mask: Any, frame: int | None = None) -> None:
        """Overlay PNG, NIfTI map and, for DICOM, the Secondary Capture, all at the source's resolution: all
        written or none (``write_together``). ``frame``: of a multi-frame file read per frame (``<stem>_f003_*``)."""
        if frame is None:
            stem = self._unique_stem(source)
        else:  # the frames of one file share its stem: made unique at its first frame
            if source not in self._frame_stems:
                self._frame_stems[source] = self._unique_stem(source)
            stem = f"{self._frame_stems[source]}_f{frame:03d}"
        reader = self.reader if frame is None else self.reader.with_frame(frame)
        image, meta = reader.read_file(source)
        rows, cols = image.shape[:2]
        full = saliency_at_source(mask, rows, cols)
        overlay = blend_overlay(image, full, self.alpha)
        affine = self._nifti_affine(source, reader.frame) if meta.get("format") == "nifti" else np.eye(4)
        # readers give (rows, columns) = (y, x); NIfTI's first axis is x: transpose back
        nifti = nib.Nifti1Image(full.T, affine)
        writes: list[tuple[Path, Any]] = [
            (self.output_dir / f"{stem}_overlay.png", lambda tmp: Image.fromarray(overlay).save(tmp)),
            (self.output_dir / f"{stem}_saliency.nii.gz", lambda tmp: nib.save(nifti, str(tmp))),
        ]
        dicom = self.write_dicom and meta.get("format") == "dicom"
        if dicom:
            capture = self.secondary_capture(source, overlay, frame)
            writes.append(
                (self.output_dir / f"{stem}_overlay.dcm", lambda tmp: capture.save_as(tmp, enforce_file_format=True))
            )
        write_together(writes)
        self.n_overlays += 1
        self.n_dicom += int(dicom)

    def _unique_stem(self, source: str) -> str:
        stem = base = source_stem(source)
        n = 0
        while stem in self._stems:
            n += 1
            stem = f"{base}_{n}"
        self._stems.add(stem)
        return stem

    def _nifti_affine(self, source: str, frame: int | None) -> np.ndarray:
        """The source's affine (header only), moved to the read slice of a volume."""
        img: Any = nib.load(source)  # a NIfTI image: affine and shape (nibabel's stubs say FileBasedImage)
        affine = np.array(img.affine, dtype=np.float64)
        if frame is not None and len(img.shape) >= 3 and img.shape[2] > 1:
            affine[:3, 3] = (img.affine @ np.array([0.0, 0.0, float(frame), 1.0]))[:3]
        return affine

    def write_secondary_capture(self, source: str, overlay: np.ndarray, path: Path, frame: int | None = None) -> None:
        """Write ``overlay`` (uint8 RGB) as a Secondary Capture in the source's study, next to its series."""
        capture = self.secondary_capture(source, overlay, frame)
        write_atomically(path, lambda tmp: capture.save_as(tmp, enforce_file_format=True))

    def secondary_capture(self, source: str, overlay: np.ndarray, frame: int | None = None) -> Any:
        """``overlay`` (uint8 RGB) as a Secondary Capture (a highdicom ``SCImage``) in the source's study, next to
        its series. Header values of the source that do not conform to their VR are repaired or dropped
        (``bundle.data.dicom_values.repair_dataset``), logged once per source file by tag, never by value."""
        import pydicom
        from highdicom.sc import SCImage
        from pydicom.uid import ExplicitVRLittleEndian, generate_uid

        ref = read_dicom(source, stop_before_pixels=True)
        amendments = repair_dataset(ref)
        if amendments and source not in self._amended:
            self._amended.add(source)
            logger.warning(
                f"{source}: {len(amendments)} header value(s) of the source do not conform to their VR; for the "
                f"Secondary Capture: {'; '.join(str(a) for a in amendments)}"
            )
        if not ref.get("StudyInstanceUID"):
            raise ValueError("the DICOM source has no StudyInstanceUID, so no study to add the overlay to")
        # derived from the source's UIDs and the output folder: a resumed or repeated run into the same folder
        # writes the same series and instances (replacing them in a PACS) instead of duplicates
        source_series = str(ref.get("SeriesInstanceUID", ""))
        series_uid = self._series.setdefault(
            source_series, generate_uid(entropy_srcs=[source_series, str(self.output_dir.resolve()), "series"])
        )
        self._instances[series_uid] += 1
        instance_number = ref.get("InstanceNumber") or self._instances[series_uid]
        entropy = [str(ref.get("SOPInstanceUID", source)), series_uid]
        if frame is not None:  # one capture per frame, numbered in frame order after the frames of earlier instances
            frames = int(ref.get("NumberOfFrames") or 1)
            instance_number = (int(instance_number) - 1) * frames + frame + 1
            entropy.append(f"frame {frame}")
        sop_uid = generate_uid(entropy_srcs=entropy)
        spacing = ref.get("PixelSpacing")
        pixel_spacing = tuple(float(v) for v in spacing) if spacing is not None and len(spacing) == 2 else None
        capture = SCImage.from_ref_dataset(
            ref,
            pixel_array=overlay,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_uid,
            series_number=self.series_number,
            sop_instance_uid=sop_uid,
            instance_number=int(instance_number),
            manufacturer=self.manufacturer,
            # highdicom 0.28 annotates this argument tuple[int, int]; it is in mm (SCImage.__init__ says float)
            pixel_spacing=pixel_spacing,  # type: ignore[arg-type]
            # highdicom insists on a single-letter orientation for PATIENT; the real one is copied below
            patient_orientation=("L", "F"),
            transfer_syntax_uid=ExplicitVRLittleEndian,
        )
        # Same pixel grid as the source, so the same orientation; empty (Type 2) when the source has none.
        capture.PatientOrientation = ref.get("PatientOrientation")
        for element in ref:  # the rest of the Patient (and Patient Study) modules: group 0x0010
            if element.tag.group == 0x0010 and element.tag not in capture:
                capture.add(copy.deepcopy(element))
        if ref.get("StudyDescription"):
            capture.StudyDescription = ref.StudyDescription
        capture.SeriesDescription = self.series_description
        capture.DerivationDescription = "explainer saliency mask (jet colormap) blended over the source image"
        if ref.get("SOPClassUID") and ref.get("SOPInstanceUID"):
            source_ref = pydicom.Dataset()
            source_ref.ReferencedSOPClassUID = ref.SOPClassUID
            source_ref.ReferencedSOPInstanceUID = ref.SOPInstanceUID
            if frame is not None:
                source_ref.ReferencedFrameNumber = frame + 1  # DICOM numbers frames from 1
            capture.SourceImageSequence = [source_ref]
        if self.deidentify:
            deidentify_capture(capture)
        return capture

    def completed(self, engine: Engine) -> None:
        """Log how many images were predicted and failed, and where each kind of output went."""
        lines = [
            f"inference: {self.n_predicted} image(s) predicted, {self.n_errors} error(s)",
            f"  predictions: {self.predictions_csv}",
            f"  errors: {self.errors_csv}",
            f"  saliency overlays (<stem>_overlay.png) and maps (<stem>_saliency.nii.gz): {self.n_overlays} in "
            f"{self.output_dir}",
        ]
        if self.write_dicom:
            lines.append(
                f"  DICOM Secondary Capture overlays (<stem>_overlay.dcm): {self.n_dicom} in {self.output_dir}"
            )
        logger.info("\n".join(lines))
