"""The student: a small classifier, by default a narrow MONAI DenseNet (same stage layout as a DenseNet teacher)."""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.nets import DenseNet


class Student(DenseNet):
    """A MONAI ``DenseNet`` with few, narrow layers: about 0.37 M parameters with the defaults (DenseNet121: 7 M).

    Its stages (``features.denseblock1`` ... ``features.denseblock4``) have the teacher's strides, so VID can pair
    them with a DenseNet teacher's stages of the same names. ``configs/students/small.yaml`` builds one with 0.06 M
    parameters: faster at batch 1, less accurate on the demo (docs/RESULTS.md, "A smaller student").
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 5,
        init_features: int = 32,
        growth_rate: int = 16,
        block_config: Sequence[int] = (3, 6, 8, 4),
        dropout_prob: float = 0.0,
    ) -> None:
        super().__init__(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=out_channels,
            init_features=init_features,
            growth_rate=growth_rate,
            block_config=tuple(block_config),
            dropout_prob=dropout_prob,
        )
