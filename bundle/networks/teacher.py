"""The frozen teacher: weights from a state dict, a MONAI bundle checkpoint or TorchScript; logits + features."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from bundle.files import file_sha256
from bundle.networks.contract import TeacherContract
from bundle.networks.features import FeatureRecorder, match_feature_layers

logger = logging.getLogger(__name__)
TEACHER_COMMAND = "python -m monai.bundle run training --config_file configs/train_teacher.yaml --dataset_dir DIR"
CONVERT_COMMAND = "python scripts/convert_teacher.py --input MODEL_FILE --output STATE_DICT.pt"
# keys under which MONAI's CheckpointSaver (several objects) and other trainers store the network's weights
_WEIGHT_KEYS = ("model", "network", "state_dict", "model_state_dict", "net")
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP and torch.compile wrappers
KeyMap = Sequence[Sequence[str]]


def is_torchscript(path: str | os.PathLike) -> bool:
    """TorchScript archives carry a ``code/`` folder; ``torch.save`` archives do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def is_onnx(path: str | os.PathLike) -> bool:
    """ONNX files by their suffix (protobuf has no magic number)."""
    return str(path).lower().endswith(".onnx")


def load_weights(path: str | os.PathLike, weights_key: Optional[str] = None) -> dict[str, torch.Tensor]:
    """Read a state dict saved directly or inside a checkpoint dict, with ``weights_only=True`` (no code runs).

    ``weights_key``: where the weights are in a checkpoint dict, dots for nesting (``"state_dict"``,
    ``"ema.model"``); by default a dict of tensors is the state dict, else the first of ``model``, ``network``,
    ``state_dict``, ``model_state_dict``, ``net`` holding one. Keys are returned as saved (``teacher_state`` adapts
    another library's to the configured network). A file that pickles anything but tensors and plain containers
    (which could run code when unpickled) is refused with a ``ValueError`` naming the file and the command that
    converts it, instead of torch's unpickling message.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path}: refused: it holds pickled Python objects (a whole model?), not only weights, and loading it "
            "could run code. Convert it once to a plain state dict in the environment of the library that made it, "
            f"on a file you trust: {CONVERT_COMMAND} (or torch.save(model.state_dict(), path) yourself)."
        ) from e
    if weights_key:
        for part in weights_key.split("."):
            if not isinstance(state, dict) or part not in state:
                raise ValueError(
                    f"{path}: no {part!r} in the checkpoint (config value teacher_weights_key {weights_key!r})"
                )
            state = state[part]
    elif isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        for key in _WEIGHT_KEYS:
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
        else:
            raise ValueError(
                f"{path}: a checkpoint dict without network weights under any of {_WEIGHT_KEYS}; its keys: "
                f"{list(state)[:10]} (set teacher_weights_key)"
            )
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict (names -> tensors), got {type(state).__name__}")
    return state


def weights_sha256(path: str | os.PathLike, weights_key: Optional[str] = None) -> str:
    """Hex SHA-256 of a checkpoint's weights (:func:`load_weights`): every tensor's name, dtype, shape and values, in
    name order. The file's own hash cannot tell two trainings apart: ``torch.save`` writes a fresh serialization id and
    the name of the file it wrote (here a temporary's) into the archive, so the same weights saved twice differ."""
    digest = hashlib.sha256()
    for name, tensor in sorted(load_weights(path, weights_key).items()):
        values = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{values.dtype}\0{tuple(values.shape)}\0".encode())
        digest.update(values.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def teacher_state(
    path: str | os.PathLike, weights_key: Optional[str] = None, key_map: KeyMap = ()
) -> dict[str, torch.Tensor]:
    """``load_weights`` with the keys made the configured network's: a ``module.`` (DataParallel/DDP) or
    ``_orig_mod.`` (``torch.compile``) prefix on every key is removed, then each ``[pattern, replacement]`` of
    ``key_map`` (config ``teacher_key_map``: legacy or another library's layer names) is applied with ``re.sub``;
    a key that becomes ``""`` is dropped."""
    state = load_weights(path, weights_key)
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return map_keys(state, key_map)


def map_keys(state: dict[str, torch.Tensor], key_map: KeyMap) -> dict[str, torch.Tensor]:
    """``state`` with each ``[pattern, replacement]`` of ``key_map`` applied to every key in turn (``re.sub``)."""
    rules = []
    for rule in key_map:
        if len(rule) != 2:
            raise ValueError(f"teacher_key_map: each rule is [pattern, replacement], got {rule!r}")
        rules.append((re.compile(rule[0]), rule[1]))
    if not rules:
        return state
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for pattern, replacement in rules:
            key = pattern.sub(replacement, key)
        if not key:
            continue
        if key in mapped:
            raise ValueError(f"teacher_key_map: two weights become {key!r}")
        mapped[key] = value
    return mapped


def require_teacher_checkpoint(path: str | os.PathLike) -> None:
    """Stop a run before any work when the teacher checkpoint is missing, with a message saying what to do.

    ``SystemExit`` rather than an exception: MONAI wraps exceptions from config expressions in its own long
    traceback, while a ``SystemExit`` message is the last thing the user sees.
    """
    if not Path(path).is_file():
        raise SystemExit(_missing_teacher_message(Path(path)))


def _missing_teacher_message(path: Path) -> str:
    return (
        f"teacher checkpoint not found: {path} (config value 'teacher_ckpt'). Train one with\n  "
        f"{TEACHER_COMMAND} --ckpt_dir {path.parent}\nor point --teacher_ckpt at a pretrained teacher."
    )


class FrozenTeacher(nn.Module):
    """A pretrained classifier with frozen weights, always in eval mode, returning logits and named features.

    With a ``contract`` (``bundle.networks.contract.resolve_teacher_contract``; docs/TEACHERS.md) the teacher may be
    one trained elsewhere: it gets its own view of the bundle's image (channels, size, value range, normalisation)
    inside the graph, and its outputs (logits, probabilities or calibrated scores, in its own label set) come back as
    logits over the local classes it covers (``contract.labels.covered``). Without one, its input is the student's
    and its logits are the local task's.

    Args:
        checkpoint: a state dict file, a MONAI bundle checkpoint (weights under ``model`` or ``network``), a
            TorchScript file or an ONNX file (``.onnx``, run by onnxruntime: no gradients, so KD only).
        network: the architecture for state dicts (ignored for TorchScript and ONNX).
        feature_layers: names of layers (from ``named_modules()``) whose outputs feed VID; recorded by forward
            hooks during the same forward pass that gives the logits.
        bf16: run the teacher's passes under bfloat16 autocast (outputs stay float32): ``True``, ``False``, or
            ``"auto"`` (where the device has native bfloat16, ``native_bf16``).
        contract: the teacher's input and output contract and label map (``None``: the student's).
        weights_key, key_map: where the weights are in the file and how its keys become ``network``'s
            (``teacher_state``; config ``teacher_weights_key``, ``teacher_key_map``).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        network: Optional[nn.Module] = None,
        feature_layers: Sequence[str] = (),
        bf16: bool | str = "auto",
        contract: Optional[TeacherContract] = None,
        weights_key: Optional[str] = None,
        key_map: KeyMap = (),
    ) -> None:
        super().__init__()
        if bf16 not in (True, False, "auto"):
            raise ValueError(f"bf16 must be true, false or 'auto', not {bf16!r}")
        self.bf16 = bf16
        path = Path(checkpoint)
        self.checkpoint = path
        if not path.is_file():
            raise FileNotFoundError(_missing_teacher_message(path))
        self.differentiable = True
        if is_torchscript(path):
            self.network: nn.Module = torch.jit.load(str(path), map_location="cpu")
        elif is_onnx(path):
            self.network = OnnxNetwork(path)
            self.differentiable = False
        else:
            if network is None:
                raise ValueError(
                    f"{path}: a state dict needs the teacher's architecture (config value teacher_def) to load into"
                )
            _load_into(network, teacher_state(path, weights_key, key_map), path)
            _no_inplace_activations(network)
            self.network = network
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self.network.eval()
        self.contract = contract
        self.input_view: nn.Module = contract.input_adapter() if contract is not None else nn.Identity()
        self.to_local: nn.Module = contract.output_adapter() if contract is not None else nn.Identity()
        if contract is not None:
            self._check_contract(path, contract)
        if feature_layers and not self.hookable:
            raise ValueError(f"{path}: a {type(self.network).__name__} teacher has no layers to hook for VID")
        self.recorder = FeatureRecorder(self.network, feature_layers) if feature_layers else None

    @property
    def hookable(self) -> bool:
        """Whether VID can read this teacher's layers (not inside a TorchScript or ONNX file)."""
        return not isinstance(self.network, (torch.jit.ScriptModule, OnnxNetwork))

    def _check_contract(self, path: Path, contract: TeacherContract) -> None:
        """One pass on zeros of the declared input shape: the teacher must take it and give one output per name."""
        shape = (1, *contract.input_shape)
        try:
            with torch.no_grad():
                outputs = self.network(torch.zeros(shape))
        except Exception as e:  # any failure: the declared input does not fit the model
            raise ValueError(_input_mismatch(path, shape, e)) from e
        if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2 or outputs.shape[1] != len(contract.names):
            got = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
            raise ValueError(
                f"{path}: the teacher returns {got} for a {shape} input, not one value per output name "
                f"({len(contract.names)} in teacher_output_names)"
            )

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Stay in eval mode: batch-norm statistics and dropout of a frozen teacher never change."""
        return super().train(False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits over the (covered) local classes ``(B, C)`` and the configured layers' outputs, from one pass.

        ``image`` is the bundle's normalised image; the teacher's own view of it is made here in float32, before
        the bfloat16 region, so that a wide input range (torchxrayvision's +-1024) keeps its precision.
        """
        view = self.input_view(image)
        low_precision = self.computes_in_bf16(image.device.type)
        # a frozen teacher only supplies targets: bfloat16 rounds them slightly and makes its passes faster where the
        # hardware has bfloat16 units (docs/RESULTS.md, "The training fast path")
        with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=low_precision):
            logits = self.network(view)
        features = self.recorder.features if self.recorder is not None else []
        if low_precision:
            logits, features = logits.float(), [f.float() for f in features]
        return self.to_local(logits), features

    def computes_in_bf16(self, device_type: str) -> bool:
        """Whether the passes run under bfloat16 autocast on this kind of device (``bf16`` true, or auto and native)."""
        return self.bf16 is True or (self.bf16 == "auto" and native_bf16(device_type))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.network.parameters())

    @functools.cached_property
    def identity(self) -> str:
        """SHA-256 of what decides this teacher's outputs: its checkpoint file, the weights loaded from it (a key map
        changes which), its contract without the log's sources, the layers VID reads and the bf16 setting; the key of
        outputs cached on disk (``bundle.engines.precompute``). Computed once: the weights are frozen."""
        digest = hashlib.sha256(file_sha256(self.checkpoint).encode())
        for name, tensor in self.state_dict().items():
            data = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}".encode())
            digest.update(data.view(torch.uint8).numpy().tobytes())
        contract = {k: v for k, v in vars(self.contract).items() if k != "sources"} if self.contract else None
        layers = self.recorder.layers if self.recorder is not None else []
        digest.update(repr((contract, layers, self.bf16)).encode())
        return digest.hexdigest()


def teacher_vid_layers(
    checkpoint: str | os.PathLike,
    network: Optional[nn.Module],
    layers: Sequence[str] | str,
    teacher_input_shape: Sequence[int],
    student: nn.Module,
    student_layers: Sequence[str],
    student_input_shape: Sequence[int],
) -> list[str]:
    """The teacher layers VID pairs with ``student_layers``: ``layers`` as configured (config
    ``teacher_feature_layers``), or ``"auto"``: matched by output stride (``match_feature_layers``), the pairs logged.
    ``[]``, with one log line, for a teacher whose layers cannot be hooked (TorchScript, ONNX, no ``teacher_def``):
    VID is then off (``bundle.losses.MedTexLoss``)."""
    if network is None or is_torchscript(checkpoint) or is_onnx(checkpoint):
        kind = "ONNX" if is_onnx(checkpoint) else "TorchScript" if is_torchscript(checkpoint) else "architecture-less"
        logger.info(f"VID off: the {kind} teacher {checkpoint} has no layers to hook (KD and fidelity still run)")
        return []
    if isinstance(layers, str):
        if layers != "auto":
            raise ValueError(f"teacher_feature_layers: a list of layer names or 'auto', not {layers!r}")
        try:
            chosen = match_feature_layers(network, teacher_input_shape, student, student_layers, student_input_shape)
        except RuntimeError as e:  # the probe pass failed: the declared input does not fit the network
            raise ValueError(_input_mismatch(checkpoint, (1, *teacher_input_shape), e)) from e
        logger.info(
            "VID layer pairs (by output stride): " + ", ".join(f"{s} <- {t}" for s, t in zip(student_layers, chosen))
        )
        return chosen
    if len(layers) != len(student_layers):
        raise ValueError(
            f"teacher_feature_layers ({len(layers)}) and student_feature_layers ({len(student_layers)}) pair one to one"
        )
    return list(layers)


def _input_mismatch(path: str | os.PathLike, shape: Sequence[int], error: Exception) -> str:
    return (
        f"{path}: the teacher does not take a {tuple(shape)} input (config values teacher_input_channels, "
        f"teacher_input_size): {type(error).__name__}: {error}"
    )


def _load_into(network: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Strict loading, except that BatchNorm's ``num_batches_tracked`` counters may be missing (files from older
    PyTorch versions lack them; a frozen network in eval mode never reads them)."""
    own = network.state_dict()
    for key in own:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = own[key]
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(
            f"{path}: weights do not fit the configured teacher network (config values teacher_def, "
            f"teacher_key_map, teacher_weights_key): {e}"
        ) from e


def _no_inplace_activations(network: nn.Module) -> None:
    """Make in-place activations (torchvision-style ``ReLU(inplace=True)``) out-of-place: a hooked layer's output
    (VID) must not be overwritten by the next layer, and the fidelity pass needs it for backward."""
    for module in network.modules():
        if getattr(module, "inplace", False) is True and isinstance(module, (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU)):
            module.inplace = False


class OnnxNetwork(nn.Module):
    """An ONNX classifier run by onnxruntime on the CPU, as a module: ``(B, C, H, W)`` -> its outputs. No gradients
    flow through it (KD only: no fidelity term) and it has no layers to hook (no VID). Needs ``onnxruntime``
    (requirements-optional.txt)."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        try:
            import onnxruntime
        except ImportError as e:
            raise ImportError(f"{path}: an ONNX teacher needs onnxruntime (pip install onnxruntime)") from e
        self.session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        array = image.detach().float().cpu().numpy()
        output = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(output).to(image.device)


@functools.lru_cache(maxsize=None)  # asked on every teacher pass; the hardware does not change
def native_bf16(device_type: str) -> bool:
    """Whether bfloat16 runs natively, hence faster than fp32, on this kind of device (CUDA Ampere and later; CPUs
    with AVX512-BF16 or AMX, as oneDNN reports)."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type == "cpu":
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return bool(check()) if check is not None else False
    return False


def count_parameters(module: Any) -> int:
    """Number of parameters of a module (all of them, trainable or not)."""
    return sum(p.numel() for p in module.parameters())
