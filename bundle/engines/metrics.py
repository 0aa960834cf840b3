"""Classification metrics shared by training, evaluation and reports (one definition each)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import ROCAUCMetric, compute_roc_auc
from monai.utils import Average


class ROCAUCKnownLabelsMetric(ROCAUCMetric):
    """MONAI's ROC AUC, except that -1 targets (unknown findings) are left out class by class.

    Without unknowns it is exactly ``compute_roc_auc``. With them, each class's AUC uses the images whose label
    for that class is known, and ``macro`` averages the classes that have both positives and negatives.
    """

    def aggregate(self, average: Average | str | None = None) -> np.ndarray | float:
        y_pred, y = self.get_buffer()
        if not isinstance(y_pred, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise ValueError("y_pred and y must be PyTorch Tensor.")
        average = Average(average or self.average)
        if y.ndim < 2 or not bool((y < 0).any()):
            return compute_roc_auc(y_pred=y_pred, y=y, average=average)
        if average not in (Average.MACRO, Average.NONE):
            raise ValueError(f"with unknown (-1) labels only 'macro' or 'none' averaging is defined, got {average}")
        per_class = []
        for c in range(y.shape[1]):
            known = y[:, c] >= 0
            pred_c, y_c = y_pred[known, c], y[known, c]
            both = bool(known.any()) and 0 < float(y_c.sum()) < float(known.sum())
            per_class.append(compute_roc_auc(pred_c, y_c) if both else float("nan"))
        values = np.asarray(per_class, dtype=np.float64)
        if average == Average.NONE:
            return values
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


class ROCAUCKnownLabels(IgniteMetricHandler):
    """Ignite handler for ``ROCAUCKnownLabelsMetric``; a drop-in for ``monai.handlers.ROCAUC``."""

    def __init__(self, average: Average | str = Average.MACRO, output_transform: Callable = lambda x: x) -> None:
        super().__init__(
            metric_fn=ROCAUCKnownLabelsMetric(average=Average(average)),
            output_transform=output_transform,
            save_details=False,
        )
