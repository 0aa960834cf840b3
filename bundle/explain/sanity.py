"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018, "Sanity checks for saliency maps").

A saliency method that explains the model must change its maps when the model's weights are randomised
(model randomisation, cascading from the output layer down) or when the model is trained on shuffled labels (data
randomisation). Maps that stay alike behave like an edge detector of the input, not an explanation.

    for label, randomized in cascading_randomization(teacher):
        similarity = map_similarity(method_of(teacher)(x), method_of(randomized)(x))   # {"ssim", "spearman"}: (B,)

For MED-TEX, :func:`mask_only_score` checks that the explainer's mask does not carry the class by its shape alone
(the student classifies the masked constant image).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any, Optional

import numpy as np
import torch
from monai.metrics import SSIMMetric
from monai.networks.utils import eval_mode
from sklearn.metrics import roc_auc_score
from torch import nn

from bundle.explain.saliency import normalize_maps

# SSIM window: MONAI's default 11 px Gaussian spans a third of a 32 px map and leaves a 22 x 22 grid of valid
# windows; a 7 px window (sigma 1.5, as scikit-image's default size) keeps the comparison local on 32 px maps
SSIM_WINDOW = 7
SSIM_SIGMA = 1.5


def _ssim(maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per image ``(B,)`` of maps in [0, 1]."""
    metric = SSIMMetric(
        spatial_dims=2, data_range=1.0, kernel_type="gaussian", win_size=SSIM_WINDOW, kernel_sigma=SSIM_SIGMA
    )
    values = metric(maps_a, maps_b)  # (B, 1): each image's mean over the valid windows
    assert isinstance(values, torch.Tensor)  # a tensor for tensor inputs; the annotation allows lists
    return values.reshape(maps_a.shape[0], -1).mean(1)


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of a 1-D tensor, tied values sharing their average rank (as ``scipy.stats.rankdata``)."""
    unique, inverse, counts = torch.unique(values, sorted=True, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # rank - 1 of each distinct value's first occurrence
    return (first.double() + (counts.double() + 1.0) / 2.0)[inverse]


def _spearman(maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation per image ``(B,)``: Pearson correlation of the average ranks."""
    values = []
    for a, b in zip(maps_a.flatten(1), maps_b.flatten(1)):
        rank_a, rank_b = average_ranks(a), average_ranks(b)
        rank_a, rank_b = rank_a - rank_a.mean(), rank_b - rank_b.mean()
        denominator = (rank_a.square().sum() * rank_b.square().sum()).sqrt()
        # a constant map has no order: its ranks are all equal, and the correlation is 0 / 0 (NaN, as in scipy)
        value = (rank_a * rank_b).sum() / denominator if denominator > 0 else torch.tensor(float("nan"))
        values.append(value.float())
    return torch.stack(values).to(maps_a.device)


def map_similarity(maps_a: torch.Tensor, maps_b: torch.Tensor) -> dict[str, torch.Tensor]:
    """SSIM and Spearman rank correlation per image of two batches of maps ``(B, 1, H, W)``.

    Both are min-max normalised per image first (:func:`normalize_maps`), as Adebayo et al. did, so that only the
    maps' shape is compared, not their scale. Returns ``{"ssim": (B,), "spearman": (B,)}``; Spearman is NaN for an
    image where either map is constant.
    """
    if maps_a.shape != maps_b.shape or maps_a.ndim != 4 or maps_a.shape[1] != 1:
        raise ValueError(f"maps must both be (B, 1, H, W), got {tuple(maps_a.shape)} and {tuple(maps_b.shape)}")
    maps_a, maps_b = normalize_maps(maps_a.detach().float()), normalize_maps(maps_b.detach().float())
    return {"ssim": _ssim(maps_a, maps_b), "spearman": _spearman(maps_a, maps_b)}


def grid_energy(maps: torch.Tensor) -> torch.Tensor:
    """Share of each map's energy at the highest spatial frequency, per image ``(B,)`` of maps ``(B, 1, H, W)``.

    The energy (squared magnitude of the 2-D Fourier transform, the map's mean removed) in the row and the column of
    the highest frequency (period 2 px for an even size): 1 for a checkerboard or one-pixel stripes, near 0 for a
    smooth map; 0 for a constant map. A mask that alternates between neighbouring pixels tells a reader nothing the
    smooth part does not, and up-sampling by transposed convolutions or ``pixel_shuffle`` can print such a grid.
    """
    if maps.ndim != 4 or maps.shape[1] != 1:
        raise ValueError(f"maps must be (B, 1, H, W), got {tuple(maps.shape)}")
    values = maps.detach().double()[:, 0]
    power = torch.fft.fft2(values - values.mean((-2, -1), keepdim=True)).abs().square()
    height, width = values.shape[-2:]
    # the highest frequency's bins: one for an even size (period 2), the pair +-(n-1)/2n for an odd one
    rows = torch.fft.fftfreq(height).abs()
    columns = torch.fft.fftfreq(width).abs()
    highest = (rows == rows.max())[:, None] | (columns == columns.max())[None, :]
    total = power.sum((-2, -1))
    grid = (power * highest).sum((-2, -1))
    return torch.where(total > 0, grid / total.clamp(min=1e-300), torch.zeros_like(total)).float()


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def randomization_steps(model: nn.Module) -> list[tuple[str, list[str]]]:
    """The model's parameterised units from the output down: ``[(label, [module names randomised]), ...]``.

    A unit is a named child of a top-level child container (a top-level child without children is a unit itself),
    e.g. MONAI DenseNet121: ``class_layers.out``, ``features.norm5``, ``features.denseblock4``, ...,
    ``features.conv0``. Reverse registration order stands for "top down": it assumes modules are registered in
    forward order, which holds for MONAI's DenseNet and ResNet.
    """
    units = []
    for name, child in model.named_children():
        grandchildren = list(child.named_children())
        if not grandchildren:
            units.append((name, child))
        units += [(f"{name}.{sub}", module) for sub, module in grandchildren]
    return [(name, [name]) for name, module in reversed(units) if _has_parameters(module)]


def _reinitialize(module: nn.Module) -> None:
    """Re-initialise every submodule that can (Conv, Linear, BatchNorm/GroupNorm, ...); for BatchNorm
    ``reset_parameters`` also resets the running statistics."""
    for submodule in module.modules():
        reset = getattr(submodule, "reset_parameters", None)
        if callable(reset):
            reset()


def cascading_randomization(
    model: nn.Module, steps: Optional[Sequence[tuple[str, Sequence[str]]]] = None, seed: int = 0
) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``(label, randomized_model)`` per step, cumulative from the top: step k has units 1..k re-initialised.

    ``steps`` defaults to :func:`randomization_steps`. Each yielded model is a fresh deep copy (``model`` is never
    changed); the re-initialisation runs under a forked RNG seeded with ``seed`` so that runs repeat without
    disturbing the caller's random state.
    """
    steps = randomization_steps(model) if steps is None else steps
    modules = dict(model.named_modules())
    unknown = [name for _, names in steps for name in names if name not in modules]
    if unknown:
        raise ValueError(f"not modules of {type(model).__name__}: {unknown}")
    devices = [p.device for p in model.parameters()] + [b.device for b in model.buffers()]
    for k in range(1, len(steps) + 1):
        randomized = copy.deepcopy(model)
        copies = dict(randomized.named_modules())
        with torch.random.fork_rng(devices=[d for d in set(devices) if d.type == "cuda"]):
            torch.manual_seed(seed)
            # the same seed for every step: unit j gets the same new weights at every step it is randomised in
            for _, names in steps[:k]:
                for name in names:
                    _reinitialize(copies[name])
        yield steps[k - 1][0], randomized


def _as_tensor(labels: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels))


def mask_only_score(
    model: nn.Module, masks: torch.Tensor, labels: Any, task: str, image_mean: torch.Tensor
) -> dict[str, Any]:
    """Leakage check: the student's score when it sees only the mask's shape, not the image.

    ``model`` is a ``MedTex`` (``.student``, ``.apply_mask``); ``masks`` ``(B, 1, H, W)`` are the explainer's masks
    of the images; the student reads ``apply_mask(image_mean, M)`` - one constant image for every sample (shape
    ``(C,)``, ``(C, 1, 1)``, ``(C, H, W)`` or any of these with a leading 1). ``labels``: ``(B,)`` class indices
    (or one-hot ``(B, C)``) for ``task="multiclass"``, ``(B, C)`` binary for ``"multilabel"``.

    Returns ``{"score", "chance", "metric"}``: accuracy against the majority-class rate (multiclass) or macro ROC AUC
    over the classes with both values present against 0.5 (multilabel). The mask is visible to the student only where
    the constant image differs from the baseline (e.g. a zero baseline needs a non-zero ``image_mean``).
    """
    if task not in ("multiclass", "multilabel"):
        raise ValueError(f"task must be 'multiclass' or 'multilabel', got {task!r}")
    batch, _, height, width = masks.shape
    mean = image_mean.to(masks)
    mean = mean.view(-1, 1, 1) if mean.ndim == 1 else mean.reshape(mean.shape[-3:])  # drop a leading 1
    constant = mean.expand(mean.shape[-3], height, width).unsqueeze(0).expand(batch, -1, -1, -1)
    # nn.Module's __getattr__ types these Tensor | Module; a MedTex has both
    student: Any = getattr(model, "student")
    apply_mask: Any = getattr(model, "apply_mask")
    with eval_mode(model), torch.no_grad():
        logits = student(apply_mask(constant, masks)).float().cpu()
    targets = _as_tensor(labels)
    if task == "multiclass":
        if targets.ndim == 2:
            targets = targets.argmax(1)
        targets = targets.long().view(-1)
        accuracy = float((logits.argmax(1) == targets).float().mean())
        chance = float(torch.bincount(targets).max()) / targets.numel()
        return {"score": accuracy, "chance": chance, "metric": "accuracy"}
    truth = targets.view(batch, -1).float().numpy()
    scores = torch.sigmoid(logits).numpy()
    present = [c for c in range(truth.shape[1]) if 0 < truth[:, c].sum() < batch]
    if not present:
        return {"score": float("nan"), "chance": 0.5, "metric": "auc"}
    auc = float(np.mean([roc_auc_score(truth[:, c], scores[:, c]) for c in present]))
    return {"score": auc, "chance": 0.5, "metric": "auc"}
