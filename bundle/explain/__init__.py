"""Saliency evaluation: saliency methods, faithfulness metrics and localisation against ground-truth masks."""

from bundle.explain.faithfulness import (
    auprc,
    causal_curves,
    deletion_auc,
    fidelity,
    insertion_auc,
    iou,
    saliency_scores,
)
from bundle.explain.localization import PointingGame, PointingGameMetric, pointing_game
from bundle.explain.saliency import SALIENCY_METHODS, SaliencyMethod, make_saliency, normalize_maps

__all__ = [
    "PointingGame",
    "PointingGameMetric",
    "SALIENCY_METHODS",
    "SaliencyMethod",
    "auprc",
    "causal_curves",
    "deletion_auc",
    "fidelity",
    "insertion_auc",
    "iou",
    "make_saliency",
    "normalize_maps",
    "pointing_game",
    "saliency_scores",
]
