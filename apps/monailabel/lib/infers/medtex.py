"""MONAI Label infer task for the MED-TEX bundle: the class scores and the explainer's saliency mask.

A ``BasicInferTask`` rather than monailabel's ``BundleInferTask``, which imports torchvision (its post transforms);
the PyPI torchvision build does not load beside the CPU torch build. Everything that decides a number comes from the
bundle's own configs/inference.yaml, parsed with ``bundle_root`` set to the bundle: ``network_def`` (with its
memory format), ``preprocessing`` (the bundle's reader, so DICOM, PNG, NIfTI ... read exactly as in batch
inference), ``inferer`` and ``postprocessing`` (softmax for multi-class, sigmoid per finding for multi-label). The
mask is resized to the source image's size by the function bundle/handlers/writers.py's ``SaliencyWriter`` uses
for the NIfTI map, and returned as an 8-bit PNG (0-255 for 0-1).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from fastapi import HTTPException
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from PIL import Image

from bundle.handlers.writers import saliency_at_source

logger = logging.getLogger(__name__)


def class_names_of(bundle_root: Path, num_classes: int, config_names: Sequence[str], labels: str = "") -> list[str]:
    """``labels`` (comma-separated ``--conf``), else configs/metadata.json's ``pred`` channel names when they are
    ``num_classes``, else the config's ``class_names`` (the datalist's, as predictions.csv names its columns)."""
    if labels:
        names = [n.strip() for n in labels.split(",")]
        if len(names) != num_classes:
            raise ValueError(f"--conf labels names {len(names)} classes, the model has {num_classes}")
        return names
    metadata = bundle_root / "configs" / "metadata.json"
    if metadata.is_file():
        channels = json.loads(metadata.read_text())["network_data_format"]["outputs"]["pred"].get("channel_def", {})
        if len(channels) == num_classes:
            return [str(channels[str(i)]) for i in range(num_classes)]
    return [str(n) for n in config_names]


class MedTexInfer(BasicInferTask):
    """Classification with saliency from a MED-TEX bundle folder.

    ``conf`` (``--conf key value`` of ``monailabel start_server``): ``model_path`` (default
    ``<ckpt_dir>/<ckpt_name>`` of the config), ``image_size``, ``config_files`` (comma-separated overlays after
    configs/inference.yaml, relative to the bundle: e.g. ``configs/datasets/demo_cxr.yaml``), ``overrides`` (a JSON
    object of config ids to values, e.g. ``{"student#init_features": 8}``), ``labels`` (comma-separated class names).
    """

    def __init__(self, bundle_root: str | os.PathLike, conf: dict[str, str] | None = None) -> None:
        conf = dict(conf or {})
        self.bundle_root = Path(bundle_root).resolve()
        configs = [self.bundle_root / "configs" / "inference.yaml"]
        configs += [self.bundle_root / c.strip() for c in conf.get("config_files", "").split(",") if c.strip()]
        parser = ConfigParser()
        parser.read_config([str(c) for c in configs])
        parser["bundle_root"] = str(self.bundle_root)
        parser.update(json.loads(conf.get("overrides") or "{}"))
        if conf.get("image_size"):
            parser["image_size"] = int(conf["image_size"])
        self.task: str = parser.get_parsed_content("task")
        self.threshold = float(parser.get_parsed_content("threshold"))
        self.amp = bool(parser.get_parsed_content("amp"))
        self.image_size = int(parser.get_parsed_content("image_size"))
        self.memory_format = parser.get_parsed_content("memory_format")
        self.reader = parser.get_parsed_content("image_reader")
        self._preprocessing = parser.get_parsed_content("preprocessing")
        self._inferer = parser.get_parsed_content("inferer")
        self._postprocessing = parser.get_parsed_content("postprocessing")
        num_classes = int(parser.get_parsed_content("num_classes"))
        names = class_names_of(
            self.bundle_root, num_classes, parser.get_parsed_content("class_names"), conf.get("labels", "")
        )
        model_path = conf.get("model_path") or os.path.join(
            parser.get_parsed_content("ckpt_dir"), parser.get_parsed_content("ckpt_name")
        )
        super().__init__(
            path=str(Path(model_path).resolve()),
            network=parser.get_parsed_content("network_def"),
            type=InferType.CLASSIFICATION,
            labels=names,
            dimension=2,
            description=f"MED-TEX {self.task} classifier with saliency mask ({', '.join(names)})",
            model_state_dict="model",  # CheckpointSaver's {'model': state_dict}; a bare state_dict loads too
            input_key="image",
            output_label_key="pred",
            load_strict=True,
        )

    def info(self) -> dict[str, Any]:
        return {**super().info(), "task": self.task, "image_size": self.image_size, "threshold": self.threshold}

    def __call__(self, request: Any, callbacks: Any = None) -> Any:
        try:
            return super().__call__(request, callbacks)
        except HTTPException:
            raise
        except Exception as e:  # an answer with the reason rather than a bare "Internal Server Error"
            logger.exception("inference failed")
            raise HTTPException(status_code=500, detail=f"inference failed: {type(e).__name__}: {e}")

    def pre_transforms(self, data: Any = None) -> Sequence[Callable]:
        return list(self._preprocessing.transforms)

    def inferer(self, data: Any = None) -> Any:
        return self._inferer

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        return list(self._postprocessing.transforms)

    def inverse_transforms(self, data: Any = None) -> None:
        return None

    def run_pre_transforms(self, data: dict[str, Any], transforms: Any) -> Any:
        try:
            return super().run_pre_transforms(data, transforms)
        except Exception as e:  # an unreadable upload is the client's error, not the server's
            cause = e.__cause__ or e
            raise HTTPException(status_code=422, detail=f"cannot read the image: {type(cause).__name__}: {cause}")

    def _get_network(self, device: str, data: Any) -> Any:
        return super()._get_network(device, data).to(memory_format=self.memory_format)

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict[str, Any]:
        """``network.explain`` through the config's inferer on the one image, as ExplainingEvaluator runs it."""
        network = self._get_network(device, data)
        image = data[self.input_key]
        image = image.as_tensor() if isinstance(image, MetaTensor) else torch.as_tensor(image)
        inputs = image[None].float().to(torch.device(device))
        amp = self.amp and str(device).startswith("cuda")
        with torch.no_grad(), torch.autocast("cuda", enabled=amp):
            logits, mask = self.inferer(data)(inputs, network.explain)
        data[self.output_label_key] = logits[0].detach()
        data["saliency"] = mask[0].detach()
        return data

    def writer(self, data: dict[str, Any], extension: Any = None, dtype: Any = None) -> tuple[str, dict[str, Any]]:
        """The mask PNG at the source's size and the scores JSON (``output=image`` / ``output=json``)."""
        probabilities = torch.as_tensor(data[self.output_label_key]).detach().float().cpu().reshape(-1).numpy()
        names = list(self.labels)
        scores = {name: float(p) for name, p in zip(names, probabilities)}
        if self.task == "multiclass":
            predicted: Any = names[int(np.argmax(probabilities))]
        else:
            predicted = [name for name, p in zip(names, probabilities) if p >= self.threshold]
        source, _ = self.reader.read_file(data["image_path"])
        rows, cols = source.shape[:2]
        full = saliency_at_source(data["saliency"], rows, cols)
        png = tempfile.NamedTemporaryFile(suffix=".png", delete=False).name
        Image.fromarray(np.round(full * 255.0).astype(np.uint8)).save(png)
        result = {
            "task": self.task,
            "class_names": names,
            "scores": scores,
            "prediction": predicted,
            "threshold": self.threshold if self.task == "multilabel" else None,
            "saliency": {"format": "png", "rows": rows, "columns": cols, "scale": "0-255 for 0-1"},
        }
        return png, result
