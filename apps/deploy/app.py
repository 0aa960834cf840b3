"""MONAI Deploy application: the MED-TEX bundle's prediction and saliency overlay for a DICOM series or image folder.

    python apps/deploy/app.py -i INPUT_DIR -o OUTPUT_DIR [--model models/model.pt] [--config configs/datasets/x.yaml]

DICOM input (the SDK's ``DICOMDataLoaderOperator`` and ``DICOMSeriesSelectorOperator``; a classification input is
a 2-D image, so a series of one instance; every instance of the selected series is classified) writes into
OUTPUT_DIR, in the source study: the prediction as a DICOM Basic Text SR (the SDK's ``DICOMTextSRWriterOperator``)
and the saliency overlay as an RGB Secondary Capture in a new series (the bundle's own
``SaliencyWriter.write_secondary_capture``, with its source-derived UIDs). PNG/JPEG/TIFF input folders get
``<stem>_overlay.png``. Both get ``predictions.json`` (class names, scores formatted as the bundle's
``predictions.csv`` writes them, the predicted class) and ``<stem>_saliency.nii.gz``.

The network runs through ``MedTexBundleInferenceOperator``, a subclass of the SDK's
``MonaiBundleInferenceOperator`` that keeps the SDK's bundle folder parsing (metadata and ``configs/inference.yaml``)
but changes what this bundle needs (docs/SERVING.md, "MONAI Deploy"): it reads each file with the bundle's own reader
(the SDK drops only transforms named ``LoadImage*``, which leaves the bundle's ``LoadMedicalImaged`` in; the image is
read before the rest of the preprocessing, so VOI windowing and intensity scaling are the bundle's), calls
``explain()`` and keeps the mask (the SDK post-processes only the first output), sends the mask as float (the SDK
casts image outputs to uint8) and the probabilities with their class names (the SDK maps ``int(prob)`` through the
channel names).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

BUNDLE_ROOT = Path(__file__).resolve().parents[2]
if str(BUNDLE_ROOT) not in sys.path:  # the bundle package, from any working directory
    sys.path.insert(0, str(BUNDLE_ROOT))


def _find_monai_deploy() -> None:
    """Make ``monai.deploy`` importable when it is installed in another site-packages folder than ``monai``.

    ``monai`` is a regular package, so Python looks for ``monai.deploy`` only in the first ``monai`` folder found: a
    venv made with ``--system-site-packages`` that holds the SDK but takes MONAI from the system misses it.
    """
    import monai

    for entry in sys.path:
        folder = Path(entry or ".") / "monai"
        if (folder / "deploy" / "__init__.py").is_file() and str(folder) not in list(monai.__path__):
            monai.__path__.append(str(folder))


_find_monai_deploy()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.bundle import ConfigParser  # noqa: E402
from monai.data import MetaTensor  # noqa: E402
from monai.deploy.conditions import CountCondition  # noqa: E402
from monai.deploy.core import AppContext, Application, ConditionType, Fragment, Operator, OperatorSpec  # noqa: E402
from monai.deploy.core.io_type import IOType  # noqa: E402
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator  # noqa: E402
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator  # noqa: E402
from monai.deploy.operators.dicom_text_sr_writer_operator import DICOMTextSRWriterOperator  # noqa: E402
from monai.deploy.operators.dicom_utils import EquipmentInfo, ModelInfo  # noqa: E402
from monai.deploy.operators.monai_bundle_inference_operator import (  # noqa: E402
    DISALLOW_LOAD_SAVE,
    BundleConfigNames,
    IOMapping,
    MonaiBundleInferenceOperator,
    filter_compose,
    get_bundle_config,
)
from monai.transforms import Compose  # noqa: E402

from bundle.data.inference import list_input_files, resolve_class_names  # noqa: E402
from bundle.data.readers import sniff_format  # noqa: E402
from bundle.data.transforms import LoadMedicalImaged  # noqa: E402
from bundle.handlers.writers import SaliencyWriter  # noqa: E402
from bundle.networks.teacher import load_weights  # noqa: E402

logger = logging.getLogger("medtex.deploy")

SOURCES = "sources"  # list of input file paths
RESULTS = "results"  # list of per-file result dicts
TEXT = "text"  # the SR's text
SERIES = "study_selected_series_list"


def class_names_of(parser: ConfigParser) -> list[str]:
    """``configs/metadata.json``'s ``pred`` channel names when they count ``num_classes``, else the config's
    ``class_names`` (the datalist's classes, or numbers): the names inference writes in ``predictions.csv``."""
    num_classes = int(parser.get_parsed_content("num_classes"))
    channels = parser.get("_meta_", {}).get("network_data_format", {}).get("outputs", {}).get("pred", {})
    names = [str(v) for _, v in sorted(channels.get("channel_def", {}).items(), key=lambda kv: int(kv[0]))]
    if len(names) == num_classes:
        return names
    datalist = parser.get_parsed_content("datalist") if parser.get("datalist") is not None else None
    return resolve_class_names(datalist, num_classes)


class SeriesFilesOperator(Operator):
    """The file of every instance of the selected series (the SDK keeps each instance's pydicom dataset)."""

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(SERIES)
        spec.output(SOURCES)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        files = []
        for study_selected in op_input.receive(SERIES) or []:
            for selected in study_selected.selected_series:
                for instance in selected.series.get_sop_instances():
                    files.append(str(instance.get_native_sop_instance().filename))
        if not files:
            raise ValueError("no DICOM series was selected from the input folder")
        op_output.emit(sorted(files), SOURCES)


class ImageFilesOperator(Operator):
    """The image files of a (non-DICOM) input folder, as the bundle's inference lists them."""

    def __init__(self, fragment: Fragment, *args: Any, input_folder: Path, **kwargs: Any) -> None:
        self.input_folder = Path(input_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output(SOURCES)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        files = [item["image"] for item in list_input_files(self.input_folder)]
        if not files:
            raise ValueError(f"no image file in {self.input_folder}")
        op_output.emit(files, SOURCES)


class MedTexBundleInferenceOperator(MonaiBundleInferenceOperator):
    """The SDK's bundle operator for the MED-TEX explainer + student: class probabilities and the saliency mask.

    Input ``sources`` (file paths); outputs ``results`` (per file: ``source``, ``probabilities`` (C,) float32,
    ``mask`` (1, H, W) float32 in [0, 1] at the network's resolution) and ``text`` (for the SR).

    Args:
        bundle_path: the bundle folder (its ``configs/metadata.json`` and ``configs/inference.yaml``).
        model_file: the weights (default ``<bundle>/models/model.pt``), loaded with the bundle's ``load_weights``.
        config_files: further config files merged over inference.yaml (e.g. ``configs/datasets/demo_cxr.yaml``).
        overrides: config values, as ``--key value`` on ``monai.bundle run``.
    """

    def __init__(
        self,
        fragment: Fragment,
        *args: Any,
        bundle_path: Path,
        model_file: Path | None = None,
        config_files: list[str] | None = None,
        overrides: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.model_file = Path(model_file) if model_file else Path(bundle_path) / "models" / "model.pt"
        self.config_files = [str(f) for f in config_files or []]
        self.overrides = dict(overrides or {})
        super().__init__(
            fragment,
            *args,
            input_mapping=[IOMapping(SOURCES, list, IOType.IN_MEMORY)],
            output_mapping=[IOMapping(RESULTS, list, IOType.IN_MEMORY), IOMapping(TEXT, str, IOType.IN_MEMORY)],
            bundle_path=bundle_path,
            bundle_config_names=BundleConfigNames(config_names=["inference"]),
            **kwargs,
        )

    def _init_config(self, config_names: list[str]) -> None:
        """The SDK's bundle parsing, plus config files and overrides, and this bundle's loader taken out."""
        parser = get_bundle_config(str(self.bundle_path), config_names)
        for file in self.config_files:
            extra = ConfigParser.load_config_file(file if Path(file).is_absolute() else self.bundle_path / file)
            parser.update(extra)
        parser.update({"bundle_root": str(self.bundle_path), **self.overrides})
        self._parser = parser
        self._device = parser.get_parsed_content("device")
        self._inferer = parser.get_parsed_content("inferer")
        self._inputs = parser["_meta_"]["network_data_format"]["inputs"]
        self._outputs = parser["_meta_"]["network_data_format"]["outputs"]
        preprocessing = filter_compose(parser.get_parsed_content("preprocessing"), DISALLOW_LOAD_SAVE)
        # the SDK's filter matches "LoadImage" in the class name, which LoadMedicalImaged does not have
        self._preproc = Compose([t for t in preprocessing.transforms if not isinstance(t, LoadMedicalImaged)])
        self._postproc = parser.get_parsed_content("postprocessing")
        self.reader = parser.get_parsed_content("image_reader")
        self.task = parser.get_parsed_content("task")
        self.class_names = class_names_of(parser)
        network = parser.get_parsed_content("network_def")
        network.load_state_dict(load_weights(self.model_file))
        self._model_network = network.to(self._device).eval()

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(SOURCES)
        spec.output(RESULTS)
        spec.output(TEXT).condition(ConditionType.NONE)  # no SR writer for image folders

    def load(self, source: str) -> MetaTensor:
        """The bundle's loader, done here: the reader's (H, W) or (H, W, 3) array in [0, 1], channel first."""
        array, meta = self.reader.read_file(source)
        image = torch.as_tensor(array, dtype=torch.float32)
        image = image[None] if image.ndim == 2 else image.permute(2, 0, 1)
        return MetaTensor(image.contiguous(), meta=meta)

    def predict(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        """``explain()``: logits and the mask (the SDK's ``forward`` through the inferer would drop the mask)."""
        return self._model_network.explain(data)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        if not self._init_completed:
            with self._lock:
                if not self._init_completed:
                    self._init_config(self._bundle_config_names.config_names)
                    self._init_completed = True
        results = []
        for source in op_input.receive(SOURCES):
            image = self._preproc({"image": self.load(source)})["image"]
            batch = torch.as_tensor(image)[None].to(self._device, dtype=torch.float32)
            with torch.no_grad():
                logits, mask = self.predict(batch)
            probabilities = self._postproc({"pred": logits[0].float().cpu()})["pred"]
            results.append(
                {
                    "source": source,
                    "probabilities": np.asarray(torch.as_tensor(probabilities), dtype=np.float32),
                    "mask": mask[0].detach().float().cpu().numpy(),  # float, not the SDK's uint8
                    "class_names": self.class_names,
                    "task": self.task,
                }
            )
        op_output.emit(results, RESULTS)
        op_output.emit(self.report_text(results), TEXT)

    def report_text(self, results: list[dict]) -> str:
        """The SR's text: per file, the predicted class(es) and every class's score as predictions.csv has it."""
        writer = self.row_writer()
        lines = ["MED-TEX explainable classification (research use only, not for diagnosis)"]
        for result in results:
            row = writer.prediction_row(result["source"], result["probabilities"])
            lines.append(f"Image: {Path(result['source']).name}")
            lines.append(f"Predicted: {row[-1] or 'none'}")
            lines += [f"{name}: {score}" for name, score in zip(self.class_names, row[1:-1])]
        return "\n".join(lines)

    def row_writer(self, output_dir: Path | str = ".") -> SaliencyWriter:
        return SaliencyWriter(
            output_dir,
            self.class_names,
            task=self.task,
            threshold=float(self._parser.get_parsed_content("threshold")),
            alpha=float(self._parser.get_parsed_content("overlay_alpha")),
            reader=self.reader,
            write_dicom=True,
            resume=False,
            deidentify=bool(self._parser.get_parsed_content("deidentify")),
        )


class SaliencyOutputsOperator(Operator):
    """The bundle's ``SaliencyWriter`` on each result: overlay PNG, NIfTI map and, for DICOM sources, the RGB
    Secondary Capture in the source's study (new series, UIDs derived from the source's); and predictions.json."""

    def __init__(
        self, fragment: Fragment, *args: Any, inference: MedTexBundleInferenceOperator, output_folder: Path, **kwargs
    ) -> None:
        self.inference = inference
        self.output_folder = Path(output_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(RESULTS)

    def compute(self, op_input: Any, op_output: Any, context: Any) -> None:
        results = op_input.receive(RESULTS)
        self.output_folder.mkdir(parents=True, exist_ok=True)
        writer = self.inference.row_writer(self.output_folder)
        rows = []
        for result in results:
            row = writer.prediction_row(result["source"], result["probabilities"])
            writer.write_saliency(result["source"], torch.as_tensor(result["mask"]))
            rows.append(
                {
                    "file": result["source"],
                    "scores": dict(zip(result["class_names"], row[1:-1])),
                    "predicted": row[-1],
                    "task": result["task"],
                }
            )
        path = self.output_folder / "predictions.json"
        path.write_text(json.dumps(rows, indent=2) + "\n")
        logger.info(f"{len(rows)} prediction(s), overlays and maps in {self.output_folder}")


def is_dicom_folder(folder: Path) -> bool:
    """Whether the input folder holds DICOM files (then the DICOM route), else image files."""
    return any(sniff_format(item["image"]) == "dicom" for item in list_input_files(folder))


class MedTexDeployApp(Application):
    """Reads a DICOM series (or an image folder), runs the bundle, writes SR + Secondary Capture (or PNG + JSON)."""

    def __init__(self, *args: Any, settings: argparse.Namespace, **kwargs: Any) -> None:
        self.settings = settings
        super().__init__(*args, **kwargs)

    def compose(self) -> None:
        s = self.settings
        input_folder, output_folder = Path(s.input).resolve(), Path(s.output).resolve()
        app_context = AppContext({"input": str(input_folder), "output": str(output_folder), "model": s.sdk_model})
        inference = MedTexBundleInferenceOperator(
            self,
            app_context=app_context,
            bundle_path=BUNDLE_ROOT,
            model_file=Path(s.model).resolve(),
            config_files=s.config,
            overrides=dict(s.overrides),
            name="medtex_inference_op",
        )
        writer = SaliencyOutputsOperator(self, inference=inference, output_folder=output_folder, name="saliency_op")
        if is_dicom_folder(input_folder):
            loader = DICOMDataLoaderOperator(self, CountCondition(self, 1), input_folder=input_folder, name="loader")
            selector = DICOMSeriesSelectorOperator(self, rules=s.rules or "", name="series_selector_op")
            files = SeriesFilesOperator(self, name="series_files_op")
            sr_writer = DICOMTextSRWriterOperator(
                self,
                copy_tags=True,
                model_info=ModelInfo("MED-TEX bundle developers", "MED-TEX", self.bundle_version(), ""),
                equipment_info=EquipmentInfo(manufacturer="MED-TEX MONAI bundle"),
                custom_tags={"SeriesDescription": "MED-TEX prediction, not for clinical use"},
                output_folder=output_folder,
                name="sr_writer_op",
            )
            self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
            self.add_flow(selector, files, {(SERIES, SERIES)})
            self.add_flow(files, inference, {(SOURCES, SOURCES)})
            self.add_flow(inference, sr_writer, {(TEXT, TEXT)})
            self.add_flow(selector, sr_writer, {(SERIES, SERIES)})
        else:
            files = ImageFilesOperator(self, CountCondition(self, 1), input_folder=input_folder, name="image_files_op")
            self.add_flow(files, inference, {(SOURCES, SOURCES)})
        self.add_flow(inference, writer, {(RESULTS, RESULTS)})

    @staticmethod
    def bundle_version() -> str:
        return str(json.loads((BUNDLE_ROOT / "configs" / "metadata.json").read_text())["version"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", "--input", required=True, help="a DICOM series folder, or a folder of PNG/JPEG images")
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument("-m", "--model", default=str(BUNDLE_ROOT / "models" / "model.pt"), help="the weights")
    parser.add_argument(
        "--config", action="append", default=[], help="config merged over inference.yaml (repeatable), e.g. a dataset"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="a config value (parsed as JSON where it parses), e.g. --set image_size 64",
    )
    parser.add_argument("--rules", default="", help="DICOMSeriesSelectorOperator rules (JSON); default: all series")
    args = parser.parse_args(argv)
    args.overrides = [(key, _value(value)) for key, value in args.overrides]
    # The SDK's model factory loads whatever HOLOSCAN_MODEL_PATH (default ./model/model.ts) names, and takes a
    # bundle folder there for a model: this operator loads the weights itself, so point it at nothing.
    args.sdk_model = str(Path(args.output).resolve() / ".no-sdk-model")
    os.environ["HOLOSCAN_MODEL_PATH"] = args.sdk_model
    return args


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = parse_args(argv)
    MedTexDeployApp(argv=[sys.argv[0]], settings=settings).run()


if __name__ == "__main__":
    main()
