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

import copy
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

# Pixel (per frame or slice) limit checked from the header before decoding: PIL's own decompression-bomb limit
# (about 9459 x 9459), applied to every format so that memory per image is bounded whatever the file claims.
DEFAULT_MAX_PIXELS = 89_478_485
# Images whose shorter side is at least twice this are reduced while reading (see ``reduce_min_side``); the
# bundle's networks take 224-512 px, so this keeps 2x-4x their resolution and bounds memory for huge scans.
DEFAULT_REDUCE_MIN_SIDE = 1024

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

    # keep both fields across DataLoader worker processes
    def __reduce__(self) -> tuple[type[ImageReadError], tuple[str, str]]:
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
        max_pixels: refuse images (one frame or slice) with more pixels than this, read from the header before
            decoding (ITK formats: after), with an ``ImageReadError`` naming the limit; ``None``: no limit.
        reduce_min_side: images whose shorter side is at least twice this are reduced on read by the largest
            integer factor that keeps the shorter side at least this long (mean of k x k blocks on the stored
            values, up to k - 1 edge rows/columns dropped; JPEGs are decoded at a reduced DCT scale, which also
            saves decoding time). Full-size data is then held only once, in its stored type (1-2 bytes a value),
            and all float work happens at the reduced size. ``None``: always full resolution.

    Output: ``(rows, cols)`` for grayscale or ``(rows, cols, 3)`` for colour (alpha dropped, palette and YBR
    converted to RGB), MONOCHROME1 and Presentation LUT Shape INVERSE inverted so that bright means dense.
    """

    def __init__(
        self,
        frame: int | None = None,
        scale_16bit: str = "minmax",
        apply_voi: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        reduce_min_side: int | None = DEFAULT_REDUCE_MIN_SIDE,
    ) -> None:
        super().__init__()
        if scale_16bit not in ("minmax", "dtype"):
            raise ValueError(f"scale_16bit must be 'minmax' or 'dtype', got {scale_16bit!r}")
        for name, value in (("max_pixels", max_pixels), ("reduce_min_side", reduce_min_side)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        self.frame = frame
        self.scale_16bit = scale_16bit
        self.apply_voi = apply_voi
        self.max_pixels = max_pixels
        self.reduce_min_side = reduce_min_side

    def with_frame(self, frame: int | None) -> MedicalImageReader:
        """This reader with another ``frame``, all other settings the same."""
        other = copy.copy(self)
        other.frame = frame
        return other

    def _check_size(self, path: Path, rows: int, columns: int, what: str = "image") -> None:
        """Refuse, before decoding, an image with more pixels than ``max_pixels``."""
        if self.max_pixels is not None and rows * columns > self.max_pixels:
            raise ImageReadError(
                path,
                f"{what} of {rows} x {columns} = {rows * columns:,} pixels exceeds the reader's limit of "
                f"{self.max_pixels:,} (max_pixels; raise it in the config to read such images)",
            )

    def _reduction(self, rows: int, columns: int) -> int:
        """The integer factor ``reduce_min_side`` asks for on an image of this size (1: none)."""
        if self.reduce_min_side is None:
            return 1
        return max(1, min(rows, columns) // self.reduce_min_side)

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
                    self._check_size(path, im.height, im.width)
                    factor = self._reduction(im.height, im.width)
                    if factor > 1 and im.format == "JPEG":  # libjpeg decodes at 1/2, 1/4 or 1/8 scale directly
                        im.draft(im.mode, (im.width // factor, im.height // factor))
                    im.load()
                    im = ImageOps.exif_transpose(im)  # type: ignore[assignment]  # EXIF rotation (phones, cameras)
                    mode = im.mode
                    n_frames = getattr(im, "n_frames", 1)
                    if n_frames > 1:
                        if self.frame is None:
                            raise ImageReadError(path, f"multi-frame image ({n_frames} frames); set frame")
                        im.seek(self.frame)
                    stored, bits = _pil_to_array(im)
                    array = _reduce_blocks(stored, self._reduction(*stored.shape[:2]), as_float=True)
                    del stored
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
            ds = read_dicom(path)
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
        rows, columns = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
        self._check_size(path, rows, columns, "DICOM frame")
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
        factor = self._reduction(*pixels.shape[:2])
        meta: dict[str, Any] = {"photometric": photometric, "bits": int(getattr(ds, "BitsStored", 8) or 8)}
        for tag in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality"):
            meta[tag] = str(getattr(ds, tag, ""))
        if photometric == "PALETTE COLOR":  # palette indices cannot be averaged: reduce the colours
            rgb = _reduce_blocks(apply_color_lut(pixels, ds), factor, as_float=True)
            return rgb / (65535.0 if rgb.max() > 255 else 255.0), meta
        if samples == 3:  # RGB, or YBR_* that pydicom already converted to RGB
            return _reduce_blocks(pixels, factor, as_float=True) / float(2 ** meta["bits"] - 1), meta
        # stored values reduced first (rounded to their type, so LUT-based modality LUTs still index): windowing
        # and scaling then run on the small array; the rounding moves a value by at most half a stored unit
        pixels = _reduce_blocks(pixels, factor)
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
            img: Any = nib.load(str(path))  # a NIfTI image: shape and dataobj (nibabel's stubs say less)
            shape = img.shape
            if len(shape) >= 2:
                self._check_size(path, int(shape[1]), int(shape[0]), "NIfTI slice")
            # of a volume, read only the slice asked for (nibabel reads just that slice from uncompressed files)
            if len(shape) == 3 and shape[2] > 1 and self.frame is not None and 0 <= self.frame < shape[2]:
                data = np.asanyarray(img.dataobj[:, :, self.frame : self.frame + 1])
            else:
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
        data = np.swapaxes(data, 0, 1)  # NIfTI stores (x, y); keep rows first like PNG/DICOM
        data = _reduce_blocks(data, self._reduction(*data.shape[:2])).astype(np.float64)
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
        self._check_size(path, data.shape[0], data.shape[1])  # ITK has decoded it already: bounds what follows
        return _minmax(_reduce_blocks(data, self._reduction(*data.shape[:2])).astype(np.float64)), {}


def read_dicom(path: str | os.PathLike, stop_before_pixels: bool = False) -> Any:
    """``pydicom.dcmread(path, force=True)`` (the content was sniffed already; old files lack the preamble), with a
    Transfer Syntax UID set from the encoding pydicom detected when the file has no file meta information (ACR-NEMA
    style and some archive exports: no preamble, no ``DICM``, no group 0002). Without it pydicom parses the header
    but will not decode the pixels. Such a file can only be uncompressed: implicit or explicit VR, little or big
    endian."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        if implicit is not None and little is not None:  # None: nothing was parsed (the caller reports it)
            if meta is None:
                meta = ds.file_meta = FileMetaDataset()
            if implicit:
                meta.TransferSyntaxUID = ImplicitVRLittleEndian  # implicit VR is little endian by definition
            else:
                meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
    return ds


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
    """Convert a PIL image to (rows, cols[, 3]) in its stored type and its bit depth: alpha dropped, palette/CMYK
    to RGB. Stored types (1-4 bytes a value) rather than float64 keep a full-size image small before reduction."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.array(im, dtype=np.uint16), 16
    if mode in ("I", "F"):
        array = np.array(im)
        return array, 16 if mode == "I" and array.min() >= 0 and array.max() <= 65535 else 32
    if mode in ("1", "L", "LA"):
        return np.array(im.convert("L")), 8
    if mode == "P" and "transparency" not in im.info and _palette_is_gray(im):
        return np.array(im.convert("L")), 8
    return np.array(im.convert("RGB")), 8  # RGB, RGBA, P, CMYK, YCbCr, LAB, HSV


def _reduce_blocks(array: np.ndarray, factor: int, as_float: bool = False) -> np.ndarray:
    """Mean of ``factor`` x ``factor`` blocks of a (rows, cols[, channels]) array, dropping the last
    ``rows % factor`` rows and ``cols % factor`` columns: float64 with ``as_float`` (for callers that go on in
    floats), else in the array's own type (integers rounded, for lookup tables that index by stored value). Sums the
    factor**2 strided views into a float32 array of the reduced size, so no full-size float copy is made (and it is
    twice as fast as a 5-D reshape-and-mean)."""
    if factor <= 1:
        return array.astype(np.float64) if as_float else array
    rows, cols = (array.shape[0] // factor) * factor, (array.shape[1] // factor) * factor
    mean = np.zeros((rows // factor, cols // factor, *array.shape[2:]), dtype=np.float32)
    for i in range(factor):
        for j in range(factor):
            mean += array[i:rows:factor, j:cols:factor]
    mean /= factor * factor
    if as_float:
        return mean.astype(np.float64)
    if np.issubdtype(array.dtype, np.integer):
        return np.rint(mean).astype(array.dtype)
    return mean.astype(array.dtype)


def _palette_is_gray(im: Any) -> bool:
    palette = np.array(im.getpalette() or [], dtype=np.int32).reshape(-1, 3)
    return palette.size > 0 and bool((palette == palette[:, :1]).all())


def _minmax(array: np.ndarray) -> np.ndarray:
    if not np.isfinite(array).all():  # else one NaN makes the range NaN and the whole image silently zero
        raise ValueError("pixel values contain NaN or infinity")
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array, dtype=np.float64)
