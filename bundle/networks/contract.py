"""A pretrained teacher's own contract: the input it expects, what its outputs are, and their names (docs/TEACHERS.md).

The bundle's images reach every network as ``(x - intensity_mean) / intensity_std`` of display intensities in [0, 1],
with ``in_channels`` channels at ``image_size``. A teacher trained elsewhere wants its own view: torchxrayvision's
DenseNet one channel at 224 px in [-1024, 1024], a CheXNet three channels with ImageNet's mean and std. ``TeacherInput``
makes that view inside the training graph (differentiable, since the fidelity term back-propagates through the
teacher to the mask), and ``TeacherOutputs`` turns what the teacher returns (logits, probabilities or calibrated
scores) into logits and maps them to the local classes (``bundle.networks.labels.LabelMap``).

``resolve_teacher_contract`` fills each contract value from, in this order: the config (``teacher_input_channels``,
``teacher_input_size``, ...), the teacher bundle's own ``configs/metadata.json`` and inference config
(``teacher_bundle``), else the student's (same channels, size and normalisation, logits, the local task and classes),
and logs in one line what was read and what was assumed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from bundle.data.transforms import LUMA_WEIGHTS
from bundle.networks.labels import LabelMap

logger = logging.getLogger(__name__)

OUTPUT_KINDS = ("logits", "probabilities", "calibrated")
RESIZE_MODES = ("area", "bilinear", "bicubic", "nearest")
BUNDLE_METADATA = ("configs/metadata.json",)
BUNDLE_INFERENCE = ("configs/inference.json", "configs/inference.yaml", "configs/inference.yml")
BUNDLE_WEIGHTS = ("models/model.pt", "models/model.ts")
_EPS = 1e-6  # probabilities are clamped to [eps, 1 - eps] before taking logs: logits within about +-13.8
Number = Union[float, Sequence[float]]


@dataclass
class TeacherContract:
    """What the bundle needs to know to feed a teacher and read its outputs; built by ``resolve_teacher_contract``.

    ``channels``, ``size``: the teacher's input; ``value_range``: what display intensities 0 and 1 become; ``mean``,
    ``std``: the normalisation after that (per channel or one value); ``output``: ``logits``, ``probabilities``
    (softmax or sigmoid inside the model) or ``calibrated`` (torchxrayvision's sigmoid rescaled by per-class operating
    thresholds, ``thresholds``); ``task``: how its outputs are read (``multiclass``: softmax, ``multilabel``: sigmoid);
    ``names``: its output names; ``labels``: the map to the local classes; ``student_*``: the bundle's own input.
    """

    channels: int
    size: Optional[int]
    resize_mode: str
    value_range: tuple[float, float]
    mean: list[float]
    std: list[float]
    output: str
    thresholds: Optional[list[float]]
    task: str
    names: list[str]
    labels: LabelMap
    student_channels: int
    student_mean: float
    student_std: float
    student_size: Optional[int] = None
    sources: dict[str, str] = field(default_factory=dict)  # value -> where it came from (for the log line)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(channels, size, size)`` of the teacher's input (the student's size unless the teacher has its own)."""
        size = self.size if self.size is not None else self.student_size
        if size is None:
            raise ValueError("the teacher's input size is unknown: set teacher_input_size")
        return (self.channels, int(size), int(size))

    def input_adapter(self) -> TeacherInput:
        return TeacherInput(
            self.student_channels,
            self.student_mean,
            self.student_std,
            self.channels,
            self.size,
            self.resize_mode,
            self.value_range,
            self.mean,
            self.std,
        )

    def output_adapter(self) -> TeacherOutputs:
        return TeacherOutputs(self.output, self.task, self.labels, self.thresholds)

    def describe(self) -> str:
        def origin(key: str) -> str:
            return f" ({self.sources[key]})" if key in self.sources else ""

        size = self.size if self.size is not None else "the student's"
        return (
            f"teacher contract: {self.channels} channel(s){origin('channels')}, size {size}{origin('size')} "
            f"({self.resize_mode}), display [0, 1] -> {list(self.value_range)}{origin('value_range')}, then "
            f"(v - {_short(self.mean)}) / {_short(self.std)}{origin('mean')}; outputs: {len(self.names)} "
            f"{self.output}{origin('output')}, {self.task}{origin('task')}, names{origin('names')}"
        )


def _short(values: Sequence[float]) -> str:
    return str(values[0]) if len(set(values)) == 1 else str(list(values))


class TeacherInput(nn.Module):
    """The bundle's normalised image -> the teacher's own input: channels, size, value range and normalisation.

    Differentiable (gradients reach the mask through it). The value mapping is one affine map per channel,
    ``a_c x + b_c``, folded from the bundle's normalisation and the teacher's; channel conversion (BT.601 luma for RGB
    to gray, as the bundle's readers) and resizing are linear and keep constants, so the affine map goes last. When
    the teacher's contract is the student's, ``forward`` returns its input as it is.
    """

    scale: torch.Tensor  # buffers (typed for mypy)
    shift: torch.Tensor
    luma: torch.Tensor

    def __init__(
        self,
        student_channels: int,
        student_mean: float,
        student_std: float,
        channels: int,
        size: Optional[int],
        resize_mode: str,
        value_range: Sequence[float],
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        if (student_channels, channels) not in ((1, 1), (3, 3), (1, 3), (3, 1)):
            raise ValueError(
                f"teacher_input_channels: cannot make {channels} channel(s) from the bundle's {student_channels} "
                "(1 and 3 convert into each other)"
            )
        if resize_mode not in RESIZE_MODES:
            raise ValueError(f"teacher_resize_mode must be one of {RESIZE_MODES}, not {resize_mode!r}")
        if any(s <= 0 for s in std):
            raise ValueError(f"teacher_input_std must be positive, got {list(std)}")
        self.student_channels, self.channels = student_channels, channels
        self.size = size
        self.resize_mode = resize_mode
        low, high = float(value_range[0]), float(value_range[1])
        # x is (d - m) / s for display intensity d; the teacher wants (low + d (high - low) - mean_c) / std_c
        scale = [student_std * (high - low) / sd for sd in std]
        shift = [(student_mean * (high - low) + low - mu) / sd for mu, sd in zip(mean, std)]
        self.affine = not all(math.isclose(a, 1.0, abs_tol=1e-12) for a in scale) or not all(
            math.isclose(b, 0.0, abs_tol=1e-12) for b in shift
        )
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", torch.tensor(shift, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        luma = torch.tensor(LUMA_WEIGHTS, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("luma", luma, persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        if self.channels != x.shape[1]:
            if self.channels == 1:
                # the mean image (constant 0 after normalisation) stays the mean: weights add up to 1
                x = (x * self.luma.to(x.dtype)).sum(dim=1, keepdim=True)
            else:
                x = x.expand(-1, self.channels, -1, -1)
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            size = (self.size, self.size)
            if self.resize_mode in ("bilinear", "bicubic"):
                shrinking = self.size < min(x.shape[-2:])
                x = F.interpolate(x, size=size, mode=self.resize_mode, align_corners=False, antialias=shrinking)
            else:
                x = F.interpolate(x, size=size, mode=self.resize_mode)
        if self.affine:
            x = x * self.scale.to(x.dtype) + self.shift.to(x.dtype)
        return x


class TeacherOutputs(nn.Module):
    """What the teacher returns -> logits (``output``) -> logits over the covered local classes (``labels``).

    ``probabilities``: softmax outputs become log-probabilities, sigmoid outputs ``log p - log(1 - p)``;
    ``calibrated``: torchxrayvision's operating-point normalisation (``s = p / 2t`` below the threshold ``t``,
    ``1 - (1 - p) / 2(1 - t)`` above) is inverted to ``p``, then as sigmoid outputs. Probabilities are clamped to
    [1e-6, 1 - 1e-6]: a saturated sigmoid carries no more than that.
    """

    thresholds: torch.Tensor  # a buffer (typed for mypy)

    def __init__(self, output: str, task: str, labels: LabelMap, thresholds: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        if output not in OUTPUT_KINDS:
            raise ValueError(f"teacher_output must be one of {OUTPUT_KINDS}, not {output!r}")
        if output == "calibrated":
            if task != "multilabel":
                raise ValueError("teacher_output: calibrated scores are per-finding sigmoids: teacher_task multilabel")
            if thresholds is None or len(thresholds) != len(labels.teacher_names):
                raise ValueError(
                    f"teacher_thresholds: calibrated outputs need one operating threshold per output "
                    f"({len(labels.teacher_names)}), got {None if thresholds is None else len(thresholds)}"
                )
            # an untrained output (NaN threshold in torchxrayvision) is read as uncalibrated (t = 0.5: s = p)
            t = torch.tensor([0.5 if v is None or math.isnan(v) else float(v) for v in thresholds])
            self.register_buffer("thresholds", t.view(1, -1), persistent=False)
        self.output = output
        self.task = task
        self.labels = labels

    def forward(self, outputs: torch.Tensor) -> torch.Tensor:
        if outputs.ndim != 2 or outputs.shape[1] != len(self.labels.teacher_names):
            raise ValueError(
                f"teacher_output_names: the teacher returned {tuple(outputs.shape)}, expected (batch, "
                f"{len(self.labels.teacher_names)}) for its {len(self.labels.teacher_names)} output names"
            )
        return self.labels(self.to_logits(outputs))

    def to_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        if self.output == "logits":
            return outputs
        p = outputs.float()
        if self.output == "calibrated":
            t = self.thresholds.to(p.device)
            p = torch.where(p < 0.5, p * 2 * t, 1 - (1 - p) * 2 * (1 - t))
        p = p.clamp(_EPS, 1 - _EPS)
        if self.task == "multiclass":
            return torch.log(p)
        return torch.log(p) - torch.log1p(-p)


def resolve_teacher_contract(
    local_classes: Sequence[str],
    local_task: str,
    student_channels: int,
    student_mean: float,
    student_std: float,
    student_size: Optional[int] = None,
    bundle: Optional[Union[str, os.PathLike]] = None,
    channels: Optional[int] = None,
    size: Optional[int] = None,
    resize_mode: str = "bilinear",
    value_range: Optional[Sequence[float]] = None,
    mean: Optional[Number] = None,
    std: Optional[Number] = None,
    output: Optional[str] = None,
    thresholds: Optional[Sequence[float]] = None,
    task: Optional[str] = None,
    names: Optional[Sequence[str]] = None,
    label_map: Optional[Mapping[str, Any]] = None,
    label_synonyms: Sequence[Sequence[str]] = (),
) -> TeacherContract:
    """The teacher's contract: config values where given, else the teacher bundle's where it says, else the
    student's. Logs one line saying what was read and what was assumed, and one with the label map."""
    found = read_bundle_contract(bundle) if bundle is not None else {}
    sources: dict[str, str] = {}
    assumed: list[str] = []

    def pick(key: str, given: Any, default: Any, default_note: str) -> Any:
        if given is not None:
            sources[key] = "config"
            return given
        if key in found:
            value, note = found[key]
            sources[key] = f"teacher bundle {note}"
            return value
        if bundle is not None:
            assumed.append(key)
            sources[key] = f"assumed: {default_note}"
        return default

    picked_range = pick("value_range", value_range, None, "the student's normalisation")
    channels = int(pick("channels", channels, student_channels, "the student's"))
    size = pick("size", size, None, "the student's")
    if picked_range is None and mean is None and std is None and "mean" not in found:
        # the student's own view: [0, 1] normalised as the bundle does
        value_range, mean_list, std_list = (0.0, 1.0), [student_mean] * channels, [student_std] * channels
        if bundle is not None:
            sources["mean"] = "assumed: the student's normalisation"
    else:
        value_range = tuple(float(v) for v in (picked_range if picked_range is not None else (0.0, 1.0)))
        if len(value_range) != 2 or value_range[0] == value_range[1]:
            raise ValueError(f"teacher_input_range: [low, high] with low != high, got {list(value_range)}")
        mean_list = _per_channel("teacher_input_mean", pick("mean", mean, 0.0, "0"), channels)
        std_list = _per_channel("teacher_input_std", pick("std", std, 1.0, "1"), channels)
    output = pick("output", output, "logits", "logits")
    task = pick("task", task, local_task, "the local task")
    names = pick("names", list(names) if names is not None else None, list(local_classes), "the local classes")
    labels = LabelMap(names, local_classes, task, local_task, label_map, label_synonyms)
    contract = TeacherContract(
        channels=channels,
        size=None if size is None else int(size),
        resize_mode=resize_mode,
        value_range=value_range,
        mean=mean_list,
        std=std_list,
        output=output,
        thresholds=list(thresholds) if thresholds is not None else None,
        task=task,
        names=[str(n) for n in names],
        labels=labels,
        student_channels=student_channels,
        student_mean=student_mean,
        student_std=student_std,
        student_size=student_size,
        sources=sources,
    )
    if bundle is not None or not labels.identity or contract.input_adapter().affine or size is not None:
        read = sorted(k for k, v in sources.items() if v.startswith("teacher bundle"))
        where = f" from {bundle}: read {', '.join(read) or 'nothing'}; assumed {', '.join(assumed) or 'nothing'}"
        logger.info(contract.describe() + (where if bundle is not None else ""))
        logger.info("label map: " + labels.describe())
    return contract


def _per_channel(name: str, value: Number, channels: int) -> list[float]:
    values = [float(value)] * channels if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f"{name}: one value or one per channel ({channels}), got {values}")
    return values


# --- MONAI bundles (Model Zoo layout) ---------------------------------------------------------------------------
def _bundle_file(bundle: Path, candidates: Sequence[str], what: str) -> Optional[Path]:
    if not bundle.is_dir():
        raise FileNotFoundError(f"teacher_bundle: {bundle} is not a folder (a MONAI bundle: configs/, models/)")
    for candidate in candidates:
        if (bundle / candidate).is_file():
            return bundle / candidate
    return None


def read_bundle_contract(bundle: Union[str, os.PathLike]) -> dict[str, tuple[Any, str]]:
    """What a MONAI bundle says about its network's input and output: key -> (value, where it was read).

    From ``configs/metadata.json``'s ``network_data_format``: ``inputs.image.num_channels``, ``spatial_shape`` (a
    square size), ``value_range`` (the tensor the network gets; then no further normalisation),
    ``outputs.pred.channel_def`` (output names); from the inference config's ``postprocessing``: an
    ``Activations(d)`` with ``softmax`` (multi-class logits) or ``sigmoid`` (multi-label logits).
    """
    bundle = Path(bundle)
    found: dict[str, tuple[Any, str]] = {}
    metadata_file = _bundle_file(bundle, BUNDLE_METADATA, "metadata")
    if metadata_file is not None:
        with open(metadata_file) as f:
            formats = json.load(f).get("network_data_format", {})
        image = formats.get("inputs", {}).get("image", {})
        pred = formats.get("outputs", {}).get("pred", {})
        where = "metadata.json"
        if "num_channels" in image:
            found["channels"] = (int(image["num_channels"]), where)
        shape = image.get("spatial_shape")
        if isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) for s in shape):
            if shape[0] != shape[1]:
                raise ValueError(f"{metadata_file}: spatial_shape {shape} is not square; set teacher_input_size")
            found["size"] = (int(shape[0]), where)
        value_range = image.get("value_range")
        if isinstance(value_range, list) and len(value_range) == 2 and value_range[0] != value_range[1]:
            found["value_range"] = ([float(v) for v in value_range], where)
            found["mean"] = (0.0, where)
            found["std"] = (1.0, where)
        if pred.get("type") in ("probabilities", "logits"):  # Model Zoo: what the network (or its postprocessing) gives
            found["output"] = (str(pred["type"]), where)
        channel_def = pred.get("channel_def")
        if isinstance(channel_def, dict) and channel_def:
            found["names"] = ([str(channel_def[k]) for k in sorted(channel_def, key=int)], where)
    inference_file = _bundle_file(bundle, BUNDLE_INFERENCE, "inference config")
    if inference_file is not None:
        from monai.bundle import ConfigParser

        post = ConfigParser.load_config_file(inference_file).get("postprocessing")
        for transform in _transforms(post):
            target = str(transform.get("_target_", ""))
            if target.split(".")[-1] in ("Activations", "Activationsd"):
                # the network gives logits that postprocessing activates; which activation, where it is a literal
                found["output"] = ("logits", f"{inference_file.name} postprocessing")
                if transform.get("softmax") is True:
                    found["task"] = ("multiclass", f"{inference_file.name} postprocessing")
                elif transform.get("sigmoid") is True:
                    found["task"] = ("multilabel", f"{inference_file.name} postprocessing")
    return found


def _transforms(post: Any) -> list[dict]:
    if isinstance(post, dict):
        inner = post.get("transforms")
        return [post] + (_transforms(inner) if inner is not None else [])
    if isinstance(post, list):
        return [t for item in post for t in _transforms(item)]
    return []


def bundle_weights(bundle: Union[str, os.PathLike]) -> str:
    """The bundle's weights: ``models/model.pt`` (a state dict for its ``network_def``), else ``models/model.ts``."""
    path = _bundle_file(Path(bundle), BUNDLE_WEIGHTS, "weights")
    if path is None:
        raise FileNotFoundError(f"teacher_bundle: {bundle} has neither {' nor '.join(BUNDLE_WEIGHTS)}")
    return str(path)


def bundle_network(bundle: Union[str, os.PathLike], weights: Union[str, os.PathLike]) -> Optional[nn.Module]:
    """The bundle's ``network_def`` built from its inference config, or ``None`` when ``weights`` is TorchScript (the
    archive carries its own architecture). Building it runs the bundle's config expressions, as MONAI's own
    ``monai.bundle`` commands do: use bundles you trust. The bundle folder is put on ``sys.path`` so that configs
    that import the bundle's own ``scripts`` package work, as in the Model Zoo."""
    from bundle.networks.teacher import is_torchscript

    if is_torchscript(weights):
        return None
    bundle = Path(bundle)
    inference_file = _bundle_file(bundle, BUNDLE_INFERENCE, "inference config")
    if inference_file is None:
        raise FileNotFoundError(f"teacher_bundle: {bundle} has no {' or '.join(BUNDLE_INFERENCE)} with network_def")
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(inference_file))
    metadata_file = _bundle_file(bundle, BUNDLE_METADATA, "metadata")
    if metadata_file is not None:
        parser.read_meta(str(metadata_file))
    parser["bundle_root"] = str(bundle)
    if parser.get("network_def") is None:
        raise ValueError(f"teacher_bundle: {inference_file} defines no network_def")
    if str(bundle) not in sys.path:
        sys.path.insert(0, str(bundle))
    return parser.get_parsed_content("network_def", instantiate=True)
