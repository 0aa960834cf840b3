"""Inference config end to end: a folder of PNG/JPEG/DICOM/NIfTI plus broken files -> predictions, saliency, errors."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from bundle.data.inference import inference_items, list_input_files, resolve_class_names
from bundle.data.readers import ImageReadError, MedicalImageReader
from bundle.handlers.writers import SaliencyWriter, blend_overlay, jet, source_stem
from bundle.networks import Explainer, MedTex, Student
from tests.forked import run_python

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["none", "mild", "moderate", "severe", "proliferative"]
IMAGE_SIZE = 32
# a tiny explainer + student, set the same way on the command line and in the reference network built here
SMALL = {
    "student#init_features": 8,
    "student#growth_rate": 4,
    "student#block_config": [1, 1, 1, 1],
    "explainer#features": [4, 4, 4, 8, 8, 4],
    "image_size": IMAGE_SIZE,
}
# patient data in the DICOM inputs, which no log, file name or CSV may carry
PATIENT = ("P-0042", "Doe", "Jane", "19650412", "ACC-778")
BIRTH_DATE = PATIENT[3]
STUDY_UID = generate_uid()
SERIES_UID = generate_uid()
# name -> (rows, cols) of the readable inputs
READABLE = {
    "rgb.png": (40, 56),
    "gray16.png": (48, 36),
    "sub/rgb.jpg": (30, 50),  # same stem as rgb.png: its outputs are named rgb_1_*
    "ct.dcm": (64, 40),
    "series/IM0001": (36, 44),  # DICOM without a suffix
    "slice.nii.gz": (36, 28),  # NIfTI data (x=28, y=36)
}
BROKEN = {"truncated.png": "truncated", "empty.dcm": "empty", "notes.png": "cannot decode"}
STEMS = {
    "rgb.png": "rgb",
    "gray16.png": "gray16",
    "sub/rgb.jpg": "rgb_1",
    "ct.dcm": "ct",
    "series/IM0001": "IM0001",
    "slice.nii.gz": "slice",
}


def write_dicom(path: Path, rows: int, cols: int, instance: int) -> None:
    ramp = np.add.outer(np.arange(rows) * 40, np.arange(cols) * 25).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY_UID, SERIES_UID
    ds.PatientID, ds.PatientName, ds.PatientAge = "P-0042", "Doe^Jane", "061Y"
    ds.PatientBirthDate, ds.AccessionNumber, ds.InstitutionName = BIRTH_DATE, "ACC-778", "St Elsewhere"
    ds.Modality, ds.InstanceNumber, ds.PixelSpacing = "CT", instance, [0.5, 0.5]
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = ramp.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def make_inputs(folder: Path) -> None:
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    smooth = np.add.outer(np.linspace(0, 1, 40), np.linspace(0, 1, 56))
    rgb = np.stack([smooth, 1 - smooth / 2, rng.random((40, 56))], axis=-1) * 127
    Image.fromarray(rgb.astype(np.uint8)).save(folder / "rgb.png")
    Image.fromarray((rng.random((48, 36)) * 4000).astype(np.uint16)).save(folder / "gray16.png")
    Image.fromarray((rng.random((30, 50, 3)) * 255).astype(np.uint8)).save(folder / "sub/rgb.jpg")
    write_dicom(folder / "ct.dcm", 64, 40, 1)
    write_dicom(folder / "series/IM0001", 36, 44, 2)
    affine = np.diag([0.8, 0.7, 1.0, 1.0])
    affine[:3, 3] = [10.0, -5.0, 2.0]
    nib.save(nib.Nifti1Image(rng.random((28, 36)).astype(np.float32), affine), str(folder / "slice.nii.gz"))
    noise = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8))
    noise.save(folder / "full.png")
    data = (folder / "full.png").read_bytes()
    (folder / "full.png").unlink()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "notes.png").write_text("not an image\n")
    # never listed: hidden files, spreadsheets, binary files without an image suffix or magic number
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / ".hidden.png")
    (folder / "labels.csv").write_text("file,label\nrgb.png,1\n")
    (folder / "series" / "blob").write_bytes(bytes(range(256)) * 4)


def reference_parser(datalist: Path) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.yaml"))
    parser.update({**SMALL, "datalist": str(datalist), "device": "$torch.device('cpu')", "amp": False})
    return parser


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work = tmp_path_factory.mktemp("inference")
    inputs, out, models = work / "in", work / "out", work / "models"
    make_inputs(inputs)
    datalist = work / "datalist.json"
    datalist.write_text(json.dumps({"name": "t", "task": "multiclass", "classes": CLASSES, "test": []}))
    parser = reference_parser(datalist)
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def").eval()
    with torch.no_grad():  # a random explainer whose mask spans [0, 1], so that overlays show where it is high
        network.explainer.body.final_conv.bias.zero_()
        network.explainer.body.final_conv.weight.mul_(40.0)
    models.mkdir()
    torch.save(network.state_dict(), models / "model.pt")
    log = run_inference(inputs, out, models, datalist, batch_size=4)
    return {"inputs": inputs, "out": out, "network": network, "parser": parser, "log": log}


def run_inference(inputs: Path, out: Path, models: Path, datalist: Path, batch_size: int, *extra: str) -> str:
    """configs/inference.yaml through the bundle CLI with the tiny networks of SMALL; its log."""
    args = ["--input_dir", str(inputs), "--output_dir", str(out), "--ckpt_dir", str(models), *extra]
    args += ["--datalist", str(datalist)]  # only for the class names: input_dir replaces its test list
    args += ["--batch_size", str(batch_size), "--num_workers", "0", "--device", "cpu", "--amp", "False"]
    for key, value in SMALL.items():
        args += [f"--{key}", str(value).replace(" ", "")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = ["-m", "monai.bundle", "run", "inference", "--config_file", "configs/inference.yaml"]
    result = run_python(command + args, cwd=ROOT, env=env, timeout=300)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout + result.stderr


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def reference(run: dict, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and mask of the network on the preprocessed image, computed here."""
    image = run["parser"].get_parsed_content("preprocessing")({"image": str(run["inputs"] / name)})["image"]
    with torch.no_grad():
        logits, mask = run["network"].explain(image.as_tensor()[None])
    return torch.softmax(logits, dim=1)[0], mask


def test_listing_skips_hidden_and_non_images_and_finds_dicom_without_suffix(tmp_path):
    make_inputs(tmp_path / "in")
    listed = [Path(item["image"]).relative_to(tmp_path / "in").as_posix() for item in list_input_files(tmp_path / "in")]
    assert listed == sorted(list(READABLE) + list(BROKEN))


def test_predictions_one_row_per_readable_file_matching_the_network(run):
    rows = read_csv(run["out"] / "predictions.csv")
    assert list(rows[0]) == ["file", *CLASSES, "predicted", "frame", "outputs"]
    assert {(r["frame"], r["outputs"]) for r in rows} == {("", "written")}
    assert sorted(Path(r["file"]).relative_to(run["inputs"]).as_posix() for r in rows) == sorted(READABLE)
    for row in rows:
        p = np.array([float(row[c]) for c in CLASSES])
        assert p.sum() == pytest.approx(1.0, abs=1e-4)
        assert row["predicted"] == CLASSES[int(np.argmax(p))]
        expected, _ = reference(run, Path(row["file"]).relative_to(run["inputs"]).as_posix())
        np.testing.assert_allclose(p, expected.numpy(), atol=1e-4)
    assert "6 image(s) predicted, 3 error(s)" in run["log"]


def test_compiled_explain_gives_the_same_predictions(run, tmp_path):
    # torch.compile's graph capture (TorchDynamo) of explain on the loader's MetaTensor batches, with the "eager"
    # backend: what the option wires up, without minutes of inductor code generation (its speed: the benchmark)
    out = tmp_path / "out"
    models, datalist = run["out"].parent / "models", run["out"].parent / "datalist.json"
    extra = ["--compile", "True", "--evaluator#compile_kwargs", "{'backend':'eager'}"]
    log = run_inference(run["inputs"], out, models, datalist, 4, *extra)
    assert "Traceback" not in log
    compiled = {r["file"]: r for r in read_csv(out / "predictions.csv")}
    eager = {r["file"]: r for r in read_csv(run["out"] / "predictions.csv")}
    assert compiled.keys() == eager.keys() and len(eager) == len(READABLE)
    for name, row in eager.items():
        assert [float(compiled[name][c]) for c in CLASSES] == pytest.approx([float(row[c]) for c in CLASSES], abs=1e-5)


def test_explaining_evaluator_compiles_explain_only_when_asked():
    from bundle.engines.evaluator import ExplainingEvaluator

    network = MedTex(Student(3, 5, 8, 4, (1, 1, 1, 1)), Explainer(3, features=(4, 4, 4, 8, 8, 4))).eval()
    plain = ExplainingEvaluator("cpu", [], network)
    assert plain.forward == network.explain and not plain.compiled
    compiled = ExplainingEvaluator("cpu", [], network, compile=True, compile_kwargs={"backend": "eager"})
    assert compiled.compiled and compiled.forward != network.explain
    image = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        for got, expected in zip(compiled.forward(image), network.explain(image)):
            assert torch.allclose(got, expected, atol=1e-6)


def test_errors_list_exactly_the_broken_files_with_reasons(run):
    rows = read_csv(run["out"] / "errors.csv")
    reasons = {Path(r["file"]).name: r["reason"] for r in rows}
    assert len(rows) == 3 and set(reasons) == set(BROKEN)
    for name, word in BROKEN.items():  # the reader's own reason, without the MONAI transform wrapping
        with pytest.raises(ImageReadError) as error:
            MedicalImageReader().read_file(run["inputs"] / name)
        assert reasons[name] == error.value.reason and word in reasons[name].lower(), reasons[name]


@pytest.mark.parametrize("name", sorted(READABLE))
def test_saliency_map_and_overlay_at_source_resolution(run, name):
    rows, cols = READABLE[name]
    stem = STEMS[name]
    _, mask = reference(run, name)
    expected = F.interpolate(mask, size=(rows, cols), mode="bilinear", align_corners=False)[0, 0].numpy()
    saved = nib.load(str(run["out"] / f"{stem}_saliency.nii.gz"))
    assert saved.shape == (cols, rows)  # NIfTI is (x, y): transposed back from the readers' (rows, cols)
    data = saved.get_fdata().T
    assert data.min() >= 0 and data.max() <= 1
    np.testing.assert_allclose(data, expected, atol=1e-4)
    if name.endswith(".nii.gz"):
        np.testing.assert_allclose(saved.affine, nib.load(str(run["inputs"] / name)).affine)

    source = MedicalImageReader().read_file(run["inputs"] / name)[0]
    source = np.repeat(source[..., None], 3, axis=-1) if source.ndim == 2 else source
    overlay = np.asarray(Image.open(run["out"] / f"{stem}_overlay.png").convert("RGB"), dtype=np.float64) / 255
    assert overlay.shape == (rows, cols, 3)
    difference = np.abs(overlay - source).mean(axis=-1)
    assert (expected > 0.6).any() and (expected < 0.4).any(), "the test network's mask should span [0, 1]"
    high, low = expected > 0.6, expected < 0.1
    assert difference[high].mean() > 0.1
    if low.any():  # where the explainer hides the image the source shows through
        assert difference[low].mean() < difference[high].mean() / 3


@pytest.mark.parametrize("name", ["ct.dcm", "series/IM0001"])
def test_dicom_sources_get_a_secondary_capture_in_their_study(run, name):
    source = pydicom.dcmread(run["inputs"] / name)
    capture = pydicom.dcmread(run["out"] / f"{STEMS[name]}_overlay.dcm")
    assert capture.StudyInstanceUID == source.StudyInstanceUID
    assert capture.PatientID == source.PatientID and capture.PatientName == source.PatientName
    assert capture.PatientAge == source.PatientAge  # the rest of group 0x0010 is copied too
    assert capture.SeriesInstanceUID != source.SeriesInstanceUID
    assert capture.SOPInstanceUID != source.SOPInstanceUID
    assert capture.SOPClassUID == SecondaryCaptureImageStorage
    assert capture.PhotometricInterpretation == "RGB" and capture.SamplesPerPixel == 3 and capture.BitsAllocated == 8
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    overlay = np.asarray(Image.open(run["out"] / f"{STEMS[name]}_overlay.png").convert("RGB"))
    np.testing.assert_array_equal(capture.pixel_array, overlay)


def test_one_new_series_for_the_source_series(run):
    captures = [pydicom.dcmread(run["out"] / f"{s}_overlay.dcm") for s in ("ct", "IM0001")]
    assert captures[0].SeriesInstanceUID == captures[1].SeriesInstanceUID
    assert sorted(c.InstanceNumber for c in captures) == [1, 2]
    assert not (run["out"] / "rgb_overlay.dcm").exists()


def test_a_failed_write_is_reported_and_the_rest_still_written(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.full((20, 30), 128, np.uint8)).save(good)
    writer = SaliencyWriter(tmp_path / "out", class_names=["a", "b", "c"], task="multilabel")
    engine = SimpleNamespace(state=SimpleNamespace())
    writer.started(engine)
    mask = torch.rand(1, 8, 8)
    engine.state.batch = [
        {"source": str(tmp_path / "gone.png"), "valid": torch.tensor(True), "error": ""},  # deleted after loading
        {"source": str(good), "valid": torch.tensor(True), "error": ""},
        {"source": str(tmp_path / "bad.png"), "valid": torch.tensor(False), "error": "cannot decode image"},
    ]
    engine.state.output = [{"pred": torch.tensor([0.9, 0.2, 0.5]), "saliency": mask} for _ in range(3)]
    writer(engine)
    writer.completed(engine)
    predictions = read_csv(tmp_path / "out" / "predictions.csv")
    assert [Path(r["file"]).name for r in predictions] == ["gone.png", "good.png"]
    assert predictions[1]["predicted"] == "a;c"  # multilabel: every class from the 0.5 threshold
    errors = {Path(r["file"]).name: r["reason"] for r in read_csv(tmp_path / "out" / "errors.csv")}
    assert errors["bad.png"] == "cannot decode image"
    assert errors["gone.png"].startswith("writing outputs failed, none written: ImageReadError: ")
    assert predictions[0]["outputs"].startswith("none written: ImageReadError: ")
    assert predictions[1]["outputs"] == "written"
    assert Image.open(tmp_path / "out" / "good_overlay.png").size == (30, 20)
    assert (writer.n_predicted, writer.n_errors) == (2, 2)


def test_inputs_and_class_names_from_the_datalist(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    datalist = tmp_path / "datalist.json"
    datalist.write_text('{"task": "multiclass", "classes": ["x", "y"], "test": [{"image": "a.png", "label": 1}]}')
    assert inference_items(None, datalist) == [{"image": str(tmp_path / "a.png"), "label": 1}]
    with pytest.raises(ValueError, match="no images"):
        inference_items(None, datalist, key="validation")
    assert resolve_class_names(datalist, 2) == ["x", "y"]
    assert resolve_class_names(datalist, 3) == ["0", "1", "2"]  # the datalist is for another task
    assert resolve_class_names(tmp_path / "missing.json", 2) == ["0", "1"]


def test_no_patient_data_in_logs_file_names_or_tables(run):
    outputs = [p.name for p in run["out"].rglob("*")]
    tables = (run["out"] / "predictions.csv").read_text() + (run["out"] / "errors.csv").read_text()
    for value in PATIENT:
        assert value not in run["log"] and value not in tables and not any(value in name for name in outputs)


def test_deidentified_capture_keeps_the_study_but_not_the_patient(run, tmp_path):
    source = run["inputs"] / "ct.dcm"
    writer = SaliencyWriter(tmp_path, class_names=CLASSES, deidentify=True)
    writer.write_secondary_capture(str(source), np.zeros((64, 40, 3), np.uint8), tmp_path / "ct_overlay.dcm")
    capture = pydicom.dcmread(tmp_path / "ct_overlay.dcm")
    reference = pydicom.dcmread(source)
    assert capture.StudyInstanceUID == reference.StudyInstanceUID  # still sorts into the source study
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == reference.SOPInstanceUID
    assert capture.PatientIdentityRemoved == "YES" and "Retain UIDs" in capture.DeidentificationMethod
    assert capture.PatientName == "" and capture.PatientID == "" and "PatientAge" not in capture
    raw = (tmp_path / "ct_overlay.dcm").read_bytes()
    assert not any(value.encode() in raw for value in PATIENT + ("St Elsewhere",))
    # without the option the capture is the patient's, as a PACS expects
    assert pydicom.dcmread(run["out"] / "ct_overlay.dcm").PatientID == "P-0042"


def test_secondary_captures_join_the_source_study_one_series_per_source_series(tmp_path):
    """In this process (a mutation run sees it): the study kept, one derived series per source series, the source's
    instance numbers (else counted per series), the same UIDs when a run is repeated into the same folder, a source
    without the DICOM preamble read as the reader reads it, a source without a study refused."""
    write_dicom(tmp_path / "a.dcm", 64, 40, 7)
    write_dicom(tmp_path / "b.dcm", 64, 40, 3)
    other_series = generate_uid()
    for name in ("c", "e"):  # another series, without instance numbers, spacing or study description
        other = pydicom.dcmread(tmp_path / "a.dcm")
        other.SeriesInstanceUID, other.SOPInstanceUID = other_series, generate_uid()
        del other.InstanceNumber, other.PixelSpacing
        other.save_as(tmp_path / f"{name}.dcm")
    described = pydicom.dcmread(tmp_path / "a.dcm")
    described.StudyDescription, described.PatientOrientation = "chest CT", ["A", "F"]
    described.save_as(tmp_path / "a.dcm")
    raw = pydicom.dcmread(tmp_path / "b.dcm")
    raw.SOPInstanceUID = generate_uid()
    raw.preamble = None  # a bare data set, as some archives export: read only with force
    raw.save_as(tmp_path / "f.dcm", enforce_file_format=False)
    assert (tmp_path / "f.dcm").read_bytes()[128:132] != b"DICM"
    no_study = pydicom.dcmread(tmp_path / "a.dcm")
    del no_study.StudyInstanceUID
    no_study.save_as(tmp_path / "d.dcm")
    overlay = np.zeros((64, 40, 3), np.uint8)

    def captures(out: Path) -> list:
        writer = SaliencyWriter(out, class_names=CLASSES)
        out.mkdir()
        for name in ("a", "b", "c", "e", "f"):
            writer.write_secondary_capture(str(tmp_path / f"{name}.dcm"), overlay, out / name)
        with pytest.raises(ValueError, match="no StudyInstanceUID"):
            writer.write_secondary_capture(str(tmp_path / "d.dcm"), overlay, out / "d")
        return [pydicom.dcmread(out / name) for name in ("a", "b", "c", "e", "f")]

    a, b, c, e, f = captures(tmp_path / "out")
    assert {x.StudyInstanceUID for x in (a, b, c, e, f)} == {STUDY_UID}
    assert a.SeriesInstanceUID == b.SeriesInstanceUID == f.SeriesInstanceUID != SERIES_UID  # beside the source's
    assert c.SeriesInstanceUID == e.SeriesInstanceUID not in (a.SeriesInstanceUID, other_series)
    assert [x.InstanceNumber for x in (a, b, c, e, f)] == [7, 3, 1, 2, 3]  # the source's, else counted per series
    assert len({x.SOPInstanceUID for x in (a, b, c, e, f)}) == 5
    assert a.PatientID == "P-0042" and a.PixelSpacing == [0.5, 0.5] and "PixelSpacing" not in e
    # the patient module copied (group 0x0010), nothing else of the source's header; the study description kept
    assert (a.PatientName, a.PatientBirthDate, a.PatientAge) == ("Doe^Jane", BIRTH_DATE, "061Y")
    assert "InstitutionName" not in a and "AccessionNumber" in a  # highdicom keeps the accession (same study)
    assert a.StudyDescription == "chest CT" and "StudyDescription" not in c
    assert a.PatientOrientation == ["A", "F"] and not c.get("PatientOrientation")
    assert (a.SeriesDescription, a.Manufacturer, a.SeriesNumber) == (
        "MED-TEX saliency overlay",
        "MED-TEX MONAI bundle",
        9001,
    )
    assert a.DerivationDescription == "explainer saliency mask (jet colormap) blended over the source image"
    source = pydicom.dcmread(tmp_path / "a.dcm")
    reference = a.SourceImageSequence[0]
    assert (reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID) == (
        CTImageStorage,
        source.SOPInstanceUID,
    )
    assert (tmp_path / "out" / "a").read_bytes()[128:132] == b"DICM"  # a DICOM file with its preamble and meta
    assert a.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    again = captures(tmp_path / "out_again")  # another folder: other UIDs; the same folder: the same UIDs
    assert again[0].SeriesInstanceUID != a.SeriesInstanceUID
    (tmp_path / "out" / "a").unlink()
    writer = SaliencyWriter(tmp_path / "out", class_names=CLASSES)
    writer.write_secondary_capture(str(tmp_path / "a.dcm"), overlay, tmp_path / "out" / "a")
    repeated = pydicom.dcmread(tmp_path / "out" / "a")
    assert (repeated.SeriesInstanceUID, repeated.SOPInstanceUID) == (a.SeriesInstanceUID, a.SOPInstanceUID)
    moved = tmp_path / "moved" / "a_copy.dcm"  # the same source instance read from elsewhere: the same capture UIDs
    moved.parent.mkdir()
    moved.write_bytes((tmp_path / "a.dcm").read_bytes())
    writer.write_secondary_capture(str(moved), overlay, tmp_path / "out" / "a_copy")
    assert pydicom.dcmread(tmp_path / "out" / "a_copy").SOPInstanceUID == a.SOPInstanceUID


def test_overlay_colours_and_blending_worked_out_by_hand():
    # jet: 0 dark blue, 0.25 blue-cyan, 0.5 green, 1 dark red; values outside [0, 1] take the end colours
    np.testing.assert_allclose(
        jet(np.array([0.0, 0.25, 0.5, 1.0, -1.0, 2.0])),
        [[0, 0, 0.5], [0, 0.5, 1], [0.5, 1, 0.5], [0.5, 0, 0], [0, 0, 0.5], [0.5, 0, 0]],
    )
    # default alpha 0.6: gray 0.2 under mask 0 stays gray; gray 1.5 (clipped to 1) under mask 0.5 takes 0.3 of
    # green-ish jet(0.5); gray 0.1 under mask 2 (clipped to 1) takes 0.6 of jet(1); gray -0.3 under mask -1 is black
    gray = np.array([[0.2, 1.5, 0.1, -0.3]])
    mask = np.array([[0.0, 0.5, 2.0, -1.0]])
    expected = [[[51, 51, 51], [217, 255, 217], [87, 10, 10], [0, 0, 0]]]  # 0.7 + 0.15 = 0.85 -> 216.75 -> 217
    np.testing.assert_array_equal(blend_overlay(gray, mask), expected)
    rgb = np.array([[[0.2, 0.4, 0.6]]])  # a colour image is blended as it is
    np.testing.assert_array_equal(blend_overlay(rgb, np.array([[0.0]])), [[[51, 102, 153]]])
    np.testing.assert_array_equal(blend_overlay(rgb, np.array([[1.0]]), alpha=1.0), [[[128, 0, 0]]])
    assert [source_stem(p) for p in ("a/scan.nii.gz", "IM0001", "1.2.840.10008.dcm", "x.PNG")] == [
        "scan",
        "IM0001",
        "1.2.840.10008",
        "x",
    ]


def test_a_resumed_writer_keeps_the_rows_and_names_of_the_killed_run(tmp_path):
    out = tmp_path / "deep" / "er" / "out"  # made with its parents
    images = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / folder / "rgb.png")
        images.append(str(tmp_path / folder / "rgb.png"))

    def write(writer: SaliencyWriter, source: str) -> None:
        engine = SimpleNamespace(state=SimpleNamespace())
        engine.state.batch = [{"source": source, "valid": torch.tensor(True), "error": ""}]
        engine.state.output = [{"pred": torch.tensor([0.2, 0.8]), "saliency": torch.rand(1, 8, 8)}]
        writer(engine)

    first = SaliencyWriter(out, class_names=["x", "y"])
    first.started(SimpleNamespace(state=SimpleNamespace()))
    write(first, images[0])
    with open(out / "predictions.csv", "a") as f:
        f.write(f"{tmp_path / 'c.png'},0.5")  # a row a kill cut short
    second = SaliencyWriter(out, class_names=["x", "y"])
    second.started(SimpleNamespace(state=SimpleNamespace()))
    write(second, images[1])
    rows = read_csv(out / "predictions.csv")
    assert [r["file"] for r in rows] == images and [r["predicted"] for r in rows] == ["y", "y"]
    assert (out / "rgb_overlay.png").is_file() and (out / "rgb_1_overlay.png").is_file()  # as in one run
    before = (out / "predictions.csv").read_text()
    SaliencyWriter(out, class_names=["x", "y"]).started(SimpleNamespace(state=SimpleNamespace()))
    assert (out / "predictions.csv").read_text() == before  # nothing cut short: every row kept
    with pytest.raises(ValueError, match="other columns"):
        SaliencyWriter(out, class_names=["x", "z"]).started(SimpleNamespace(state=SimpleNamespace()))
    (out / "predictions.csv").write_text("")  # emptied: not the columns of this run either
    with pytest.raises(ValueError, match=r"other columns \(\)"):
        SaliencyWriter(out, class_names=["x", "y"]).started(SimpleNamespace(state=SimpleNamespace()))


def test_writer_maps_at_source_resolution_routing_and_counts(tmp_path):
    """In this process: each map is the mask resized (bilinear, corners not aligned) to the source's pixel grid and
    clipped to [0, 1]; NIfTI sources keep their affine, DICOM sources get a capture; rows, errors and counts."""
    from monai.data import MetaTensor

    Image.fromarray(np.full((8, 6), 100, np.uint8)).save(tmp_path / "a.png")
    write_dicom(tmp_path / "b.dcm", 10, 12, 1)
    affine = np.diag([2.0, 3.0, 1.0, 1.0])
    affine[:3, 3] = [5.0, -4.0, 7.0]
    nib.save(nib.Nifti1Image(np.ones((4, 6), np.float32), affine), str(tmp_path / "c.nii.gz"))  # x=4, y=6
    mask = torch.tensor([[[-1.0, 1.0], [0.5, 2.0]]])  # out of [0, 1] on purpose: the written map is clipped

    def expected(rows: int, cols: int) -> np.ndarray:
        resized = F.interpolate(mask[None], size=(rows, cols), mode="bilinear", align_corners=False)[0, 0]
        return resized.clamp(0, 1).numpy()

    writer = SaliencyWriter(tmp_path / "out", class_names=["a", "b", "c"])
    writer.started(SimpleNamespace(state=SimpleNamespace()))
    engine = SimpleNamespace(state=SimpleNamespace())
    engine.state.batch = [
        {"source": str(tmp_path / "x.png"), "valid": torch.tensor(False), "error": ""},  # first: the rest go on
        {"source": str(tmp_path / "a.png")},  # no "valid": valid
        {"source": str(tmp_path / "b.dcm"), "valid": torch.tensor(True)},
        {"image": MetaTensor(torch.zeros(1, 2, 2), meta={"filename_or_obj": str(tmp_path / "c.nii.gz")})},
    ]
    probabilities = torch.tensor([0.4, 0.35, 0.25])  # multi-class: the most probable, though under 0.5
    engine.state.output = [{"pred": probabilities, "saliency": mask} for _ in range(4)]
    writer(engine)
    rows = read_csv(tmp_path / "out" / "predictions.csv")
    assert [Path(r["file"]).name for r in rows] == ["a.png", "b.dcm", "c.nii.gz"]
    assert [r["predicted"] for r in rows] == ["a", "a", "a"] and rows[0]["b"] == "0.350000"
    assert read_csv(tmp_path / "out" / "errors.csv") == [
        {"file": str(tmp_path / "x.png"), "reason": "unreadable", "frame": ""}
    ]
    for stem, (rows_, cols), source_affine in (
        ("a", (8, 6), np.eye(4)),
        ("b", (10, 12), np.eye(4)),
        ("c", (6, 4), affine),
    ):
        saliency = nib.load(str(tmp_path / "out" / f"{stem}_saliency.nii.gz"))
        np.testing.assert_allclose(np.asarray(saliency.dataobj).T, expected(rows_, cols), atol=1e-6)
        np.testing.assert_allclose(saliency.affine, source_affine)
        image, _ = MedicalImageReader().read_file(str(next(tmp_path.glob(f"{stem}.*"))))
        overlay = np.asarray(Image.open(tmp_path / "out" / f"{stem}_overlay.png"))
        np.testing.assert_array_equal(overlay, blend_overlay(image, expected(rows_, cols), 0.6))
    assert sorted(p.name for p in (tmp_path / "out").glob("*.dcm")) == ["b_overlay.dcm"]
    assert (writer.n_predicted, writer.n_errors, writer.n_overlays, writer.n_dicom) == (3, 1, 3, 1)
    writer.write_dicom = False
    engine.state.batch, engine.state.output = engine.state.batch[2:3], engine.state.output[:1]
    writer(engine)  # counts add up over batches; no capture when write_dicom is off
    assert (writer.n_predicted, writer.n_errors, writer.n_overlays, writer.n_dicom) == (4, 1, 4, 1)
    assert not (tmp_path / "out" / "b_1_overlay.dcm").exists() and (tmp_path / "out" / "b_1_overlay.png").is_file()
    engine.state.batch = {"image": torch.zeros(1, 1, 2, 2)}
    with pytest.raises(ValueError, match="decollated"):
        writer(engine)
