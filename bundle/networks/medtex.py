"""The deployable MED-TEX module: explainer + student, ``forward(image) -> logits`` and ``explain(image)``."""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

BASELINES = ("zero", "blur")
GATES = ("soft", "hard", "topk")


class MedTex(nn.Module):
    """Mask the image with the explainer's mask and classify what is left with the student.

    ``x' = M * x + (1 - M) * b`` where ``b`` is zero (the mean intensity after normalisation) or a blurred copy of
    ``x``. Without an explainer (ablations, the from-scratch baseline) ``M`` is all ones and ``x' = x``.

    Args:
        student: classifier mapping ``(B, C, H, W)`` to ``(B, num_classes)`` logits.
        explainer: mask network mapping ``(B, C, H, W)`` to ``(B, 1, H, W)`` in [0, 1], or ``None``.
        baseline: ``"zero"`` or ``"blur"``.
        blur_sigma: Gaussian sigma in pixels for the ``"blur"`` baseline.
        gate: ``"soft"``: the image is weighted by the mask ``M`` itself. ``"hard"``: each pixel is kept or removed
            whole, ``M`` read as the probability of keeping it: a Bernoulli draw per pixel in training, ``M > 0.5``
            in evaluation, with straight-through gradients (the derivative of the draw taken as 1), as discrete
            feature selectors do (L2X, VIBI). A soft mask can carry information in its grey levels that the student
            learns to read; a kept-or-removed pixel carries only its own value. ``explain`` still returns ``M``,
            whose order ranks the pixels; the mask prior on ``M`` (``bernoulli_kl`` to a rate) is then a budget on
            the expected fraction of pixels kept (an L0 budget). ``"topk"``: exactly the ``keep_fraction`` of each
            image's pixels with the highest ``M`` are kept whole, the rest removed, with straight-through gradients
            (a hard area budget, as L2X selects its k features): the mask cannot keep most of the image, whatever
            the loss's weights. The gate, and for ``"topk"`` the fraction, are saved with the weights and checked on
            loading.
        keep_fraction: share of the pixels the ``"topk"`` gate keeps, in (0, 1]; unused by the other gates.
    """

    def __init__(
        self,
        student: nn.Module,
        explainer: Optional[nn.Module] = None,
        baseline: str = "zero",
        blur_sigma: float = 4.0,
        gate: str = "soft",
        keep_fraction: float = 0.1,
    ) -> None:
        super().__init__()
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        if not 0.0 < keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
        self.gate_index = GATES.index(gate)
        self.hard_gate = gate == "hard"
        self.topk_gate = gate == "topk"
        self.keep_fraction = float(keep_fraction)
        # saved with the weights: a model trained with one gate and deployed with the other would load and predict
        # from other inputs, so loading compares them (``_load_from_state_dict``). The buffer's name predates the
        # top-k gate: it holds the gate's index in GATES (0 soft, 1 hard, 2 topk), so older weights load unchanged.
        self.register_buffer("input_hard_gate", torch.tensor(self.gate_index, dtype=torch.int64))
        self.register_buffer("input_keep_fraction", torch.tensor(self.keep_fraction, dtype=torch.float32))
        self.student = student
        self.explainer = explainer
        self.blur_baseline = baseline == "blur"
        self.blur = GaussianBlur(blur_sigma) if self.blur_baseline else nn.Identity()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)``."""
        return self.explain(image)[0]

    @torch.jit.export
    def explain(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits ``(B, num_classes)`` and the saliency mask ``(B, 1, H, W)`` in [0, 1]."""
        mask = self.mask(image)
        return self.student(self.apply_mask(image, mask)), mask

    @torch.jit.export
    def mask(self, image: torch.Tensor) -> torch.Tensor:
        """The explainer's mask, or ones without an explainer."""
        explainer = self.explainer
        if explainer is None:
            return torch.ones_like(image[:, :1])
        return explainer(image)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        *args: Any,
        **kwargs: Any,
    ) -> None:
        saved = int(state_dict.get(prefix + "input_hard_gate", 0))  # weights saved before the option: soft
        if saved != self.gate_index:
            raise ValueError(
                f"these weights were trained with mask_gate: {GATES[saved]} but the network is built with mask_gate:"
                f" {GATES[self.gate_index]}: set mask_gate: {GATES[saved]} in the config"
            )
        state_dict[prefix + "input_hard_gate"] = torch.tensor(saved, dtype=torch.int64)
        # weights saved before the top-k gate have no fraction; only the top-k gate reads it
        fraction = float(state_dict.get(prefix + "input_keep_fraction", self.keep_fraction))
        if self.topk_gate and abs(fraction - self.keep_fraction) > 1e-6:
            raise ValueError(
                f"these weights were trained with mask_keep_fraction: {fraction:g} but the network is built with"
                f" mask_keep_fraction: {self.keep_fraction:g}: set mask_keep_fraction: {fraction:g} in the config"
            )
        state_dict[prefix + "input_keep_fraction"] = torch.tensor(fraction, dtype=torch.float32)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs)

    @torch.jit.export
    def gate(self, mask: torch.Tensor) -> torch.Tensor:
        """The mask that weights the image: ``M`` itself (soft gate), or kept-or-removed pixels (hard and top-k
        gates)."""
        if self.topk_gate:
            return self.top_pixels(mask)
        if not self.hard_gate:
            return mask
        if self.training:
            kept = (mask > torch.rand_like(mask)).to(mask.dtype)  # P(kept) = M: a Bernoulli draw per pixel
        else:
            kept = (mask > 0.5).to(mask.dtype)
        return mask + (kept - mask).detach()  # forward: kept; backward: the gradient of M (straight-through)

    @torch.jit.export
    def top_pixels(self, mask: torch.Tensor) -> torch.Tensor:
        """1 on the ``keep_fraction`` of each image's pixels with the highest ``M``, else 0; straight-through
        gradients. Ties at the threshold keep every tied pixel."""
        flat = mask.flatten(1)
        count = max(1, int(round(self.keep_fraction * flat.shape[1])))
        threshold = flat.topk(count, dim=1).values[:, -1:]
        kept = (flat >= threshold).to(mask.dtype).view_as(mask)
        return mask + (kept - mask).detach()

    @torch.jit.export
    def remove_region(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The image with the mask's region removed, for the deletion term: ``(1 - G(M)) * x + G(M) * b``, what the
        gate keeps replaced by the baseline (the complement of the gate of ``M``, not the gate of ``1 - M``: the top-k
        of ``1 - M`` would be the least salient pixels)."""
        return self.blend(image, 1.0 - self.gate(mask))

    @torch.jit.export
    def apply_mask(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``G(M) * x + (1 - G(M)) * b``: what the student sees (``G``: the gate)."""
        return self.blend(image, self.gate(mask))

    @torch.jit.export
    def blend(self, image: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``w * x + (1 - w) * b``, ``b`` the baseline."""
        if self.blur_baseline:
            return weight * image + (1.0 - weight) * self.blur(image)
        return weight * image


class ExplainingMedTex(MedTex):
    """``MedTex`` whose ``forward`` returns both outputs, ``(logits, mask)``: for exporters that only trace ``forward``
    (ONNX). Same submodules and state dict keys as ``MedTex``, so ``models/model.pt`` loads into either.
    """

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        """Class logits ``(B, num_classes)`` and the saliency mask ``(B, 1, H, W)`` in [0, 1]."""
        return self.explain(image)


class GaussianBlur(nn.Module):
    """Separable Gaussian blur with reflect padding (MONAI's ``GaussianFilter`` does not compile to TorchScript)."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        # for the type checker only: a buffer is reached through nn.Module.__getattr__ (Tensor | Module); not a
        # class-level annotation, which TorchScript would take for an attribute besides the buffer
        self.kernel: torch.Tensor
        radius = max(1, int(round(3 * sigma)))
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
        self.register_buffer("kernel", kernel / kernel.sum())
        self.radius = radius

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        channels = image.shape[1]
        size = self.kernel.shape[0]
        padded = F.pad(image, [self.radius, self.radius, self.radius, self.radius], mode="reflect")
        rows = F.conv2d(padded, self.kernel.view(1, 1, 1, size).expand(channels, 1, 1, size), groups=channels)
        return F.conv2d(rows, self.kernel.view(1, 1, size, 1).expand(channels, 1, size, 1), groups=channels)
