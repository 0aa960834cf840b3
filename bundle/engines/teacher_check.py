"""Is the teacher read correctly? Its predictions on a few local images, under the local class names, before training.

    python -m monai.bundle run check_teacher --config_file "['configs/train.yaml','configs/teachers/NAME.yaml']" \
        --dataset_dir DIR [--check_teacher_images 8]

A wrong input range, a swapped channel order or a mislabelled output does not crash anything: the run trains, on
targets that mean nothing. This prints, for the first validation images, each image's known labels beside the
teacher's probabilities for the local classes it covers (through the whole contract: the teacher's own view of the
image, its outputs turned into logits, the label map), and the teacher's ROC AUC per class over them: near 0.5 on a
task the teacher should know, or well below, says the contract is wrong before any training time is spent.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import DataLoader

from bundle.engines.metrics import ROCAUCKnownLabelsMetric
from bundle.networks.teacher import FrozenTeacher


def teacher_probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """The teacher's local logits as probabilities (multi-class: a softmax over the covered classes)."""
    return torch.softmax(logits, dim=1) if task == "multiclass" else torch.sigmoid(logits)


def check_teacher(
    teacher: FrozenTeacher,
    dataset: Any,
    class_names: Sequence[str],
    task: str,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
) -> dict[str, Any]:
    """Print the teacher's probabilities for the local classes it covers on every image of ``dataset`` (a MONAI
    ``Dataset`` of items with ``image`` and ``label``), and its ROC AUC per class over them; return them as a dict
    (``files``, ``classes``, ``probabilities``, ``labels``, ``auc``)."""
    covered = teacher.contract.labels.covered if teacher.contract is not None else list(range(len(class_names)))
    names = [str(class_names[c]) for c in covered]
    teacher = teacher.to(device)
    probabilities, labels = [], []
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size, num_workers=0):
            logits, _ = teacher(torch.as_tensor(batch["image"]).float().to(device))
            probabilities.append(teacher_probabilities(logits.float(), task).cpu())
            labels.append(torch.as_tensor(batch["label"]))
    files = [Path(str(item["image"])).name for item in dataset.data]
    if not files:
        raise SystemExit("check_teacher: no images to check (the datalist's validation list is empty)")
    p = torch.cat(probabilities)
    y = torch.cat(labels)
    if task == "multiclass":
        onehot = torch.full((len(y), len(class_names)), -1.0)
        known = y >= 0
        onehot[known] = torch.nn.functional.one_hot(y[known].long(), len(class_names)).float()
        y = onehot
    y = y[:, covered].float()
    metric = ROCAUCKnownLabelsMetric()
    metric(p, y)
    auc = [float(v) for v in np.atleast_1d(metric.aggregate(average="none"))]
    width = max(len(f) for f in files)
    print(f"the teacher on {len(files)} local images: probability per local class (label in brackets; ? unknown)")
    print(" " * width + "  " + "  ".join(f"{n:>14.14}" for n in names))
    for f, probs, truth in zip(files, p.tolist(), y.tolist()):
        cells = [f"{v:7.3f} [{'?' if t < 0 else int(t)}]" for v, t in zip(probs, truth)]
        print(f"{f:<{width}}  " + "  ".join(f"{c:>14}" for c in cells))
    shown = ", ".join(f"{n} {'n/a' if np.isnan(a) else f'{a:.3f}'}" for n, a in zip(names, auc))
    print(f"ROC AUC over these images (n/a: a class without both labels among them): {shown}")
    return {"files": files, "classes": names, "probabilities": p, "labels": y, "auc": auc}
