"""The explainer: an image-to-mask network whose mask, in [0, 1], selects what the student may see."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet
from torch import nn


class Explainer(nn.Module):
    """A compact MONAI BasicUNet whose last layer is a 1x1 convolution, then a sigmoid: one mask channel at the
    input's resolution.

    BasicUNet rather than MONAI's UNet because it can up-sample by interpolation ("nontrainable") instead of
    transposed convolutions, whose uneven kernel overlap printed a checkerboard into the masks; it also pads
    sizes that are not multiples of 16 instead of refusing them.

    Args:
        in_channels: image channels.
        features: BasicUNet channels, six numbers: the five encoder levels and the decoder's last level.
        upsample: BasicUNet up-sampling, ``"nontrainable"`` (interpolation, smooth), ``"deconv"`` or
            ``"pixelshuffle"``.
        init_bias: initial bias of the mask's 1x1 convolution; 0 starts every pixel at 0.5, positive values start
            with the whole image visible so that the student first learns from full images.
        scale: the U-Net runs on the image average-pooled by this factor (at most the factor that leaves 32 px),
            and its mask logits are interpolated (bilinear) back to the input's size; 1: full resolution. The
            U-Net's full-resolution levels move more memory than they compute (0.48 GFLOP but 21-30 ms at 224 px
            on 2 CPU cores); at scale 3 it costs about a tenth, its mask as fine as its features at a third of the
            resolution. Saved with the weights and checked on loading.
    """

    def __init__(
        self,
        in_channels: int = 3,
        features: Sequence[int] = (8, 8, 16, 32, 64, 8),
        upsample: str = "nontrainable",
        init_bias: float = 2.0,
        scale: int = 1,
    ) -> None:
        super().__init__()
        if len(features) != 6:
            raise ValueError(f"explainer features must be six numbers (BasicUNet), got {list(features)}")
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f"explainer scale must be a positive integer, got {scale!r}")
        self.scale = scale
        # saved with the weights: a model trained at one scale and deployed at another would load without error
        # and draw different masks, so loading compares them (``_load_from_state_dict``)
        self.register_buffer("input_scale", torch.tensor(scale, dtype=torch.int64))
        self.body = BasicUNet(
            spatial_dims=2, in_channels=in_channels, out_channels=1, features=tuple(features), upsample=upsample
        )
        # the default (small random) 1x1 weights keep gradients flowing; the bias sets the starting mask
        nn.init.constant_(self.body.final_conv.bias, init_bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs):
        key = prefix + "input_scale"
        saved = int(state_dict[key]) if key in state_dict else 1  # weights saved before the option: full scale
        if saved != self.scale:
            raise ValueError(
                f"these explainer weights were trained with scale {saved} but the network is built with scale "
                f"{self.scale}: set explainer_scale: {saved} in the config"
            )
        state_dict[key] = torch.tensor(saved, dtype=torch.int64)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, *args, **kwargs)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Return the mask ``(B, 1, H, W)`` in [0, 1]."""
        height, width = int(image.shape[-2]), int(image.shape[-1])
        # at most the factor that leaves 32 px: the U-Net halves its input four times, and normalising a 1 x 1
        # map fails in training
        scale = min(self.scale, max(1, min(height, width) // 32))
        if scale == 1:
            return torch.sigmoid(self.body(image))
        small = F.avg_pool2d(image, scale, ceil_mode=True)  # ceil: edge pixels of any size count too
        logits = self.body(small)
        return torch.sigmoid(F.interpolate(logits, size=[height, width], mode="bilinear", align_corners=False))
