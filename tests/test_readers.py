"""Image reading: every format a hospital hands us, and one clear error for everything else."""

from __future__ import annotations

import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from bundle.data.readers import ImageReadError, MedicalImageReader, sniff_format
from bundle.data.transforms import LoadMedicalImage, LoadMedicalImaged, MatchChannels

PYDICOM_TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def read(path, **kwargs) -> np.ndarray:
    return MedicalImageReader(**kwargs).read_file(path)[0]


# --- every DICOM file that ships with pydicom ---------------------------------------------------------------------
def _pydicom_files() -> list[Path]:
    # globbing the folder, not pydicom.data.get_testdata_files, which tries to download more files
    return sorted(p for p in PYDICOM_TEST_FILES.rglob("*") if p.is_file())


def test_every_pydicom_test_file_loads_or_raises_read_error():
    loaded, refused = [], []
    for path in _pydicom_files():
        try:
            array, meta = MedicalImageReader().read_file(path)
        except ImageReadError as e:
            assert e.path == str(path) and e.reason, path
            refused.append(path.name)
            continue
        assert np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1, path
        assert array.ndim == 2 or array.shape[-1] == 3, (path, array.shape)
        loaded.append(path.name)
    # all single-frame images in every transfer syntax the codec packages cover
    for name in (
        "CT_small.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "JPGExtended.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "SC_ybr_full_422_uncompressed.dcm",
        "examples_palette.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ):
        assert name in loaded, name
    for name in ("rtplan.dcm", "MR_truncated.dcm", "examples_ybr_color.dcm", "README.txt"):
        assert name in refused, name
    assert len(loaded) >= 70, len(loaded)


@pytest.mark.parametrize(
    "compressed", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
)
def test_lossless_transfer_syntaxes_decode_to_the_uncompressed_pixels(compressed):
    reference = read(PYDICOM_TEST_FILES / "MR_small.dcm")
    np.testing.assert_allclose(read(PYDICOM_TEST_FILES / compressed), reference, atol=1e-6)


def test_ybr_photometric_becomes_rgb_like_the_rgb_original():
    rgb = read(PYDICOM_TEST_FILES / "SC_rgb_dcmtk_+eb+cr.dcm")
    ybr = read(PYDICOM_TEST_FILES / "SC_ybr_full_422_uncompressed.dcm")
    assert rgb.shape == ybr.shape == (100, 100, 3)
    assert np.abs(rgb - ybr).mean() < 0.02  # chroma subsampling and rounding only


def test_multi_frame_is_rejected_or_read_at_the_configured_frame():
    path = PYDICOM_TEST_FILES / "SC_rgb_rle_2frame.dcm"
    with pytest.raises(ImageReadError, match="multi-frame DICOM \\(2 frames\\)"):
        read(path)
    frames = pydicom.dcmread(path).pixel_array / 255.0
    np.testing.assert_allclose(read(path, frame=1), frames[1], atol=1e-6)
    np.testing.assert_allclose(read(path, frame=0), frames[0], atol=1e-6)
    with pytest.raises(ImageReadError, match="frame 5 requested but the file has 2"):
        read(path, frame=5)


def test_truncated_dicom_names_file_and_reason():
    with pytest.raises(ImageReadError) as info:
        read(PYDICOM_TEST_FILES / "MR_truncated.dcm")
    assert "MR_truncated.dcm" in str(info.value) and "truncated" in info.value.reason


# --- DICOM written by the test: LUTs, photometrics, compression ----------------------------------------------------
def write_dicom(
    path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", syntax=ExplicitVRLittleEndian, **elements
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.PatientID = "P1"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = elements.pop("BitsStored", ds.BitsAllocated)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.tobytes()
    if syntax != ExplicitVRLittleEndian:
        ds.compress(syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_modality_lut_and_window_follow_the_dicom_formula(tmp_path):
    stored = np.array([[0, 100], [200, 300]], dtype=np.uint16)
    path = write_dicom(
        tmp_path / "w.dcm",
        stored,
        BitsStored=12,
        RescaleSlope=2,
        RescaleIntercept=-100,
        WindowCenter=200,
        WindowWidth=401,
    )
    # modality values -100, 100, 300, 500; LINEAR window: (x - (c - 0.5)) / (w - 1) + 0.5, clipped to [0, 1]
    expected = np.clip((np.array([[-100, 100], [300, 500]]) - 199.5) / 400 + 0.5, 0, 1)
    np.testing.assert_allclose(read(path), expected, atol=1e-6)
    # without VOI: modality values min-max scaled
    np.testing.assert_allclose(read(path, apply_voi=False), [[0, 1 / 3], [2 / 3, 1]], atol=1e-6)


def test_monochrome1_is_inverted_so_bright_means_dense(tmp_path):
    dense = np.array([[0, 1000], [3000, 4095]], dtype=np.uint16)
    mono2 = read(write_dicom(tmp_path / "m2.dcm", dense, BitsStored=12))
    mono1 = read(write_dicom(tmp_path / "m1.dcm", (4095 - dense).astype(np.uint16), "MONOCHROME1", BitsStored=12))
    np.testing.assert_allclose(mono1, mono2, atol=1e-6)
    assert mono1[1, 1] == pytest.approx(1.0) and mono1[0, 0] == pytest.approx(0.0)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_16_bit_round_trip(tmp_path, syntax):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, size=(32, 48), dtype=np.uint16)  # OpenJPEG needs >= 32 px per side
    plain = read(write_dicom(tmp_path / "plain.dcm", pixels, BitsStored=12))
    packed = read(write_dicom(tmp_path / "packed.dcm", pixels, syntax=syntax, BitsStored=12))
    assert pydicom.dcmread(tmp_path / "packed.dcm").file_meta.TransferSyntaxUID == syntax
    np.testing.assert_allclose(packed, plain, atol=1e-6)


def test_unsupported_transfer_syntax_is_named(tmp_path):
    path = write_dicom(tmp_path / "mpeg.dcm", np.zeros((8, 8), dtype=np.uint8))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder exists in pydicom
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 16])
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="MPEG2") as info:
        read(path)
    assert "mpeg.dcm" in str(info.value)


def test_dicom_without_preamble_or_suffix_is_detected(tmp_path):
    path = write_dicom(tmp_path / "plain.dcm", np.arange(16, dtype=np.uint8).reshape(4, 4))
    bare = tmp_path / "IM0001"
    bare.write_bytes(path.read_bytes()[128 + 4 :])  # strip preamble and 'DICM', as old exports do
    assert sniff_format(bare) == "dicom"
    np.testing.assert_allclose(read(bare), read(path), atol=1e-6)


# --- PNG / JPEG ---------------------------------------------------------------------------------------------------
def test_png_bit_depths_and_modes(tmp_path):
    gray = np.array([[0, 51], [204, 255]], dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g8.png")
    np.testing.assert_allclose(read(tmp_path / "g8.png"), gray / 255.0, atol=1e-6)

    g16 = np.array([[100, 200], [300, 1100]], dtype=np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    np.testing.assert_allclose(read(tmp_path / "g16.png"), (g16 - 100) / 1000.0, atol=1e-6)
    np.testing.assert_allclose(read(tmp_path / "g16.png", scale_16bit="dtype"), g16 / 65535.0, atol=1e-6)

    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 255, 128, 0, 7
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = read(tmp_path / "rgba.png")
    assert out.shape == (2, 3, 3)  # rows, cols, RGB: alpha dropped, not blended
    np.testing.assert_allclose(out[0, 0], [1.0, 128 / 255, 0.0], atol=1e-6)

    palette = Image.fromarray(rgba[..., :3], "RGB").convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(tmp_path / "p.png")
    np.testing.assert_allclose(read(tmp_path / "p.png")[0, 0], [1.0, 128 / 255, 0.0], atol=1e-6)


def test_jpeg_rgb_and_gray(tmp_path):
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    out = read(tmp_path / "c.jpg")
    assert out.shape == (16, 16, 3) and abs(out[..., 0].mean() - 200 / 255) < 0.02 and out[..., 1].mean() < 0.02
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.jpeg")
    assert read(tmp_path / "g.jpeg").shape == (16, 16)


# --- NIfTI and ITK ------------------------------------------------------------------------------------------------
def test_nifti_2d_and_single_slice_match_the_png_orientation(tmp_path):
    rows_cols = np.linspace(0, 255, 12).round().astype(np.uint8).reshape(3, 4)  # full range: same scale both ways
    Image.fromarray(rows_cols).save(tmp_path / "a.png")
    nib.save(nib.Nifti1Image(rows_cols.T.astype(np.float32), np.eye(4)), tmp_path / "a.nii.gz")  # NIfTI is (x, y)
    nib.save(nib.Nifti1Image(rows_cols.T[..., None].astype(np.float32), np.eye(4)), tmp_path / "b.nii")
    png = read(tmp_path / "a.png")
    np.testing.assert_allclose(read(tmp_path / "a.nii.gz"), png, atol=1e-6)
    np.testing.assert_allclose(read(tmp_path / "b.nii"), png, atol=1e-6)

    volume = np.stack([rows_cols.T, 255 - rows_cols.T], axis=-1).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "v.nii.gz")
    with pytest.raises(ImageReadError, match="2 slices"):
        read(tmp_path / "v.nii.gz")
    np.testing.assert_allclose(read(tmp_path / "v.nii.gz", frame=1), 1 - png, atol=1e-6)


def test_itk_reads_what_the_others_do_not(tmp_path):
    import itk

    data = np.array([[0, 10], [20, 40]], dtype=np.float32)
    itk.imwrite(itk.image_from_array(data), str(tmp_path / "a.mha"))
    assert sniff_format(tmp_path / "a.mha") == "itk"
    np.testing.assert_allclose(read(tmp_path / "a.mha"), data / 40.0, atol=1e-6)


# --- errors -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("missing.png", None, "file not found"),
        ("empty.png", b"", "empty file"),
        ("notes.png", b"this is a text file, not a picture\n" * 4, "cannot decode image"),
        ("notes.txt", b"this is a text file, not a picture\n" * 4, "not an image"),
    ],
)
def test_unreadable_files_raise_one_error_type(tmp_path, name, content, reason):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as info:
        read(path)
    assert str(path) in str(info.value)


def test_truncated_png_and_jpeg(tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "full.jpg")
    for name in ("full.png", "full.jpg"):
        data = (tmp_path / name).read_bytes()
        (tmp_path / f"cut_{name}").write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageReadError, match="truncated"):
            read(tmp_path / f"cut_{name}")


def test_read_error_survives_pickling_for_dataloader_workers():
    error = pickle.loads(pickle.dumps(ImageReadError("/a/b.dcm", "empty file (0 bytes)")))
    assert error.path == "/a/b.dcm" and error.reason == "empty file (0 bytes)" and "b.dcm" in str(error)


# --- MONAI transforms ---------------------------------------------------------------------------------------------
def test_load_transforms_give_channel_first_float_metatensors(tmp_path):
    Image.fromarray(np.full((4, 6), 255, dtype=np.uint8)).save(tmp_path / "m.png")
    Image.fromarray(np.zeros((4, 6, 3), dtype=np.uint8)).save(tmp_path / "i.png")
    out = LoadMedicalImaged(keys=["image", "mask"])({"image": str(tmp_path / "i.png"), "mask": str(tmp_path / "m.png")})
    assert out["image"].shape == (3, 4, 6) and out["mask"].shape == (1, 4, 6)
    assert out["image"].dtype == torch.float32 and out["mask"].min() == 1.0
    assert out["image"].meta["filename_or_obj"] == str(tmp_path / "i.png")
    with pytest.raises(ImageReadError, match="nothing.png"):  # not MONAI's "cannot find a suitable reader"
        LoadMedicalImage()(str(tmp_path / "nothing.png"))


def test_match_channels():
    gray = torch.rand(1, 4, 4)
    assert torch.equal(MatchChannels(3)(gray)[2], gray[0])
    rgb = torch.stack([torch.ones(4, 4), torch.zeros(4, 4), torch.zeros(4, 4)])
    assert torch.allclose(MatchChannels(1)(rgb), torch.full((1, 4, 4), 0.299))
    with pytest.raises(ValueError, match="cannot convert 2 channels"):
        MatchChannels(3)(torch.rand(2, 4, 4))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_pixels_are_a_read_error_not_a_black_image(tmp_path, bad):
    data = np.random.default_rng(0).random((12, 10)).astype(np.float32)
    data[3, 4] = bad
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    with pytest.raises(ImageReadError, match="NaN or infinity") as error:
        MedicalImageReader().read_file(path)
    assert str(path) in str(error.value)


# --- images far larger than the network input: bounded memory ------------------------------------------------------
def _block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    rows, cols = array.shape[0] // factor * factor, array.shape[1] // factor * factor
    return array[:rows, :cols].reshape(rows // factor, factor, cols // factor, factor, *array.shape[2:]).mean((1, 3))


def test_large_images_are_reduced_on_read_by_an_integer_factor(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (70, 100), dtype=np.uint8)  # shorter side 70 = 4 x 16 + 6: factor 4, edges dropped
    Image.fromarray(gray).save(tmp_path / "gray.png")
    reduced = read(tmp_path / "gray.png", reduce_min_side=16)
    assert reduced.shape == (17, 25)
    # the exact block mean: not rounded back to 8 bits on the way to floats
    np.testing.assert_allclose(reduced, _block_mean(gray.astype(np.float64), 4) / 255, atol=1e-6)
    assert read(tmp_path / "gray.png", reduce_min_side=36).shape == (70, 100)  # 70 < 2 x 36: left alone
    assert read(tmp_path / "gray.png", reduce_min_side=None).shape == (70, 100)

    deep = (rng.random((64, 64)) * 4000).astype(np.uint16)  # 16-bit DICOM: reduced, then windowed and scaled
    write_dicom(tmp_path / "deep.dcm", deep, BitsStored=12, WindowCenter=2000, WindowWidth=4000)
    full, small = read(tmp_path / "deep.dcm", reduce_min_side=None), read(tmp_path / "deep.dcm", reduce_min_side=16)
    assert small.shape == (16, 16)
    np.testing.assert_allclose(small, _block_mean(full, 4), atol=1e-3)  # linear window: same as reducing after

    volume = rng.random((48, 32, 3)).astype(np.float32)  # NIfTI (x, y, z): slice 2 only, read and reduced
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "vol.nii")
    slice_full = read(tmp_path / "vol.nii", frame=2, reduce_min_side=None)
    expected = (volume[:, :, 2].T - volume[:, :, 2].min()) / np.ptp(volume[:, :, 2])
    np.testing.assert_allclose(slice_full, expected, atol=1e-6)
    assert read(tmp_path / "vol.nii", frame=2, reduce_min_side=16).shape == (16, 24)


def test_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path):
    yy, xx = np.mgrid[0:96, 0:128]
    smooth = np.stack([xx * 2, yy * 2, 255 - xx * 2], axis=-1).clip(0, 255).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "photo.jpg", quality=95)
    reduced = read(tmp_path / "photo.jpg", reduce_min_side=24)  # factor 4: libjpeg decodes at 1/4 scale
    assert reduced.shape == (24, 32, 3)
    np.testing.assert_allclose(reduced, _block_mean(smooth / 255.0, 4), atol=0.03)


@pytest.mark.parametrize("name", ["big.png", "big.jpg", "big.dcm", "big.nii"])
def test_images_above_max_pixels_are_refused_before_decoding(tmp_path, name):
    pixels = np.zeros((40, 50), dtype=np.uint8)
    path = tmp_path / name
    if name.endswith(".dcm"):
        write_dicom(path, pixels)
    elif name.endswith(".nii"):
        nib.save(nib.Nifti1Image(pixels.T, np.eye(4)), path)
    else:
        Image.fromarray(pixels).save(path)
    assert read(path, max_pixels=2000).shape == (40, 50)  # exactly at the limit
    with pytest.raises(ImageReadError, match=r"40 x 50 = 2,000 pixels exceeds the reader's limit of 1,999") as info:
        read(path, max_pixels=1999)
    assert info.value.path == str(path) and "max_pixels" in info.value.reason


def test_reading_a_large_image_holds_it_once_in_its_stored_type(tmp_path):
    """Peak memory (numpy allocations, traced) of reading a 16-bit 512 x 512 scan: with reduction about one copy of
    the stored 0.5 MB; at full resolution the float64 work needs several 2 MB arrays, which the reduction avoids."""
    import tracemalloc

    yy, xx = np.mgrid[0:512, 0:512]
    write_dicom(tmp_path / "scan.dcm", ((xx + yy) * 4).astype(np.uint16), BitsStored=12)
    stored_bytes = 512 * 512 * 2

    def peak(**kwargs) -> int:
        tracemalloc.start()
        try:
            read(tmp_path / "scan.dcm", **kwargs)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    reduced, full = peak(reduce_min_side=64), peak(reduce_min_side=None)
    assert full > 4 * stored_bytes  # the test can fail: full-resolution reading does use more
    assert reduced < 2.5 * stored_bytes, f"peak {reduced / stored_bytes:.1f}x the stored image"
