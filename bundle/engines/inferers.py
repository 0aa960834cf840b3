"""An inferer that runs the network under bfloat16 autocast on whatever device the batch is on.

MONAI's trainers and evaluators autocast only on CUDA (``amp: true``: float16 with a gradient scaler). Modern CPUs
with AVX512-BF16 or AMX run bfloat16 convolutions natively, and bfloat16 keeps float32's exponent range, so training
needs no loss scaling. Putting the autocast into the inferer, the one call MONAI makes to the network, brings it to
any MONAI engine from config alone (``train#inferer``), with no change to MONAI's iteration code.
"""

from __future__ import annotations

from typing import Any, Union

import torch
from monai.inferers import SimpleInferer

from bundle.networks.teacher import native_bf16


class AutocastInferer(SimpleInferer):
    """``SimpleInferer`` under ``torch.autocast(device, bfloat16)``; floating outputs come back as float32.

    Args:
        enabled: ``True``, ``False`` or ``"auto"`` (on where the device runs bfloat16 natively, see
            ``bundle.networks.teacher.native_bf16``). With MONAI's CUDA ``amp`` on, ``"auto"`` stays off and leaves
            precision to ``amp``.
        dtype: the autocast dtype.
    """

    def __init__(self, enabled: Union[bool, str] = "auto", dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        if enabled not in (True, False, "auto"):
            raise ValueError(f"enabled must be True, False or 'auto', got {enabled!r}")
        self.enabled = enabled
        self.dtype = dtype

    def active(self, device_type: str) -> bool:
        """Whether this call autocasts on ``device_type``."""
        if self.enabled == "auto":
            if torch.is_autocast_enabled(device_type):  # an outer autocast (MONAI's CUDA amp) already decides
                return False
            return native_bf16(device_type)
        return bool(self.enabled)

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> Any:
        device_type = inputs.device.type
        if not self.active(device_type):
            return super().__call__(inputs, network, *args, **kwargs)
        with torch.autocast(device_type, dtype=self.dtype):
            outputs = super().__call__(inputs, network, *args, **kwargs)
        # float32 logits: losses, metrics and saved predictions stay in full precision
        if isinstance(outputs, torch.Tensor) and outputs.is_floating_point():
            return outputs.float()
        return outputs
