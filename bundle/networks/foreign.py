"""A teacher of this bundle re-packaged with another library's contract: the stand-in for a teacher from elsewhere.

No foreign pretrained model can be downloaded here, so the tests and docs/RESULTS.md ("A teacher from elsewhere") make
one offline (``scripts/make_foreign_teacher.py``): a teacher trained by this bundle, wrapped so that it takes another
input (its own channels and size, intensities in [-1024, 1024]) and returns sigmoid scores for its own, larger label set
in another order, as torchxrayvision's models do. Since the knowledge inside is the original teacher's, a student
distilled from the wrapped teacher through the bundle's teacher contract should match one distilled from the original;
any mistake in the contract (a range, a channel, a name) shows as a difference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ForeignContractTeacher(nn.Module):
    """``network`` (which takes the bundle's ``(d - mean) / std`` images at ``network_size``) behind another contract.

    Input: ``(B, C, S, S)`` with display intensities ``d`` in [0, 1] stored as ``low + d (high - low)``
    (``value_range``), at any size ``S`` (area-resized to ``network_size`` inside). Output: ``sigmoid`` (or raw, with
    ``sigmoid: false``) of one score per entry of ``sources``: ``sources[i] = k`` is the wrapped network's logit ``k``,
    ``-1`` a distractor output the local task does not have (a fixed random linear function of the logits, like an
    output trained on another data set).
    """

    def __init__(
        self,
        network: nn.Module,
        network_size: int,
        network_mean: float,
        network_std: float,
        sources: Sequence[int],
        value_range: Sequence[float] = (-1024.0, 1024.0),
        sigmoid: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.network = network
        self.network_size = int(network_size)
        self.network_mean, self.network_std = float(network_mean), float(network_std)
        self.low, self.high = float(value_range[0]), float(value_range[1])
        self.sigmoid = sigmoid
        self.sources = [int(s) for s in sources]
        num_logits = max(self.sources) + 1
        generator = torch.Generator().manual_seed(seed)
        distractors = self.sources.count(-1)
        self.distractor = nn.Linear(num_logits, max(distractors, 1))
        with torch.no_grad():
            self.distractor.weight.copy_(torch.randn(self.distractor.weight.shape, generator=generator))
            self.distractor.bias.zero_()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        display = (image - self.low) / (self.high - self.low)
        if display.shape[-1] != self.network_size or display.shape[-2] != self.network_size:
            display = F.interpolate(display, size=(self.network_size, self.network_size), mode="area")
        logits = self.network((display - self.network_mean) / self.network_std)
        extra = self.distractor(logits)
        columns = []
        k = 0
        for source in self.sources:
            if source >= 0:
                columns.append(logits[:, source])
            else:
                columns.append(extra[:, k])
                k += 1
        outputs = torch.stack(columns, dim=1)
        return torch.sigmoid(outputs) if self.sigmoid else outputs
