"""Saliency sanity checks (bundle/explain/sanity.py) and their part of scripts/compare_saliency.py."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.nets import DenseNet
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from torch import nn

from bundle.datasets.demo import generate_demo_data
from bundle.explain import (
    cascading_randomization,
    grid_energy,
    make_saliency,
    map_similarity,
    mask_only_score,
    normalize_maps,
    randomization_steps,
)
from bundle.explain.sanity import SSIM_SIGMA, SSIM_WINDOW
from bundle.networks import MedTex
from scripts import compare_saliency
from tests.conftest import inference_network
from tests.test_compare_saliency import ROOT, TINY

DENSENET_UNITS = [
    "class_layers.out",
    "features.norm5",
    "features.denseblock4",
    "features.transition3",
    "features.denseblock3",
    "features.transition2",
    "features.denseblock2",
    "features.transition1",
    "features.denseblock1",
    "features.norm0",
    "features.conv0",
]


def tiny_densenet(seed: int = 0, out_channels: int = 2) -> DenseNet:
    """A narrow MONAI DenseNet whose batch norms vary (a fresh one's eval-mode features are all zero)."""
    torch.manual_seed(seed)
    model = DenseNet(2, 3, out_channels, init_features=8, growth_rate=4, block_config=(1, 1, 1, 1))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, 0.5)
            nn.init.normal_(module.bias, 0.5, 0.5)
    return model.eval()


def numpy_ssim(a: np.ndarray, b: np.ndarray, size: int, sigma: float, data_range: float = 1.0) -> float:
    """Wang et al.'s SSIM, written out: a normalised Gaussian window, the mean over the fully inside windows."""
    offsets = np.arange(size) - (size - 1) / 2
    g = np.exp(-(offsets**2) / (2 * sigma**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(a.shape[0] - size + 1):
        for j in range(a.shape[1] - size + 1):
            x, y = a[i : i + size, j : j + size], b[i : i + size, j : j + size]
            mx, my = (window * x).sum(), (window * y).sum()
            vx, vy = (window * x * x).sum() - mx**2, (window * y * y).sum() - my**2
            cxy = (window * x * y).sum() - mx * my
            values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_spearman_matches_scipy_with_ties_and_is_nan_for_constant_maps():
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(0, 6, (5, 1, 16, 16), generator=generator).float()  # few values: many ties
    b = a + torch.randint(0, 4, a.shape, generator=generator).float()
    b[1] = torch.rand(1, 16, 16, generator=generator)
    spearman = map_similarity(a, b)["spearman"]
    for i in range(5):
        expected = spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert float(spearman[i]) == pytest.approx(expected, abs=1e-6)
    a[2] = 3.0  # constant: no order to correlate
    assert torch.isnan(map_similarity(a, b)["spearman"][2])


def test_ssim_is_one_for_identical_maps_near_zero_for_unrelated_and_matches_numpy():
    generator = torch.Generator().manual_seed(1)
    maps = torch.rand(4, 1, 32, 32, generator=generator)
    assert torch.allclose(map_similarity(maps, maps)["ssim"], torch.ones(4), atol=1e-5)
    unrelated = map_similarity(maps, torch.rand(4, 1, 32, 32, generator=generator))["ssim"]
    assert unrelated.abs().max() < 0.1
    smooth = torch.nn.functional.avg_pool2d(torch.rand(2, 1, 20, 20, generator=generator), 3, 1)  # 18 px, related
    other = smooth + 0.3 * torch.rand(smooth.shape, generator=generator)
    ssim = map_similarity(smooth, other)["ssim"]
    a, b = normalize_maps(smooth).numpy(), normalize_maps(other).numpy()
    for i in range(2):
        assert float(ssim[i]) == pytest.approx(numpy_ssim(a[i, 0], b[i, 0], SSIM_WINDOW, SSIM_SIGMA), abs=1e-4)
    assert 0.2 < float(ssim.mean()) < 0.99


def test_randomization_steps_of_a_densenet_run_from_the_output_down():
    steps = randomization_steps(tiny_densenet())
    assert [label for label, _ in steps] == DENSENET_UNITS
    assert all(names == [label] for label, names in steps)
    # units without parameters (ReLU, pooling) are no steps
    sequential = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    assert [label for label, _ in randomization_steps(sequential)] == ["3", "0"]


def test_cascading_randomization_is_cumulative_repeatable_and_leaves_the_model_alone():
    model = tiny_densenet()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    convolutions = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    steps = list(cascading_randomization(model, seed=3))
    assert [label for label, _ in steps] == DENSENET_UNITS
    for k, (label, randomized) in enumerate(steps, start=1):
        randomized_units = DENSENET_UNITS[:k]
        weights = dict(randomized.named_modules())
        for name in convolutions:
            changed = not torch.equal(weights[name].weight, original[f"{name}.weight"])
            inside = any(name == unit or name.startswith(unit + ".") for unit in randomized_units)
            assert changed == inside, (label, name)
    # the last step: every convolution and the linear layer re-initialised; batch norms' statistics reset too
    last = steps[-1][1]
    assert all(not torch.equal(dict(last.named_modules())[n].weight, original[f"{n}.weight"]) for n in convolutions)
    assert torch.equal(last.features.norm5.running_mean, torch.zeros_like(last.features.norm5.running_mean))
    for key, value in model.state_dict().items():  # the original is never changed
        assert torch.equal(value, original[key]), key
    again = list(cascading_randomization(model, seed=3))[-1][1]
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), last.state_dict().values()))


class HalfReader(nn.Module):
    """A student that reads which half of the image is bright: logits (left mean, right mean)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.stack([x[..., :half].mean((1, 2, 3)), x[..., half:].mean((1, 2, 3))], dim=1)


def half_masks(sides: torch.Tensor, size: int = 8) -> torch.Tensor:
    masks = torch.zeros(len(sides), 1, size, size)
    for i, side in enumerate(sides.tolist()):
        masks[i, ..., side * size // 2 : (side + 1) * size // 2] = 1.0
    return masks


def test_mask_only_score_finds_masks_that_encode_the_class():
    model = MedTex(HalfReader(), explainer=None, baseline="zero")
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (200,), generator=generator)
    mean = torch.ones(3)  # a zero baseline shows the mask on a non-zero constant image
    leaky = mask_only_score(model, half_masks(labels), labels, "multiclass", mean)
    chance = max(float(labels.float().mean()), 1 - float(labels.float().mean()))
    assert leaky == {"score": 1.0, "chance": pytest.approx(chance), "metric": "accuracy"}
    independent = torch.randint(0, 2, (200,), generator=generator)
    honest = mask_only_score(model, half_masks(independent), labels, "multiclass", mean)
    assert abs(honest["score"] - 0.5) < 0.1 and honest["score"] < chance + 0.05
    # one-hot labels read the same
    one_hot = torch.nn.functional.one_hot(labels, 2)
    assert mask_only_score(model, half_masks(labels), one_hot, "multiclass", mean)["score"] == 1.0
    assert mask_only_score(model, half_masks(labels), labels, "multiclass", mean.view(1, 3, 1, 1))["score"] == 1.0


def test_mask_only_score_multilabel_is_sklearn_macro_auc_over_classes_with_both_values():
    model = MedTex(HalfReader(), explainer=None, baseline="zero")
    generator = torch.Generator().manual_seed(2)
    masks = torch.rand(40, 1, 8, 8, generator=generator)
    labels = torch.randint(0, 2, (40, 2), generator=generator)
    result = mask_only_score(model, masks, labels, "multilabel", torch.full((3, 1, 1), 0.5))
    scores = torch.sigmoid(HalfReader()(0.5 * masks.expand(-1, 3, -1, -1))).numpy()
    expected = np.mean([roc_auc_score(labels[:, c].numpy(), scores[:, c]) for c in range(2)])
    assert result["metric"] == "auc" and result["chance"] == 0.5
    assert result["score"] == pytest.approx(expected, abs=1e-9)
    labels[:, 1] = 1  # a class with one value has no AUC: left out of the mean
    result = mask_only_score(model, masks, labels, "multilabel", torch.full((3, 1, 1), 0.5))
    assert result["score"] == pytest.approx(roc_auc_score(labels[:, 0].numpy(), scores[:, 0]), abs=1e-9)
    # leaky masks (the class's half) reach AUC 1
    sides = torch.randint(0, 2, (40,), generator=generator)
    leaky = mask_only_score(model, half_masks(sides), torch.stack([1 - sides, sides], 1), "multilabel", torch.ones(3))
    assert leaky["score"] == 1.0


def test_sanity_rows_cover_every_method_and_step_and_randomisation_changes_the_maps():
    teacher = tiny_densenet(seed=0)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    # GradCAM at an 8 px block: the default layer's feature map is 1 x 1 at 32 px, a constant map on any teacher
    options = {"gradcam": {"target_layer": "features.denseblock2"}}

    def make_method(name, model):
        return make_saliency(name, model, task="multiclass", **options.get(name, {}))

    medtex = inference_network()
    with torch.no_grad():  # a mask spanning (0, 1), as in conftest's model_ckpt
        medtex.explainer.body.final_conv.bias.zero_()
        medtex.explainer.body.final_conv.weight.mul_(20.0)
    rows = compare_saliency.sanity_rows(
        teacher,
        images,
        make_method,
        ["medtex", "gradcam", "vanillagrad"],
        cascade_methods=("gradcam",),  # vanillagrad stands in for the slow methods: compared at all layers only
        shuffled_teacher=teacher,  # the control: the untouched teacher again
        medtex=medtex.eval(),
        medtex_controls=[("model_randomization", "same model", medtex)],
        batch_size=2,
    )
    table = {(r["method"], r["check"], r["setting"]): r for r in rows}
    assert all(("gradcam", "model_randomization", unit) in table for unit in DENSENET_UNITS)
    assert ("vanillagrad", "model_randomization", "all layers") in table
    assert not any(r["method"] == "vanillagrad" and r["setting"] in DENSENET_UNITS for r in rows)
    for method in ("gradcam", "vanillagrad"):
        control = table[(method, "data_randomization", "shuffled labels")]
        assert control["ssim"] == pytest.approx(1.0, abs=1e-5) and control["n_images"] == 2
    assert table[("medtex", "model_randomization", "same model")]["ssim"] == pytest.approx(1.0, abs=1e-5)
    # every layer randomised: the maps change (a randomised GradCAM map may be constant: Spearman NaN, SSIM low)
    assert table[("gradcam", "model_randomization", DENSENET_UNITS[-1])]["ssim"] < 0.5
    assert table[("vanillagrad", "model_randomization", "all layers")]["ssim"] < 0.5
    assert all(set(r) == set(compare_saliency.SANITY_COLUMNS) for r in rows)


def test_compare_saliency_main_writes_the_sanity_table_plot_and_report(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    generate_demo_data("fundus", data, n_train=0, n_val=0, n_test=2, size=32, seed=0)
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(TINY)
    configs = [str(ROOT / "configs" / "train.yaml"), str(ROOT / "configs" / "datasets" / "demo_fundus.yaml"), str(tiny)]
    parser = ConfigParser()
    parser.read_config(configs)
    parser.update({"dataset_dir": str(data), "image_size": 32})
    torch.manual_seed(0)
    teacher, network = parser.get_parsed_content("teacher_def"), parser.get_parsed_content("network_def")
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    torch.save(network.state_dict(), tmp_path / "model.pt")
    command = ["--task-name", "fundus", "--config", *configs, "--dataset-dir", str(data), "--out", str(out)]
    command += ["--teacher-ckpt", str(tmp_path / "teacher.pt"), "--model-ckpt", str(tmp_path / "model.pt")]
    command += ["--image-size", "32", "--n-images", "2", "--device", "cpu", "--steps", "4", "--repeats", "1"]
    command += ["--n-grid", "2", "--methods", "medtex", "gradcam", "--cascade-methods", "gradcam", "--sanity"]
    command += ["--shuffled-teacher-ckpt", str(tmp_path / "teacher.pt")]  # controls: the same weights again
    command += ["--randomized-teacher-model-ckpt", str(tmp_path / "model.pt"), "--sanity-n-images", "1"]
    assert compare_saliency.main(command) == 0
    with open(out / "saliency_sanity_fundus.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == compare_saliency.SANITY_COLUMNS
    settings = [(r["method"], r["setting"]) for r in rows]
    assert settings[0] == ("gradcam", "class_layers.out") and ("gradcam", "features.conv0") in settings
    assert ("gradcam", "shuffled labels") in settings and ("medtex", "random teacher") in settings
    by_setting = {(r["method"], r["setting"]): r for r in rows}
    assert float(by_setting[("gradcam", "shuffled labels")]["ssim"]) == pytest.approx(1.0, abs=1e-5)
    assert float(by_setting[("medtex", "random teacher")]["ssim"]) == pytest.approx(1.0, abs=1e-5)
    assert all(int(r["n_images"]) == 1 and math.isfinite(float(r["ssim"])) for r in rows)
    assert "| gradcam | model_randomization | class_layers.out |" in (out / "saliency_sanity_fundus.md").read_text()
    assert (out / "saliency_sanity_fundus.png").stat().st_size > 1000
    html = (out / "report.html").read_text()  # the report embeds the plot beside the saliency grid
    assert "saliency_sanity_fundus" in html and html.count("data:image/png;base64,") >= 2


def test_grid_energy_is_the_share_of_energy_at_the_highest_frequency_worked_out_by_hand():
    """A checkerboard on a constant holds all its energy at period 2 (1); added to a cosine of the lowest frequency
    with sqrt(2) times its amplitude, half (a^2 / (a^2 + b^2 / 2) = 1 / 2); a smooth blob almost none; a constant map 0;
    odd sizes use their highest frequency's pair of bins, as numpy's FFT of the same maps says."""
    size = 32
    rows, columns = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    checkerboard = ((-1.0) ** (rows + columns))[None, None]
    lowest = torch.cos(2 * math.pi * columns / size)[None, None]
    blob = torch.exp(-((rows - 16.0) ** 2 + (columns - 16.0) ** 2) / 50.0)[None, None]
    maps = torch.cat([checkerboard + 3, checkerboard + math.sqrt(2) * lowest, blob, torch.ones(1, 1, size, size)])
    energy = grid_energy(maps)
    assert energy.shape == (4,)
    torch.testing.assert_close(energy[:2], torch.tensor([1.0, 0.5]))
    assert energy[2] < 1e-3 and energy[3] == 0
    odd = torch.rand(2, 1, 31, 33, generator=torch.Generator().manual_seed(0))
    for image, value in zip(odd[:, 0].numpy(), grid_energy(odd)):
        power = np.abs(np.fft.fft2(image - image.mean())) ** 2
        high_rows, high_columns = [15, 16], [16, 17]  # +-(n - 1) / 2n: bins (n - 1) / 2 and (n + 1) / 2
        grid = power[high_rows].sum() + power[:, high_columns].sum() - power[np.ix_(high_rows, high_columns)].sum()
        assert float(value) == pytest.approx(grid / power.sum(), rel=1e-5)
    with pytest.raises(ValueError, match="must be"):
        grid_energy(torch.rand(4, 32, 32))
