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
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
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
from bundle.explain import SALIENCY_METHODS, make_saliency, saliency_scores  # noqa: E402
from bundle.explain.faithfulness import SUBSTRATES  # noqa: E402
from bundle.networks.teacher import FrozenTeacher, load_weights  # noqa: E402
from bundle.report import write_html_report  # noqa: E402

RANDOM = "random"  # reference row: a uniformly random map (what chance gives on every measure)
METRICS = ("deletion_auc", "insertion_auc", "fidelity", "pointing_game", "iou", "auprc")
COLUMNS = ("method", *METRICS, "maps_per_second", "n_images", "n_with_lesion", "threads", "device")


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
    args = parser.parse_args(argv)
    if args.n_images < 1 or args.batch_size < 1 or args.repeats < 1:
        parser.error("--n-images, --batch-size and --repeats must be positive")
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


def build_methods(
    args: argparse.Namespace, parser: ConfigParser, teacher: torch.nn.Module, device: torch.device
) -> dict[str, Any]:
    """Saliency methods by name: the explainer + student for ``medtex``, the teacher for the others."""
    task, image_size = parser.get_parsed_content("task"), parser.get_parsed_content("image_size")
    options: dict[str, dict[str, Any]] = {
        "gradcam": {"target_layer": args.target_layer},
        "gradcampp": {"target_layer": args.target_layer},
        "occlusion": {
            "mask_size": args.occlusion_mask_size or max(2, image_size // 8),
            "overlap": args.occlusion_overlap,
        },
        "smoothgrad": {"n_samples": args.smoothgrad_samples},
    }
    methods = {}
    for name in args.methods:
        model = teacher
        if name == "medtex":
            model = parser.get_parsed_content("network_def")
            ckpt = args.model_ckpt or os.path.join(
                parser.get_parsed_content("ckpt_dir"), parser.get_parsed_content("ckpt_name")
            )
            try:
                model.load_state_dict(load_weights(ckpt))
            except RuntimeError as error:  # e.g. a checkpoint from an older explainer architecture
                raise SystemExit(f"{ckpt}: weights do not fit the configured network_def: {error}") from error
            model = model.to(device).eval()
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
            axis.imshow(panel.permute(1, 2, 0).clamp(0, 1).numpy())
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
        values = {metric: torch.cat(scores[metric]) for metric in METRICS}
        row = {"method": name, **{metric: nanmean(values[metric]) for metric in METRICS}}
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
    report = write_html_report(args.out, args.out / "report.html", f"Saliency methods: {args.task_name}")
    print(setting)
    for suffix, what in ((".csv", "table"), (".md", "markdown table"), (".png", "map grid")):
        print(f"{what}: {(args.out / stem).resolve()}{suffix}")
    print(f"report (one HTML file, images embedded): {report.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
