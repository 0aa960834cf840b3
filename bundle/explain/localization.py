"""Localisation of saliency maps against ground-truth lesion masks: the pointing game."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric


def pointing_game(saliency: torch.Tensor, target: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """Per image: 1.0 if the saliency maximum lies in the target mask (grown by ``tolerance`` pixels), else 0.0;
    NaN for images whose target mask is empty (nothing to point at). Shapes ``(B, 1, H, W)``; ties: first pixel.
    """
    if saliency.shape != target.shape:
        raise ValueError(f"saliency {tuple(saliency.shape)} and target {tuple(target.shape)} must have one shape")
    target = (target > 0.5).float()
    if tolerance > 0:
        target = F.max_pool2d(target, kernel_size=2 * tolerance + 1, stride=1, padding=tolerance)
    flat_saliency = saliency.flatten(1)
    flat_target = target.flatten(1)
    peak = flat_saliency.argmax(dim=1, keepdim=True)
    hit = flat_target.gather(1, peak).squeeze(1)
    has_target = flat_target.amax(dim=1) > 0
    return torch.where(has_target, hit, torch.full_like(hit, float("nan")))


class PointingGameMetric(CumulativeIterationMetric):
    """Pointing-game hit rate over a data set: the mean over images that have a lesion (NaN ones are skipped)."""

    def __init__(self, tolerance: int = 0) -> None:
        super().__init__()
        self.tolerance = tolerance

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # (B, 1, H, W): MONAI adds the batch axis back to decollated items (IterationMetric._compute_list)
        return pointing_game(y_pred, y, self.tolerance)

    def aggregate(self) -> float:
        hits = self.get_buffer()
        hits = hits[~torch.isnan(hits)]
        return float(hits.mean()) if hits.numel() else float("nan")


class PointingGame(IgniteMetricHandler):
    """Ignite handler for ``PointingGameMetric``; ``output_transform`` must give ``(saliency, lesion_mask)``."""

    def __init__(self, tolerance: int = 0, output_transform: Callable = lambda x: x) -> None:
        super().__init__(metric_fn=PointingGameMetric(tolerance), output_transform=output_transform, save_details=False)
