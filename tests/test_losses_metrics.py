"""Supervised loss, ROC AUC and the operating-point metrics, checked against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from bundle.engines.metrics import (
    Accuracy,
    AccuracyMetric,
    OperatingPoint,
    OperatingPointMetric,
    ROCAUCKnownLabelsMetric,
    store_per_class,
)
from bundle.losses import ClassificationLoss


def test_multiclass_loss_is_cross_entropy_of_the_label_index():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    label = torch.tensor([[0], [2]])  # (B, 1) as collated from int labels with a channel
    expected = (-math.log(math.exp(2) / (math.exp(2) + 2)) + math.log(3)) / 2
    assert ClassificationLoss("multiclass")(logits, label).item() == pytest.approx(expected, rel=1e-6)


def test_multilabel_loss_ignores_unknown_labels():
    logits = torch.tensor([[0.0, 3.0], [-1.0, 100.0]])
    label = torch.tensor([[1, -1], [0, -1]])  # second finding unknown everywhere: its huge logit must not count
    expected = (math.log(2) + math.log(1 + math.exp(-1))) / 2
    assert ClassificationLoss("multilabel")(logits, label).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="task must be one of"):
        ClassificationLoss("regression")


def auc(pred, y, average="macro"):
    metric = ROCAUCKnownLabelsMetric(average=average)
    metric(torch.tensor(pred, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    return metric.aggregate()


def test_auc_without_unknowns_is_monai_auc():
    pred = [[0.9, 0.2], [0.4, 0.8], [0.6, 0.1], [0.1, 0.7]]
    y = [[1, 0], [0, 1], [1, 0], [0, 1]]
    assert auc(pred, y) == pytest.approx(1.0)
    y_swapped = [[1, 0], [0, 1], [0, 1], [1, 0]]  # class 0: pos scores 0.9, 0.1 vs neg 0.4, 0.6 -> 2 of 4 pairs
    assert auc(pred, y_swapped, average="none")[0] == pytest.approx(0.5)


def test_auc_leaves_unknown_labels_out_per_class():
    pred = [[0.9, 0.9], [0.1, 0.8], [0.5, 0.1], [0.7, 0.2]]
    y = [[1, -1], [0, 1], [-1, 0], [0, 1]]
    # class 0 over rows 0, 1, 3: positive 0.9 beats negatives 0.1 and 0.7 -> 1.0
    # class 1 over rows 1, 2, 3: positives 0.8, 0.2 vs negative 0.1 -> 1.0; row 0's 0.9 must not count
    per_class = auc(pred, y, average="none")
    np.testing.assert_allclose(per_class, [1.0, 1.0])
    y[1][1], y[3][1] = -1, 0  # class 1 left with negatives only: undefined, excluded from the macro mean
    assert math.isnan(auc(pred, y, average="none")[1]) and auc(pred, y) == pytest.approx(1.0)


def test_macro_auc_skips_classes_absent_from_the_set():
    pred = [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]]
    y = [[1, 0, 0], [0, 1, 0], [1, 0, 0]]  # class 2 never occurs: MONAI's macro would be NaN
    per_class = auc(pred, y, average="none")
    assert per_class[0] == pytest.approx(1.0) and per_class[1] == pytest.approx(1.0) and math.isnan(per_class[2])
    assert auc(pred, y) == pytest.approx(1.0)


def at_operating_point(measure, pred, y, **kwargs):
    metric = OperatingPointMetric(measure, **kwargs)
    metric(torch.tensor(pred, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    return metric.aggregate()


def test_sensitivity_and_specificity_of_the_most_probable_class():
    # predicted classes 0, 1, 1, 2, 0 for true classes 0, 0, 1, 2, 2 (one-hot)
    pred = [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.1, 0.4]]
    y = [[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]]
    # class 0: 1 of its 2 found; of the 3 others, one (the last) called class 0 -> specificity 2/3
    # class 1: its 1 found; of 4 others, one (the second) called class 1 -> 3/4
    # class 2: 1 of 2 found; no other called class 2 -> 3/3
    np.testing.assert_allclose(at_operating_point("sensitivity", pred, y), [1 / 2, 1, 1 / 2])
    np.testing.assert_allclose(at_operating_point("specificity", pred, y), [2 / 3, 3 / 4, 1])


def test_multilabel_operating_point_uses_the_threshold_and_leaves_unknowns_out():
    pred = [[0.9, 0.4], [0.3, 0.6], [0.7, 0.2], [0.2, 0.9]]
    y = [[1, 1], [1, -1], [0, 0], [0, 1]]  # row 1's second finding unknown: its 0.6 must not count
    # finding 0: positives rows 0, 1 (0.9 found, 0.3 missed); negatives rows 2, 3 (0.7 false alarm, 0.2 right)
    # finding 1: positives rows 0, 3 (0.4 missed, 0.9 found); negative row 2 (0.2 right)
    np.testing.assert_allclose(at_operating_point("sensitivity", pred, y, multilabel=True), [1 / 2, 1 / 2])
    np.testing.assert_allclose(at_operating_point("specificity", pred, y, multilabel=True), [1 / 2, 1])
    # at threshold 0.35 finding 1's 0.4 counts as found, finding 0's 0.3 is still missed
    np.testing.assert_allclose(at_operating_point("sensitivity", pred, y, multilabel=True, threshold=0.35), [0.5, 1])
    accuracy = AccuracyMetric(multilabel=True, threshold=0.35)
    accuracy(torch.tensor(pred), torch.tensor(y, dtype=torch.float32))
    assert accuracy.aggregate() == pytest.approx(5 / 7)  # 7 known labels, wrong: row 1 f0, row 2 f0


def test_operating_point_handler_writes_macro_and_per_class_values():
    class Engine:
        class state:
            metrics: dict = {}

    handler = OperatingPoint(["no finding", "effusion"], measure="sensitivity", multilabel=True)
    handler.metric_fn(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    handler.completed(Engine, "sensitivity")
    # effusion has no positive case: NaN, left out of the macro mean
    assert Engine.state.metrics["sensitivity"] == 1.0 and Engine.state.metrics["sensitivity_no_finding"] == 1.0
    assert math.isnan(Engine.state.metrics["sensitivity_effusion"])
    with pytest.raises(ValueError, match="measure must be"):
        OperatingPointMetric("precision")


def test_defaults_are_the_bundles_operating_point_and_a_probability_of_one_half_counts_as_positive():
    # multi-class unless told: the most probable class; multi-label threshold 0.5, inclusive (as inference predicts)
    pred = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.3, 0.6, 0.1]])
    y = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 1, 0]])
    accuracy = AccuracyMetric()
    accuracy(pred, y)
    assert accuracy.aggregate() == pytest.approx(2 / 3)
    np.testing.assert_allclose(at_operating_point(OperatingPointMetric().measure, pred, y), [1, 1 / 2, np.nan])
    multilabel = AccuracyMetric(multilabel=True)
    multilabel(torch.tensor([[0.5, 0.49]]), torch.tensor([[1.0, 0.0]]))
    assert multilabel.aggregate() == 1.0
    np.testing.assert_allclose(at_operating_point("sensitivity", [[0.5]], [[1]], multilabel=True), [1.0])
    handler = OperatingPoint(["a", "b", "c"])
    assert (handler.metric_fn.measure, handler.metric_fn.multilabel, handler.metric_fn.threshold) == (
        "sensitivity",
        False,
        0.5,
    )
    assert ROCAUCKnownLabelsMetric().average == "macro"


def test_auc_is_undefined_for_a_class_whose_known_labels_are_all_positive_or_all_negative():
    pred = [[0.9, 0.2, 0.6], [0.4, 0.8, 0.3], [0.6, 0.1, 0.5]]
    y = [[1, 1, 0], [0, 1, 0], [1, 1, -1]]  # class 1 all positive, class 2 all negative among the known
    per_class = auc(pred, y, average="none")
    assert per_class[0] == pytest.approx(1.0) and math.isnan(per_class[1]) and math.isnan(per_class[2])
    assert auc(pred, y) == pytest.approx(1.0)
    assert math.isnan(auc([[0.3], [0.7]], [[1], [1]]))  # no class defined: NaN, not a mean of nothing
    assert math.isnan(auc([[0.3], [0.7]], [[-1], [-1]]))


def test_micro_auc_is_scikit_learns_and_is_refused_with_unknown_labels():
    pred = [[0.9, 0.2], [0.4, 0.8], [0.6, 0.7], [0.35, 0.3]]
    y = [[1, 0], [0, 1], [0, 1], [1, 0]]
    expected = roc_auc_score(np.array(y).ravel(), np.array(pred).ravel())
    assert auc(pred, y, average="micro") == pytest.approx(expected) == 14 / 16
    assert auc(pred, y) == pytest.approx(0.75)  # macro differs here: classes 0.5 and 1.0
    with pytest.raises(ValueError, match="only 'macro' or 'none'"):
        auc(pred, [[1, 0], [0, -1], [0, 1], [1, 0]], average="micro")


def test_multilabel_accuracy_of_only_unknown_labels_is_undefined_and_handlers_store_nan():
    accuracy = AccuracyMetric(multilabel=True)
    accuracy(torch.tensor([[0.9, 0.1]]), torch.tensor([[-1.0, -1.0]]))
    assert math.isnan(accuracy.aggregate())

    class Engine:
        class state:
            metrics: dict = {}

    handler = OperatingPoint(["a", "b"], measure="specificity", multilabel=True)
    handler.metric_fn(torch.tensor([[0.9, 0.1]]), torch.tensor([[1.0, 1.0]]))  # no negatives: undefined
    handler.completed(Engine, "specificity")
    assert all(math.isnan(Engine.state.metrics[k]) for k in ("specificity", "specificity_a", "specificity_b"))
    with pytest.raises(ValueError, match="2 per-class specificity values for 3 class names"):
        store_per_class(Engine, "specificity", ["a", "b", "c"], np.zeros(2))


def test_accuracy_handler_passes_its_task_and_threshold_to_the_metric():
    pred, y = torch.tensor([[0.4, 0.3]]), torch.tensor([[1.0, 0.0]])
    for handler, expected in ((Accuracy(), 1.0), (Accuracy(multilabel=True), 0.5), (Accuracy(True, 0.35), 1.0)):
        handler.metric_fn(pred, y)  # multi-class: argmax 0 is right; multi-label at 0.5: 0.4 missed, 0.3 right
        assert handler.metric_fn.aggregate() == expected
