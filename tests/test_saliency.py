"""Saliency methods and metrics on constructed cases whose answers are known.

The quadrant model reads only the top-left quadrant of channel 0: ``s = GAIN * mean(top-left)``, multi-class
logits ``(s, BIAS - s)`` and multi-label logits ``(s - 0.1, -s - 0.1, 1)``. With the top-left quadrant set to 1 and
the zero substrate, every deletion/insertion curve follows from how many top-left pixels are changed at each step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.networks.nets import DenseNet121, ResNet
from sklearn.metrics import average_precision_score
from torch import nn

from bundle.explain import (
    SALIENCY_METHODS,
    auprc,
    causal_curves,
    deletion_auc,
    fidelity,
    insertion_auc,
    iou,
    make_saliency,
    saliency_scores,
)
from bundle.explain.faithfulness import substrate_images
from bundle.explain.saliency import default_target_layer, normalize_maps
from bundle.networks import Explainer, FrozenTeacher, MedTex, Student

GAIN, BIAS = 2.0, 0.1
SIZE = 16  # quadrant images: 256 pixels, 64 in the top-left quadrant
STEPS = 32  # 8 pixels per step


def top_left(size: int) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size)
    mask[..., : size // 2, : size // 2] = 1.0
    return mask


class Gate(nn.Module):
    """Multiplies by a fixed spatial mask: the layer where the model stops looking outside the quadrant."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


class QuadrantNet(nn.Module):
    def __init__(self, size: int = SIZE, task: str = "multiclass") -> None:
        super().__init__()
        self.task = task
        self.conv = nn.Conv2d(1, 1, kernel_size=1)  # identity: a trainable-looking layer in front of the gate
        nn.init.ones_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.gate = Gate(top_left(size))
        self.quadrant_pixels = (size // 2) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = GAIN * self.gate(self.conv(x[:, :1])).sum((1, 2, 3)) / self.quadrant_pixels
        if self.task == "multiclass":
            return torch.stack([s, BIAS - s], dim=1)
        return torch.stack([s - 0.1, -s - 0.1, torch.ones_like(s)], dim=1)


def quadrant_images(signs: list[float], size: int = SIZE, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """Noise in [0.5, 1.5) everywhere, the top-left quadrant of channel 0 set to +1 or -1 per image."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(len(signs), channels, size, size, generator=generator) + 0.5
    images[:, 0, : size // 2, : size // 2] = torch.tensor(signs)[:, None, None]
    return images


def expected_auc(task: str, changed_quadrant: np.ndarray, mode: str) -> float:
    """Trapezoid AUC of the hand-derived curve: ``changed_quadrant[i]`` top-left pixels changed at step ``i``."""
    visible = 1.0 - changed_quadrant / 64.0 if mode == "deletion" else changed_quadrant / 64.0
    s = GAIN * visible
    p = 1 / (1 + np.exp(-(2 * s - BIAS))) if task == "multiclass" else 1 / (1 + np.exp(-(s - 0.1)))
    fractions = np.arange(STEPS + 1) / STEPS
    return float(np.sum((p[1:] + p[:-1]) / 2 * np.diff(fractions)))


@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
def test_deletion_and_insertion_auc_match_hand_computed_curves_and_rank_maps(task):
    model = QuadrantNet(task=task)
    images = quadrant_images([1.0, 1.0])
    quadrant = top_left(SIZE).expand(2, -1, -1, -1)
    opposite = 1.0 - quadrant  # ranks every other pixel before the quadrant
    random_map = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    changed = np.arange(STEPS + 1) * 8  # pixels changed at each step
    options = dict(task=task, steps=STEPS, chunk_size=7)  # a chunk size that does not divide B * (steps + 1)

    deletion = {name: deletion_auc(model, images, m, **options) for name, m in [("q", quadrant), ("o", opposite)]}
    insertion = {name: insertion_auc(model, images, m, **options) for name, m in [("q", quadrant), ("o", opposite)]}
    deletion["r"] = deletion_auc(model, images, random_map, **options)
    insertion["r"] = insertion_auc(model, images, random_map, **options)

    first, last = np.minimum(changed, 64), np.maximum(changed - 192, 0)  # quadrant pixels changed so far
    torch.testing.assert_close(deletion["q"], torch.full((2,), expected_auc(task, first, "deletion")))
    torch.testing.assert_close(deletion["o"], torch.full((2,), expected_auc(task, last, "deletion")))
    torch.testing.assert_close(insertion["q"], torch.full((2,), expected_auc(task, first, "insertion")))
    torch.testing.assert_close(insertion["o"], torch.full((2,), expected_auc(task, last, "insertion")))
    assert (deletion["q"] < deletion["r"]).all() and (deletion["r"] < deletion["o"]).all()
    assert (insertion["q"] > insertion["r"]).all() and (insertion["r"] > insertion["o"]).all()
    # chunking changes nothing
    fractions, curves = causal_curves(model, images, random_map, task=task, steps=STEPS, chunk_size=1000)
    _, chunked = causal_curves(model, images, random_map, task=task, steps=STEPS, chunk_size=5)
    torch.testing.assert_close(curves, chunked)
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and len(fractions) == STEPS + 1


def test_blur_substrate_of_a_constant_image_changes_nothing():
    model = QuadrantNet()
    images = torch.ones(2, 1, SIZE, SIZE)
    maps = top_left(SIZE).expand(2, -1, -1, -1)
    full = torch.sigmoid(torch.tensor(2 * GAIN - BIAS))
    for mode in ("deletion", "insertion"):
        _, curves = causal_curves(model, images, maps, mode=mode, substrate="blur", blur_sigma=1.0, steps=8)
        torch.testing.assert_close(curves, torch.full_like(curves, float(full)))
    _, zero = causal_curves(model, images, maps, mode="deletion", substrate="zero", steps=8)
    assert zero[:, -1].max() < 0.5  # the zero substrate does remove the evidence


def test_fidelity_all_ones_and_all_zero_masks():
    images = quadrant_images([1.0, 1.0, -1.0])  # predicted classes 0, 0, 1
    ones, zeros = torch.ones(3, 1, SIZE, SIZE), torch.zeros(3, 1, SIZE, SIZE)
    quadrant = top_left(SIZE).expand(3, -1, -1, -1)
    model = QuadrantNet()
    assert fidelity(model, images, ones).tolist() == [1.0, 1.0, 1.0]
    assert fidelity(model, images, quadrant).tolist() == [1.0, 1.0, 1.0]  # the quadrant is all the model reads
    # x' = 0: s = 0, logits (0, BIAS), class 1, which only the negative image also predicts
    assert fidelity(model, images, zeros).tolist() == [0.0, 0.0, 1.0]
    # multi-label decisions on x: (T, F, T) for +1 and (F, T, T) for -1; on x' = 0: (F, F, T)
    multilabel = QuadrantNet(task="multilabel")
    torch.testing.assert_close(fidelity(multilabel, images, zeros, task="multilabel"), torch.full((3,), 2 / 3))
    assert fidelity(multilabel, images, ones, task="multilabel").tolist() == [1.0, 1.0, 1.0]


def test_iou_and_auprc_against_ground_truth():
    mask = top_left(8)
    perfect = torch.cat([mask, mask * 0.7 + 0.1])  # any map ranking the lesion first
    assert iou(perfect, mask.expand(2, -1, -1, -1)).tolist() == [1.0, 1.0]
    assert auprc(perfect, mask.expand(2, -1, -1, -1)).tolist() == [1.0, 1.0]

    shifted = torch.zeros(1, 1, 8, 8)
    shifted[..., :4, 2:6] = 1.0  # 16 pixels, 8 of them in the lesion: IoU 8 / 24 with top-k (k = 16)
    assert iou(shifted, mask).item() == pytest.approx(1 / 3)
    top_half = torch.zeros(1, 1, 8, 8)
    top_half[..., :4, :] = 0.9  # 32 pixels >= 0.5, the 16 lesion pixels among them
    assert iou(top_half, mask, threshold=0.5).item() == pytest.approx(0.5)

    scores = torch.tensor([0.9, 0.8, 0.7, 0.1]).view(1, 1, 2, 2)  # positives ranked 1st and 3rd
    labels = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 2, 2)
    assert auprc(scores, labels).item() == pytest.approx((1 + 2 / 3) / 2)

    empty = torch.zeros(1, 1, 8, 8)
    assert math.isnan(iou(shifted, empty).item()) and math.isnan(auprc(shifted, empty).item())


def test_auprc_matches_scikit_learn_with_ties_and_random_maps_score_the_positive_fraction():
    generator = torch.Generator().manual_seed(0)
    masks = (torch.rand(3, 1, 16, 16, generator=generator) < 0.3).float()
    tied = (torch.rand(3, 1, 16, 16, generator=generator) * 4).round() / 4  # five distinct scores: many ties
    expected = [average_precision_score(m.flatten().numpy(), s.flatten().numpy()) for m, s in zip(masks, tied)]
    torch.testing.assert_close(auprc(tied, masks), torch.tensor(expected, dtype=torch.float32))

    lesion = top_left(64).expand(4, -1, -1, -1)  # a quarter of the pixels
    random_maps = torch.rand(4, 1, 64, 64, generator=generator)
    assert auprc(random_maps, lesion).mean().item() == pytest.approx(0.25, abs=0.03)
    assert iou(random_maps, lesion).mean().item() == pytest.approx(1 / 7, abs=0.03)  # 25% of k in, union 2k - that


def test_saliency_scores_keys_and_per_image_values():
    model = QuadrantNet()
    images = quadrant_images([1.0, -1.0])
    maps = top_left(SIZE).expand(2, -1, -1, -1)
    masks = torch.zeros(2, 1, SIZE, SIZE)
    masks[0, 0, :4, :4] = 1.0  # image 1 has no lesion
    scores = saliency_scores(model, images, maps, masks, steps=8)
    assert set(scores) == {"deletion_auc", "insertion_auc", "fidelity", "pointing_game", "iou", "auprc"}
    assert all(v.shape == (2,) for v in scores.values())
    assert scores["pointing_game"][0] == 1.0 and math.isnan(scores["pointing_game"][1])
    # top-16 of 64 tied quadrant pixels in raster order: rows 0-1, columns 0-7; 8 in the lesion, union 24
    assert scores["iou"][0] == pytest.approx(1 / 3) and math.isnan(scores["iou"][1])
    assert set(saliency_scores(model, images, maps, steps=8)) == {"deletion_auc", "insertion_auc", "fidelity"}


def tiny_medtex(channels: int = 3) -> MedTex:
    student = Student(in_channels=channels, out_channels=5, init_features=8, growth_rate=4, block_config=(1, 1, 1, 1))
    explainer = Explainer(in_channels=channels)  # the defaults: its architecture is not what is tested here
    return MedTex(student, explainer).eval()


def check_maps(maps: torch.Tensor, images: torch.Tensor) -> None:
    assert maps.shape == (images.shape[0], 1, *images.shape[2:])
    assert torch.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0


OPTIONS = {"occlusion": {"mask_size": 8, "overlap": 0.5}, "smoothgrad": {"n_samples": 3}}


@pytest.mark.parametrize("name", SALIENCY_METHODS)
def test_every_method_gives_maps_in_unit_range_on_densenet121_and_a_tiny_model(name):
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    if name == "medtex":
        network = tiny_medtex()
        maps = make_saliency(name, network)(images)
        check_maps(maps, images)
        torch.testing.assert_close(maps, network.explain(images)[1].detach())  # the mask itself, not rescaled
        return
    for model in (DenseNet121(spatial_dims=2, in_channels=3, out_channels=3), QuadrantNet(size=32)):
        method = make_saliency(name, model, **OPTIONS.get(name, {}))
        check_maps(method(images), images)
        check_maps(method(images, class_index=1), images)


def test_default_gradcam_layers_and_frozen_teacher(tmp_path):
    densenet = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2)
    resnet = ResNet("basic", [1, 1, 1, 1], [4, 8, 16, 32], spatial_dims=2, n_input_channels=1, num_classes=2)
    assert default_target_layer(densenet) == "class_layers.relu"
    assert default_target_layer(resnet) == "layer4"
    assert default_target_layer(QuadrantNet()) == "conv"  # otherwise the last convolution
    with pytest.raises(ValueError, match="not a module"):
        make_saliency("gradcam", QuadrantNet(), target_layer="nope")
    # a FrozenTeacher (frozen weights, forward returns (logits, features)) is explained through its network
    torch.save(resnet.state_dict(), tmp_path / "teacher.pt")
    teacher = FrozenTeacher(tmp_path / "teacher.pt", network=resnet)
    images = torch.randn(2, 1, 32, 32)
    for name in ("gradcam", "vanillagrad"):
        check_maps(make_saliency(name, teacher)(images), images)
    with pytest.raises(TypeError, match="explain"):
        make_saliency("medtex", resnet)


def quadrant_share(maps: torch.Tensor) -> torch.Tensor:
    """Per image: the fraction of the map's mass in the top-left and in the bottom-right quadrant."""
    half = maps.shape[-1] // 2
    total = maps.sum((1, 2, 3))
    return maps[..., :half, :half].sum((1, 2, 3)) / total, maps[..., half:, half:].sum((1, 2, 3)) / total


@pytest.mark.parametrize("name", ["gradcam", "gradcampp", "occlusion", "vanillagrad", "smoothgrad"])
def test_post_hoc_maps_find_the_quadrant_the_model_reads(name):
    model = QuadrantNet(size=32)
    # predicted classes 0, 1, 0; GradCAM++ keeps positive gradients only, which the class-1 image (negative
    # activations, negative gradient) lacks, so it gets three class-0 images of different strengths
    signs = [1.0, 0.6, 1.4] if name == "gradcampp" else [1.0, -1.0, 1.0]
    images = quadrant_images(signs, size=32, channels=3)
    options = {"target_layer": "gate"} if name.startswith("gradcam") else OPTIONS.get(name, {})
    method = make_saliency(name, model, **options)
    maps = method(images)
    inside, opposite = quadrant_share(maps)
    if name == "occlusion":  # patches at the quadrant's border reach a few pixels beyond it
        assert (inside > 0.5).all() and (inside > 5 * opposite).all(), (inside, opposite)
    else:  # the model's gradients and gated activations are exactly zero outside the quadrant
        torch.testing.assert_close(inside, torch.ones(3))
    # a batch gives the maps of one image at a time (MONAI's own class scores mix the images' classes); SmoothGrad
    # too, since the model is linear and its gradient does not depend on the noise
    single = torch.cat([method(images[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(maps, single, atol=1e-5, rtol=0)


def test_normalize_maps_rescales_per_image_and_zeroes_constant_maps():
    maps = torch.stack([torch.tensor([[2.0, 4.0], [6.0, 10.0]]), torch.full((2, 2), 3.0)])[:, None]
    maps[1, 0, 0, 0] += 3e-7  # rounding noise on a constant map
    out = normalize_maps(maps)
    torch.testing.assert_close(out[0, 0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert out[1].abs().max() == 0.0


class _Recorder(nn.Module):
    """Returns fixed logits and keeps what it was called with (and whether in training mode)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits, self.inputs, self.modes = logits, [], []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        self.modes.append(self.training)
        return self.logits[: x.shape[0]]


def test_fidelity_shows_the_classifier_m_x_plus_one_minus_m_b_in_eval_mode():
    torch.manual_seed(0)
    images, maps = torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])  # full images at logit 0: p = 0.5
    for options, blurred in (({}, None), ({"substrate": "blur"}, 4.0), ({"substrate": "blur", "blur_sigma": 2.0}, 2.0)):
        model = _Recorder(logits).train()
        scores = fidelity(model, images, maps, task="multilabel", **options)
        b = substrate_images(images, "blur", blurred) if blurred else torch.zeros_like(images)
        torch.testing.assert_close(model.inputs[0], torch.cat([images, maps * images + (1 - maps) * b]))
        assert model.modes == [False] and model.training  # eval mode inside, restored after
        assert scores.tolist() == [1.0, 1.0]  # p = 0.5 counts as present, like p = 0.73 on the masked images


def test_saliency_scores_pass_every_option_to_the_measures():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    images, maps = torch.rand(3, 1, 8, 8), torch.rand(3, 1, 8, 8) * 0.9
    maps[:, 0, 2, 2] = 1.0  # each map's peak, one pixel diagonal from the lesion below
    masks = torch.zeros(3, 1, 8, 8, dtype=torch.uint8)
    masks[:, 0, 3:6, 3:6] = 1
    options = dict(task="multilabel", class_index=1, substrate="blur", blur_sigma=2.0, steps=5)
    scores = saliency_scores(
        model, images, maps, masks, chunk_size=2, iou_threshold=0.4, pointing_tolerance=1, **options
    )
    torch.testing.assert_close(scores["deletion_auc"], deletion_auc(model, images, maps, **options))
    torch.testing.assert_close(scores["insertion_auc"], insertion_auc(model, images, maps, **options))
    fidelity_options = {k: options[k] for k in ("task", "substrate", "blur_sigma")}
    torch.testing.assert_close(scores["fidelity"], fidelity(model, images, maps, **fidelity_options))
    assert scores["pointing_game"].tolist() == [1.0, 1.0, 1.0]  # a hit only with tolerance 1
    torch.testing.assert_close(scores["iou"], iou(maps, masks.float(), 0.4))
    defaults = saliency_scores(model, images, maps, masks)  # the options above change every measure they reach
    for key in ("deletion_auc", "insertion_auc", "pointing_game", "iou"):
        assert not torch.allclose(defaults[key], scores[key]), key


def test_iou_and_auprc_at_their_boundaries():
    # a lesion of one pixel, and a resized mask's half-covered pixel (0.5) that does not count as lesion
    maps = torch.zeros(1, 1, 3, 3)
    maps[0, 0, 1, 1], maps[0, 0, 0, 0] = 1.0, 0.4
    masks = torch.zeros(1, 1, 3, 3)
    masks[0, 0, 1, 1], masks[0, 0, 2, 2] = 1.0, 0.5
    assert iou(maps, masks).tolist() == [1.0]  # top-1 pixel is the lesion: IoU 1, not NaN or 1/2
    assert iou(maps, masks, threshold=0.4).tolist() == [0.5]  # 0.4 is selected at threshold 0.4: 1 of 2
    assert auprc(maps, masks).tolist() == [1.0]  # were 0.5 a lesion, the last-ranked pixel would lower it
