"""What a benchmark run measures with (:class:`Settings`, from the command line and the config) and the targets."""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from bundle.provenance import portable_path

ROOT = Path(__file__).resolve().parents[2]

CONFIG = ROOT / "configs" / "train.yaml"

TEACHER_CONFIG = ROOT / "configs" / "train_teacher.yaml"  # training the teacher itself: images/s beside MED-TEX's

# keys of configs/train.yaml that configs/train_teacher.yaml does not have (no teacher to load, no explainer)
MEDTEX_ONLY_KEYS = ("teacher_ckpt", "explainer_scale", "explainer_scale_mode")

POSTHOC = ("gradcam", "gradcampp", "smoothgrad", "occlusion")

PER_IMAGE = ("smoothgrad", "occlusion")  # MONAI runs these one image at a time: timed on fewer images

MODEL_NAMES = {"explainer": "explainer (mask only)", "medtex": "explainer + student (explain)"}

SALIENCY_BATCH = 8  # images per saliency call (at most the batch size)

# full-run settings of the post-hoc methods: scripts/compare_saliency.py's defaults
SMOOTHGRAD_SAMPLES, OCCLUSION_MASK_FRACTION, OCCLUSION_OVERLAP = 25, 8, 0.5

# (JSON key, comparison, target): the targets
LATENCY_TARGET = 5.0  # explainer + student against the teacher, latency at batch 1

TARGETS = (
    ("saliency_speedup_vs_gradcam", ">=", 20.0),
    ("saliency_speedup_vs_occlusion", ">=", 200.0),
    ("student_speedup_vs_teacher", ">=", LATENCY_TARGET),
    ("engine_overhead", "<=", 1.10),
    ("loader_headroom", ">=", 2.0),
)


@dataclass
class Settings:
    """What one run measures with; recorded in the JSON and the report."""

    quick: bool
    device: str
    threads: int
    image_size: int
    batch_size: int
    saliency_batch: int
    repeats: int
    warmup: int
    per_image_images: int
    per_image_repeats: int
    smoothgrad_samples: int
    occlusion_mask_size: int
    occlusion_overlap: float
    n_train: int
    loader_images: int
    num_workers: int
    explainer_scale: int
    explainer_scale_mode: str
    other_explainer_scale: int | None
    student_configs: list[str]
    compile: bool
    compile_backend: str
    command: str


def make_settings(args: argparse.Namespace, argv: Sequence[str]) -> Settings:
    """The command line's values, else the quick or full defaults, else the config's."""
    defaults = ConfigParser()
    defaults.read_config(str(CONFIG))
    image_size = args.image_size or int(defaults["image_size"])
    defaults["image_size"] = image_size  # the explainer's scale may depend on it
    batch_size = args.batch_size or (2 if args.quick else int(defaults["batch_size"]))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    default_mask = image_size // (4 if args.quick else OCCLUSION_MASK_FRACTION)
    return Settings(
        quick=args.quick,
        device=device,
        threads=torch.get_num_threads(),
        image_size=image_size,
        batch_size=batch_size,
        saliency_batch=min(batch_size, SALIENCY_BATCH),
        repeats=args.repeats or (3 if args.quick else 5),
        warmup=1,
        per_image_images=1 if args.quick else 2,
        per_image_repeats=args.repeats or (1 if args.quick else 2),
        smoothgrad_samples=args.smoothgrad_samples or (5 if args.quick else SMOOTHGRAD_SAMPLES),
        occlusion_mask_size=args.occlusion_mask_size or max(2, default_mask),
        occlusion_overlap=(
            args.occlusion_overlap if args.occlusion_overlap is not None else (0.0 if args.quick else OCCLUSION_OVERLAP)
        ),
        n_train=max(8, 2 * batch_size),
        loader_images=max(64 if args.quick else 256, 2 * batch_size),
        num_workers=args.num_workers if args.num_workers is not None else int(defaults["num_workers"]),
        explainer_scale=args.explainer_scale or int(defaults.get_parsed_content("explainer_scale")),
        explainer_scale_mode=args.explainer_scale_mode or str(defaults["explainer_scale_mode"]),
        other_explainer_scale=args.other_explainer_scale,
        student_configs=[str(path) for path in args.student_config],
        compile=args.compile,
        compile_backend=args.compile_backend,
        command=shlex.join(
            ["python", "scripts/benchmark.py", *(portable_path(a) if os.path.isabs(a) else a for a in argv)]
        ),
    )
