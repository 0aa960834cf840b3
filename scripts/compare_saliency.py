"""Every saliency method on the same test images: faithfulness to the teacher, localisation, and speed.

    python scripts/compare_saliency.py --task-name fundus --dataset-dir data/demo_fundus --out eval/saliency \
        [--config configs/train.yaml configs/datasets/demo_fundus.yaml] [--teacher-ckpt models/teacher.pt] \
        [--model-ckpt models/model.pt] [--image-size 64] [--n-images 32] [--methods gradcam occlusion ...]

The bundle configs are parsed with MONAI's ``ConfigParser`` (default: ``configs/train.yaml`` plus
``configs/datasets/demo_<task-name>.yaml`` when it exists), so the data set override, ``image_size`` and the
preprocessing are those of training. The teacher is ``teacher_def`` loaded from ``teacher_ckpt`` (as
``configs/train.yaml`` builds it); the explainer + student is ``network_def`` loaded from ``--model-ckpt`` (default
``<ckpt_dir>/<ckpt_name>``). Images are the first ``--n-images`` items of the datalist's ``--split`` that have a
ground-truth ``mask``.

Per method (``bundle.explain.SALIENCY_METHODS``, plus a uniformly random map as the chance reference): deletion
and insertion AUC and post-hoc fidelity, all of the TEACHER (the model being explained, also for the explainer's
masks), pointing game, IoU (top-k, k = lesion area) and AUPRC against the masks (means over images; the
localisation means skip images without a lesion), and maps per second (median of ``--repeats`` timed runs on one
batch after a warm-up; for ``medtex`` one ``explain`` call, explainer + student). Writes ``saliency_<task>.csv``,
``saliency_<task>.md`` and ``saliency_<task>.png`` (rows: images; columns: image, ground truth, each method's map
overlaid) under ``--out``.

Sanity checks (Adebayo et al. 2018; :mod:`bundle.explain.sanity`), only when asked for: ``--sanity`` randomises the
teacher's layers cumulatively from the output down and compares the maps of ``--cascade-methods`` (default gradcam
gradcampp vanillagrad) on each randomised copy with the original teacher's maps (SSIM and Spearman rank correlation,
means over the first ``--sanity-n-images`` images); the other post-hoc methods of ``--methods`` are compared with
every layer randomised only (setting ``all layers``). ``--shuffled-teacher-ckpt`` adds data randomisation: the same
methods on a teacher trained on shuffled labels. For ``medtex``, ``--randomized-teacher-model-ckpt`` and
``--shuffled-teacher-model-ckpt`` are explainers + students trained against a random and a shuffled-label teacher;
their masks are compared with ``--model-ckpt``'s. Writes ``saliency_sanity_<task>.csv`` (columns method, check,
setting, ssim, spearman, n_images), ``saliency_sanity_<task>.md`` and the plot ``saliency_sanity_<task>.png``.
Other scripts can call :func:`sanity_rows` with loaded models and images.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.utils import convert_to_tensor, set_determinism
from PIL import Image
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.data.datalist import ITEM_LIST_KEYS, load_datalist  # noqa: E402
from bundle.explain import (  # noqa: E402
    SALIENCY_METHODS,
    cascading_randomization,
    make_saliency,
    map_similarity,
    saliency_scores,
)
from bundle.explain.faithfulness import SUBSTRATES  # noqa: E402
from bundle.networks.teacher import FrozenTeacher, load_weights  # noqa: E402
from bundle.report import write_html_report  # noqa: E402

RANDOM = "random"  # reference row: a uniformly random map (what chance gives on every measure)
METRICS = ("deletion_auc", "insertion_auc", "fidelity", "pointing_game", "iou", "auprc")
COLUMNS = ("method", *METRICS, "maps_per_second", "n_images", "n_with_lesion", "threads", "device")
SANITY_COLUMNS = ("method", "check", "setting", "ssim", "spearman", "n_images")
CASCADE_METHODS = ("gradcam", "gradcampp", "vanillagrad")  # fast enough to run once per randomised layer
ALL_LAYERS = "all layers"
SSIM_GOAL = 0.5  # below this mean SSIM a method's maps count as changed by the randomisation


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task-name", default="fundus", help="name in the output files, e.g. fundus or cxr")
    parser.add_argument("--config", nargs="+", help="bundle configs, merged in order (default: see above)")
    parser.add_argument("--dataset-dir", help="overrides the configs' dataset_dir")
    parser.add_argument("--split", default="test", choices=ITEM_LIST_KEYS, help="datalist list to read (test)")
    parser.add_argument("--teacher-ckpt", help="overrides the configs' teacher_ckpt")
    parser.add_argument("--model-ckpt", help="explainer + student weights (default <ckpt_dir>/<ckpt_name>)")
    parser.add_argument("--image-size", type=int, help="overrides the configs' image_size")
    parser.add_argument("--n-images", type=int, default=32, help="images with a mask to use (default 32)")
    parser.add_argument("--methods", nargs="+", default=list(SALIENCY_METHODS), choices=SALIENCY_METHODS)
    parser.add_argument("--out", type=Path, default=Path("eval/saliency"), help="output folder (eval/saliency)")
    parser.add_argument("--device", help="overrides the configs' device, e.g. cpu or cuda:0")
    parser.add_argument("--batch-size", type=int, default=8, help="images per saliency call (8)")
    parser.add_argument("--substrate", choices=SUBSTRATES, help="removed pixels become (default: mask_baseline)")
    parser.add_argument("--blur-sigma", type=float, default=4.0, help="Gaussian sigma of the blur substrate (4)")
    parser.add_argument("--steps", type=int, default=32, help="deletion/insertion steps (32)")
    parser.add_argument("--chunk-size", type=int, default=64, help="step images per teacher call (64)")
    parser.add_argument("--target-layer", help="GradCAM layer of the teacher (default: by architecture)")
    parser.add_argument("--occlusion-mask-size", type=int, help="occluded patch side (default image_size // 8)")
    parser.add_argument("--occlusion-overlap", type=float, default=0.5, help="overlap of occluded patches (0.5)")
    parser.add_argument("--smoothgrad-samples", type=int, default=25, help="noisy copies per image (25)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method after a warm-up (3)")
    parser.add_argument("--n-grid", type=int, default=4, help="images (rows) in the PNG grid (4)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed for SmoothGrad noise and the random maps (0)")
    parser.add_argument("--sanity", action="store_true", help="model randomisation of the teacher (see above)")
    parser.add_argument(
        "--cascade-methods",
        nargs="+",
        default=list(CASCADE_METHODS),
        choices=SALIENCY_METHODS[1:],
        help="post-hoc methods compared at every randomised layer (gradcam gradcampp vanillagrad)",
    )
    parser.add_argument("--sanity-n-images", type=int, default=16, help="images for the sanity checks (16)")
    parser.add_argument("--shuffled-teacher-ckpt", help="teacher trained on shuffled labels (data randomisation)")
    parser.add_argument("--randomized-teacher-model-ckpt", help="explainer + student trained against a random teacher")
    parser.add_argument("--shuffled-teacher-model-ckpt", help="explainer + student trained against --shuffled-teacher")
    args = parser.parse_args(argv)
    if args.n_images < 1 or args.batch_size < 1 or args.repeats < 1 or args.sanity_n_images < 1:
        parser.error("--n-images, --batch-size, --repeats and --sanity-n-images must be positive")
    return args


def load_config(args: argparse.Namespace) -> ConfigParser:
    """The bundle configs with the command line's overrides; lesion masks are loaded with the images."""
    configs = args.config
    if configs is None:
        configs = [str(ROOT / "configs" / "train.yaml")]
        override = ROOT / "configs" / "datasets" / f"demo_{args.task_name}.yaml"
        configs += [str(override)] if override.is_file() else []
    parser = ConfigParser()
    parser.read_config(configs)
    updates: dict[str, Any] = {"bundle_root": str(ROOT), "lesion_masks": True}
    for key, value in (
        ("dataset_dir", args.dataset_dir),
        ("teacher_ckpt", args.teacher_ckpt),
        ("image_size", args.image_size),
        ("device", None if args.device is None else f"$torch.device('{args.device}')"),
    ):
        if value is not None:
            updates[key] = value
    parser.update(updates)
    return parser


def load_images(parser: ConfigParser, split: str, n_images: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The first ``n_images`` items of ``split`` that have a ``mask``, preprocessed as in training."""
    datalist = parser.get_parsed_content("datalist")
    items = [item for item in load_datalist(datalist, split) if item.get("mask")][:n_images]
    if not items:
        raise SystemExit(f"{datalist}: no '{split}' items with a ground-truth 'mask' to compare saliency against")
    preprocessing = parser.get_parsed_content("preprocessing")
    images, masks = [], []
    for item in tqdm(items, desc="images", unit="img"):
        data = preprocessing(item)
        images.append(convert_to_tensor(data["image"], track_meta=False).float())
        masks.append((convert_to_tensor(data["mask"], track_meta=False) > 0.5).float())
    return torch.stack(images), torch.stack(masks), [item["image"] for item in items]


def method_options(args: argparse.Namespace, image_size: int) -> dict[str, dict[str, Any]]:
    """``make_saliency`` keyword arguments by method, from the command line."""
    return {
        "gradcam": {"target_layer": args.target_layer},
        "gradcampp": {"target_layer": args.target_layer},
        "occlusion": {
            "mask_size": args.occlusion_mask_size or max(2, image_size // 8),
            "overlap": args.occlusion_overlap,
        },
        "smoothgrad": {"n_samples": args.smoothgrad_samples},
    }


def load_network(parser: ConfigParser, ckpt: str, device: torch.device) -> torch.nn.Module:
    """``network_def`` (explainer + student) with the weights of ``ckpt``, in eval mode."""
    model = parser.get_parsed_content("network_def")
    try:
        model.load_state_dict(load_weights(ckpt))
    except RuntimeError as error:  # e.g. a checkpoint from an older explainer architecture
        raise SystemExit(f"{ckpt}: weights do not fit the configured network_def: {error}") from error
    return model.to(device).eval()


def build_methods(
    args: argparse.Namespace, parser: ConfigParser, teacher: torch.nn.Module, device: torch.device
) -> dict[str, Any]:
    """Saliency methods by name: the explainer + student for ``medtex``, the teacher for the others."""
    task, image_size = parser.get_parsed_content("task"), parser.get_parsed_content("image_size")
    options = method_options(args, image_size)
    methods = {}
    for name in args.methods:
        model = teacher
        if name == "medtex":
            ckpt = args.model_ckpt or os.path.join(
                parser.get_parsed_content("ckpt_dir"), parser.get_parsed_content("ckpt_name")
            )
            model = load_network(parser, ckpt, device)
        methods[name] = make_saliency(name, model, task=task, **options.get(name, {}))
    return methods


def random_maps(images: torch.Tensor, class_index: Any = None) -> torch.Tensor:
    """A uniformly random map per image: the chance reference."""
    return torch.rand(images.shape[0], 1, *images.shape[2:], device=images.device)


def maps_per_second(method: Any, images: torch.Tensor, repeats: int) -> float:
    """Images / median seconds of ``repeats`` calls on one batch, after one untimed warm-up call."""
    method(images)
    seconds = []
    for _ in range(repeats):
        if images.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        method(images)
        if images.is_cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return images.shape[0] / statistics.median(seconds)


def nanmean(values: torch.Tensor) -> float:
    values = values[~torch.isnan(values)]
    return float(values.mean()) if values.numel() else float("nan")


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_markdown(path: Path, rows: list[dict[str, Any]], setting: str) -> None:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "n/a" if math.isnan(value) else f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    columns = ("method", *METRICS, "maps_per_second")
    lines = [
        f"# Saliency methods: {path.stem.removeprefix('saliency_')}",
        "",
        setting,
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    lines += [
        "",
        "Deletion AUC: lower is better; insertion AUC, fidelity, pointing game, IoU, AUPRC: higher is better. "
        "Deletion/insertion/fidelity measure the teacher (the model being explained) for every method, the "
        "explainer's masks included. IoU keeps the map's top-k pixels (k = lesion area); localisation means skip "
        f"images without a lesion. '{RANDOM}' is a uniformly random map (chance).",
        "",
    ]
    path.write_text("\n".join(lines))


def write_grid(path: Path, images: torch.Tensor, masks: torch.Tensor, maps: dict[str, torch.Tensor]) -> None:
    """Rows: images; columns: image, ground truth, each method's map (blended with ``monai.visualize``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from monai.visualize import blend_images

    columns = ["image", "ground truth", *maps]
    n_rows = images.shape[0]
    figure, axes = plt.subplots(n_rows, len(columns), figsize=(1.6 * len(columns), 1.6 * n_rows), squeeze=False)
    for row in range(n_rows):
        image = images[row]
        low, high = image.amin(), image.amax()
        image = ((image - low) / (high - low).clamp(min=1e-8)).clamp(0, 1)  # display range of a normalised image
        panels = [
            image.expand(3, -1, -1),
            blend_images(image, masks[row], alpha=0.7, cmap="cool", rescale_arrays=False),
        ]
        for name in maps:
            saliency = maps[name][row]
            # opacity follows saliency, so the image shows through where the map is low
            panels.append(
                blend_images(
                    image,
                    saliency,
                    alpha=0.7 * saliency,
                    cmap="jet",
                    rescale_arrays=False,
                    transparent_background=False,
                )
            )
        for column, panel in enumerate(panels):
            axis = axes[row, column]
            axis.imshow(torch.as_tensor(panel).permute(1, 2, 0).clamp(0, 1).numpy())
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(columns[column], fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120, pil_kwargs={"optimize": True})
    plt.close(figure)
    with Image.open(path) as saved:  # matplotlib writes RGBA; the grid is opaque, and RGB is a tenth smaller
        opaque = saved.convert("RGB")
    opaque.save(path, optimize=True)


def all_maps(method: Any, images: torch.Tensor, batch_size: int, device: torch.device, seed: int) -> torch.Tensor:
    """``method``'s maps of ``images`` in batches, on the CPU; the RNG is reseeded first so that SmoothGrad adds the
    same noise for every model compared."""
    torch.manual_seed(seed)
    batches = [method(images[i : i + batch_size].to(device)).cpu() for i in range(0, images.shape[0], batch_size)]
    return torch.cat(batches)


def similarity_row(method: str, check: str, setting: str, reference: torch.Tensor, maps: torch.Tensor) -> dict:
    """One row of the sanity table: mean SSIM and Spearman over images (Spearman skips constant maps)."""
    values = map_similarity(reference, maps)
    ssim, spearman = nanmean(values["ssim"]), nanmean(values["spearman"])
    return {
        "method": method,
        "check": check,
        "setting": setting,
        "ssim": ssim,
        "spearman": spearman,
        "n_images": reference.shape[0],
    }


def sanity_rows(
    teacher: torch.nn.Module,
    images: torch.Tensor,
    make_method: Callable[[str, torch.nn.Module], Any],
    methods: Sequence[str],
    cascade_methods: Sequence[str] = CASCADE_METHODS,
    shuffled_teacher: torch.nn.Module | None = None,
    medtex: torch.nn.Module | None = None,
    medtex_controls: Sequence[tuple[str, str, torch.nn.Module]] = (),
    batch_size: int = 8,
    device: torch.device | str = "cpu",
    seed: int = 0,
    randomize: bool = True,
) -> list[dict[str, Any]]:
    """Adebayo et al.'s sanity checks as rows ``{method, check, setting, ssim, spearman, n_images}``.

    ``make_method(name, model)`` builds the saliency method ``name`` on ``model``. Post-hoc methods (the names in
    ``methods`` other than ``medtex``): with ``randomize``, the teacher's cascading randomisation
    (:func:`bundle.explain.cascading_randomization`), ``cascade_methods`` at every step and the others with all
    layers randomised only (check ``model_randomization``); with ``shuffled_teacher``, the maps of a teacher trained
    on shuffled labels (``data_randomization``, ``shuffled labels``). ``medtex``: the explainer + student whose masks
    are the reference for ``medtex_controls``, ``(check, setting, model)`` triples such as ``("model_randomization",
    "random teacher", model)``. Every comparison is against the untouched model's maps of the same ``images``.
    """
    device = torch.device(device)
    post_hoc = [name for name in methods if name != "medtex"]

    def maps_of(name: str, model: torch.nn.Module) -> torch.Tensor:
        return all_maps(make_method(name, model), images, batch_size, device, seed)

    reference = {name: maps_of(name, teacher) for name in post_hoc}
    rows = []
    if randomize and post_hoc:
        steps = list(cascading_randomization(teacher, seed=seed))
        cascade = [name for name in post_hoc if name in cascade_methods]
        for label, randomized in tqdm(steps, desc="randomised layers", unit="step", leave=False):
            for name in cascade:
                rows.append(
                    similarity_row(name, "model_randomization", label, reference[name], maps_of(name, randomized))
                )
        everything = steps[-1][1]  # the last step has every unit re-initialised
        for name in post_hoc:
            if name not in cascade:
                rows.append(
                    similarity_row(name, "model_randomization", ALL_LAYERS, reference[name], maps_of(name, everything))
                )
    if shuffled_teacher is not None:
        for name in post_hoc:
            maps = maps_of(name, shuffled_teacher)
            rows.append(similarity_row(name, "data_randomization", "shuffled labels", reference[name], maps))
    if medtex is not None and medtex_controls:
        masks = maps_of("medtex", medtex)
        for check, setting, model in medtex_controls:
            rows.append(similarity_row("medtex", check, setting, masks, maps_of("medtex", model)))
    return rows


def write_sanity_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SANITY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def write_sanity_markdown(path: Path, rows: list[dict[str, Any]], setting: str) -> None:
    def cell(value: Any) -> str:
        return ("n/a" if math.isnan(value) else f"{value:.3f}") if isinstance(value, float) else str(value)

    lines = [
        f"# Saliency sanity checks: {path.stem.removeprefix('saliency_sanity_')}",
        "",
        setting,
        "",
        "| " + " | ".join(SANITY_COLUMNS) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * (len(SANITY_COLUMNS) - 3)) + "|",
    ]
    lines += ["| " + " | ".join(cell(row[c]) for c in SANITY_COLUMNS) + " |" for row in rows]
    lines += [
        "",
        "Similarity of each method's maps on a randomised model to its maps on the original (Adebayo et al. 2018): "
        "SSIM and Spearman rank correlation of the min-max normalised maps, means over images. Lower is better: a "
        f"method that explains the model changes its maps (goal: SSIM below {SSIM_GOAL}). model_randomization "
        "settings name the teacher layer down to which every layer is re-initialised (top first); "
        f"'{ALL_LAYERS}': every layer. data_randomization: a teacher trained on shuffled labels.",
        "",
    ]
    path.write_text("\n".join(lines))


def write_sanity_plot(path: Path, rows: list[dict[str, Any]]) -> None:
    """SSIM and Spearman against the randomised layer (top first), one line per method; the other settings
    ('all layers', data randomisation, MED-TEX's controls) as markers right of the dotted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(
        dict.fromkeys(
            r["setting"]
            for r in rows
            if r["check"] == "model_randomization" and r["setting"] != ALL_LAYERS and r["method"] != "medtex"
        )
    )
    others = list(dict.fromkeys(r["setting"] for r in rows if r["setting"] not in layers))
    positions = {label: i for i, label in enumerate(layers + others)}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    figure, axes = plt.subplots(1, 2, figsize=(max(8.0, 0.55 * len(positions) * 2 + 3), 4.2), squeeze=False)
    for axis, measure, title in zip(axes[0], ("ssim", "spearman"), ("SSIM", "Spearman rank correlation")):
        for index, method in enumerate(methods):
            color = f"C{index}"
            line = [r for r in rows if r["method"] == method and r["setting"] in layers]
            if line:
                axis.plot(
                    [positions[r["setting"]] for r in line],
                    [r[measure] for r in line],
                    "o-",
                    color=color,
                    label=method,
                    markersize=3,
                )
            points = [r for r in rows if r["method"] == method and r["setting"] in others]
            if points:
                axis.plot(
                    [positions[r["setting"]] for r in points],
                    [r[measure] for r in points],
                    "D",
                    color=color,
                    label=None if line else method,
                    markersize=5,
                    linestyle="none",
                )
        if layers and others:
            axis.axvline(len(layers) - 0.5, color="grey", linestyle=":", linewidth=1)
        if measure == "ssim":
            axis.axhline(SSIM_GOAL, color="black", linestyle="--", linewidth=1, label="goal: changes the maps")
        axis.set_xticks(range(len(positions)))
        axis.set_xticklabels(list(positions), rotation=70, ha="right", fontsize=7)
        axis.set_ylim(-0.3, 1.05)
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("randomised down to (cumulative)  |  other settings", fontsize=8)
        axis.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def run_sanity(
    args: argparse.Namespace,
    parser: ConfigParser,
    teacher: torch.nn.Module,
    methods: dict[str, Any],
    images: torch.Tensor,
    device: torch.device,
) -> None:
    """The sanity checks the command line asks for, written as ``saliency_sanity_<task>.{csv,md,png}``."""
    task, image_size = parser.get_parsed_content("task"), parser.get_parsed_content("image_size")
    options = method_options(args, image_size)

    def make_method(name: str, model: torch.nn.Module) -> Any:
        return make_saliency(name, model, task=task, **options.get(name, {}))

    shuffled = None
    if args.shuffled_teacher_ckpt:
        network = parser.get_parsed_content("teacher_def")
        shuffled = FrozenTeacher(args.shuffled_teacher_ckpt, network=network).to(device).network
    controls = []
    if "medtex" in methods:
        for check, setting, ckpt in (
            ("model_randomization", "random teacher", args.randomized_teacher_model_ckpt),
            ("data_randomization", "shuffled-label teacher", args.shuffled_teacher_model_ckpt),
        ):
            if ckpt:
                controls.append((check, setting, load_network(parser, ckpt, device)))
    subset = images[: args.sanity_n_images]
    rows = sanity_rows(
        teacher,
        subset,
        make_method,
        args.methods,  # not the chance reference 'random', which is no model's map
        cascade_methods=args.cascade_methods,
        shuffled_teacher=shuffled,
        medtex=methods["medtex"].model if "medtex" in methods else None,
        medtex_controls=controls,
        batch_size=args.batch_size,
        device=device,
        seed=args.seed,
        randomize=args.sanity,
    )
    stem = args.out / f"saliency_sanity_{args.task_name}"
    setting = (
        f"{subset.shape[0]} '{args.split}' images at {image_size} px ({task}); teacher "
        f"{parser.get_parsed_content('teacher_ckpt')}; cascading randomisation seed {args.seed}"
        f"{f'; shuffled-label teacher {args.shuffled_teacher_ckpt}' if shuffled is not None else ''}."
    )
    write_sanity_csv(stem.with_suffix(".csv"), rows)
    write_sanity_markdown(stem.with_suffix(".md"), rows, setting)
    if rows:
        write_sanity_plot(stem.with_suffix(".png"), rows)
    print(f"sanity checks: {stem.resolve()}.csv, .md, .png")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    set_determinism(seed=args.seed)
    parser = load_config(args)
    device = parser.get_parsed_content("device")
    task = parser.get_parsed_content("task")
    substrate = args.substrate or parser.get("mask_baseline", "zero")
    images, masks, files = load_images(parser, args.split, args.n_images)
    teacher_ckpt = parser.get_parsed_content("teacher_ckpt")
    teacher = FrozenTeacher(teacher_ckpt, network=parser.get_parsed_content("teacher_def")).to(device).network
    methods: dict[str, Any] = build_methods(args, parser, teacher, device)
    methods[RANDOM] = random_maps
    metric_options = dict(task=task, substrate=substrate, blur_sigma=args.blur_sigma, steps=args.steps)
    metric_options.update(chunk_size=args.chunk_size)

    rows, grid_maps = [], {}
    threads = torch.get_num_threads()
    for name, method in tqdm(methods.items(), desc="methods", unit="method"):
        scores: dict[str, list[torch.Tensor]] = {metric: [] for metric in METRICS}
        batches = range(0, images.shape[0], args.batch_size)
        for start in tqdm(batches, desc=name, unit="batch", leave=False):
            x = images[start : start + args.batch_size].to(device)
            y = masks[start : start + args.batch_size].to(device)
            maps = method(x)
            for metric, values in saliency_scores(teacher, x, maps, y, **metric_options).items():
                scores[metric].append(values.cpu())
            if start == 0:
                grid_maps[name] = maps[: args.n_grid].cpu()
        speed = maps_per_second(method, images[: args.batch_size].to(device), args.repeats)
        per_image = {metric: torch.cat(scores[metric]) for metric in METRICS}
        row = {"method": name, **{metric: nanmean(per_image[metric]) for metric in METRICS}}
        row.update(maps_per_second=speed, n_images=len(files), n_with_lesion=int((masks.flatten(1).amax(1) > 0).sum()))
        row.update(threads=threads, device=str(device))
        rows.append(row)

    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"saliency_{args.task_name}"
    setting = (
        f"{len(files)} '{args.split}' images of {parser.get_parsed_content('datalist')} at "
        f"{parser.get_parsed_content('image_size')} px ({task}); teacher {teacher_ckpt}; substrate {substrate}"
        f"{f' (sigma {args.blur_sigma})' if substrate == 'blur' else ''}, {args.steps} steps; speed: batch of "
        f"{min(args.batch_size, len(files))}, median of {args.repeats}, {threads} thread(s) on {device}."
    )
    write_csv(args.out / f"{stem}.csv", rows)
    write_markdown(args.out / f"{stem}.md", rows, setting)
    write_grid(args.out / f"{stem}.png", images[: args.n_grid], masks[: args.n_grid], grid_maps)
    sanity = args.sanity or args.shuffled_teacher_ckpt or args.randomized_teacher_model_ckpt
    if sanity or args.shuffled_teacher_model_ckpt:
        run_sanity(args, parser, teacher, methods, images, device)
    report = write_html_report(args.out, args.out / "report.html", f"Saliency methods: {args.task_name}")
    print(setting)
    for suffix, what in ((".csv", "table"), (".md", "markdown table"), (".png", "map grid")):
        print(f"{what}: {(args.out / stem).resolve()}{suffix}")
    print(f"report (one HTML file, images embedded): {report.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
