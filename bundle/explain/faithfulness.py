"""Saliency metrics, batched in torch on the inputs' device: faithfulness to the explained classifier (deletion and
insertion AUC, post-hoc fidelity) and localisation against ground-truth masks (IoU, AUPRC; the pointing game lives
in :mod:`bundle.explain.localization`).

Shapes: images ``(B, C, H, W)`` (normalised, as the classifier sees them), saliency maps and masks ``(B, 1, H, W)``.
Every function returns one value per image, ``(B,)``; localisation metrics are NaN for an image whose mask is empty.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from monai.networks.utils import eval_mode
from torch import nn

from bundle.explain.localization import pointing_game
from bundle.networks.medtex import GaussianBlur

TASKS = ("multiclass", "multilabel")
SUBSTRATES = ("zero", "blur")
ClassIndex = Optional[Union[int, torch.Tensor]]


def classifier_logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``model(images)`` as logits ``(B, num_classes)``; a ``FrozenTeacher`` returns ``(logits, features)``."""
    out = model(images)
    return out[0] if isinstance(out, (tuple, list)) else out


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Softmax over classes for ``multiclass``, per-class sigmoid for ``multilabel``."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return torch.softmax(logits, dim=1) if task == "multiclass" else torch.sigmoid(logits)


def class_indices(logits: torch.Tensor, class_index: ClassIndex = None) -> torch.Tensor:
    """Per-image class ``(B,)``: ``class_index`` (an int or a ``(B,)`` tensor) or, when ``None``, the predicted
    class (the largest logit: for multi-label tasks the most probable finding)."""
    if class_index is None:
        return logits.argmax(dim=1)
    index = torch.as_tensor(class_index, dtype=torch.long, device=logits.device)
    return index.expand(logits.shape[0]) if index.ndim == 0 else index


def substrate_images(images: torch.Tensor, substrate: str = "zero", blur_sigma: float = 4.0) -> torch.Tensor:
    """What removed pixels become: zeros (the mean intensity after normalisation) or a Gaussian-blurred copy, the
    same two baselines the MED-TEX student sees (``bundle.networks.MedTex``)."""
    if substrate not in SUBSTRATES:
        raise ValueError(f"substrate must be one of {SUBSTRATES}, got {substrate!r}")
    if substrate == "zero":
        return torch.zeros_like(images)
    return GaussianBlur(blur_sigma).to(images.device, images.dtype)(images)


def _check(images: torch.Tensor, maps: torch.Tensor) -> None:
    if maps.ndim != 4 or maps.shape[1] != 1 or maps.shape[0] != images.shape[0] or maps.shape[2:] != images.shape[2:]:
        raise ValueError(f"maps {tuple(maps.shape)} must be (B, 1, H, W) for images {tuple(images.shape)}")


def _descending_rank(maps: torch.Tensor) -> torch.Tensor:
    """Per image, each pixel's position ``(B, H*W)`` when sorted by decreasing saliency; ties keep raster order."""
    flat = maps.flatten(1)
    order = flat.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    return rank.scatter_(1, order, positions)


def causal_curves(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    mode: str = "deletion",
    task: str = "multiclass",
    class_index: ClassIndex = None,
    substrate: str = "zero",
    blur_sigma: float = 4.0,
    steps: int = 32,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deletion or insertion curves (RISE, Petsiuk et al. BMVC 2018).

    Pixels are ranked by decreasing saliency (ties in raster order). At step ``i`` of ``steps`` the top
    ``round(i * H * W / steps)`` pixels are replaced by the substrate (``deletion``, from the image towards the
    substrate) or copied from the image into the substrate (``insertion``), and the model's probability of the class
    (``class_index``; default: the class predicted on the full image) is recorded. The ``B * (steps + 1)`` step
    images are built and classified ``chunk_size`` at a time, which bounds memory.

    Returns:
        the fraction of pixels changed ``(steps + 1,)`` from 0 to 1, and the probabilities ``(B, steps + 1)``.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if steps < 1 or chunk_size < 1:
        raise ValueError(f"steps ({steps}) and chunk_size ({chunk_size}) must be positive")
    _check(images, maps)
    batch, n_pixels = images.shape[0], images.shape[-2] * images.shape[-1]
    counts = torch.linspace(0, n_pixels, steps + 1, device=images.device).round().long()
    rank = _descending_rank(maps)
    background = substrate_images(images, substrate, blur_sigma)
    # deletion starts from the image and puts the substrate where pixels are removed; insertion the other way round
    start, end = (images, background) if mode == "deletion" else (background, images)
    curves = torch.empty(batch * (steps + 1), device=images.device)
    with eval_mode(model):
        index = class_indices(classifier_logits(model, images), class_index)
        for first in range(0, batch * (steps + 1), chunk_size):
            pair = torch.arange(first, min(first + chunk_size, batch * (steps + 1)), device=images.device)
            image, step = pair // (steps + 1), pair % (steps + 1)
            changed = (rank[image] < counts[step, None]).view(-1, 1, *images.shape[2:])
            stepped = torch.where(changed, end[image], start[image])
            p = probabilities(classifier_logits(model, stepped).float(), task)
            curves[pair] = p.gather(1, index[image, None]).squeeze(1)
    return counts.float() / n_pixels, curves.view(batch, steps + 1)


def deletion_auc(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """Area under the deletion curve per image ``(B,)`` (trapezoid rule over the fraction deleted, in [0, 1]):
    lower is better, the probability falls fast when the most salient pixels go first. ``kwargs``: as
    :func:`causal_curves`."""
    fractions, curves = causal_curves(model, images, maps, mode="deletion", **kwargs)
    return torch.trapezoid(curves, fractions, dim=1)


def insertion_auc(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """Area under the insertion curve per image ``(B,)``: higher is better. ``kwargs``: as :func:`causal_curves`."""
    fractions, curves = causal_curves(model, images, maps, mode="insertion", **kwargs)
    return torch.trapezoid(curves, fractions, dim=1)


def fidelity(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    task: str = "multiclass",
    substrate: str = "zero",
    blur_sigma: float = 4.0,
) -> torch.Tensor:
    """Post-hoc fidelity per image ``(B,)``: does the classifier decide the same on ``x' = M x + (1 - M) b``?

    Multi-class: 1.0 when the predicted class on ``x'`` equals that on ``x``, else 0.0. Multi-label: the fraction of
    findings whose decision (probability >= 0.5) agrees. ``maps`` are used as soft masks ``M`` in [0, 1].
    """
    _check(images, maps)
    masked = maps * images + (1.0 - maps) * substrate_images(images, substrate, blur_sigma)
    with eval_mode(model):
        logits = classifier_logits(model, torch.cat([images, masked])).float()
    full, kept = logits.chunk(2)
    if task == "multiclass":
        return (full.argmax(1) == kept.argmax(1)).float()
    if task == "multilabel":
        return ((torch.sigmoid(full) >= 0.5) == (torch.sigmoid(kept) >= 0.5)).float().mean(1)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def iou(maps: torch.Tensor, masks: torch.Tensor, threshold: Optional[float] = None) -> torch.Tensor:
    """IoU per image ``(B,)`` of the thresholded map with the ground-truth mask (binarised at 0.5); NaN if empty.

    ``threshold=None`` (default) keeps the map's top-k pixels, ``k`` being the mask's area: no threshold to tune,
    and a map that ranks the lesion first scores 1 (ties in raster order). A number keeps pixels ``>= threshold``.
    """
    if maps.shape != masks.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} must have one shape")
    target = masks.flatten(1) > 0.5
    area = target.sum(1)
    if threshold is None:
        selected = _descending_rank(maps) < area[:, None]
    else:
        selected = maps.flatten(1) >= threshold
    intersection = (selected & target).sum(1).float()
    union = (selected | target).sum(1).float()
    return torch.where(area > 0, intersection / union.clamp(min=1), torch.full_like(union, float("nan")))


def auprc(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Average precision per image ``(B,)`` of the map's pixel scores against the binary mask; NaN if empty.

    As scikit-learn's ``average_precision_score``: ``sum_n (R_n - R_{n-1}) P_n`` over the distinct score thresholds
    (tied scores form one threshold). A random map scores about the mask's area fraction, a perfect one 1.
    """
    if maps.shape != masks.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} must have one shape")
    scores, order = maps.flatten(1).float().sort(dim=1, descending=True, stable=True)
    labels = (masks.flatten(1) > 0.5).float().gather(1, order)
    positives = labels.sum(1)
    true_positives = labels.cumsum(1)
    ranks = torch.arange(1, labels.shape[1] + 1, device=labels.device, dtype=labels.dtype)
    # the last pixel of each run of equal scores closes a threshold; count the positives since the previous one
    last = torch.ones_like(labels, dtype=torch.bool)
    last[:, :-1] = scores[:, 1:] != scores[:, :-1]
    closed = torch.where(last, true_positives, torch.zeros_like(true_positives)).cummax(1).values
    previous = torch.cat([torch.zeros_like(closed[:, :1]), closed[:, :-1]], dim=1)
    gained = torch.where(last, true_positives - previous, torch.zeros_like(true_positives))
    precision_sum = (gained * true_positives / ranks).sum(1)
    return torch.where(positives > 0, precision_sum / positives.clamp(min=1), torch.full_like(positives, float("nan")))


def saliency_scores(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    masks: Optional[torch.Tensor] = None,
    task: str = "multiclass",
    class_index: ClassIndex = None,
    substrate: str = "zero",
    blur_sigma: float = 4.0,
    steps: int = 32,
    chunk_size: int = 64,
    iou_threshold: Optional[float] = None,
    pointing_tolerance: int = 0,
) -> dict[str, torch.Tensor]:
    """All saliency metrics per image ``(B,)`` for maps of ``model``'s decisions (the model being explained).

    Keys: ``deletion_auc``, ``insertion_auc``, ``fidelity`` and, with ground-truth ``masks``, ``pointing_game``,
    ``iou`` and ``auprc`` (NaN for images with an empty mask). Arguments as in the functions of the same names.
    """
    curve_options = dict(task=task, class_index=class_index, substrate=substrate, blur_sigma=blur_sigma)
    curve_options.update(steps=steps, chunk_size=chunk_size)
    scores = {
        "deletion_auc": deletion_auc(model, images, maps, **curve_options),
        "insertion_auc": insertion_auc(model, images, maps, **curve_options),
        "fidelity": fidelity(model, images, maps, task=task, substrate=substrate, blur_sigma=blur_sigma),
    }
    if masks is not None:
        masks = masks.to(maps.device, maps.dtype)
        scores["pointing_game"] = pointing_game(maps, masks, pointing_tolerance)
        scores["iou"] = iou(maps, masks, iou_threshold)
        scores["auprc"] = auprc(maps, masks)
    return scores
