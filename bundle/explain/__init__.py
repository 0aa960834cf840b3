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
from bundle.explain.sanity import (
    cascading_randomization,
    grid_energy,
    map_similarity,
    mask_only_score,
    randomization_steps,
)

__all__ = [
    "PointingGame",
    "PointingGameMetric",
    "SALIENCY_METHODS",
    "SaliencyMethod",
    "auprc",
    "cascading_randomization",
    "causal_curves",
    "deletion_auc",
    "fidelity",
    "grid_energy",
    "insertion_auc",
    "iou",
    "make_saliency",
    "map_similarity",
    "mask_only_score",
    "normalize_maps",
    "pointing_game",
    "randomization_steps",
    "saliency_scores",
]
