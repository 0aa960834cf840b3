"""Image reading for what hospitals have: PNG/JPEG/TIFF (8/16 bit), DICOM, NIfTI, and anything ITK reads.

``MedicalImageReader`` is a MONAI ``ImageReader``: it picks the decoder from the file's content (magic bytes
first, suffix second, because DICOM files often have no suffix and PNGs are sometimes called ``.dcm``), and
returns display intensities in [0, 1] with MONAI's channel metadata so that ``EnsureChannelFirst`` works.

Why not MONAI's own readers: ``PydicomReader`` applies the rescale but neither the VOI LUT/window nor the
MONOCHROME1 inversion, and ``PILReader`` neither drops alpha nor scales 16-bit images; both transpose 2D images
to (x, y), while every format here keeps row-major (rows, columns) so that a PNG, a DICOM and its saliency map
line up pixel for pixel. Every failure is one exception type, ``ImageReadError``, naming the file and the reason.
"""

from __future__ import annotations

import gzip
import os
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.utils import ensure_tuple

NATURAL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
FORMATS = ("natural", "dicom", "nifti", "itk")

# Which package decodes which DICOM transfer syntax (pydicom names them in its own errors too, but only after
# a decode attempt; naming them up front makes the message actionable).
_CODEC_HINTS = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg or python-gdcm",
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg or python-gdcm",
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg or python-gdcm",
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg or python-gdcm",
    "1.2.840.10008.1.2.4.80": "pyjpegls, pylibjpeg-libjpeg or python-gdcm",
    "1.2.840.10008.1.2.4.81": "pyjpegls, pylibjpeg-libjpeg or python-gdcm",
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg or python-gdcm",
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg or python-gdcm",
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg (HTJ2K)",
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg (HTJ2K)",
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg (HTJ2K)",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle or python-gdcm",
}


class ImageReadError(RuntimeError):
    """A file could not be read as an image. ``path`` and ``reason`` are kept for error reports (errors.csv)."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep both fields across DataLoader worker processes
        return (type(self), (self.path, self.reason))


def sniff_format(path: str | os.PathLike) -> str:
    """Return one of ``FORMATS`` from the file's first bytes, falling back to its suffix, then to ``itk``."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file not found")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    size = path.stat().st_size
    if size == 0:
        raise ImageReadError(path, "empty file (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(352)
    name = path.name.lower()
    if len(head) >= 132 and head[128:132] == b"DICM":  # first: a DICOM preamble may hold TIFF or other magic
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"\xff\xd8\xff"):
        return "natural"
    if head[:4] in (b"II*\x00", b"MM\x00*") or head[:2] == b"BM" or head[:4] == b"GIF8":
        return "natural"
    if _is_nifti_header(head) or name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if head[:2] == b"\x1f\x8b":  # gzip: a NIfTI under another name is the only compressed image we read
        try:
            with gzip.open(path, "rb") as f:
                if _is_nifti_header(f.read(352)):
                    return "nifti"
        except OSError:
            pass
    if name.endswith(DICOM_SUFFIXES) or _looks_like_preambleless_dicom(head):
        return "dicom"
    if name.endswith(NATURAL_SUFFIXES):
        return "natural"
    return "itk"


def _is_nifti_header(head: bytes) -> bool:
    if len(head) < 348:
        return False
    sizeof_hdr_le = int.from_bytes(head[:4], "little")
    sizeof_hdr_be = int.from_bytes(head[:4], "big")
    return (348 in (sizeof_hdr_le, sizeof_hdr_be) and head[344:347] in (b"n+1", b"ni1")) or (
        540 in (sizeof_hdr_le, sizeof_hdr_be) and head[4:7] in (b"n+2", b"ni2")
    )


def _looks_like_preambleless_dicom(head: bytes) -> bool:
    # Old ACR-NEMA style files start directly with a group 0x0008 (or 0x0002) element, little endian.
    return len(head) >= 8 and head[1] == 0 and head[0] in (0x02, 0x08) and head[3] == 0


class MedicalImageReader(ImageReader):
    """Read PNG/JPEG/TIFF, DICOM, NIfTI and ITK images as row-major float arrays of display intensity in [0, 1].

    Args:
        frame: index of the frame (DICOM multi-frame) or slice (last axis of a NIfTI volume) to read; ``None``
            rejects files with more than one frame with an ``ImageReadError`` saying how many there are.
        scale_16bit: ``"minmax"`` scales 16-bit PNG/TIFF to the image's own range (such files often hold 10-14
            bits of data); ``"dtype"`` divides by 65535. 8-bit images are always divided by 255 so that colour
            and exposure differences survive.
        apply_voi: apply the DICOM VOI LUT or window (first one) before scaling to [0, 1]; without one, or with
            ``False``, the modality values are min-max scaled.

    Output: ``(rows, cols)`` for grayscale or ``(rows, cols, 3)`` for colour (alpha dropped, palette and YBR
    converted to RGB), MONOCHROME1 and Presentation LUT Shape INVERSE inverted so that bright means dense.
    """

    def __init__(self, frame: int | None = None, scale_16bit: str = "minmax", apply_voi: bool = True) -> None:
        super().__init__()
        if scale_16bit not in ("minmax", "dtype"):
            raise ValueError(f"scale_16bit must be 'minmax' or 'dtype', got {scale_16bit!r}")
        self.frame = frame
        self.scale_16bit = scale_16bit
        self.apply_voi = apply_voi

    def verify_suffix(self, filename: Sequence[os.PathLike | str] | os.PathLike | str) -> bool:
        """Accept every suffix handled here; the content decides the decoder."""
        suffixes = NATURAL_SUFFIXES + DICOM_SUFFIXES + NIFTI_SUFFIXES + ITK_SUFFIXES
        return all(str(f).lower().endswith(suffixes) or "." not in Path(f).name for f in ensure_tuple(filename))

    def read(
        self, data: Sequence[os.PathLike | str] | os.PathLike | str, **kwargs: Any
    ) -> list[tuple[np.ndarray, dict]]:
        """Decode each file now (so that errors surface here, naming the file) and keep (array, meta) pairs."""
        return [self.read_file(f) for f in ensure_tuple(data)]

    def get_data(self, img: list[tuple[np.ndarray, dict]]) -> tuple[np.ndarray, dict]:
        """Return the array and MONAI metadata; several files are stacked as channels."""
        arrays = [a for a, _ in img]
        meta = dict(img[0][1])
        if len(arrays) == 1:
            return arrays[0], meta
        if any(a.shape != arrays[0].shape for a in arrays):
            raise ImageReadError(meta["filename_or_obj"], "files stacked as channels differ in shape")
        stacked = np.stack(arrays, axis=0)
        meta["original_channel_dim"] = 0
        return stacked, meta

    def read_file(self, path: str | os.PathLike) -> tuple[np.ndarray, dict]:
        """Read one file; any failure becomes an ``ImageReadError`` naming the file and the reason."""
        fmt = sniff_format(path)
        try:
            array, meta = getattr(self, f"_read_{fmt}")(Path(path))
        except (ImageReadError, MemoryError, KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as e:  # decoder libraries raise anything; the caller needs one type with the file name
            # BaseException, not Exception: Rust decoders (pylibjpeg-rle through pyo3) report a corrupt stream by
            # panicking, and pyo3's PanicException derives from BaseException (found by tests/test_fuzz_readers.py).
            raise ImageReadError(path, f"cannot read as {fmt}: {type(e).__name__}: {e}") from e
        array = np.asarray(array, dtype=np.float32)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
            raise ImageReadError(path, f"unsupported array shape {array.shape} after decoding ({fmt})")
        if not np.isfinite(array).all():
            raise ImageReadError(path, "pixel values contain NaN or infinity")
        meta.update(
            {
                "filename_or_obj": str(path),
                "format": fmt,
                "spatial_shape": np.asarray(array.shape[:2]),
                "original_channel_dim": -1 if array.ndim == 3 else "no_channel",
            }
        )
        return array, meta

    # --- PNG / JPEG / TIFF / BMP through PIL -------------------------------------------------------------------
    def _read_natural(self, path: Path) -> tuple[np.ndarray, dict]:
        from PIL import Image, ImageOps

        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                with Image.open(path) as im:
                    im.load()
                    im = ImageOps.exif_transpose(im)  # phone and camera JPEGs store rotation in EXIF
                    mode = im.mode
                    if getattr(im, "n_frames", 1) > 1:
                        if self.frame is None:
                            raise ImageReadError(path, f"multi-frame image ({im.n_frames} frames); set frame")
                        im.seek(self.frame)
                    array, bits = _pil_to_array(im)
            except (
                OSError,
                SyntaxError,
                struct.error,
                Image.DecompressionBombWarning,
                Image.DecompressionBombError,
            ) as e:
                reason = "truncated or corrupt image" if "truncated" in str(e).lower() else "cannot decode image"
                raise ImageReadError(path, f"{reason}: {e}") from e
        if bits == 8:
            array = array / 255.0
        elif self.scale_16bit == "dtype" and bits == 16:
            array = array / 65535.0
        else:
            array = _minmax(array)
        return array, {"mode": mode, "bits": bits}

    # --- DICOM through pydicom's pixel handlers ----------------------------------------------------------------
    def _read_dicom(self, path: Path) -> tuple[np.ndarray, dict]:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

        try:
            ds = pydicom.dcmread(path, force=True)  # the content was sniffed already; old files lack the preamble
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as e:
            raise ImageReadError(path, f"not a readable DICOM file (truncated or corrupt?): {e}") from e
        if len(ds) == 0:
            raise ImageReadError(path, "not a DICOM file: no data elements could be parsed")
        if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            sop = getattr(ds, "SOPClassUID", None)
            what = f"{sop.name}" if sop is not None else "unknown SOP class"
            raise ImageReadError(path, f"DICOM without pixel data, not an image ({what})")
        n_frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        if n_frames > 1 and self.frame is None:
            raise ImageReadError(path, f"multi-frame DICOM ({n_frames} frames); set frame to the one to read")
        if self.frame is not None and not 0 <= self.frame < n_frames:
            raise ImageReadError(path, f"frame {self.frame} requested but the file has {n_frames} frame(s)")
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        try:
            pixels = ds.pixel_array if n_frames == 1 else pydicom.pixels.pixel_array(ds, index=self.frame)
        except (NotImplementedError, RuntimeError, ValueError) as e:
            message = str(e)
            if syntax is not None and syntax.is_compressed:
                raise ImageReadError(path, _decode_failure(syntax, message)) from e
            raise ImageReadError(path, f"cannot decode DICOM pixel data (truncated or corrupt?): {message}") from e
        photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
        samples = int(getattr(ds, "SamplesPerPixel", 1) or 1)
        if n_frames > 1 and pixels.ndim == (3 if samples == 1 else 4):  # handler ignored index: take it here
            pixels = pixels[self.frame]
        meta: dict[str, Any] = {"photometric": photometric, "bits": int(getattr(ds, "BitsStored", 8) or 8)}
        for tag in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality"):
            meta[tag] = str(getattr(ds, tag, ""))
        if photometric == "PALETTE COLOR":
            rgb = apply_color_lut(pixels, ds).astype(np.float64)
            return rgb / (65535.0 if rgb.max() > 255 else 255.0), meta
        if samples == 3:  # RGB, or YBR_* that pydicom already converted to RGB
            return pixels.astype(np.float64) / float(2 ** meta["bits"] - 1), meta
        frame_index = self.frame or 0
        values = apply_modality_lut(pixels, ds).astype(np.float64)
        voi = self.apply_voi and ("VOILUTSequence" in ds or "WindowCenter" in ds and "WindowWidth" in ds)
        if voi:
            # pydicom's output range depends on bit depth, rescale and LUT; mapping values far beyond the data
            # through the same VOI gives that range, whatever the VOI function (LINEAR, LINEAR_EXACT, SIGMOID, LUT)
            shown = apply_voi_lut(values, ds, index=_voi_index(ds, frame_index))
            span = np.array([values.min() - 1e6, values.max() + 1e6])
            low, high = apply_voi_lut(span, ds, index=_voi_index(ds, frame_index))
            low, high = min(low, high), max(low, high)
            display = np.clip((shown - low) / (high - low), 0, 1) if high > low else _minmax(shown)
        else:
            display = _minmax(values)
        meta["voi_applied"] = bool(voi)
        inverse = photometric == "MONOCHROME1" or str(getattr(ds, "PresentationLUTShape", "")).upper() == "INVERSE"
        if inverse:
            display = 1.0 - display
        meta["inverted"] = bool(inverse)
        return display, meta

    # --- NIfTI through nibabel ---------------------------------------------------------------------------------
    def _read_nifti(self, path: Path) -> tuple[np.ndarray, dict]:
        import nibabel as nib

        try:
            img = nib.load(str(path))
            data = np.asanyarray(img.dataobj)
        except (nib.filebasedimages.ImageFileError, EOFError, OSError, ValueError) as e:
            raise ImageReadError(path, f"not a readable NIfTI file (truncated or corrupt?): {e}") from e
        if data.dtype.names:  # RGB24 / RGBA32 structured voxels
            data = np.stack([data[c] for c in ("R", "G", "B")], axis=-1)
            rgb = True
        else:
            rgb = False
        spatial = data.shape[:-1] if rgb else data.shape
        while len(spatial) > 2 and spatial[-1] == 1:  # (x, y, 1, 1) -> (x, y)
            data = data[..., 0, :] if rgb else data[..., 0]
            spatial = spatial[:-1]
        if len(spatial) == 3:
            if self.frame is None:
                raise ImageReadError(path, f"NIfTI volume with {spatial[2]} slices; set frame to the slice to read")
            if not 0 <= self.frame < spatial[2]:
                raise ImageReadError(path, f"slice {self.frame} requested but the volume has {spatial[2]}")
            data = data[:, :, self.frame]
        elif len(spatial) != 2:
            raise ImageReadError(path, f"NIfTI with shape {data.shape}: expected a 2D image or a 3D volume")
        data = np.swapaxes(data, 0, 1).astype(np.float64)  # NIfTI stores (x, y); keep rows first like PNG/DICOM
        return (data / 255.0 if rgb else _minmax(data)), {}

    # --- anything else ITK can read (MetaImage, NRRD, ...) -----------------------------------------------------
    def _read_itk(self, path: Path) -> tuple[np.ndarray, dict]:
        import itk

        try:
            data = np.asarray(itk.GetArrayFromImage(itk.imread(str(path))))
        except Exception as e:  # ITK raises plain RuntimeError for an unknown format
            with open(path, "rb") as f:
                head = f.read(16)
            raise ImageReadError(path, f"not an image in any supported format (first bytes {head!r})") from e
        if data.ndim == 3 and data.shape[-1] not in (3, 4):  # (z, y, x) volume
            if self.frame is None and data.shape[0] > 1:
                raise ImageReadError(path, f"volume with {data.shape[0]} slices; set frame to the slice to read")
            data = data[self.frame or 0]
        if data.ndim == 3:
            data = data[..., :3]
        return _minmax(data.astype(np.float64)), {}


def _decode_failure(syntax: Any, message: str) -> str:
    """Say whether a compressed file failed for lack of a codec package (and which) or despite installed ones."""
    from pydicom.pixels import get_decoder

    detail = " ".join(message.split())[:300] or "no detail"
    try:
        plugins = sorted(get_decoder(syntax).available_plugins)
    except (NotImplementedError, ValueError):
        plugins = []
    name = f"transfer syntax '{syntax.name}' ({syntax})"
    if not plugins:
        return f"cannot decode {name}: install {_CODEC_HINTS.get(str(syntax), 'python-gdcm')}"
    return f"{name} could not be decoded by the installed decoders ({', '.join(plugins)}): corrupt data? {detail}"


def _voi_index(ds: Any, frame_index: int) -> int:
    """Pick the VOI for this frame when the file has one per frame, else the first."""
    n_windows = len(ds.VOILUTSequence) if "VOILUTSequence" in ds else ds["WindowCenter"].VM
    return frame_index if frame_index < n_windows else 0


def _pil_to_array(im: Any) -> tuple[np.ndarray, int]:
    """Convert a PIL image to (rows, cols[, 3]) and its bit depth: alpha dropped, palette/CMYK to RGB."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.array(im, dtype=np.float64), 16
    if mode in ("I", "F"):
        array = np.array(im, dtype=np.float64)
        return array, 16 if mode == "I" and array.min() >= 0 and array.max() <= 65535 else 32
    if mode == "1":
        return np.array(im.convert("L"), dtype=np.float64), 8
    if mode in ("L", "LA"):
        return np.array(im.convert("L"), dtype=np.float64), 8
    if mode == "P" and "transparency" not in im.info and _palette_is_gray(im):
        return np.array(im.convert("L"), dtype=np.float64), 8
    return np.array(im.convert("RGB"), dtype=np.float64), 8  # RGB, RGBA, P, CMYK, YCbCr, LAB, HSV


def _palette_is_gray(im: Any) -> bool:
    palette = np.array(im.getpalette() or [], dtype=np.int32).reshape(-1, 3)
    return palette.size > 0 and bool((palette == palette[:, :1]).all())


def _minmax(array: np.ndarray) -> np.ndarray:
    if not np.isfinite(array).all():  # else one NaN makes the range NaN and the whole image silently zero
        raise ValueError("pixel values contain NaN or infinity")
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array, dtype=np.float64)
