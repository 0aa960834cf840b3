"""The explainer: an image-to-mask network whose mask, in [0, 1], selects what the student may see."""

from __future__ import annotations

from collections.abc import Sequence

import torch
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
    """

    def __init__(
        self,
        in_channels: int = 3,
        features: Sequence[int] = (8, 8, 16, 32, 64, 8),
        upsample: str = "nontrainable",
        init_bias: float = 2.0,
    ) -> None:
        super().__init__()
        if len(features) != 6:
            raise ValueError(f"explainer features must be six numbers (BasicUNet), got {list(features)}")
        self.body = BasicUNet(
            spatial_dims=2, in_channels=in_channels, out_channels=1, features=tuple(features), upsample=upsample
        )
        # the default (small random) 1x1 weights keep gradients flowing; the bias sets the starting mask
        nn.init.constant_(self.body.final_conv.bias, init_bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Return the mask ``(B, 1, H, W)`` in [0, 1]."""
        return torch.sigmoid(self.body(image))
