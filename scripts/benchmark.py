"""Performance benchmark: ratios of two things measured in the same run, on the same machine and images.

    python scripts/benchmark.py [--quick] [--json out/benchmark.json] [--md docs/PERFORMANCE.md] \
        [--device cpu|cuda] [--threads N] [--image-size N] [--batch-size N] [--repeats N] [--num-workers N]

Everything is built from ``configs/train.yaml`` with MONAI's ``ConfigParser`` (the fundus demo task): the teacher
(``teacher_def``, a randomly initialised DenseNet121 saved to a temporary ``teacher_ckpt``: timing does not depend
on the weights), the explainer + student (``network``), the loss, the training data set and loader, and the
``MedTexTrainer``. Demo PNG images are generated in a temporary folder (and some copied to DICOM). Measured:

- saliency: maps/s of the explainer (one ``explain`` call) and of GradCAM, GradCAM++, SmoothGrad and occlusion on
  the teacher (``bundle.explain.make_saliency``), on the same images;
- inference: latency at batch 1 and throughput at ``--batch-size`` of the teacher and of explainer + student
  (``explain``: logits and mask in one pass), their calls in turn, fp32, ``torch.inference_mode``;
- training: one MED-TEX iteration through the bundle's Ignite engine against a hand-written PyTorch loop doing the
  same computation on the same pre-built batches (data loading excluded from both); and training images/s of the
  teacher (``configs/train_teacher.yaml``) beside MED-TEX's, each with its own trainer and loader, on CUDA with AMP
  against fp32;
- data loading: the cached training loader (the config's data set, cached in memory, + DataLoader, augmentation
  included) against what one training iteration consumes, and decoding from PNG and DICOM, uncached and cached;
- peak memory of training and inference (CUDA: ``max_memory_allocated``; CPU: the process's peak RSS);
- with ``--student-config FILE`` (repeatable; e.g. configs/students/resnet.yaml): explainer + student inference with
  that config overlay's student, latency and throughput as ratios to the teacher timed in turn with it;
- with ``--compile``: explainer + student inference under ``torch.compile`` (inductor) against eager, the time
  compiling takes and after how many images it has paid for itself (configs/inference.yaml ``compile``); and the
  same for MED-TEX training iterations (configs/train.yaml ``compile``: explainer, student and teacher compiled).

The measuring lives in ``scripts/benchmarking/`` (``inference``, ``training``, ``loading``, run in order by ``suite``;
``timing`` holds the clocks and the memory probe) and the tables in ``scripts/benchmarking/render.py``, which
``--from-json`` runs alone: ``python scripts/benchmark.py --from-json docs/results/benchmark_cpu.json --md FILE``
rewrites the report of a committed run without measuring anything.

Every timing is the median of ``repeats`` runs after warm-up. ``--quick`` (under a minute on 2 CPU cores) uses a
batch of 2, fewer repeats, fewer occlusion passes and SmoothGrad samples (so those two methods look faster than
with their full settings: the speedups against them are lower bounds). Writes JSON (``--json``) and a markdown
report (``--md``, only when given: the committed docs/PERFORMANCE.md is written only on purpose).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.networks.teacher import native_bf16  # noqa: E402
from bundle.provenance import machine_info  # noqa: E402
from scripts.benchmarking.render import number, write_markdown  # noqa: E402
from scripts.benchmarking.settings import make_settings  # noqa: E402
from scripts.benchmarking.suite import run  # noqa: E402
from scripts.benchmarking.timing import CLOCK, say  # noqa: E402


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 2, fewer repeats and passes: under a minute")
    parser.add_argument("--json", type=Path, default=ROOT / "out" / "benchmark.json", help="(out/benchmark.json)")
    parser.add_argument(
        "--md",
        type=Path,
        default=None,
        help="markdown report, written only when asked (docs/PERFORMANCE.md for the docs)",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, e.g. OMP_NUM_THREADS)")
    parser.add_argument("--image-size", type=int, help="image side in pixels (default: the config's, 224)")
    parser.add_argument("--batch-size", type=int, help="training and throughput batch (default: config's; quick 2)")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement (default 5; quick 3)")
    parser.add_argument("--num-workers", type=int, help="training loader workers (default: the config's, 2)")
    parser.add_argument("--smoothgrad-samples", type=int, help="noisy copies per SmoothGrad map (25; quick 5)")
    parser.add_argument("--occlusion-mask-size", type=int, help="occluded patch side (size // 8; quick size // 4)")
    parser.add_argument("--occlusion-overlap", type=float, help="overlap of occluded patches (0.5; quick 0)")
    parser.add_argument("--explainer-scale", type=int, help="the explainer's scale (default: the config's)")
    parser.add_argument(
        "--explainer-scale-mode", choices=("pool", "unshuffle"), help="for both scales (default: the config's)"
    )
    parser.add_argument(
        "--other-explainer-scale", type=int, help="also time saliency and inference with this explainer scale"
    )
    parser.add_argument(
        "--student-config",
        type=Path,
        action="append",
        default=[],
        help="also time inference with the student of this config overlay (e.g. configs/students/resnet.yaml);"
        " may be given more than once",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time inference and training under torch.compile (adds minutes of compiling)",
    )
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument(
        "--from-json",
        type=Path,
        help="measure nothing: write the --md report of this JSON, as a run would have written it",
    )
    args = parser.parse_args(argv)
    if args.from_json is not None:
        if args.md is None:
            parser.error("--from-json writes a markdown report: give --md FILE")
        if not args.from_json.is_file():
            parser.error(f"--from-json: no such file {args.from_json}")
    positive = ("threads", "image_size", "batch_size", "repeats", "smoothgrad_samples", "occlusion_mask_size")
    for name in (*positive, "explainer_scale", "other_explainer_scale"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.image_size is not None and args.image_size < 32:
        parser.error("--image-size must be at least 32 (the demo data's smallest size)")
    for path in args.student_config:
        if not path.is_file():
            parser.error(f"--student-config: no such file {path}")
    if args.num_workers is not None and args.num_workers < 0:
        parser.error("--num-workers must not be negative")
    if args.occlusion_overlap is not None and not 0.0 <= args.occlusion_overlap < 1.0:
        parser.error("--occlusion-overlap must be in [0, 1)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    CLOCK["start"] = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.from_json is not None:
        write_markdown(args.md, json.loads(args.from_json.read_text()))
        say(f"markdown report of {args.from_json}: {args.md.resolve()}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = make_settings(args, argv)
    device = torch.device("cuda:0" if settings.device == "cuda" else "cpu")
    with tempfile.TemporaryDirectory(prefix="medtex-benchmark-") as tmp:
        # an empty inductor cache: compile times are those of a first run, not of kernels cached by earlier ones;
        # the caller's setting comes back afterwards (tests call main in a process that goes on)
        with mock.patch.dict(os.environ, {"TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor_cache")}):
            results = run(settings, Path(tmp))
    results["machine"] = machine_info(device, bf16_native=native_bf16(device.type))
    results["settings"] = asdict(settings)
    results["created"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results["wall_seconds"] = time.perf_counter() - CLOCK["start"]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.md is not None:  # never into docs/ unless asked: a run to see one's own machine leaves the docs alone
        write_markdown(args.md, results)
    for key, target in results["targets"].items():
        say(f"{key} = {number(target['value'])} (target {target['target']}: {'met' if target['met'] else 'NOT met'})")
    say(f"JSON: {args.json.resolve()}")
    if args.md is not None:
        say(f"markdown report: {args.md.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
