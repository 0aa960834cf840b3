"""Saliency evaluation: localisation against ground-truth masks (faithfulness metrics arrive with issue 4)."""

from bundle.explain.localization import PointingGame, PointingGameMetric, pointing_game

__all__ = ["PointingGame", "PointingGameMetric", "pointing_game"]
