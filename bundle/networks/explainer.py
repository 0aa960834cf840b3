"""The explainer: an image-to-mask network whose mask, in [0, 1], selects what the student may see."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet
from monai.networks.nets.basic_unet import UpCat
from torch import nn


class Explainer(nn.Module):
    """A compact MONAI BasicUNet whose last layer is a 1x1 convolution, then a sigmoid: one mask channel at the
    input's resolution.

    BasicUNet rather than MONAI's UNet because it can up-sample by interpolation ("nontrainable") instead of
    transposed convolutions, whose uneven kernel overlap printed a checkerboard into the masks; it also pads
    sizes that are not multiples of 16 instead of refusing them (here only where a size needs it, which lets
    ``torch.compile`` train the explainer: ``_UpCatPaddingWhenNeeded``).

    Args:
        in_channels: image channels.
        features: BasicUNet channels, six numbers: the five encoder levels and the decoder's last level.
        upsample: BasicUNet up-sampling, ``"nontrainable"`` (interpolation, smooth), ``"deconv"`` or
            ``"pixelshuffle"``.
        init_bias: initial bias of the mask's 1x1 convolution; 0 starts every pixel at 0.5, positive values start
            with the whole image visible so that the student first learns from full images.
        scale: the U-Net runs at this factor below the input's resolution; 1: full resolution. The U-Net's
            full-resolution levels move more memory than they compute, so a factor k costs about 1/k^2 of that
            (docs/PERFORMANCE.md, "Explainer scale 1 (unshuffle) instead of 2"). Saved with the weights and checked
            on loading; the configs' default is ``default_scale(image_size)``.
        scale_mode: how the U-Net gets below full resolution. ``"pool"``: the image average-pooled by ``scale``
            (at most the factor that leaves 32 px), the mask logits interpolated (bilinear) back; the weights fit
            any scale, but details smaller than a cell are lost. ``"unshuffle"``: each ``scale`` x ``scale`` cell
            becomes ``scale**2`` channels (``pixel_unshuffle``) and the U-Net returns one logit per pixel of the
            cell (``pixel_shuffle``), so nothing is averaged away; the first and last layers' shapes depend on the
            scale. On the demo at 128 px the masks localised lesions better this way than pooled
            (docs/RESULTS.md, "Explainer scale").
    """

    def __init__(
        self,
        in_channels: int = 3,
        features: Sequence[int] = (8, 8, 16, 32, 64, 8),
        upsample: str = "nontrainable",
        init_bias: float = 2.0,
        scale: int = 1,
        scale_mode: str = "unshuffle",
    ) -> None:
        super().__init__()
        if len(features) != 6:
            raise ValueError(f"explainer features must be six numbers (BasicUNet), got {list(features)}")
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f"explainer scale must be a positive integer, got {scale!r}")
        if scale_mode not in ("pool", "unshuffle"):
            raise ValueError(f"explainer scale_mode must be 'pool' or 'unshuffle', got {scale_mode!r}")
        self.scale = scale
        self.unshuffle = scale_mode == "unshuffle" and scale > 1
        factor = scale * scale if self.unshuffle else 1
        # saved with the weights: a model trained at one scale and deployed at another would load without error
        # and draw different masks, so loading compares them (``_load_from_state_dict``)
        self.register_buffer("input_scale", torch.tensor(scale, dtype=torch.int64))
        self.register_buffer("input_unshuffle", torch.tensor(int(self.unshuffle), dtype=torch.int64))
        self.body = BasicUNet(
            spatial_dims=2,
            in_channels=in_channels * factor,
            out_channels=factor,
            features=tuple(features),
            upsample=upsample,
        )
        _instance_norms_to_group_norms(self.body)
        _pad_only_when_needed(self.body)
        # the default (small random) 1x1 weights keep gradients flowing; the bias sets the starting mask
        nn.init.constant_(self.body.final_conv.bias, init_bias)

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
        # weights saved before these options have neither buffer: full scale, pooling
        saved_scale = int(state_dict.get(prefix + "input_scale", 1))
        saved_unshuffle = int(state_dict.get(prefix + "input_unshuffle", 0))
        if (saved_scale, saved_unshuffle) != (self.scale, int(self.unshuffle)):
            raise ValueError(
                f"these explainer weights were trained with {_scale_name(saved_scale, saved_unshuffle)} but the"
                f" network is built with {_scale_name(self.scale, self.unshuffle)}: set explainer_scale: {saved_scale}"
                f" and explainer_scale_mode: {'unshuffle' if saved_unshuffle else 'pool'} in the config"
            )
        state_dict[prefix + "input_scale"] = torch.tensor(saved_scale, dtype=torch.int64)
        state_dict[prefix + "input_unshuffle"] = torch.tensor(saved_unshuffle, dtype=torch.int64)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Return the mask ``(B, 1, H, W)`` in [0, 1]."""
        height, width = int(image.shape[-2]), int(image.shape[-1])
        if self.unshuffle:
            # every pixel reaches the U-Net (as k*k channels per cell) and every output pixel has its own logit;
            # the weights fix the factor, so images too small for it are refused rather than pooled less
            if min(height, width) < 32 * self.scale:
                raise ValueError(
                    f"explainer scale {self.scale} (unshuffle) needs images of at least {32 * self.scale} px (the U-Net"
                    f" halves its input four times), got {height} x {width}: lower explainer_scale"
                )
            pad_h, pad_w = -height % self.scale, -width % self.scale
            padded = F.pad(image, [0, pad_w, 0, pad_h], mode="replicate") if pad_h or pad_w else image
            logits = F.pixel_shuffle(self.body(F.pixel_unshuffle(padded, self.scale)), self.scale)
            return torch.sigmoid(logits[..., :height, :width])
        # at most the factor that leaves 32 px: the U-Net halves its input four times, and normalising a 1 x 1
        # map fails in training
        scale = min(self.scale, max(1, min(height, width) // 32))
        if scale == 1:
            return torch.sigmoid(self.body(image))
        small = F.avg_pool2d(image, scale, ceil_mode=True)  # ceil: edge pixels of any size count too
        logits = self.body(small)
        return torch.sigmoid(F.interpolate(logits, size=[height, width], mode="bilinear", align_corners=False))


def default_scale(image_size: int | Sequence[int]) -> int:
    """The configs' default ``explainer_scale`` for an image size: 2 from 128 px up (the U-Net then sees at least
    64 px), 1 below.

    Why (docs/DECISIONS.md, "Explainer scale 2 from 128 px, `unshuffle`, never 4"): on the 128 px demo over three
    seeds, scale 2 with ``unshuffle`` classified as well as full resolution and its masks pointed at lesions as often
    or more, and it draws masks faster (docs/RESULTS.md, "Explainer scale"; docs/PERFORMANCE.md). Scale 4 pointed at
    lesions less often on the same demo, so no default picks it.
    """
    size = min(int(s) for s in image_size) if isinstance(image_size, Sequence) else int(image_size)
    return 2 if size >= 128 else 1


def _instance_norms_to_group_norms(module: nn.Module) -> None:
    """Replace every ``InstanceNorm2d`` in ``module`` by the same normalisation as a ``GroupNorm`` with one channel per
    group, in place.

    The same function (per-sample, per-channel statistics, the same eps and affine weights, stored under the same
    state dict keys, so saved weights load either way), but PyTorch runs instance norm as a batch norm on a
    ``(1, B*C, H, W)`` view, which copies a channels_last tensor to contiguous and back at every layer, while group
    norm has a channels_last CPU kernel: the explainer takes about a third less time at 224 px (scripts/benchmark.py).
    BasicUNet's ``norm`` argument cannot ask for this itself: its group count would have to change with each level.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.InstanceNorm2d) and not child.track_running_stats:
            group_norm = nn.GroupNorm(child.num_features, child.num_features, eps=child.eps, affine=child.affine)
            if child.affine:
                group_norm.load_state_dict(child.state_dict())
            setattr(module, name, group_norm)
        else:
            _instance_norms_to_group_norms(child)


class _UpCatPaddingWhenNeeded(UpCat):
    """MONAI's ``UpCat`` (up-sample, concatenate with the encoder's map, convolve) that pads the up-sampled map only
    where it is one pixel short of the encoder's (odd sizes halved by max pooling), by repeating its last row or
    column: the same function and weights.

    MONAI's ``UpCat`` calls a replication pad on every up-sampled map, by zero pixels when the sizes match: a copy of
    the map at each of the U-Net's four levels, and a padding whose backward PyTorch 2.13's inductor fails to compile
    on channels_last maps. Repeating the edge by concatenation compiles (its backward is a sum of slices).
    """

    def forward(self, x: torch.Tensor, x_e: Optional[torch.Tensor]) -> torch.Tensor:
        up = self.upsample(x)
        if x_e is None:
            return self.convs(up)
        if self.is_pad:
            if up.shape[-2] != x_e.shape[-2]:
                up = torch.cat([up, up[..., -1:, :]], dim=-2)
            if up.shape[-1] != x_e.shape[-1]:
                up = torch.cat([up, up[..., -1:]], dim=-1)
        return self.convs(torch.cat([x_e, up], dim=1))


def _pad_only_when_needed(module: nn.Module) -> None:
    """Make every MONAI ``UpCat`` in ``module`` a ``_UpCatPaddingWhenNeeded``, in place (same submodules and state
    dict keys)."""
    for child in module.modules():
        if type(child) is UpCat:
            child.__class__ = _UpCatPaddingWhenNeeded


def _scale_name(scale: int, unshuffle: int | bool) -> str:
    return f"scale {scale}" + (" (unshuffle)" if unshuffle else "")
