"""Pointing game against hand-made masks."""

from __future__ import annotations

import math

import torch

from bundle.explain import PointingGameMetric, pointing_game


def test_pointing_game_hits_misses_tolerance_and_empty_masks():
    saliency = torch.zeros(3, 1, 5, 5)
    target = torch.zeros(3, 1, 5, 5)
    saliency[0, 0, 1, 1] = 1.0  # peak inside the lesion
    target[0, 0, 1, 1] = 1.0
    saliency[1, 0, 3, 3] = 1.0  # peak one pixel diagonal from the lesion
    target[1, 0, 2, 2] = 1.0
    saliency[2, 0, 0, 0] = 1.0  # no lesion: nothing to point at
    hits = pointing_game(saliency, target)
    assert hits[0] == 1.0 and hits[1] == 0.0 and math.isnan(hits[2])
    assert pointing_game(saliency, target, tolerance=1)[1] == 1.0


def test_pointing_game_metric_averages_images_with_lesions_only():
    metric = PointingGameMetric()
    saliency = torch.zeros(4, 1, 4, 4)
    target = torch.zeros(4, 1, 4, 4)
    saliency[:, 0, 0, 0] = 1.0
    target[0, 0, 0, 0] = 1.0  # hit
    target[1, 0, 3, 3] = 1.0  # miss
    target[2, 0, 0, 0] = 1.0  # hit; image 3 has no lesion
    metric(saliency[:2], target[:2])
    metric(saliency[2:], target[2:])
    assert abs(metric.aggregate() - 2 / 3) < 1e-6


def test_pointing_game_metric_on_decollated_items_with_tolerance_and_without_lesions():
    saliency = torch.zeros(2, 1, 5, 5)
    target = torch.zeros(2, 1, 5, 5)
    saliency[0, 0, 3, 3] = 1.0  # one pixel diagonal from the lesion: a hit only with tolerance 1
    target[0, 0, 2, 2] = 1.0
    saliency[1, 0, 0, 0] = 1.0  # far from the lesion: a miss either way
    target[1, 0, 4, 4] = 1.0
    for tolerance, expected in ((0, 0.0), (1, 0.5)):
        metric = PointingGameMetric(tolerance=tolerance)
        metric(list(saliency), list(target))  # (1, H, W) items, as the evaluator's decollated batches give them
        assert metric.aggregate() == expected
    metric = PointingGameMetric()
    metric(saliency, torch.zeros_like(target))
    assert math.isnan(metric.aggregate())  # no image with a lesion: undefined, not 0
