"""The student: a small classifier, by default a narrow MONAI DenseNet (same stage layout as a DenseNet teacher)."""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import DenseNet, ResNet
from torch import nn


class Student(DenseNet):
    """A MONAI ``DenseNet`` with few, narrow layers: about 0.37 M parameters with the defaults (DenseNet121: 7 M).

    Its stages (``features.denseblock1`` ... ``features.denseblock4``) have the teacher's strides, so VID can pair
    them with a DenseNet teacher's stages of the same names. Faster at batch 1, each measured on the demo
    (docs/RESULTS.md, "Students for batch-1 latency"): ``configs/students/shallow.yaml`` (6 wider layers,
    ``bn_size`` 2, a 3 x 3 stem; 0.18 M parameters), ``configs/students/small.yaml`` (0.06 M) and ``ResNetStudent``.

    Args:
        in_channels: image channels.
        out_channels: classes.
        init_features, growth_rate, block_config, dropout_prob, bn_size: MONAI ``DenseNet``'s.
        stem_kernel_size: kernel of the stride-2 stem convolution, odd; MONAI's DenseNet fixes 7 (49/9 times the
            multiply-adds of 3).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 5,
        init_features: int = 32,
        growth_rate: int = 16,
        block_config: Sequence[int] = (3, 6, 8, 4),
        dropout_prob: float = 0.0,
        bn_size: int = 4,
        stem_kernel_size: int = 7,
    ) -> None:
        _check_stem_kernel("Student", stem_kernel_size)
        super().__init__(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=out_channels,
            init_features=init_features,
            growth_rate=growth_rate,
            block_config=tuple(block_config),
            dropout_prob=dropout_prob,
            bn_size=bn_size,
        )
        if stem_kernel_size != 7:
            # MONAI's DenseNet has no argument for its stem's kernel: replace the 7 x 7 convolution, same stride 2
            stem = nn.Conv2d(
                in_channels, init_features, stem_kernel_size, stride=2, padding=stem_kernel_size // 2, bias=False
            )
            nn.init.kaiming_normal_(stem.weight)  # as DenseNet initialises its convolutions
            self.features.conv0 = stem


class ResNetStudent(ResNet):
    """A narrow MONAI ``ResNet`` (ResNet-10 layout: one basic block per stage, widths 32, 48, 96, 160 and a 3 x 3
    stride-2 stem with the defaults): about 0.57 M parameters, built by ``configs/students/resnet.yaml``.

    Why a second architecture: at batch 1 on a CPU a DenseNet's every layer normalises and concatenates all earlier
    feature maps: with the default ``Student``, explainer + student misses the latency target against the teacher
    (docs/PERFORMANCE.md). Of the ResNets tried on the 128 px demo (docs/DECISIONS.md, "The ResNet student's
    widths"), these defaults lost the least test AUC against the DenseNet. The stem's
    stride 2 (MONAI's default is 1) puts ``layer1`` ... ``layer4`` at a DenseNet teacher's strides (4, 8, 16, 32), so
    VID pairs ``layer2``/``layer3`` with ``features.denseblock2``/``features.denseblock3``; a 3 x 3 stem costs a fifth
    of a 7 x 7 one, which pays for the wider ``layer1``.

    Args:
        in_channels: image channels.
        out_channels: classes.
        layers: basic blocks per stage.
        widths: channels of the four stages.
        stem_kernel_size: kernel of the stem's stride-2 convolution, odd (MONAI's default is 7).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 5,
        layers: Sequence[int] = (1, 1, 1, 1),
        widths: Sequence[int] = (32, 48, 96, 160),
        stem_kernel_size: int = 3,
    ) -> None:
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f"ResNetStudent needs four stages: layers {list(layers)}, widths {list(widths)}")
        _check_stem_kernel("ResNetStudent", stem_kernel_size)
        super().__init__(
            block="basic",
            layers=list(layers),
            block_inplanes=list(widths),
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_size=stem_kernel_size,
            conv1_t_stride=2,
            num_classes=out_channels,
        )


def _check_stem_kernel(network: str, kernel_size: int) -> None:
    """Both students pad their stride-2 stem by ``kernel_size // 2``: an even kernel would shift the stem's output
    grid by half a pixel, so it is refused."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{network} stem_kernel_size must be odd and positive, got {kernel_size}")
