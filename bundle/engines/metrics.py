"""Classification metrics shared by training, evaluation and reports (one definition each)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric, ROCAUCMetric, compute_roc_auc
from monai.utils import Average
from sklearn.metrics import cohen_kappa_score


class ROCAUCKnownLabelsMetric(ROCAUCMetric):
    """MONAI's ROC AUC, except that -1 targets (unknown findings) are left out class by class, and ``macro``
    averages the classes that have both positives and negatives in the set (MONAI's macro is NaN as soon as one
    class is absent, which small test sets and rare findings make common). Each class's AUC is MONAI's
    ``compute_roc_auc`` over the images whose label for that class is known.
    """

    def aggregate(self, average: Average | str | None = None) -> np.ndarray | float | npt.ArrayLike:  # as MONAI's
        y_pred, y = self.get_buffer()
        if not isinstance(y_pred, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise ValueError("y_pred and y must be PyTorch Tensor.")
        # one device and full precision: under CUDA + AMP the buffers can hold fp16 predictions on the GPU beside
        # labels on the CPU, which MONAI's compute_roc_auc indexes together
        y_pred, y = y_pred.detach().float().cpu(), y.detach().cpu()
        average = Average(average or self.average)
        if y.ndim < 2 or average not in (Average.MACRO, Average.NONE):
            if bool((y < 0).any()):
                raise ValueError(f"with unknown (-1) labels only 'macro' or 'none' averaging is defined: {average}")
            return compute_roc_auc(y_pred=y_pred, y=y, average=average)
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


class PerClassROCAUC(ROCAUCKnownLabels):
    """ROC AUC of each class, stored as ``<name>_<class>`` scalars so that ``MetricsSaver`` writes one row each."""

    def __init__(self, class_names: Sequence[str], output_transform: Callable = lambda x: x) -> None:
        super().__init__(average=Average.NONE, output_transform=output_transform)
        self.class_names = [str(c) for c in class_names]

    def completed(self, engine: Any, name: str) -> None:
        values = np.atleast_1d(np.asarray(self.metric_fn.aggregate(), dtype=np.float64))  # compute() keeps only [0]
        store_per_class(engine, name, self.class_names, values)


def store_per_class(engine: Any, name: str, class_names: Sequence[str], values: np.ndarray) -> None:
    """Each class's value as ``<name>_<class>`` in ``engine.state.metrics``, one ``MetricsSaver`` row each."""
    if len(values) != len(class_names):
        raise ValueError(f"{len(values)} per-class {name} values for {len(class_names)} class names")
    for class_name, value in zip(class_names, values):
        engine.state.metrics[f"{name}_{class_name.replace(' ', '_')}"] = float(value)


class _BufferedMetric(CumulativeIterationMetric):
    """Keeps every batch's (probabilities, targets) for metrics computed over the whole set at the end."""

    # narrower than IterationMetric's (y optional, **kwargs): these metrics need labels and take no options, and
    # MONAI's __call__ passes exactly (y_pred, y)
    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return y_pred, y

    def _stacked(self) -> tuple[np.ndarray, np.ndarray]:
        y_pred, y = self.get_buffer()
        return y_pred.detach().cpu().numpy(), y.detach().cpu().numpy()


class AccuracyMetric(_BufferedMetric):
    """Multi-class: the most probable class is the label's (one-hot) class. Multi-label: each known finding's
    prediction (probability >= ``threshold``) equals its label (-1 labels left out)."""

    def __init__(self, multilabel: bool = False, threshold: float = 0.5) -> None:
        super().__init__()
        self.multilabel, self.threshold = multilabel, threshold

    def aggregate(self) -> float:
        y_pred, y = self._stacked()
        if not self.multilabel:
            return float((y_pred.argmax(axis=1) == y.argmax(axis=1)).mean())
        known = y >= 0
        return float(((y_pred >= self.threshold) == (y == 1))[known].mean()) if known.any() else float("nan")


class QuadraticKappaMetric(_BufferedMetric):
    """Quadratic-weighted Cohen's kappa between the label's grade and the most probable grade (ordinal tasks)."""

    def aggregate(self) -> float:
        y_pred, y = self._stacked()
        return float(cohen_kappa_score(y.argmax(axis=1), y_pred.argmax(axis=1), weights="quadratic"))


class OperatingPointMetric(_BufferedMetric):
    """Sensitivity (true-positive rate) or specificity (true-negative rate) of each class at the operating point the
    bundle predicts with: the most probable class for multi-class tasks (each class one against the rest),
    probability >= ``threshold`` for each finding of multi-label tasks (-1 labels left out). ``aggregate`` returns
    the per-class values (NaN for a class without positives, resp. negatives, in the set)."""

    def __init__(self, measure: str = "sensitivity", multilabel: bool = False, threshold: float = 0.5) -> None:
        super().__init__()
        if measure not in ("sensitivity", "specificity"):
            raise ValueError(f"measure must be 'sensitivity' or 'specificity', not {measure!r}")
        self.measure, self.multilabel, self.threshold = measure, multilabel, threshold

    def aggregate(self) -> np.ndarray:
        y_pred, y = self._stacked()
        if self.multilabel:
            predicted = y_pred >= self.threshold
        else:
            predicted = np.eye(y_pred.shape[1], dtype=bool)[y_pred.argmax(axis=1)]
        known = y >= 0
        wanted = (y == 1) if self.measure == "sensitivity" else (y == 0)  # the cases whose rate is measured
        hits = (predicted == (y == 1)) & wanted & known
        n = (wanted & known).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, hits.sum(axis=0) / np.maximum(n, 1), np.nan)


class OperatingPoint(IgniteMetricHandler):
    """Ignite handler for ``OperatingPointMetric``: the macro mean over the classes that have cases as ``<name>``,
    and each class's value as ``<name>_<class>``, so that ``MetricsSaver`` writes one row each."""

    def __init__(
        self,
        class_names: Sequence[str],
        measure: str = "sensitivity",
        multilabel: bool = False,
        threshold: float = 0.5,
        output_transform: Callable = lambda x: x,
    ) -> None:
        super().__init__(
            metric_fn=OperatingPointMetric(measure, multilabel, threshold),
            output_transform=output_transform,
            save_details=False,
        )
        self.class_names = [str(c) for c in class_names]

    def completed(self, engine: Any, name: str) -> None:
        values = np.asarray(self.metric_fn.aggregate(), dtype=np.float64)
        store_per_class(engine, name, self.class_names, values)
        engine.state.metrics[name] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


class Accuracy(IgniteMetricHandler):
    """Ignite handler for ``AccuracyMetric``."""

    def __init__(
        self, multilabel: bool = False, threshold: float = 0.5, output_transform: Callable = lambda x: x
    ) -> None:
        super().__init__(
            metric_fn=AccuracyMetric(multilabel, threshold), output_transform=output_transform, save_details=False
        )


class QuadraticKappa(IgniteMetricHandler):
    """Ignite handler for ``QuadraticKappaMetric``."""

    def __init__(self, output_transform: Callable = lambda x: x) -> None:
        super().__init__(metric_fn=QuadraticKappaMetric(), output_transform=output_transform, save_details=False)
