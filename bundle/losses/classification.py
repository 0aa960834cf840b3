"""Supervised classification loss for both task kinds, so configs switch task with one value."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TASKS = ("multiclass", "multilabel")


class ClassificationLoss(nn.Module):
    """Cross-entropy for ``multiclass`` (labels: class index), masked BCE for ``multilabel`` (labels: 0/1/-1).

    -1 marks an unknown label: an unlabelled image (multi-class) or an unknown finding (CheXpert's ``ignore``
    policy). Unknown entries add nothing to the loss and the mean runs over the known entries only; a batch with
    no known label gives a zero loss that still has a gradient graph.
    """

    def __init__(self, task: str, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.task = task
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if self.task == "multiclass":
            target = label.reshape(-1).long()
            if target.shape[0] != logits.shape[0]:
                raise ValueError(f"multiclass labels must be one index per image, got shape {tuple(label.shape)}")
            if not bool((target >= 0).any()):
                return logits.sum() * 0.0
            return F.cross_entropy(logits, target, ignore_index=-1, label_smoothing=self.label_smoothing)
        target = label.reshape(logits.shape).to(logits.dtype)
        known = target >= 0
        losses = F.binary_cross_entropy_with_logits(logits, target.clamp(min=0), reduction="none")
        return (losses * known).sum() / known.sum().clamp(min=1)
