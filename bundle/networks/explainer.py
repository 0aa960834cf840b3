"""The explainer: an image-to-mask network whose mask, in [0, 1], selects what the student may see."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import UNet
from torch import nn


class Explainer(nn.Module):
    """A compact MONAI UNet, then a 1x1 convolution and a sigmoid: one mask channel at the input's resolution.

    Args:
        in_channels: image channels.
        channels: UNet channels per level (its depth is ``len(channels)``).
        strides: UNet down-sampling strides between levels (``len(channels) - 1`` of them).
        features: channels of the UNet's output before the 1x1 mask head.
        num_res_units: residual units per UNet block.
        init_bias: initial bias of the mask head; 0 starts every pixel at 0.5, positive values start with the
            whole image visible so that the student first learns from full images.
    """

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = (16, 32, 64),
        strides: Sequence[int] = (2, 2),
        features: int = 8,
        num_res_units: int = 1,
        init_bias: float = 2.0,
    ) -> None:
        super().__init__()
        self.body = UNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=features,
            channels=channels,
            strides=strides,
            num_res_units=num_res_units,
        )
        self.head = nn.Conv2d(features, 1, kernel_size=1)
        nn.init.constant_(self.head.bias, init_bias)  # default (small random) weights keep gradients flowing
        self.divisor = 1
        for s in strides:
            self.divisor *= int(s)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Return the mask ``(B, 1, H, W)`` in [0, 1]; H and W must be multiples of the product of the strides."""
        height, width = image.shape[-2], image.shape[-1]
        if height % self.divisor != 0 or width % self.divisor != 0:
            raise ValueError(f"explainer input size {height}x{width} must be a multiple of {self.divisor}")
        return torch.sigmoid(self.head(torch.relu(self.body(image))))
