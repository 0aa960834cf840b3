"""DICOM as it comes out of real archives, through inference: header values that do not conform to their VR, files
without file meta information, multi-frame files read per frame; and a file's outputs all written or none."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom import config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import Tag
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from bundle.config_check import find_problems
from bundle.data.dicom_values import repair_dataset
from bundle.data.inference import expand_frames, finished_sources, pending_items
from bundle.data.readers import MedicalImageReader
from bundle.handlers.writers import SaliencyWriter
from tests.test_inference import CLASSES, ROOT, read_csv, reference_parser, run_inference

STUDY_UID = generate_uid()
LONG_INSTITUTION = "Hospital of the Very Long Name That No Archive Should Have Stored Here"  # 70 > LO's 64
BIRTH_DATE = "1965-13-45"  # no month 13: not repairable
ROWS, COLS = 20, 24
AFFINE = np.array([[0.8, 0, 0, 10.0], [0, 0.7, 0, -5.0], [0, 0, 2.5, 2.0], [0, 0, 0, 1]])


def pixels(seed: int, frames: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (frames, ROWS, COLS) if frames > 1 else (ROWS, COLS)
    return (rng.random(shape) * 4000).astype(np.uint16)


def dicom(data: np.ndarray, frames: int = 1) -> Dataset:
    """A CT image dataset with file meta, conforming values, ``data`` as its pixels."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY_UID, generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality, ds.InstanceNumber = "P-7", "Roe^Rick", "CT", 1
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = ROWS, COLS, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = data.tobytes()
    return ds


def write_archive_file(path: Path) -> None:
    """Values an ACR-NEMA-era archive holds, written as they are (pydicom's writing validation off)."""
    ds = dicom(pixels(1))
    mode = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        ds.StudyTime = "11:20:00"  # TM with colons
        ds.StudyDate = "1965.04.12"  # DA with dots
        ds.InstitutionName = LONG_INSTITUTION
        ds.PatientBirthDate = BIRTH_DATE
        ds.PatientSex = "male"
        # a non-numeric IS cannot even be set through pydicom: the raw bytes, as a file would hold them
        ds._dict[Tag(0x00200011)] = RawDataElement(Tag(0x00200011), "IS", 4, b"abc ", 0, False, True)
        ds.save_as(path, enforce_file_format=True)
    finally:
        config.settings.writing_validation_mode = mode


def write_without_meta(data: np.ndarray, path: Path, implicit: bool) -> None:
    """No preamble, no ``DICM``, no group 0002: the data set alone, in implicit or explicit VR little endian."""
    ds = dicom(data)
    del ds.file_meta
    ds.preamble = None
    ds.save_as(path, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    assert path.read_bytes()[128:132] != b"DICM" and path.read_bytes()[:2] == b"\x08\x00"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("archive")
    inputs, models = work / "in", work / "models"
    inputs.mkdir()
    write_archive_file(inputs / "archive.dcm")
    dicom(pixels(2)).save_as(inputs / "normal.dcm", enforce_file_format=True)
    write_without_meta(pixels(2), inputs / "implicit", implicit=True)
    write_without_meta(pixels(2), inputs / "explicit", implicit=False)
    dicom(pixels(3, frames=3), frames=3).save_as(inputs / "multi.dcm", enforce_file_format=True)
    nib.save(
        nib.Nifti1Image(np.random.default_rng(4).random((COLS, ROWS, 2)).astype(np.float32), AFFINE),
        inputs / "volume.nii.gz",
    )
    datalist = work / "datalist.json"
    datalist.write_text(json.dumps({"name": "t", "task": "multiclass", "classes": CLASSES, "test": []}))
    parser = reference_parser(datalist)
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").eval()
    models.mkdir()
    torch.save(network.state_dict(), models / "model.pt")
    # batch size 1: every image through the same computation, so equal inputs give bit-equal outputs
    refuse = run_inference(inputs, work / "refuse", models, datalist, 1)
    per_frame = run_inference(inputs, work / "per_frame", models, datalist, 1, "--multiframe", "per_frame")
    return {
        "work": work,
        "inputs": inputs,
        "network": network,
        "parser": parser,
        "refuse": (work / "refuse", refuse),
        "per_frame": (work / "per_frame", per_frame),
    }


def by_name(rows: list[dict]) -> dict[str, dict]:
    return {(Path(r["file"]).name + (f"#{r['frame']}" if r["frame"] else "")): r for r in rows}


def test_non_conforming_header_values_repaired_or_dropped_and_every_output_written(setup):
    out, log = setup["refuse"]
    predictions = by_name(read_csv(out / "predictions.csv"))
    assert predictions["archive.dcm"]["outputs"] == "written"
    assert "archive.dcm" not in {Path(r["file"]).name for r in read_csv(out / "errors.csv")}
    for suffix in ("_overlay.png", "_saliency.nii.gz", "_overlay.dcm"):
        assert (out / f"archive{suffix}").is_file()
    capture = pydicom.dcmread(out / "archive_overlay.dcm")
    assert capture.StudyTime == "112000"  # repaired: colons removed
    assert capture.StudyDate == "19650412"  # repaired: dots removed
    assert capture.PatientSex == "M"
    assert capture.PatientBirthDate == ""  # dropped; Type 2 in the SC IOD, so present and empty
    assert "InstitutionName" not in capture  # dropped, not truncated
    assert capture.StudyInstanceUID == STUDY_UID and capture.PatientID == "P-7"
    for element in capture:  # what the capture holds conforms
        if element.VR in ("DA", "TM", "LO", "SH", "CS", "IS", "DS") and element.value not in (None, ""):
            for value in element.value if element.VM > 1 else [element.value]:
                text = str(value) if element.VR in ("IS", "DS") else value
                pydicom.valuerep.validate_value(element.VR, text, config.RAISE)
    # the log names the file and each tag, once for the file, and never a value (they are patient data)
    lines = [line for line in log.splitlines() if "do not conform to their VR" in line]
    assert len(lines) == 1 and str(setup["inputs"] / "archive.dcm") in lines[0], log[-3000:]
    for expected in (
        "repaired (0008,0030) StudyTime",
        "repaired (0008,0020) StudyDate",
        "dropped (0008,0080) InstitutionName (LO: 70 characters, more than LO allows)",
        "dropped (0010,0030) PatientBirthDate (DA: not a valid DA)",
        "repaired (0010,0040) PatientSex",
        "dropped (0020,0011) SeriesNumber (IS: not a valid IS)",
    ):
        assert expected in lines[0], lines[0]
    assert BIRTH_DATE not in log and LONG_INSTITUTION not in log
    assert "Invalid value for VR" not in log and "'abc'" not in log  # pydicom's warnings quote values: silenced


def test_repair_dataset_in_detail():
    ds = Dataset()
    ds.StudyTime, ds.ContentTime, ds.StudyDate = "11:20:00", "25:00", "1965/04/12"
    ds.SliceThickness, ds.InstanceNumber, ds.Modality = "0.123456789012345678", "12.0", "ct"
    ds.StationName = "OK"
    ds.ReferencedImageSequence = [Dataset()]
    ds.ReferencedImageSequence[0].ReferencedFrameNumber = "2.5"
    amendments = {a.keyword: a for a in repair_dataset(ds)}
    assert (ds.StudyTime, ds.StudyDate, ds.InstanceNumber, ds.Modality) == ("112000", "19650412", 12, "CT")
    assert float(ds.SliceThickness) == pytest.approx(0.123456789012345678) and len(str(ds.SliceThickness)) <= 16
    assert "ContentTime" not in ds and "ReferencedFrameNumber" not in ds.ReferencedImageSequence[0]
    assert ds.StationName == "OK" and "StationName" not in amendments
    assert {k: a.action for k, a in amendments.items()} == {
        "StudyTime": "repaired",
        "ContentTime": "dropped",
        "StudyDate": "repaired",
        "SliceThickness": "repaired",
        "InstanceNumber": "repaired",
        "Modality": "repaired",
        "ReferencedFrameNumber": "dropped",
    }


def test_files_without_file_meta_predict_exactly_as_the_same_pixels_in_a_normal_file(setup):
    out, _ = setup["refuse"]
    predictions = by_name(read_csv(out / "predictions.csv"))
    normal_map = np.asarray(nib.load(str(out / "normal_saliency.nii.gz")).dataobj)
    for name in ("implicit", "explicit"):
        assert [predictions[name][c] for c in CLASSES] == [predictions["normal.dcm"][c] for c in CLASSES]
        assert predictions[name]["outputs"] == "written"
        np.testing.assert_array_equal(np.asarray(nib.load(str(out / f"{name}_saliency.nii.gz")).dataobj), normal_map)
        capture = pydicom.dcmread(out / f"{name}_overlay.dcm")  # a Secondary Capture like any other
        assert capture.StudyInstanceUID == STUDY_UID
        np.testing.assert_array_equal(capture.pixel_array, pydicom.dcmread(out / "normal_overlay.dcm").pixel_array)
        # and the reader's image is the normal file's, to the last bit
        np.testing.assert_array_equal(
            MedicalImageReader().read_file(setup["inputs"] / name)[0],
            MedicalImageReader().read_file(setup["inputs"] / "normal.dcm")[0],
        )


def test_multiframe_refused_by_default(setup):
    out, _ = setup["refuse"]
    errors = by_name(read_csv(out / "errors.csv"))
    assert sorted(errors) == ["multi.dcm", "volume.nii.gz"]
    assert "multi-frame DICOM (3 frames)" in errors["multi.dcm"]["reason"]
    assert "NIfTI volume with 2 slices" in errors["volume.nii.gz"]["reason"]
    assert "multi.dcm" not in by_name(read_csv(out / "predictions.csv"))
    assert not list(out.glob("multi*"))


def test_multiframe_per_frame_one_row_per_frame_matching_the_network_on_each_frame(setup, tmp_path):
    out, _ = setup["per_frame"]
    rows = read_csv(out / "predictions.csv")
    frames = [r for r in rows if Path(r["file"]).name == "multi.dcm"]
    assert [r["frame"] for r in frames] == ["0", "1", "2"] and {r["outputs"] for r in frames} == {"written"}
    assert {r["frame"] for r in rows if Path(r["file"]).name not in ("multi.dcm", "volume.nii.gz")} == {""}
    assert read_csv(out / "errors.csv") == []
    # oracle: each frame saved as a single-frame file of its own, preprocessed and run through the network here
    stack = pixels(3, frames=3)
    preprocessing = setup["parser"].get_parsed_content("preprocessing")
    for i, row in enumerate(frames):
        single = tmp_path / f"frame{i}.dcm"
        dicom(stack[i]).save_as(single, enforce_file_format=True)
        image = preprocessing({"image": str(single)})["image"]
        with torch.no_grad():
            logits, mask = setup["network"].explain(image.as_tensor()[None])
        expected = torch.softmax(logits, dim=1)[0].numpy()
        np.testing.assert_allclose([float(row[c]) for c in CLASSES], expected, atol=1e-6)
        for suffix in ("_overlay.png", "_saliency.nii.gz", "_overlay.dcm"):
            assert (out / f"multi_f{i:03d}{suffix}").is_file()
        saved = np.asarray(nib.load(str(out / f"multi_f{i:03d}_saliency.nii.gz")).dataobj).T
        resized = torch.nn.functional.interpolate(mask, size=(ROWS, COLS), mode="bilinear", align_corners=False)
        np.testing.assert_allclose(saved, resized[0, 0].clamp(0, 1).numpy(), atol=1e-5)
        capture = pydicom.dcmread(out / f"multi_f{i:03d}_overlay.dcm")
        assert capture.SourceImageSequence[0].ReferencedFrameNumber == i + 1
        assert capture.InstanceNumber == i + 1
    assert len({pydicom.dcmread(p).SOPInstanceUID for p in out.glob("multi_f*_overlay.dcm")}) == 3
    # resuming knows frames apart: every frame is done, and a run cut after frame 1 redoes frame 2 only
    assert {f"{setup['inputs'] / 'multi.dcm'}#frame={i}" for i in range(3)} <= finished_sources(out)
    # a NIfTI volume slice by slice, each map on its slice of the volume's grid
    slices = [r for r in rows if Path(r["file"]).name == "volume.nii.gz"]
    assert [(r["frame"], r["outputs"]) for r in slices] == [("0", "written"), ("1", "written")]
    for k in (0, 1):
        saved = nib.load(str(out / f"volume_f{k:03d}_saliency.nii.gz"))
        assert saved.shape == (COLS, ROWS)
        np.testing.assert_allclose(saved.affine[:3, 3], (AFFINE @ [0, 0, k, 1])[:3])
    items = expand_frames([{"image": str(setup["inputs"] / "multi.dcm")}], "per_frame")
    assert pending_items(items, out) == []
    cut = tmp_path / "cut"
    cut.mkdir()
    lines = (out / "predictions.csv").read_text().splitlines(keepends=True)
    (cut / "predictions.csv").write_text(
        "".join(line for line in lines if "multi.dcm" not in line or ",2,written" not in line)
    )
    assert pending_items(items, cut) == [{"image": str(setup["inputs"] / "multi.dcm"), "frame": 2}]


def test_per_frame_listing_and_config_check(setup):
    items = [{"image": str(setup["inputs"] / n)} for n in ("multi.dcm", "normal.dcm", "implicit")]
    assert expand_frames(items) == items
    expanded = expand_frames(items, "per_frame")
    assert [(Path(i["image"]).name, i.get("frame")) for i in expanded] == [
        ("multi.dcm", 0),
        ("multi.dcm", 1),
        ("multi.dcm", 2),
        ("normal.dcm", None),
        ("implicit", None),
    ]
    with pytest.raises(ValueError, match="set frame to null"):
        expand_frames(items, "per_frame", frame=1)
    with pytest.raises(ValueError, match="multiframe must be one of"):
        expand_frames(items, "each")
    config_file = str(ROOT / "configs" / "inference.yaml")
    assert find_problems(config_file, {"multiframe": "per_frame"}) == []
    assert find_problems(config_file, {"multiframe": "each"}) == [
        "multiframe: expected one of refuse, per_frame, got 'each' (str)"
    ]


def _write_batch(writer: SaliencyWriter, sources: list[Path]) -> None:
    engine = SimpleNamespace(state=SimpleNamespace())
    engine.state.batch = [{"source": str(s), "valid": torch.tensor(True), "error": ""} for s in sources]
    engine.state.output = [
        {"pred": torch.tensor([0.1, 0.2, 0.3, 0.3, 0.1]), "saliency": torch.rand(1, 8, 8)} for _ in sources
    ]
    writer(engine)


@pytest.mark.parametrize("how", ["capture raises", "target is a folder"])
def test_a_failed_capture_leaves_none_of_the_files_outputs_and_the_others_whole(setup, tmp_path, monkeypatch, how):
    inputs = setup["inputs"]
    out = tmp_path / "out"
    writer = SaliencyWriter(out, class_names=CLASSES)
    writer.started(SimpleNamespace(state=SimpleNamespace()))
    if how == "capture raises":
        build = writer.secondary_capture

        def failing(source: str, *args, **kwargs):
            capture = build(source, *args, **kwargs)
            if Path(source).name == "archive.dcm":  # fails while written, after the PNG and the map were

                def save_as(*_: object, **__: object) -> None:
                    raise OSError("disk full")

                capture.save_as = save_as
            return capture

        monkeypatch.setattr(writer, "secondary_capture", failing)
        reason = "OSError: disk full"
    else:
        (out / "archive_overlay.dcm").mkdir()  # the capture cannot be renamed into place, the others could
        reason = "IsADirectoryError"
    _write_batch(writer, [inputs / "archive.dcm", inputs / "normal.dcm"])
    assert sorted(p.name for p in out.glob("archive*") if p.is_file()) == []
    assert not list(out.glob(".part-*"))
    assert sorted(p.name for p in out.glob("normal*")) == [
        "normal_overlay.dcm",
        "normal_overlay.png",
        "normal_saliency.nii.gz",
    ]
    predictions = by_name(read_csv(out / "predictions.csv"))
    assert predictions["normal.dcm"]["outputs"] == "written"
    outputs = predictions["archive.dcm"]["outputs"]
    assert outputs.startswith("none written: ") and reason in outputs
    errors = read_csv(out / "errors.csv")
    assert [Path(r["file"]).name for r in errors] == ["archive.dcm"]
    assert errors[0]["reason"].startswith("writing outputs failed, none written: ") and reason in errors[0]["reason"]


def test_an_output_folder_of_an_earlier_version_resumes_with_the_new_columns(tmp_path):
    """predictions.csv and errors.csv without the frame and outputs columns (bundle 0.8.x) get them, empty (not
    known), and the run appends to them; a row a kill cut short is dropped as before."""
    out = tmp_path / "out"
    out.mkdir()
    old = f"{tmp_path / 'a.png'},0.2,0.8,y\n"
    (out / "predictions.csv").write_text("file,x,y,predicted\n" + old + f"{tmp_path / 'c.png'},0.5")
    (out / "errors.csv").write_text(f"file,reason\n{tmp_path / 'b.png'},cannot decode image\n")
    writer = SaliencyWriter(out, class_names=["x", "y"])
    writer.started(SimpleNamespace(state=SimpleNamespace()))
    assert read_csv(out / "predictions.csv") == [
        {"file": str(tmp_path / "a.png"), "x": "0.2", "y": "0.8", "predicted": "y", "frame": "", "outputs": ""}
    ]
    assert read_csv(out / "errors.csv") == [
        {"file": str(tmp_path / "b.png"), "reason": "cannot decode image", "frame": ""}
    ]
    assert finished_sources(out) == {str(tmp_path / "a.png"), str(tmp_path / "b.png")}
