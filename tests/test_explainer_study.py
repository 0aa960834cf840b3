"""scripts/explainer_study.py's tables, checked against the networks called directly on the same test images."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bundle.datasets.demo import generate_demo_data
from bundle.explain import map_similarity, pointing_game
from scripts import explainer_study
from scripts.learning_curves.rows import append_row

SIZE = 32


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A study folder as learning_curve.py leaves it: local data, a teacher, two seeds of two variants, the CSV."""
    out = tmp_path_factory.mktemp("study")
    generate_demo_data(
        "fundus", out / "data" / "fundus_local_B", n_train=4, n_val=2, n_test=10, size=SIZE, seed=0, domain="B"
    )
    args = explainer_study.parse_args(
        ["--task", "fundus", "--out", str(out), "--image-size", str(SIZE), "--seeds", "0", "1", "--n-images", "6"]
        + ["--variants", "medtex", "explainer_hard_gate", "--target-layer", "features.denseblock2", "--skip-training"]
    )
    variants = {k: v for k, v in explainer_study.explainer_variants().items() if k in args.variants}
    models = out / "models" / "fundus"
    parser = explainer_study.run_config(args, [])
    torch.manual_seed(0)
    models.mkdir(parents=True)
    torch.save(parser.get_parsed_content("teacher_def").state_dict(), models / "teacher.pt")
    for method, files in variants.items():
        for seed in args.seeds:
            torch.manual_seed(seed + 10)
            network = explainer_study.run_config(args, files).get_parsed_content("network_def")
            (models / method / f"n100_seed{seed}").mkdir(parents=True)
            torch.save(network.state_dict(), models / method / f"n100_seed{seed}" / "model.pt")
            row = {"task": "fundus", "method": method, "n_labeled": 100, "seed": seed, "auc": 0.5 + 0.1 * seed}
            append_row(out / "learning_curve_fundus.csv", {**row, "train_seconds": 10.0 + seed})
    assert explainer_study.report(args, variants, {}) == 0
    return args, variants


def test_seed_rows_hold_the_pointing_game_and_seed_similarity_of_the_networks_called_directly(study):
    args, variants = study
    parser = explainer_study.run_config(args, [])
    images, masks, _ = explainer_study.test_images(parser, args.n_images)
    maps = {}
    for seed in args.seeds:
        network = explainer_study.run_config(args, variants["explainer_hard_gate"]).get_parsed_content("network_def")
        network.load_state_dict(
            torch.load(args.out / "models/fundus/explainer_hard_gate" / f"n100_seed{seed}/model.pt")
        )
        with torch.no_grad():
            maps[seed] = network.eval().explain(images)[1]
    table = {(r["method"], r["seed"]): r for r in rows(args.results / "saliency_seeds_fundus.csv")}
    assert set(table) == {
        ("medtex", "0"),
        ("medtex", "1"),
        ("explainer_hard_gate", "0"),
        ("explainer_hard_gate", "1"),
    } | {
        ("gradcam", ""),
        ("occlusion", ""),
    }
    for seed in args.seeds:
        row = table[("explainer_hard_gate", str(seed))]
        hits = pointing_game(maps[seed], masks)
        assert float(row["pointing_game"]) == pytest.approx(float(hits[~hits.isnan()].mean()), abs=1e-4)
        assert float(row["student_auc"]) == pytest.approx(0.5 + 0.1 * seed)
        peaks = {int(m.argmax()) for m in maps[seed]}  # each map's peak pixel, one by one
        assert float(row["peak_spread"]) == pytest.approx(len(peaks) / len(maps[seed]))
        # numpy's FFT: the energy in the period-2 row and column (counted once where they cross), over all of it
        explainer_maps = maps[seed][:, 0].numpy()
        power = np.abs(np.fft.fft2(explainer_maps - explainer_maps.mean((-2, -1), keepdims=True))) ** 2
        half = SIZE // 2
        grid = power[:, half, :].sum(-1) + power[:, :, half].sum(-1) - power[:, half, half]
        assert float(row["grid_energy"]) == pytest.approx(float((grid / power.sum((-2, -1))).mean()), abs=1e-4)
        assert row["code_version"]
    similarity = map_similarity(maps[0], maps[1])
    for seed in args.seeds:  # two seeds: each one's similarity to the other is the same pair
        row = table[("explainer_hard_gate", str(seed))]
        assert float(row["ssim_to_other_seeds"]) == pytest.approx(float(similarity["ssim"].mean()), abs=1e-4)


def test_ablation_rows_are_means_and_worst_seed_of_the_seed_rows_and_the_outputs_exist(study):
    args, _ = study
    seeds = rows(args.results / "saliency_seeds_fundus.csv")
    ablation = {r["method"]: r for r in rows(args.results / f"explainer_ablation_fundus_{SIZE}px.csv")}
    assert list(ablation) == ["medtex", "explainer_hard_gate"]
    for method, row in ablation.items():
        values = [float(r["pointing_game"]) for r in seeds if r["method"] == method]
        assert int(row["n_seeds"]) == 2
        assert float(row["pointing_game_worst"]) == pytest.approx(min(values), abs=1e-4)
        assert float(row["pointing_game_mean"]) == pytest.approx(sum(values) / 2, abs=1e-4)
        assert float(row["student_auc_mean"]) == pytest.approx(0.55) and float(row["train_seconds_mean"]) == 10.5
    markdown = (args.results / f"explainer_ablation_fundus_{SIZE}px.md").read_text()
    assert "| explainer_hard_gate | 2 |" in markdown and "goals met" in markdown
    assert (args.results / "saliency_seeds_fundus.png").stat().st_size > 10_000
    assert (args.results / f"explainer_tradeoff_fundus_{SIZE}px.png").stat().st_size > 10_000
    report = (args.results / "report.html").read_text()
    assert "saliency_seeds_fundus" in report and report.count("data:image/png;base64") >= 1


def test_the_worst_seed_is_the_lowest_pointing_game_and_nan_scores_are_left_out_of_means():
    base = {"task": "cxr", "image_size": 64, "method": "explainer_deletion", "student_auc": 0.8, "train_seconds": 5.0}
    scores = {"deletion_auc": 0.2, "insertion_auc": 0.4, "fidelity": 0.7, "ssim_to_other_seeds": 0.5}
    scores.update(spearman_to_other_seeds=0.4, mask_only_score=0.5, mask_kept_fraction=0.3, peak_spread=0.9)
    scores.update(grid_energy=0.1)
    seed_rows = [
        {**base, **scores, "seed": 0, "pointing_game": 0.5},
        {**base, **scores, "seed": 1, "pointing_game": 0.2, "deletion_auc": float("nan"), "student_auc": 0.7},
    ]
    (row,) = explainer_study.ablation_rows(seed_rows, "abc")
    assert row["pointing_game_worst"] == 0.2 and row["pointing_game_mean"] == pytest.approx(0.35)
    assert row["deletion_auc_mean"] == 0.2  # the NaN seed left out
    assert row["grid_energy_mean"] == pytest.approx(0.1)
    assert row["student_auc_mean"] == pytest.approx(0.75) and row["student_auc_sd"] == pytest.approx(0.0707, abs=1e-4)


def test_a_run_retrained_in_place_gets_its_maps_computed_again(study):
    """The maps cache is keyed by the checkpoint's content: new weights in the same folder give new scores."""
    args, variants = study
    ckpt = args.out / "models/fundus/explainer_hard_gate/n100_seed1/model.pt"
    original = torch.load(ckpt)
    torch.manual_seed(99)
    network = explainer_study.run_config(args, variants["explainer_hard_gate"]).get_parsed_content("network_def")
    try:
        torch.save(network.state_dict(), ckpt)
        assert explainer_study.report(args, variants, {}) == 0
        images, masks, _ = explainer_study.test_images(explainer_study.run_config(args, []), args.n_images)
        with torch.no_grad():
            hits = pointing_game(network.eval().explain(images)[1], masks)
        table = {(r["method"], r["seed"]): r for r in rows(args.results / "saliency_seeds_fundus.csv")}
        row = table[("explainer_hard_gate", "1")]
        assert float(row["pointing_game"]) == pytest.approx(float(hits[~hits.isnan()].mean()), abs=1e-4)
        saved = torch.load(next((args.out / "maps" / "fundus").glob("*/explainer_hard_gate_seed1.pt")))
        assert not torch.equal(saved["maps"], original_maps(args, variants, original, images))
    finally:
        torch.save(original, ckpt)
        assert explainer_study.report(args, variants, {}) == 0


def original_maps(args, variants, state_dict, images):
    network = explainer_study.run_config(args, variants["explainer_hard_gate"]).get_parsed_content("network_def")
    network.load_state_dict(state_dict)
    with torch.no_grad():
        return network.eval().explain(images)[1]


def test_peak_spread_is_distinct_peak_positions_over_images():
    maps = torch.zeros(4, 1, 3, 3)
    maps[0, 0, 1, 1] = maps[1, 0, 1, 1] = maps[2, 0, 1, 1] = 1.0  # three maps peak at the centre
    maps[3, 0, 2, 0] = 1.0
    assert explainer_study.peak_spread(maps) == 0.5  # two positions, four maps


def test_the_seed_grid_shows_every_chosen_variants_seeds_then_the_references(tmp_path):
    images, masks = torch.rand(3, 1, 16, 16), torch.zeros(3, 1, 16, 16)
    masks[1:, :, 4:8, 4:8] = 1.0  # images 1 and 2 have a lesion
    run = {"maps": torch.rand(3, 1, 16, 16)}
    runs = {"medtex": {1: run, 0: run}, "explainer_blur": {2: run}}
    titles = explainer_study.write_seed_grid(tmp_path / "grid.png", images, masks, runs, {"occlusion": run}, n_rows=4)
    assert titles == ["image", "medtex\nseed 0", "medtex\nseed 1", "blur\nseed 2", "occlusion"]
    assert (tmp_path / "grid.png").stat().st_size > 5_000
    wide = {"medtex": {s: run for s in range(3)}, "explainer_blur": {s: run for s in range(3)}}
    explainer_study.write_seed_grid(tmp_path / "wide.png", images, masks, wide, {"occlusion": run}, n_rows=4)
    assert Image.open(tmp_path / "wide.png").width <= 1200  # under the Model Zoo's 1 MB limit for results


def test_overlays_joined_by_plus_stack_in_order_as_config_file_would(tmp_path):
    args = explainer_study.parse_args(
        ["--out", str(tmp_path), "--variants", "medtex", "explainer_evidence_occlusion+sparse", "--skip-training"]
    )
    files = explainer_study.variant_files(args.variants[1])
    assert files == ["configs/explainer/evidence_occlusion.yaml", "configs/explainer/sparse.yaml"]
    parser = explainer_study.run_config(args, files)
    # evidence_occlusion.yaml's target, sparse.yaml's budget (train.yaml: 0.0 and 2.0)
    assert (parser["evidence_weight"], parser["mask_weight"]) == (1.0, 10.0)
    with pytest.raises(SystemExit):
        explainer_study.parse_args(["--variants", "explainer_evidence_occlusion+no_such_overlay"])
    with pytest.raises(SystemExit):
        explainer_study.parse_args(["--variants", "explainer_sparse+"])


def test_an_override_reaches_every_training_run_and_the_networks_that_score_them(tmp_path):
    args = explainer_study.parse_args(
        ["--out", str(tmp_path), "--variants", "medtex", "--override", "cache", "disk"]
        + ["--override", "explainer_scale", "1", "--override", "ckpt_name", "no"]
        + ["--image-size", "128", "--skip-training"]
    )
    from scripts import learning_curve

    curve = learning_curve.parse_args(explainer_study.curve_argv(args, {"medtex": []}, [0]))
    assert curve.override == [["cache", "disk"], ["explainer_scale", "1"], ["ckpt_name", "no"]]
    parser = explainer_study.run_config(args, [])
    # read as the bundle's command line reads it: the number 1, not the text "1" (train.yaml at 128 px: scale 2)
    assert parser.get_parsed_content("explainer_scale") == 1
    assert parser.get_parsed_content("network_def").explainer.scale == 1
    assert parser["ckpt_name"] == "no"  # the command line keeps it text (a YAML reader would make it False)
