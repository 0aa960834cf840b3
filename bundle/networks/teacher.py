"""The frozen teacher: weights from a state dict, a MONAI bundle checkpoint or TorchScript; logits + features."""

from __future__ import annotations

import functools
import os
import pickle
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from bundle.networks.features import FeatureRecorder

TEACHER_COMMAND = "python -m monai.bundle run training --config_file configs/train_teacher.yaml --dataset_dir DIR"
# keys under which MONAI's CheckpointSaver (several objects) and other trainers store the network's weights
_WEIGHT_KEYS = ("model", "network", "state_dict", "model_state_dict", "net")


def is_torchscript(path: str | os.PathLike) -> bool:
    """TorchScript archives carry a ``code/`` folder; ``torch.save`` archives do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict saved directly or inside a checkpoint dict, with ``weights_only=True`` (no code runs).

    A file that pickles anything but tensors and plain containers (which could run code when unpickled) is refused
    with a ``ValueError`` naming the file, instead of torch's long unpickling message.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path}: refused: it holds pickled Python objects, not only weights, and loading it could run code. "
            "Save a plain state dict (torch.save(model.state_dict(), path)) from a source you trust."
        ) from e
    if isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        for key in _WEIGHT_KEYS:
            if key in state and isinstance(state[key], dict):
                return state[key]
        raise ValueError(f"{path}: a checkpoint dict without network weights under any of {_WEIGHT_KEYS}")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    return state


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

    Args:
        checkpoint: a state dict file, a MONAI bundle checkpoint (weights under ``model`` or ``network``) or a
            TorchScript file.
        network: the architecture for state dicts and checkpoints (ignored for TorchScript).
        feature_layers: names of layers (from ``named_modules()``) whose outputs feed VID; recorded by forward
            hooks during the same forward pass that gives the logits.
        bf16: run the teacher's passes under bfloat16 autocast (outputs stay float32): ``True``, ``False``, or
            ``"auto"`` (where the device has native bfloat16, ``native_bf16``).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        network: Optional[nn.Module] = None,
        feature_layers: Sequence[str] = (),
        bf16: bool | str = "auto",
    ) -> None:
        super().__init__()
        if bf16 not in (True, False, "auto"):
            raise ValueError(f"bf16 must be true, false or 'auto', not {bf16!r}")
        self.bf16 = bf16
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(_missing_teacher_message(path))
        if is_torchscript(path):
            self.network: nn.Module = torch.jit.load(str(path), map_location="cpu")
        else:
            if network is None:
                raise ValueError(f"{path}: a state dict needs the teacher's architecture ('network') to load into")
            try:
                network.load_state_dict(load_weights(path))
            except RuntimeError as e:
                raise ValueError(f"{path}: weights do not fit the configured teacher network: {e}") from e
            self.network = network
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self.network.eval()
        self.recorder = FeatureRecorder(self.network, feature_layers) if feature_layers else None

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Stay in eval mode: batch-norm statistics and dropout of a frozen teacher never change."""
        return super().train(False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits ``(B, num_classes)`` and the configured layers' outputs, from one forward pass."""
        low_precision = self.computes_in_bf16(image.device.type)
        # a frozen teacher only supplies targets: bfloat16 rounds them slightly and makes its passes faster where the
        # hardware has bfloat16 units (docs/RESULTS.md, "Speed")
        with torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=low_precision):
            logits = self.network(image)
        features = self.recorder.features if self.recorder is not None else []
        if low_precision:
            logits, features = logits.float(), [f.float() for f in features]
        return logits, features

    def computes_in_bf16(self, device_type: str) -> bool:
        """Whether the passes run under bfloat16 autocast on this kind of device (``bf16`` true, or auto and native)."""
        return self.bf16 is True or (self.bf16 == "auto" and native_bf16(device_type))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.network.parameters())


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
