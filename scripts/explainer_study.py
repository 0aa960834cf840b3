r"""Which explainer objective localises lesions on every seed, and do its maps pass the sanity checks?

    python scripts/explainer_study.py --task fundus --out out/study --seeds 0 1 2 --sanity \
        [--variants medtex explainer_deletion ...] [--epochs 15] [--image-size 64] [--results DIR]

One command per task and image size. It trains what is missing (``scripts/learning_curve.py`` in ``--out``, at one
labelled-set size, ``--n-labeled``; resumable: finished runs are kept; ``--override KEY VALUE`` sets a
configs/train.yaml key for every run and for scoring, e.g. ``cache disk`` so that the seeds share
``evidence_occlusion``'s maps), then reads every run back:

- **variants**: ``medtex`` (configs/train.yaml as is) and each overlay of ``configs/explainer/`` as
  ``explainer_<name>``, or several stacked in order as ``explainer_<name>+<name>``, each with every seed; the
  teacher is trained once per task (learning_curve.py).
- **maps**: the explainer's mask (``MedTex.explain``) on the first ``--n-images`` local test images, and GradCAM and
  occlusion on the teacher as references; saved per run under ``<out>/maps/<task>/`` and reused.
- **scores** (``bundle.explain.saliency_scores``, all of the teacher, substrate zero for every row so that variants
  compare on one scale): pointing game, deletion and insertion AUC, fidelity, IoU, AUPRC; the student's test AUC and
  training time from learning_curve.py's CSV; the leakage check (``bundle.explain.mask_only_score``: the student
  classifying the mask alone, the image removed); the pairwise SSIM and Spearman correlation of each seed's maps with
  the other seeds' maps (``bundle.explain.map_similarity``); the maps' share of energy at the highest spatial
  frequency, a checkerboard's (``bundle.explain.grid_energy``).
- ``--sanity``: the model and data randomisation checks (``scripts/compare_saliency.sanity_rows``): the post-hoc
  methods on a teacher randomised layer by layer from the top and on a teacher trained on shuffled labels, and the
  ``--sanity-variant`` explainer trained (seed 0) against a randomly initialised teacher and against the
  shuffled-label teacher.

Written to ``--results`` (default ``<out>/results``): ``explainer_ablation_<task>_<size>px.{csv,md}`` (one row per
variant: means and worst seed; goals checked against GradCAM and occlusion on the same teacher and chance),
``explainer_tradeoff_<task>_<size>px.png`` (pointing game against student AUC and mask size, one point per variant
and seed, the goals drawn in), ``saliency_seeds_<task>.{csv,png}`` (one row per variant and seed; the picture: test
images with the lesion outline, the masks of each ``--grid-variants`` variant for each seed, GradCAM and occlusion),
``saliency_sanity_<task>.{csv,md,png}`` and report.html.
Every row records the code version (git commit) that made it.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from fire.parser import DefaultParseValue
from monai.bundle import ConfigParser
from monai.utils import convert_to_tensor, set_determinism
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.data.datalist import load_datalist  # noqa: E402
from bundle.explain import grid_energy, make_saliency, map_similarity, mask_only_score, saliency_scores  # noqa: E402
from bundle.files import file_sha256  # noqa: E402
from bundle.networks.teacher import FrozenTeacher, load_weights  # noqa: E402
from bundle.provenance import git_commit  # noqa: E402
from bundle.report import write_html_report  # noqa: E402
from scripts import learning_curve  # noqa: E402
from scripts.learning_curves.methods import DATASET_CONFIGS  # noqa: E402
from scripts.learning_curves.rows import read_rows  # noqa: E402

DEFAULT = "medtex"
REFERENCES = ("gradcam", "occlusion")  # post-hoc methods on the teacher, deterministic: one row each
SCORES = ("pointing_game", "deletion_auc", "insertion_auc", "fidelity", "iou", "auprc")
SEED_COLUMNS = (
    "task",
    "image_size",
    "method",
    "seed",
    *SCORES,
    "ssim_to_other_seeds",
    "spearman_to_other_seeds",
    "student_auc",
    "mask_only_score",
    "mask_only_chance",
    "mask_kept_fraction",
    "peak_spread",
    "grid_energy",
    "train_seconds",
    "n_images",
    "n_with_lesion",
    "code_version",
)
ABLATION_COLUMNS = (
    "task",
    "image_size",
    "method",
    "n_seeds",
    "pointing_game_mean",
    "pointing_game_worst",
    "deletion_auc_mean",
    "insertion_auc_mean",
    "fidelity_mean",
    "student_auc_mean",
    "student_auc_sd",
    "ssim_between_seeds",
    "spearman_between_seeds",
    "mask_only_score_mean",
    "mask_kept_fraction_mean",
    "peak_spread_mean",
    "grid_energy_mean",
    "train_seconds_mean",
    "code_version",
)
# the markdown's columns: the ablation's without what every row shares or what the CSV alone needs
MARKDOWN_COLUMNS = tuple(
    c
    for c in ABLATION_COLUMNS
    if c not in ("task", "image_size", "student_auc_sd", "spearman_between_seeds", "code_version")
)


def explainer_variants() -> dict[str, list[str]]:
    """Variant name -> config files stacked on configs/train.yaml: ``medtex`` and every configs/explainer/ overlay."""
    overlays = sorted((ROOT / "configs" / "explainer").glob("*.yaml"))
    return {DEFAULT: [], **{f"explainer_{p.stem}": [f"configs/explainer/{p.name}"] for p in overlays}}


def variant_files(name: str) -> list[str]:
    """Config files of one variant: a name of ``explainer_variants()``, or overlays joined by ``+``
    (``explainer_evidence_occlusion+sparse`` stacks evidence_occlusion.yaml, then sparse.yaml, on train.yaml), as a
    user would stack them with ``--config_file``."""
    known = explainer_variants()
    if name in known:
        return known[name]
    stems = name.removeprefix("explainer_").split("+") if name.startswith("explainer_") else []
    missing = [s for s in stems if f"explainer_{s}" not in known]
    if len(stems) < 2 or missing:
        raise argparse.ArgumentTypeError(
            f"unknown variant {name!r} (unknown overlays: {missing or name}); choose from {', '.join(known)} or "
            "join overlays with +, as explainer_evidence_occlusion+sparse"
        )
    return [f for s in stems for f in known[f"explainer_{s}"]]


def variant_name(name: str) -> str:
    """argparse type of a variant: checked by ``variant_files``."""
    variant_files(name)
    return name


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    variants = explainer_variants()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="fundus", choices=list(DATASET_CONFIGS), help="demo task (fundus)")
    parser.add_argument("--out", type=Path, default=Path("out/study"), help="runs and maps (out/study)")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(variants),
        type=variant_name,
        metavar="VARIANT",
        help=f"{', '.join(variants)}, or overlays joined by + (explainer_evidence_occlusion+sparse); default: all",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds per variant (0 1 2)")
    parser.add_argument("--n-labeled", type=int, default=100, help="local labelled images (100, as the demo)")
    parser.add_argument("--epochs", type=int, default=15, help="epochs of each MED-TEX run (15)")
    parser.add_argument("--image-size", type=int, default=64, help="pixels (64)")
    parser.add_argument("--n-images", type=int, default=48, help="test images scored (48)")
    parser.add_argument("--steps", type=int, default=16, help="deletion/insertion steps (16)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads while scoring (1: beside a training run)")
    parser.add_argument("--target-layer", default="features.denseblock3", help="GradCAM layer of the teacher")
    parser.add_argument("--sanity", action="store_true", help="also the randomisation checks (see above)")
    parser.add_argument("--sanity-variant", default=DEFAULT, type=variant_name, help="explainer to check")
    parser.add_argument("--sanity-n-images", type=int, default=16, help="images of the post-hoc cascade (16)")
    parser.add_argument("--skip-training", action="store_true", help="score the runs there are; train nothing")
    parser.add_argument("--train-only", action="store_true", help="train what is missing; score nothing")
    parser.add_argument("--results", type=Path, help="tables and pictures (default <out>/results)")
    parser.add_argument("--n-grid", type=int, default=4, help="test images with a lesion in the picture (4)")
    parser.add_argument(
        "--override",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="a configs/train.yaml key for every MED-TEX run and for scoring (repeatable), e.g. --override cache disk"
        " --override cache_dir DIR: a disk cache shares evidence_occlusion's maps between seeds (learning_curve.py's"
        " --override; part of the folder's settings)",
    )
    parser.add_argument(
        "--grid-variants",
        nargs="+",
        type=variant_name,
        metavar="VARIANT",
        help="variants whose masks the picture shows, a column per seed (default: the sanity variant, else the first)",
    )
    args = parser.parse_args(argv)
    args.results = args.results or args.out / "results"
    args.variants = list(dict.fromkeys(args.variants))
    return args


# --- training (learning_curve.py) -------------------------------------------------------------------------------


def curve_argv(args: argparse.Namespace, methods: dict[str, list[str]], seeds: Sequence[int]) -> list[str]:
    """learning_curve.py's command line for ``methods`` at this study's one size."""
    argv = ["--task", args.task, "--sizes", str(args.n_labeled), "--seeds", *map(str, seeds), "--epochs"]
    argv += [str(args.epochs), "--image-size", str(args.image_size), "--out", str(args.out), "--methods", "teacher"]
    argv += [DEFAULT] if DEFAULT in methods else []
    for key, value in args.override:
        argv += ["--override", key, value]
    for name, files in methods.items():
        if name != DEFAULT:
            argv += ["--method-config", name, ",".join(str(ROOT / f) for f in files)]
    return argv


def train(args: argparse.Namespace, methods: dict[str, list[str]], seeds: Sequence[int]) -> None:
    code = learning_curve.main(curve_argv(args, methods, seeds))
    if code:
        print(f"learning_curve.py reported failed runs (exit {code}); the study scores the runs that finished")


def sanity_teachers(args: argparse.Namespace) -> dict[str, Path]:
    """A randomly initialised teacher and one trained on shuffled labels (same architecture, data, recipe)."""
    from scripts.learning_curves.experiment import Experiment, config_list

    exp = Experiment(learning_curve.parse_args(curve_argv(args, {}, args.seeds)))
    models = exp.work["models"]
    random_ckpt = models / "teacher_random.pt"
    if not random_ckpt.is_file():
        parser = ConfigParser()
        parser.read_config(
            [str(ROOT / "configs" / "train_teacher.yaml")] + [str(ROOT / c) for c in exp.config_files(DEFAULT)[1:]]
        )
        parser.update({"bundle_root": str(ROOT), "image_size": args.image_size})
        torch.manual_seed(1234)
        random_ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save(parser.get_parsed_content("network_def").state_dict(), random_ckpt)
    shuffled = exp.teacher_data / "datalist_shuffled_labels.json"
    if not shuffled.is_file():
        datalist = json.loads((exp.teacher_data / "datalist.json").read_text())
        labels = [item["label"] for item in datalist["training"]]
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)).tolist()
        for item, index in zip(datalist["training"], order):
            item["label"] = labels[index]
        shuffled.write_text(json.dumps(datalist, indent=1))
    shuffled_ckpt = models / "teacher_shuffled_labels.pt"
    teacher_configs = config_list(["configs/train_teacher.yaml", *DATASET_CONFIGS[args.task]])
    # the validation split keeps its true labels: its AUC near chance shows the labels were destroyed
    exp.train_once("teacher_shuffled_labels", teacher_configs, shuffled_ckpt, "--datalist", str(shuffled))
    return {"random_teacher": random_ckpt, "shuffled_teacher": shuffled_ckpt}


def sanity_methods(args: argparse.Namespace, teachers: dict[str, Path]) -> dict[str, list[str]]:
    """The sanity variant trained against each sanity teacher: overlays naming the teacher, in ``--out``."""
    methods = {}
    base = variant_files(args.sanity_variant)
    for name, ckpt in teachers.items():
        overlay = args.out / "overlays" / args.task / f"{name}.yaml"
        overlay.parent.mkdir(parents=True, exist_ok=True)
        overlay.write_text(f"teacher_ckpt: {json.dumps(str(ckpt.resolve()))}\n")
        methods[f"{args.sanity_variant}_{name}"] = [*base, str(overlay.resolve())]
    return methods


# --- maps and scores ---------------------------------------------------------------------------------------------


def run_config(args: argparse.Namespace, files: Sequence[str]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(
        [str(ROOT / "configs" / "train.yaml")]
        + [str(ROOT / f) for f in DATASET_CONFIGS[args.task]]
        + [str(ROOT / f) for f in files]
    )
    local = args.out / "data" / f"{args.task}_local_B"
    teacher = args.out / "models" / args.task / "teacher.pt"
    parser.update(
        {"bundle_root": str(ROOT), "lesion_masks": True, "dataset_dir": str(local), "image_size": args.image_size}
    )
    parser.update({"teacher_ckpt": str(teacher), "device": "$torch.device('cpu')"})
    # parsed by the bundle command line's own parser (fire), so that scoring builds the networks the runs trained
    parser.update({key: DefaultParseValue(value) for key, value in args.override})
    return parser


def test_images(parser: ConfigParser, n_images: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first ``n_images`` test items, preprocessed as in training: images, lesion masks and labels."""
    items = [item for item in load_datalist(parser.get_parsed_content("datalist"), "test") if item.get("mask")]
    preprocessing = parser.get_parsed_content("preprocessing")
    images, masks, labels = [], [], []
    for item in items[:n_images]:
        data = preprocessing(item)
        images.append(convert_to_tensor(data["image"], track_meta=False).float())
        masks.append((convert_to_tensor(data["mask"], track_meta=False) > 0.5).float())
        labels.append(torch.as_tensor(data["label"]))
    return torch.stack(images), torch.stack(masks), torch.stack(labels)


def batched_maps(method: Any, images: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    return torch.cat([method(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)])


def scores_of(
    teacher: torch.nn.Module, images: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor, task: str, steps: int
) -> dict[str, float]:
    values: dict[str, list[torch.Tensor]] = {name: [] for name in SCORES}
    for i in range(0, images.shape[0], 16):
        batch = saliency_scores(
            teacher, images[i : i + 16], maps[i : i + 16], masks[i : i + 16], task=task, substrate="zero", steps=steps
        )
        for name in SCORES:
            values[name].append(batch[name])
    result = {}
    for name in SCORES:
        joined = torch.cat(values[name])
        joined = joined[~torch.isnan(joined)]
        result[name] = float(joined.mean()) if joined.numel() else float("nan")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    variants = {name: variant_files(name) for name in args.variants}
    if not args.skip_training:
        train(args, variants, args.seeds)
    sanity = {}
    if args.sanity:
        teachers = sanity_teachers(args)
        sanity = sanity_methods(args, teachers)
        if not args.skip_training:
            train(args, sanity, [args.seeds[0]])
    if args.train_only:
        return 0
    set_determinism(seed=0)
    torch.set_num_threads(args.threads)
    return report(args, variants, sanity)


def report(args: argparse.Namespace, variants: dict[str, list[str]], sanity: dict[str, list[str]]) -> int:
    commit = git_commit() or "unknown"
    curve = {
        (r["method"], int(r["seed"])): r
        for r in read_rows(args.out / f"learning_curve_{args.task}.csv")
        if r["method"] != "teacher"
    }
    parser = run_config(args, [])
    task = parser.get_parsed_content("task")
    images, masks, labels = test_images(parser, args.n_images)
    teacher = FrozenTeacher(
        parser.get_parsed_content("teacher_ckpt"), network=parser.get_parsed_content("teacher_def"), bf16=False
    ).network.eval()
    maps_dir = args.out / "maps" / args.task / f"{args.image_size}px_{args.n_images}images_{args.steps}steps"
    maps_dir.mkdir(parents=True, exist_ok=True)
    image_mean = images.mean(0, keepdim=True)
    with_lesion = masks.flatten(1).amax(1) > 0
    chance = float(masks[with_lesion].flatten(1).mean(1).mean())  # a random peak lands in the lesion this often

    teacher_sha = file_sha256(parser.get_parsed_content("teacher_ckpt"))

    def cached(name: str, compute: Any, weights_sha: str) -> dict[str, Any]:
        """The maps and scores saved for ``name``, recomputed when the weights that made them (SHA-256 of the run's
        checkpoint and of the teacher, which scores every map) are not those on disk now: a run retrained in place."""
        path = maps_dir / f"{name}.pt"
        source = {"weights_sha256": weights_sha, "teacher_sha256": teacher_sha}
        if path.is_file():
            saved = torch.load(path, weights_only=True)
            if all(saved.get(key) == value for key, value in source.items()):
                return saved
            print(f"{path}: made by other weights than those on disk now, computed again")
        result = {**compute(), **source}
        torch.save(result, path)
        return result

    references = {}
    for name in REFERENCES:
        options = (
            {"target_layer": args.target_layer}
            if name == "gradcam"
            else {"mask_size": max(2, args.image_size // 8), "overlap": 0.5}
        )

        def compute_reference(name: str = name, options: dict = options) -> dict[str, Any]:
            maps = batched_maps(make_saliency(name, teacher, task=task, **options), images, 8)
            return {"maps": maps, "scores": scores_of(teacher, images, maps, masks, task, args.steps)}

        references[name] = cached(name, compute_reference, teacher_sha)

    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for method, files in tqdm({**variants, **sanity}.items(), desc="scoring runs", unit="variant"):
        seeds = [args.seeds[0]] if method in sanity else args.seeds
        for seed in seeds:
            ckpt = args.out / "models" / args.task / method / f"n{args.n_labeled}_seed{seed}" / "model.pt"
            if not ckpt.is_file() or (method, seed) not in curve:
                print(f"{method} seed {seed}: not trained yet ({ckpt}), left out")
                continue

            def compute_run(files: Sequence[str] = files, ckpt: Path = ckpt) -> dict[str, Any]:
                config = run_config(args, files)
                model = config.get_parsed_content("network_def")
                model.load_state_dict(load_weights(ckpt))
                model.eval()
                with torch.no_grad():
                    maps = torch.cat([model.explain(images[i : i + 16])[1] for i in range(0, images.shape[0], 16)])
                    kept = float(model.gate(maps).mean())
                    leak = mask_only_score(model, maps, labels, task, image_mean)
                return {
                    "maps": maps,
                    "scores": scores_of(teacher, images, maps, masks, task, args.steps),
                    "leak": leak,
                    "kept": kept,
                }

            runs.setdefault(method, {})[seed] = cached(f"{method}_seed{seed}", compute_run, file_sha256(ckpt))

    args.results.mkdir(parents=True, exist_ok=True)
    stem_size = f"{args.task}_{args.image_size}px"
    seed_rows = []
    for method, by_seed in runs.items():
        if method in sanity:
            continue
        for seed, run in by_seed.items():
            others = [other["maps"] for s, other in by_seed.items() if s != seed]
            similarity = [map_similarity(run["maps"], other) for other in others]
            ssim = statistics.fmean(float(torch.nanmean(s["ssim"])) for s in similarity) if similarity else float("nan")
            rho = (
                statistics.fmean(float(torch.nanmean(s["spearman"])) for s in similarity)
                if similarity
                else float("nan")
            )
            curve_row = curve[(method, seed)]
            seed_rows.append(
                {
                    "task": args.task,
                    "image_size": args.image_size,
                    "method": method,
                    "seed": seed,
                    **run["scores"],
                    "ssim_to_other_seeds": ssim,
                    "spearman_to_other_seeds": rho,
                    "student_auc": float(curve_row["auc"]),
                    "mask_only_score": run["leak"]["score"],
                    "mask_only_chance": run["leak"]["chance"],
                    "mask_kept_fraction": run["kept"],
                    "peak_spread": peak_spread(run["maps"]),
                    "grid_energy": grid_energy(run["maps"]).mean().item(),
                    "train_seconds": float(curve_row["train_seconds"] or "nan"),  # blank: resumed, its time not whole
                    "n_images": images.shape[0],
                    "n_with_lesion": int(with_lesion.sum()),
                    "code_version": commit,
                }
            )
    for name, reference in references.items():
        seed_rows.append(
            {
                "task": args.task,
                "image_size": args.image_size,
                "method": name,
                "seed": "",
                **reference["scores"],
                "peak_spread": peak_spread(reference["maps"]),
                "grid_energy": grid_energy(reference["maps"]).mean().item(),
                "n_images": images.shape[0],
                "n_with_lesion": int(with_lesion.sum()),
                "code_version": commit,
            }
        )
    write_csv(args.results / f"saliency_seeds_{args.task}.csv", SEED_COLUMNS, seed_rows)
    ablation = ablation_rows(seed_rows, commit)
    write_csv(args.results / f"explainer_ablation_{stem_size}.csv", ABLATION_COLUMNS, ablation)
    write_ablation_markdown(
        args.results / f"explainer_ablation_{stem_size}.md", ablation, references, chance, args, seed_rows
    )
    write_tradeoff_plot(args.results / f"explainer_tradeoff_{stem_size}.png", seed_rows, chance)
    # the default's and a candidate's masks side by side: --grid-variants medtex explainer_x
    wanted = args.grid_variants or [args.sanity_variant if args.sanity_variant in runs else next(iter(runs), "")]
    grid_runs = {variant: runs[variant] for variant in wanted if variant in runs}
    if grid_runs:
        write_seed_grid(
            args.results / f"saliency_seeds_{args.task}.png", images, masks, grid_runs, references, args.n_grid
        )
    if sanity:
        write_sanity(args, parser, teacher, images, task, variants, sanity)
    report_path = write_html_report(args.results, args.results / "report.html", f"Explainer study: {args.task}")
    print(f"written to {args.results.resolve()}: ablation, seeds table and picture, report {report_path.name}")
    return 0


def write_sanity(
    args: argparse.Namespace,
    parser: ConfigParser,
    teacher: torch.nn.Module,
    images: torch.Tensor,
    task: str,
    variants: dict[str, list[str]],
    sanity: dict[str, list[str]],
) -> None:
    """saliency_sanity_<task>.{csv,md,png}: every post-hoc method on the randomised and the shuffled-label teacher
    (``--sanity-n-images``), and the ``--sanity-variant`` explainer trained against them (every scored image)."""
    from scripts.compare_saliency import (
        SALIENCY_METHODS,
        sanity_rows,
        write_sanity_csv,
        write_sanity_markdown,
        write_sanity_plot,
    )

    seed = args.seeds[0]
    options = {"gradcam": {"target_layer": args.target_layer}, "gradcampp": {"target_layer": args.target_layer}}
    options["occlusion"] = {"mask_size": max(2, args.image_size // 8), "overlap": 0.5}

    def make_method(name: str, model: torch.nn.Module) -> Any:
        return make_saliency(name, model, task=task, **options.get(name, {}))

    def explainer(method: str, files: Sequence[str]) -> torch.nn.Module | None:
        ckpt = args.out / "models" / args.task / method / f"n{args.n_labeled}_seed{seed}" / "model.pt"
        if not ckpt.is_file():
            print(f"sanity: {method} seed {seed} is not trained yet ({ckpt}), left out")
            return None
        model = run_config(args, files).get_parsed_content("network_def")
        model.load_state_dict(load_weights(ckpt))
        return model.eval()

    shuffled_ckpt = args.out / "models" / args.task / "teacher_shuffled_labels.pt"
    shuffled = FrozenTeacher(
        shuffled_ckpt, network=parser.get_parsed_content("teacher_def", lazy=False), bf16=False
    ).network.eval()
    post_hoc = [name for name in SALIENCY_METHODS if name != "medtex"]
    subset = images[: args.sanity_n_images]
    rows = sanity_rows(teacher, subset, make_method, post_hoc, shuffled_teacher=shuffled, seed=seed)
    reference = explainer(args.sanity_variant, variants.get(args.sanity_variant, []))
    settings = {
        "random_teacher": ("model_randomization", "random teacher"),
        "shuffled_teacher": ("data_randomization", "shuffled-label teacher"),
    }
    controls = []
    for method, files in sanity.items():
        model = explainer(method, files)
        check, setting = settings[method.removeprefix(f"{args.sanity_variant}_")]
        if model is not None:
            controls.append((check, setting, model))
    if reference is not None and controls:
        rows += sanity_rows(
            teacher, images, make_method, ["medtex"], medtex=reference, medtex_controls=controls, seed=seed
        )
    for row in rows:
        if row["method"] == "medtex":
            row["method"] = args.sanity_variant
    stem = args.results / f"saliency_sanity_{args.task}"
    teacher_ckpt = portable(parser.get_parsed_content("teacher_ckpt"))
    setting = (
        f"Post-hoc methods: {subset.shape[0]} test images at {args.image_size} px, teacher {teacher_ckpt}, cascading"
        f" randomisation from the top (seed {seed}), and a teacher trained on shuffled labels"
        f" ({portable(shuffled_ckpt)}; same recipe). {args.sanity_variant}: its seed-{seed} masks on"
        f" {images.shape[0]} test images against the same variant trained (same seed) against a randomly"
        " initialised teacher and against the shuffled-label teacher."
        f" Code version {git_commit() or 'unknown'}."
    )
    write_sanity_csv(stem.with_suffix(".csv"), rows)
    write_sanity_markdown(stem.with_suffix(".md"), rows, setting)
    write_sanity_plot(stem.with_suffix(".png"), rows)


def portable(path: Any) -> str:
    """A path relative to the bundle's root where it lies inside it (tables travel between machines)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def ablation_rows(seed_rows: list[dict[str, Any]], commit: str) -> list[dict[str, Any]]:
    rows = []
    for method, grouped in itertools.groupby(
        sorted((r for r in seed_rows if r["seed"] != ""), key=lambda r: r["method"]), key=lambda r: r["method"]
    ):
        group = list(grouped)

        def mean(key: str) -> float:
            values = [float(r[key]) for r in group if not math.isnan(float(r[key]))]
            return statistics.fmean(values) if values else float("nan")

        aucs = [float(r["student_auc"]) for r in group]
        rows.append(
            {
                "task": group[0]["task"],
                "image_size": group[0]["image_size"],
                "method": method,
                "n_seeds": len(group),
                "pointing_game_mean": mean("pointing_game"),
                "pointing_game_worst": min(float(r["pointing_game"]) for r in group),
                "deletion_auc_mean": mean("deletion_auc"),
                "insertion_auc_mean": mean("insertion_auc"),
                "fidelity_mean": mean("fidelity"),
                "student_auc_mean": statistics.fmean(aucs),
                "student_auc_sd": statistics.stdev(aucs) if len(aucs) > 1 else float("nan"),
                "ssim_between_seeds": mean("ssim_to_other_seeds"),
                "spearman_between_seeds": mean("spearman_to_other_seeds"),
                "mask_only_score_mean": mean("mask_only_score"),
                "mask_kept_fraction_mean": mean("mask_kept_fraction"),
                "peak_spread_mean": mean("peak_spread"),
                "grid_energy_mean": mean("grid_energy"),
                "train_seconds_mean": mean("train_seconds"),
                "code_version": commit,
            }
        )
    order = list(explainer_variants())
    return sorted(rows, key=lambda r: order.index(r["method"]) if r["method"] in order else len(order))


def peak_spread(maps: torch.Tensor) -> float:
    """Distinct positions of the maps' peaks over the number of maps: near 1 when each image's map peaks at its own
    place, ``1/n`` when every map peaks at the same pixel (a map that does not follow the image cannot follow its
    lesion). Ties: the first pixel, as the pointing game."""
    peaks = maps.flatten(1).argmax(dim=1)
    return len(set(peaks.tolist())) / maps.shape[0]


def write_csv(path: Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows)


def cell(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def write_ablation_markdown(
    path: Path,
    rows: list[dict[str, Any]],
    references: dict[str, dict[str, Any]],
    chance: float,
    args: argparse.Namespace,
    seed_rows: list[dict[str, Any]],
) -> None:
    """The ablation table with each goal of the default checked per variant (every seed, not only the mean)."""
    occlusion, gradcam = references["occlusion"]["scores"], references["gradcam"]["scores"]
    default_auc = next((r["student_auc_mean"] for r in rows if r["method"] == DEFAULT), float("nan"))
    columns = MARKDOWN_COLUMNS
    n_images, n_lesion = (seed_rows[0]["n_images"], seed_rows[0]["n_with_lesion"]) if seed_rows else (0, 0)
    lines = [
        f"# Explainer objective: {args.task}, {args.image_size} px",
        "",
        f"Seeds {' '.join(map(str, args.seeds))} (n_seeds: how many finished); {args.n_labeled} labelled local"
        f" images, {args.epochs} epochs per run; scores on {n_images} test images ({n_lesion} with a lesion), of the"
        f" teacher, substrate zero. Pointing game by chance {chance:.3f}; GradCAM ({args.target_layer})"
        f" {gradcam['pointing_game']:.3f}, deletion AUC {gradcam['deletion_auc']:.3f}; occlusion"
        f" {occlusion['pointing_game']:.3f}, deletion AUC {occlusion['deletion_auc']:.3f}.",
        "",
        "| " + " | ".join(columns) + " | goals met |",
        "|" + "|".join(["---"] + ["---:"] * (len(columns) - 1)) + "|---|",
    ]
    for row in rows:
        seeds = [r for r in seed_rows if r["method"] == row["method"]]
        goals = {
            "pg >= occlusion": all(r["pointing_game"] >= occlusion["pointing_game"] for r in seeds),
            "pg >= 3x chance": all(r["pointing_game"] >= 3 * chance for r in seeds),
            "deletion <= GradCAM": all(r["deletion_auc"] <= gradcam["deletion_auc"] for r in seeds),
            "AUC within 0.01": row["student_auc_mean"] >= default_auc - 0.01,
        }
        met = ", ".join(name for name, ok in goals.items() if ok) or "none"
        lines.append("| " + " | ".join(cell(row[c]) for c in columns) + f" | {met} |")
    lines += [
        "",
        "pg: pointing game (higher is better; worst: the lowest seed); deletion AUC: lower is better;"
        " ssim_between_seeds: mean SSIM of a seed's maps with the other seeds' (1: the same maps);"
        " mask_only_score: the student on the mask"
        " alone (accuracy or macro AUC; chance in the seeds table); mask_kept_fraction: the share of pixels the student"
        " sees (hard and top-k gates) or the mean mask (soft); peak_spread: distinct peak positions over images"
        " (1: every image's map peaks somewhere else; 1/n: the same pixel for all, a map that cannot follow the"
        " lesion); grid_energy: the share of a map's energy at the highest spatial frequency (a checkerboard's; near 0"
        " for a smooth map). Goals are checked on every seed.",
        "",
    ]
    path.write_text("\n".join(lines))


def write_tradeoff_plot(path: Path, seed_rows: list[dict[str, Any]], chance: float) -> None:
    """Where no variant meets every goal, the trade-offs between them: one point per variant and seed, pointing game
    against the student's test AUC and against the share of the image the mask keeps, with the goals drawn in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in seed_rows if r["seed"] != ""]
    references = {r["method"]: r for r in seed_rows if r["seed"] == ""}
    default_auc = [r["student_auc"] for r in runs if r["method"] == DEFAULT]
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, (column, label) in zip(
        axes, [("student_auc", "student test AUC"), ("mask_kept_fraction", "share of the image the mask keeps")]
    ):
        for index, method in enumerate(dict.fromkeys(r["method"] for r in runs)):
            points = [(r["pointing_game"], r[column]) for r in runs if r["method"] == method]
            axis.scatter(*zip(*points), label=method, color=f"C{index}", marker="o" if method == DEFAULT else "^")
        axis.axvline(3 * chance, color="grey", linestyle=":", label="goal: 3x chance (worst seed)")
        if "occlusion" in references:
            axis.axvline(references["occlusion"]["pointing_game"], color="black", linestyle="--", label="occlusion")
        if column == "student_auc" and default_auc:
            axis.axhline(statistics.fmean(default_auc) - 0.01, color="grey", linestyle="-.", label="default AUC - 0.01")
        axis.set_xlabel("pointing game on the teacher (higher is better)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    figure.suptitle("Explainer variants: one point per seed", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def outline(mask: torch.Tensor) -> torch.Tensor:
    """The lesion's one-pixel border: the mask minus its erosion (3 x 3)."""
    eroded = -torch.nn.functional.max_pool2d(-mask[None], 3, stride=1, padding=1)[0]
    return (mask - eroded).clamp(0, 1)


def write_seed_grid(
    path: Path,
    images: torch.Tensor,
    masks: torch.Tensor,
    runs: dict[str, dict[int, dict[str, Any]]],
    references: dict[str, dict[str, Any]],
    n_rows: int,
) -> list[str]:
    """Rows: test images with a lesion; columns: the image with the lesion outline, each variant's mask per seed
    (``runs``: variant -> seed -> run), GradCAM and occlusion on the teacher, each with the outline drawn over it.
    Returns the column titles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [i for i in range(images.shape[0]) if masks[i].amax() > 0][:n_rows]
    columns: list[tuple[str, Optional[torch.Tensor]]] = [("image", None)]
    columns += [
        (f"{variant.removeprefix('explainer_')}\nseed {s}", seeds[s]["maps"])  # two short lines: titles do not overlap
        for variant, seeds in runs.items()
        for s in sorted(seeds)
    ]
    columns += [(name, references[name]["maps"]) for name in references]
    figure, axes = plt.subplots(
        len(chosen), len(columns), figsize=(1.7 * len(columns), 1.7 * len(chosen)), squeeze=False
    )
    for row, index in enumerate(chosen):
        image = images[index]
        shown = ((image - image.amin()) / (image.amax() - image.amin()).clamp(min=1e-8)).expand(3, -1, -1)
        border = outline(masks[index])[0] > 0
        for column, (title, maps) in enumerate(columns):
            axis = axes[row, column]
            axis.imshow(shown.permute(1, 2, 0).numpy())
            if maps is not None:
                axis.imshow(
                    maps[index, 0].numpy(),
                    cmap="jet",
                    alpha=0.55,
                    vmin=0,
                    vmax=float(maps[index].amax().clamp(min=1e-8)),
                )
                peak = int(maps[index, 0].flatten().argmax())
                axis.plot(peak % maps.shape[-1], peak // maps.shape[-1], marker="+", color="white", markersize=8)
            overlay = torch.zeros(*border.shape, 4)
            overlay[border] = torch.tensor([0.0, 1.0, 0.0, 1.0])
            axis.imshow(overlay.numpy())
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(title, fontsize=7)
    figure.suptitle("green: lesion outline; +: the map's peak (pointing game)", fontsize=8)
    figure.tight_layout()
    # at most 1200 px wide: a picture of several variants' seeds stays under the Model Zoo's 1 MB file limit
    figure.savefig(path, dpi=min(110, 1200 / figure.get_figwidth()))
    plt.close(figure)
    return [title for title, _ in columns]


if __name__ == "__main__":
    sys.exit(main())
