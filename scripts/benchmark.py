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
- data loading: the cached training loader (the config's CacheDataset + DataLoader, augmentation included) against
  what one training iteration consumes, and decoding from PNG and DICOM, uncached and cached;
- peak memory of training and inference (CUDA: ``max_memory_allocated``; CPU: the process's peak RSS);
- with ``--student-config FILE`` (repeatable; e.g. configs/students/resnet.yaml): explainer + student inference with
  that config overlay's student, latency and throughput as ratios to the teacher timed in turn with it;
- with ``--compile``: explainer + student inference under ``torch.compile`` (inductor) against eager, the time
  compiling takes and after how many images it has paid for itself (configs/inference.yaml ``compile``); and the
  same for MED-TEX training iterations (configs/train.yaml ``compile``: explainer, student and teacher compiled).

Every timing is the median of ``repeats`` runs after warm-up. ``--quick`` (under a minute on 2 CPU cores) uses a
batch of 2, fewer repeats, fewer occlusion passes and SmoothGrad samples (so those two methods look faster than
with their full settings: the speedups against them are lower bounds). Writes JSON (``--json``) and a markdown
report (``--md``, only when given: the committed docs/PERFORMANCE.md is written only on purpose).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import monai
import numpy as np
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.data import MetaTensor, ThreadDataLoader
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.data.datalist import load_datalist, save_datalist  # noqa: E402
from bundle.data.transforms import LoadMedicalImage  # noqa: E402
from bundle.datasets.demo import generate_demo_data  # noqa: E402
from bundle.engines.precompute import TEACHER_FEATURES, TEACHER_LOGITS  # noqa: E402
from bundle.engines.trainer import loss_terms  # noqa: E402
from bundle.explain import make_saliency  # noqa: E402
from bundle.networks.features import FeatureRecorder  # noqa: E402
from bundle.networks.teacher import FrozenTeacher, count_parameters, native_bf16  # noqa: E402

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
_CLOCK = {"start": time.perf_counter()}


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
    args = parser.parse_args(argv)
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
        command=shlex.join(["python", "scripts/benchmark.py", *argv]),
    )


def say(message: str) -> None:
    print(f"[benchmark {time.perf_counter() - _CLOCK['start']:6.1f} s] {message}", flush=True)


# --------------------------------------------------------------------------------------------------- measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(function: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall time of ``repeats`` calls after ``warmup`` untimed ones (CUDA work included)."""
    return median_interleaved_seconds([function], repeats, warmup, device)[0]


def median_interleaved_seconds(
    functions: Sequence[Callable[[], Any]], repeats: int, warmup: int, device: torch.device
) -> list[float]:
    """Median wall time of each function, called in turn in every repeat so that all see the same machine load
    (``warmup`` untimed rounds first; CUDA work included)."""
    seconds: list[list[float]] = [[] for _ in functions]
    for repeat in range(warmup + repeats):
        for index, function in enumerate(functions):
            synchronize(device)
            start = time.perf_counter()
            function()
            synchronize(device)
            if repeat >= warmup:
                seconds[index].append(time.perf_counter() - start)
    return [statistics.median(s) for s in seconds]


def median_part_seconds(
    network: torch.nn.Module, image: torch.Tensor, repeats: int, warmup: int, device: torch.device
) -> tuple[float, float]:
    """Median wall times of the explainer's and the student's parts of ``explain(image)``, each timed inside the same
    call sequence as ``explain`` runs them (explainer, mask applied, student).

    Timing each network alone, call after call, keeps its weights and buffers in the CPU's caches, and the two medians
    then added up to a third less than one ``explain`` call (12 + 10 ms against 35 ms at 224 px on 2 cores).
    """
    explainer_seconds, student_seconds = [], []
    with torch.inference_mode():
        for repeat in range(warmup + repeats):
            synchronize(device)
            start = time.perf_counter()
            mask = network.mask(image)
            synchronize(device)
            middle = time.perf_counter()
            network.student(network.apply_mask(image, mask))
            synchronize(device)
            if repeat >= warmup:
                explainer_seconds.append(middle - start)
                student_seconds.append(time.perf_counter() - middle)
    return statistics.median(explainer_seconds), statistics.median(student_seconds)


def _proc_status(field: str) -> float | None:
    """A ``/proc/self/status`` memory field in MiB (Linux), else ``None``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of one phase: CUDA ``max_memory_allocated``, or on CPU the process's peak resident set.

    On Linux the RSS high-water mark (``VmHWM``) is reset by writing 5 to ``/proc/self/clear_refs``; where that is
    not possible the lifetime peak ``ru_maxrss`` is reported and ``reset`` says so.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start_mib = 0.0
        self.reset_ok = False

    def reset(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mib = torch.cuda.memory_allocated(self.device) / 2**20
            self.reset_ok = True
            return
        with contextlib.suppress(OSError, AttributeError):  # give freed heap back so the reset starts lower
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset_ok = _proc_status("VmHWM") is not None
        except OSError:
            self.reset_ok = False
        self.start_mib = _proc_status("VmRSS") or 0.0

    def read(self) -> dict[str, Any]:
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
            what = "torch.cuda.max_memory_allocated during the phase (tensors only, not the CUDA context)"
        elif self.reset_ok:
            peak = _proc_status("VmHWM") or 0.0
            what = "peak resident set of the whole process during the phase (VmHWM reset by /proc/self/clear_refs)"
        else:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
            what = "peak resident set of the process since it started (ru_maxrss; could not be reset)"
        return {"peak_mib": peak, "start_mib": self.start_mib, "increase_mib": peak - self.start_mib, "what": what}


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    info = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "bf16_native": native_bf16(device.type),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    return info


# --------------------------------------------------------------------------------------------------- set-up


def load_config(
    settings: Settings,
    work: Path,
    teacher_ckpt: Path,
    name: str,
    overlay: str | None = None,
    config: Path = CONFIG,
) -> ConfigParser:
    """``config`` (configs/train.yaml; then ``overlay``, a config file merged over it) with this run's data, sizes,
    device and temporary output folders."""
    parser = ConfigParser()
    parser.read_config([str(config), overlay] if overlay else str(config))
    device = "cuda:0" if settings.device == "cuda" else "cpu"
    overrides: dict[str, Any] = {
        "bundle_root": str(ROOT),
        "dataset_dir": str(work / "data"),
        "image_size": settings.image_size,
        "batch_size": settings.batch_size,
        "num_workers": settings.num_workers,
        "device": f"$torch.device('{device}')",
        "amp": settings.device == "cuda",  # the config's default where the device is the available one
        "teacher_ckpt": str(teacher_ckpt),
        "output_dir": str(work / name / "run"),
        "ckpt_dir": str(work / name / "models"),
        "val_interval": 10**6,  # no validation at the end of the timed epoch: it is not part of an iteration
        "explainer_scale": settings.explainer_scale,
        "explainer_scale_mode": settings.explainer_scale_mode,
    }
    if "preflight" in parser.get(""):  # the datalist check: the benchmark's demo splits lack classes by design
        overrides["preflight"] = False
    if config != CONFIG:
        for key in MEDTEX_ONLY_KEYS:
            del overrides[key]
    for key, value in overrides.items():
        parser[key] = value
    return parser


def write_rgb_dicom(path: Path, rgb: np.ndarray) -> None:
    """An 8-bit RGB Secondary Capture DICOM file with the same pixels as a demo PNG."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.PatientID = "BENCHMARK"
    ds.set_pixel_data(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB", 8, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)


def plain(value: Any) -> torch.Tensor:
    return value.as_tensor() if isinstance(value, MetaTensor) else torch.as_tensor(value)


# --------------------------------------------------------------------------------------------------- phases


def bench_saliency(
    settings: Settings, images: torch.Tensor, network: torch.nn.Module, teacher: torch.nn.Module, task: str
) -> dict[str, Any]:
    """Maps/s of each method on the same images; per-image methods on the first ``per_image_images`` of them."""
    device = images.device
    options: dict[str, dict[str, Any]] = {
        "smoothgrad": {"n_samples": settings.smoothgrad_samples},
        "occlusion": {"mask_size": settings.occlusion_mask_size, "overlap": settings.occlusion_overlap},
    }
    results: dict[str, Any] = {}
    for name in ("explainer", "medtex", *POSTHOC):
        if name == "explainer":  # the saliency map alone: what the explainer computes, no prediction
            method = network.mask
        else:
            method = make_saliency(name, network if name == "medtex" else teacher, task=task, **options.get(name, {}))
        per_image = name in PER_IMAGE
        x = images[: settings.per_image_images] if per_image else images[: settings.saliency_batch]
        repeats = settings.per_image_repeats if per_image else settings.repeats
        # warm-up: one call on what a timed call runs (a single image for methods that loop over images),
        # counting the images that pass through the network's forward per map
        counted = {"explainer": network.explainer, "medtex": network.student}.get(name, teacher)
        seen = []
        hook = counted.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0].shape[0]))
        warm = x[:1] if per_image else x
        method(warm)
        hook.remove()
        with torch.inference_mode() if name == "explainer" else contextlib.nullcontext():
            seconds = median_seconds(lambda: method(x), repeats, 0, device)
        results[name] = {
            "maps_per_second": x.shape[0] / seconds,
            "seconds_per_map": seconds / x.shape[0],
            "images": x.shape[0],
            "repeats": repeats,
            "warmup": "one call on one image" if per_image else "one call on the same images",
            "model": MODEL_NAMES.get(name, "teacher"),
            "forward_images_per_map": sum(seen) / warm.shape[0],
            "options": options.get(name, {}),
        }
        say(f"saliency {name}: {results[name]['maps_per_second']:.3g} maps/s on {x.shape[0]} image(s)")
    return results


def time_against_teacher(
    settings: Settings, teacher: torch.nn.Module, explain: Callable[[torch.Tensor], Any], batch: torch.Tensor
) -> dict[str, float]:
    """Latency at batch 1 and images/s at the batch size of the teacher and of ``explain``, their calls in turn in
    every repeat (``median_interleaved_seconds``), so that a speedup is a ratio of two timings under the same load.

    Timed minutes apart they saw different machine speeds: on a 2-core VM the teacher took 86.1 ms at batch 1 beside
    one explainer + student and 62.9 ms beside another a few minutes later (the run of 2026-12-03 08:22 UTC,
    docs/RESULTS.md, "Explainer scale").
    """
    device = batch.device
    with torch.inference_mode():
        teacher_latency, latency = median_interleaved_seconds(
            (lambda: teacher(batch[:1]), lambda: explain(batch[:1])), settings.repeats, settings.warmup, device
        )
        teacher_seconds, seconds = median_interleaved_seconds(
            (lambda: teacher(batch), lambda: explain(batch)), settings.repeats, settings.warmup, device
        )
    return {
        "teacher_latency_ms_batch1": 1000.0 * teacher_latency,
        "teacher_seconds_per_batch": teacher_seconds,
        "teacher_throughput_images_per_second": batch.shape[0] / teacher_seconds,
        "latency_ms_batch1": 1000.0 * latency,
        "seconds_per_batch": seconds,
        "throughput_images_per_second": batch.shape[0] / seconds,
        "student_speedup_vs_teacher": teacher_latency / latency,
        "student_throughput_speedup_vs_teacher": teacher_seconds / seconds,
    }


def peak_inference_memory(memory: PeakMemory, call: Callable[[torch.Tensor], Any], batch: torch.Tensor) -> dict:
    """Peak memory of one call at the batch size (the timed calls interleave two networks)."""
    memory.reset()
    with torch.inference_mode():
        call(batch)
    return memory.read()


def bench_inference(
    settings: Settings, images: torch.Tensor, network: torch.nn.Module, teacher: torch.nn.Module
) -> dict[str, Any]:
    """Latency at batch 1 and throughput at the batch size, teacher vs explainer + student (calls in turn), with the
    explainer's and the student's parts and peak memory."""
    device = images.device
    batch = images[torch.arange(settings.batch_size) % images.shape[0]]
    teacher.eval()
    network.eval()
    paired = time_against_teacher(settings, teacher, network.explain, batch)
    explainer, student = median_part_seconds(network, batch[:1], settings.repeats, settings.warmup, device)
    memory = PeakMemory(device)
    common = {"batch_size": settings.batch_size}
    results: dict[str, Any] = {
        "teacher": {
            **common,
            "latency_ms_batch1": paired["teacher_latency_ms_batch1"],
            "throughput_images_per_second": paired["teacher_throughput_images_per_second"],
            "seconds_per_batch": paired["teacher_seconds_per_batch"],
            "parameters": count_parameters(teacher),
            "memory": peak_inference_memory(memory, teacher, batch),
        },
        "medtex": {
            **common,
            "latency_ms_batch1": paired["latency_ms_batch1"],
            "throughput_images_per_second": paired["throughput_images_per_second"],
            "seconds_per_batch": paired["seconds_per_batch"],
            "explainer_latency_ms_batch1": 1000.0 * explainer,
            "student_latency_ms_batch1": 1000.0 * student,
            "parameters": count_parameters(network),
            "student_parameters": count_parameters(network.student),
            "memory": peak_inference_memory(memory, network.explain, batch),
        },
    }
    for name, r in results.items():
        say(
            f"inference {name}: {r['latency_ms_batch1']:.1f} ms at batch 1, "
            f"{r['throughput_images_per_second']:.3g} images/s at batch {settings.batch_size}"
        )
    return results


def bench_explainer_norms(settings: Settings, images: torch.Tensor, network: torch.nn.Module) -> dict[str, Any] | None:
    """The explainer with its group norms against the same explainer and weights with MONAI's instance norms (as
    before 0.5.0), calls interleaved: what ``bundle.networks.explainer._instance_norms_to_group_norms`` buys."""
    explainer = getattr(network, "explainer", None)
    if explainer is None:
        return None
    device = images.device
    reference = copy.deepcopy(explainer)  # the whole explainer: at a scale above 1 its U-Net sees unshuffled cells
    _group_norms_to_instance_norms(reference)
    results: dict[str, Any] = {}
    with torch.inference_mode():
        for label, x in (
            ("batch1", images[:1]),
            (f"batch{settings.saliency_batch}", images[: settings.saliency_batch]),
        ):
            group, instance = median_interleaved_seconds(
                (lambda: explainer(x), lambda: reference(x)), settings.repeats, settings.warmup, device
            )
            results[f"group_norm_ms_{label}"] = 1000.0 * group / x.shape[0]
            results[f"instance_norm_ms_{label}"] = 1000.0 * instance / x.shape[0]
            results[f"speedup_{label}"] = instance / group
            difference = (explainer(x) - reference(x)).abs().max().item()
            results["max_abs_mask_difference"] = max(results.get("max_abs_mask_difference", 0.0), difference)
    group, instance = results["group_norm_ms_batch1"], results["instance_norm_ms_batch1"]
    say(f"explainer norms at batch 1: group {group:.1f} ms, instance {instance:.1f} ms")
    return results


def _group_norms_to_instance_norms(module: torch.nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, torch.nn.GroupNorm) and child.num_groups == child.num_channels:
            instance = torch.nn.InstanceNorm2d(child.num_channels, eps=child.eps, affine=child.affine)
            instance.load_state_dict(child.state_dict())
            setattr(module, name, instance.to(child.weight.device))
        else:
            _group_norms_to_instance_norms(child)


def bench_other_scale(
    settings: Settings,
    images: torch.Tensor,
    network: torch.nn.Module,
    teacher: torch.nn.Module,
    saliency: dict[str, float],
) -> dict[str, Any]:
    """The explainer at ``other_explainer_scale``: mask maps/s as ratios to the post-hoc methods' (``saliency``, maps/s
    measured earlier in this run), explain latency/throughput in turn with the teacher."""
    device = images.device
    x = images[: settings.saliency_batch]
    batch = images[torch.arange(settings.batch_size) % images.shape[0]]
    with torch.inference_mode():
        mask_seconds = median_seconds(lambda: network.mask(x), settings.repeats, settings.warmup, device)
    paired = time_against_teacher(settings, teacher, network.explain, batch)
    explainer, _ = median_part_seconds(network, batch[:1], settings.repeats, settings.warmup, device)
    maps_per_second = x.shape[0] / mask_seconds
    other = {
        "explainer_scale": settings.other_explainer_scale,
        "explainer_scale_mode": settings.explainer_scale_mode,
        "explainer_maps_per_second": maps_per_second,
        **{f"saliency_speedup_vs_{name}": maps_per_second / saliency[name] for name in POSTHOC},
        "explainer_latency_ms_batch1": 1000.0 * explainer,
        **paired,
    }
    say(
        f"explainer scale {settings.other_explainer_scale}: {maps_per_second:.3g} maps/s,"
        f" {paired['latency_ms_batch1']:.1f} ms, {paired['student_speedup_vs_teacher']:.2f}x the teacher"
    )
    return other


def bench_other_student(
    settings: Settings, images: torch.Tensor, network: torch.nn.Module, teacher: torch.nn.Module, student_config: str
) -> dict[str, Any]:
    """Explainer + student built with ``student_config`` merged over the config: latency at batch 1 and throughput,
    in turn with the teacher."""
    device = images.device
    batch = images[torch.arange(settings.batch_size) % images.shape[0]]
    paired = time_against_teacher(settings, teacher, network.explain, batch)
    explainer, student = median_part_seconds(network, batch[:1], settings.repeats, settings.warmup, device)
    other = {
        "student_config": student_config,
        "parameters": count_parameters(network),
        "student_parameters": count_parameters(network.student),
        "explainer_latency_ms_batch1": 1000.0 * explainer,
        "student_latency_ms_batch1": 1000.0 * student,
        **paired,
        "latency_target_met": bool(paired["student_speedup_vs_teacher"] >= LATENCY_TARGET),
    }
    say(
        f"student of {student_config}: {paired['latency_ms_batch1']:.1f} ms at batch 1,"
        f" {paired['student_speedup_vs_teacher']:.2f}x the teacher"
    )
    return other


def bench_compiled_inference(
    settings: Settings, images: torch.Tensor, network: torch.nn.Module, eager: dict[str, Any]
) -> dict[str, Any]:
    """``torch.compile(network.explain)`` (``--compile-backend``, default inductor as configs/inference.yaml's):
    the seconds its first calls take (compiling for batch 1 and for the batch size), then latency and throughput
    against ``eager`` (the explainer + student measured earlier in this run), and the images after which compiling
    has paid for itself at the batch size."""
    device = images.device
    batch = images[torch.arange(settings.batch_size) % images.shape[0]]
    compiled = torch.compile(network.explain, backend=settings.compile_backend)
    with torch.inference_mode():
        start = time.perf_counter()
        compiled(batch[:1])
        compiled(batch)
        synchronize(device)
        compile_seconds = time.perf_counter() - start
        latency = median_seconds(lambda: compiled(batch[:1]), settings.repeats, settings.warmup, device)
        seconds = median_seconds(lambda: compiled(batch), settings.repeats, settings.warmup, device)
        difference = max(float((a - b).abs().max()) for a, b in zip(compiled(batch), network.explain(batch)))
    saved_per_image = eager["seconds_per_batch"] / settings.batch_size - seconds / settings.batch_size
    result = {
        "backend": settings.compile_backend,
        "compile_seconds": compile_seconds,
        "latency_ms_batch1": 1000.0 * latency,
        "throughput_images_per_second": settings.batch_size / seconds,
        "latency_speedup": eager["latency_ms_batch1"] / (1000.0 * latency),
        "throughput_speedup": eager["seconds_per_batch"] / seconds,
        "break_even_images": compile_seconds / saved_per_image if saved_per_image > 0 else None,
        "max_abs_difference": difference,
    }
    say(
        f"compiled explain: {compile_seconds:.0f} s to compile, {1000 * latency:.1f} ms at batch 1, "
        f"{settings.batch_size / seconds:.3g} images/s"
    )
    return result


def bench_compiled_training(
    settings: Settings, work: Path, teacher_ckpt: Path, batches: list[dict[str, torch.Tensor]]
) -> dict[str, Any]:
    """MED-TEX training iterations with configs/train.yaml's ``compile: true`` (``--compile-backend``) against
    eager: two trainers built alike from the same seed, fed the same batches, their iterations interleaved (eager,
    then compiled, on each batch) so that both see the same machine load. The compiled trainer's first iteration
    (it compiles) is timed apart; the first iteration's losses of the two are compared. Iterations are the trainer's
    own (``MedTexTrainer._iteration``), without the engine's events, as both would have the same."""
    device = torch.device("cuda:0" if settings.device == "cuda" else "cpu")
    trainers = {}
    for kind in ("eager", "compiled"):
        parser = load_config(settings, work, teacher_ckpt, f"training_{kind}")
        parser["compile"] = kind == "compiled"
        parser["compile_kwargs"] = {"backend": settings.compile_backend}
        torch.manual_seed(0)  # the same initial weights in both
        trainers[kind] = parser.get_parsed_content("train#trainer")

    def iteration(kind: str, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, float]]:
        trainer = trainers[kind]
        synchronize(device)
        start = time.perf_counter()
        output = trainer._iteration(trainer, batch)
        synchronize(device)
        return time.perf_counter() - start, loss_terms(output)

    _, eager_losses = iteration("eager", batches[0])
    compile_seconds, compiled_losses = iteration("compiled", batches[0])
    seconds: dict[str, list[float]] = {"eager": [], "compiled": []}
    for batch in batches[1:]:
        for kind in seconds:
            seconds[kind].append(iteration(kind, batch)[0])
    eager, compiled = (statistics.median(seconds[k][settings.warmup :]) for k in ("eager", "compiled"))
    saved = eager - compiled
    result = {
        "backend": settings.compile_backend,
        "compiled_modules": "the explainer, the student and the teacher's network",
        "compile_seconds": compile_seconds,
        "eager_seconds_per_iteration": eager,
        "compiled_seconds_per_iteration": compiled,
        "eager_seconds_all": seconds["eager"],
        "compiled_seconds_all": seconds["compiled"],
        "speedup": eager / compiled,
        "break_even_iterations": compile_seconds / saved if saved > 0 else None,
        "first_iteration_losses": {"eager": eager_losses, "compiled": compiled_losses},
        "max_loss_difference": max(abs(eager_losses[k] - compiled_losses[k]) for k in eager_losses),
        "batch_size": settings.batch_size,
    }
    say(
        f"compiled training: {compile_seconds:.0f} s for the first iteration, then {compiled:.3g} s per iteration"
        f" against {eager:.3g} s eager"
    )
    return result


def bench_training_precision(settings: Settings, work: Path, teacher_ckpt: Path) -> dict[str, Any]:
    """Training images per second of the teacher (configs/train_teacher.yaml: what the central site pays) and of
    MED-TEX (configs/train.yaml: what the branch pays). On CUDA twice: ``"amp"``, the configs' defaults there (``amp``
    on, the frozen teacher's passes ``teacher_bf16: auto``), against ``"fp32"`` (``amp`` off, the teacher's passes in
    fp32 too). Elsewhere once, ``"default"``: the configs' defaults (MONAI's ``amp`` autocasts on CUDA only; the
    frozen teacher's passes run in bfloat16 where the CPU has it natively).

    Per workflow, one trainer per precision, built from the same seed and fed the same batches from that workflow's
    own loader (its augmentation included), their iterations interleaved (fp32, then AMP, on each batch) so that both
    see the same machine load; iterations are the trainers' own (``_iteration``), without the engine's events.
    Peak memory: one more iteration per precision after the timed ones.
    """
    device = torch.device("cuda:0" if settings.device == "cuda" else "cpu")
    precisions = ("fp32", "amp") if device.type == "cuda" else ("default",)
    results: dict[str, Any] = {"precisions": list(precisions), "batch_size": settings.batch_size}

    def iteration(trainer: Any, batch: dict[str, torch.Tensor]) -> float:
        synchronize(device)
        start = time.perf_counter()
        trainer._iteration(trainer, batch)
        synchronize(device)
        return time.perf_counter() - start

    for workflow, config in (("teacher", TEACHER_CONFIG), ("medtex", CONFIG)):
        trainers = {}
        for precision in precisions:
            parser = load_config(settings, work, teacher_ckpt, f"{workflow}_{precision}", config=config)
            if precision == "fp32":
                parser["amp"] = False
                if "teacher_bf16" in parser.get(""):
                    parser["teacher_bf16"] = False  # "auto" runs the frozen teacher in bfloat16 on recent GPUs
            parser["cache_rate"] = 0.0  # a few batches are drawn: caching the whole epoch first would only wait
            torch.manual_seed(0)
            trainers[precision] = parser.get_parsed_content("train#trainer")
        batches = training_batches(settings, parser)

        seconds: dict[str, list[float]] = {precision: [] for precision in precisions}
        for batch in batches:
            for precision, trainer in trainers.items():
                seconds[precision].append(iteration(trainer, batch))
        record: dict[str, Any] = {}
        for precision, trainer in trainers.items():
            median = statistics.median(seconds[precision][settings.warmup :])
            memory = PeakMemory(device)
            memory.reset()
            iteration(trainer, batches[0])
            record[precision] = {
                "seconds_per_iteration": median,
                "images_per_second": settings.batch_size / median,
                "seconds_all": seconds[precision],
                "amp": bool(trainer.amp),
                "memory": memory.read(),
            }
            if workflow == "medtex":
                record[precision]["teacher_bf16"] = trainer.teacher.computes_in_bf16(device.type)
        if "amp" in record:
            record["amp_speedup"] = record["amp"]["images_per_second"] / record["fp32"]["images_per_second"]
        say(
            f"{workflow} training: "
            + ", ".join(f"{p} {record[p]['images_per_second']:.3g} images/s" for p in precisions)
        )
        results[workflow] = record
        del trainers, parser, batches
        gc.collect()
    return results


def bench_data_loading(settings: Settings, parser: ConfigParser, work: Path) -> dict[str, Any]:
    """Decoding (PNG, DICOM), the training transforms uncached and cached, and the cached training loader."""
    dataset = parser.get_parsed_content("train#dataset")
    loader = parser.get_parsed_content("train#dataloader")
    transform = parser.get_parsed_content("train#preprocessing")
    items = [dict(item) for item in dataset.data][: settings.n_train]
    dicom_dir = work / "dicom"
    dicom_dir.mkdir(exist_ok=True)
    dicom_items = []
    for item in items:
        target = dicom_dir / (Path(item["image"]).stem + ".dcm")
        with Image.open(item["image"]) as image:
            write_rgb_dicom(target, np.asarray(image.convert("RGB")))
        dicom_items.append({**item, "image": str(target)})
    reader = LoadMedicalImage()
    cpu = torch.device("cpu")

    def rate(function: Callable[[dict], Any], data: list[dict]) -> float:
        seconds = median_seconds(lambda: [function(item) for item in data], settings.repeats, settings.warmup, cpu)
        return len(data) / seconds

    results: dict[str, Any] = {
        "decode_png_images_per_second": rate(lambda item: reader(item["image"]), items),
        "decode_dicom_images_per_second": rate(lambda item: reader(item["image"]), dicom_items),
        "uncached_png_images_per_second": rate(lambda item: transform(dict(item)), items),
        "uncached_dicom_images_per_second": rate(lambda item: transform(dict(item)), dicom_items),
        "cached_images_per_second": rate(
            lambda item: dataset[item["index"]], [{"index": i} for i in range(len(items))]
        ),
    }
    results["cached_speedup_vs_uncached_png"] = (
        results["cached_images_per_second"] / results["uncached_png_images_per_second"]
    )

    def epoch() -> None:
        for _ in loader:
            pass

    images_per_epoch = len(loader) * settings.batch_size if loader.drop_last else len(dataset)
    seconds = median_seconds(epoch, settings.repeats, settings.warmup, cpu)
    # MONAI's ThreadDataLoader: the same batches prepared in a background thread instead of worker processes
    thread_loader = ThreadDataLoader(
        dataset, batch_size=settings.batch_size, shuffle=True, drop_last=loader.drop_last, num_workers=0
    )

    def thread_epoch() -> None:
        for _ in thread_loader:
            pass

    thread_seconds = median_seconds(thread_epoch, settings.repeats, settings.warmup, cpu)
    results["thread_loader_images_per_second"] = images_per_epoch / thread_seconds
    results.update(
        loader_images_per_second=images_per_epoch / seconds,
        loader_seconds_per_epoch=seconds,
        loader_images_per_epoch=images_per_epoch,
        loader_num_workers=loader.num_workers,
        dataset_images=len(dataset),
        source_image_size=settings.image_size,
        files_decoded=len(items),
    )
    say(
        f"data: PNG decode {results['decode_png_images_per_second']:.3g}/s, DICOM "
        f"{results['decode_dicom_images_per_second']:.3g}/s, uncached {results['uncached_png_images_per_second']:.3g}"
        f"/s, cached {results['cached_images_per_second']:.3g}/s, loader {results['loader_images_per_second']:.3g}/s,"
        f" ThreadDataLoader {results['thread_loader_images_per_second']:.3g}/s"
    )
    return results


def hand_written_loop(parser: ConfigParser, device: torch.device, amp: bool, zero_to_none: bool) -> Callable:
    """One MED-TEX iteration in plain PyTorch: what ``MedTexTrainer._iteration`` computes, without the engine."""
    network = parser.get_parsed_content("network")
    teacher = parser.get_parsed_content("teacher").to(device)
    loss_function = parser.get_parsed_content("loss")
    optimizer = parser.get_parsed_content("optimizer")
    layers = parser.get_parsed_content("student_feature_layers")
    use_vid = loss_function.weights["vid"] > 0
    # its own hooks: the engine's (on the same modules) stay attached, and each records over the other's outputs
    student_features = FeatureRecorder(network.student, layers) if use_vid else None
    use_fidelity = loss_function.weights["fidelity"] > 0
    scaler = torch.amp.GradScaler("cuda") if amp else None
    autocast = (lambda: torch.autocast("cuda")) if amp else contextlib.nullcontext

    def step(batch: dict[str, torch.Tensor]) -> None:
        inputs, targets = batch["image"].to(device), batch["label"].to(device)
        with torch.inference_mode():
            teacher_logits, teacher_features = teacher(inputs)
        teacher_logits = teacher_logits.clone()
        teacher_features = [f.clone() for f in teacher_features]
        network.train()
        optimizer.zero_grad(set_to_none=zero_to_none)
        with autocast():
            logits, mask = network.explain(inputs)
            features = student_features.features if student_features is not None else []
            masked_logits = teacher(network.apply_mask(inputs, mask))[0] if use_fidelity else None
            terms = loss_function(logits, targets, teacher_logits, mask, features, teacher_features, masked_logits)
        if scaler is not None:
            scaler.scale(terms["loss"]).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            terms["loss"].backward()
            optimizer.step()

    return step


def training_batches(settings: Settings, parser: ConfigParser) -> list[dict[str, torch.Tensor]]:
    """``warmup + repeats`` batches from the training loader, drawn once so that every comparison sees the same."""
    loader = parser.get_parsed_content("train#dataloader")
    n_batches = settings.warmup + settings.repeats
    batches: list[dict[str, torch.Tensor]] = []
    while len(batches) < n_batches:
        batches += [batch for _, batch in zip(range(n_batches - len(batches)), loader)]
    return batches


def bench_training(settings: Settings, parser: ConfigParser, batches: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Seconds per iteration: the bundle's engine vs the hand-written loop, on the same batches, interleaved.

    The engine runs one epoch over the pre-built batches; between two of its iterations (when it asks for the next
    batch) the hand-written loop runs one step, so that both see the same machine load. An engine iteration's time
    is the time between two ``ITERATION_COMPLETED`` events (fired after the config's handlers: events, handlers and
    decollation included) less the loop step timed in between.
    """
    device = parser.get_parsed_content("device")
    trainer = parser.get_parsed_content("train#trainer")
    amp = bool(trainer.amp and trainer.scaler is not None)
    step = hand_written_loop(parser, device, amp, bool(trainer.optim_set_to_none))

    completed: list[float] = []
    loop_seconds: list[float] = []

    def stamp(_engine: Any) -> None:
        synchronize(device)
        completed.append(time.perf_counter())

    def timed_step(batch: dict[str, torch.Tensor]) -> None:
        synchronize(device)
        start = time.perf_counter()
        step(batch)
        synchronize(device)
        loop_seconds.append(time.perf_counter() - start)

    def feed() -> Iterator[dict[str, torch.Tensor]]:
        for i, batch in enumerate(batches):
            if i > 0:
                timed_step(batches[i - 1])  # the loop's step i, before the engine's iteration i + 1
            yield batch

    stamping = trainer.add_event_handler(Events.ITERATION_COMPLETED, stamp)
    trainer.data_loader = feed()
    trainer.state.epoch_length = len(batches)
    trainer.state.max_epochs = 1
    memory = PeakMemory(device)
    memory.reset()
    trainer.run()
    stamping.remove()
    timed_step(batches[-1])
    training_memory = memory.read()
    # engine iteration i (1-based, i >= 2) took completed[i-1] - completed[i-2], less loop step i-1 run in between
    engine = [completed[i - 1] - completed[i - 2] - loop_seconds[i - 2] for i in range(2, len(batches) + 1)]
    engine_seconds = statistics.median(engine[settings.warmup - 1 :])
    loop = statistics.median(loop_seconds[settings.warmup :])
    say(f"training: engine {engine_seconds:.3g} s, hand-written loop {loop:.3g} s per iteration")
    teacher = parser.get_parsed_content("teacher")
    return {
        "engine_seconds_per_iteration": engine_seconds,
        "loop_seconds_per_iteration": loop,
        "engine_images_per_second": settings.batch_size / engine_seconds,
        "loop_images_per_second": settings.batch_size / loop,
        "engine_seconds_all": engine,
        "loop_seconds_all": loop_seconds,
        "batch_size": settings.batch_size,
        "iterations_timed": settings.repeats,
        "warmup_iterations": settings.warmup,
        "amp": amp,
        "teacher_bf16": teacher.bf16 is True or (teacher.bf16 == "auto" and native_bf16(device.type)),
        "memory": training_memory,
    }


def bench_precomputed_teacher(
    settings: Settings, parser: ConfigParser, batches: list[dict[str, torch.Tensor]], fidelity: bool = True
) -> dict[str, Any]:
    """Seconds per engine iteration with the teacher's outputs for the clean image in the batch
    (configs/precompute_teacher.yaml: ``TeacherOutputsd`` caches them) against the engine computing them.

    One engine run over the batches twice, each batch first as it comes and then with its teacher outputs attached,
    so that both kinds of iteration alternate under the same machine load; an iteration's time is the time between
    two ``ITERATION_COMPLETED`` events. The teacher's pass on the masked image (fidelity term) is in both, unless
    ``fidelity`` is false: its weight is then 0 for this measurement (as in the KD and VID baselines).
    """
    device = parser.get_parsed_content("device")
    trainer = parser.get_parsed_content("train#trainer")
    fidelity_weight = trainer.loss_function.weights["fidelity"]
    if not fidelity:
        trainer.loss_function.weights["fidelity"] = 0.0
    teacher = trainer.teacher
    stored = torch.bfloat16 if teacher.computes_in_bf16(device.type) else torch.float32
    precomputed = []
    for batch in batches:
        with torch.no_grad():
            logits, features = teacher(batch["image"].to(device))
        outputs = {TEACHER_LOGITS: logits.to("cpu", stored), TEACHER_FEATURES: [f.to("cpu", stored) for f in features]}
        precomputed.append({**batch, **outputs})
    order = [b for pair in zip(batches, precomputed) for b in pair]
    completed: list[float] = []

    def stamp(_engine: Any) -> None:
        synchronize(device)
        completed.append(time.perf_counter())

    stamping = trainer.add_event_handler(Events.ITERATION_COMPLETED, stamp)
    trainer.data_loader = iter(order)
    trainer.state.epoch_length = len(order)
    trainer.state.max_epochs = 1
    trainer.run()
    stamping.remove()
    trainer.loss_function.weights["fidelity"] = fidelity_weight
    # iteration i (i >= 1) took completed[i] - completed[i-1]; even i: online teacher, odd i: precomputed
    seconds = [completed[i] - completed[i - 1] for i in range(1, len(completed))]
    kinds = {"online": seconds[1::2], "precomputed": seconds[0::2]}
    skip = settings.warmup  # the first warm-up pairs
    online, cached = (statistics.median(kinds[k][skip:]) for k in ("online", "precomputed"))
    say(
        f"training (fidelity term {'on' if fidelity else 'off'}): engine {online:.3g} s per iteration with the"
        f" teacher's pass, {cached:.3g} s with its outputs cached"
    )
    return {
        "online_seconds_per_iteration": online,
        "precomputed_seconds_per_iteration": cached,
        "online_seconds_all": kinds["online"],
        "precomputed_seconds_all": kinds["precomputed"],
        "stored_dtype": str(stored).replace("torch.", ""),
        "fidelity_pass_kept": fidelity and fidelity_weight > 0,
        "batch_size": settings.batch_size,
    }


def check_targets(results: dict[str, Any]) -> dict[str, Any]:
    targets = {}
    for key, comparison, target in TARGETS:
        value = results[key]
        met = value >= target if comparison == ">=" else value <= target
        targets[key] = {"value": value, "target": f"{comparison} {target:g}", "met": bool(met)}
    return targets


# --------------------------------------------------------------------------------------------------- report


def number(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value) and abs(value) < 1e6):
        return f"{int(value):,}"
    if not math.isfinite(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def reduced_posthoc(s: dict[str, Any]) -> bool:
    """Whether SmoothGrad or occlusion ran with fewer passes than the full run's settings."""
    full_mask = max(2, s["image_size"] // OCCLUSION_MASK_FRACTION)
    return (
        s["smoothgrad_samples"] < SMOOTHGRAD_SAMPLES
        or s["occlusion_mask_size"] > full_mask
        or s["occlusion_overlap"] < OCCLUSION_OVERLAP
    )


def yes_no(value: bool, no: str = "no") -> str:
    return "yes" if value else no


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table; columns of numbers are right-aligned."""
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    for row in rows:
        cells = (number(c) if isinstance(c, (int, float)) and not isinstance(c, bool) else str(c) for c in row)
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def speedup_rows(results: dict[str, Any], other: dict[str, Any]) -> list[tuple[str, float, float]]:
    """Table rows: the explainer + student's speedups over the teacher, this run's default against ``other``."""
    return [
        (
            "`student_speedup_vs_teacher`",
            results["student_speedup_vs_teacher"],
            other["student_speedup_vs_teacher"],
        ),
        (
            "throughput speedup over the teacher",
            results["student_throughput_speedup_vs_teacher"],
            other["student_throughput_speedup_vs_teacher"],
        ),
    ]


def other_student_markdown(results: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """The section comparing the config's student with one ``--student-config``'s."""
    medtex, teacher = results["inference"]["medtex"], results["inference"]["teacher"]
    lines = [f"## Student of `{other['student_config']}` instead of the config's", ""]
    lines += table(
        ("explainer + student (`explain`)", "config's student (above)", f"`{other['student_config']}`"),
        [
            ("parameters, explainer + student", medtex["parameters"], other["parameters"]),
            ("latency, batch 1 (ms)", medtex["latency_ms_batch1"], other["latency_ms_batch1"]),
            (
                "explainer's part, batch 1 (ms)",
                medtex["explainer_latency_ms_batch1"],
                other["explainer_latency_ms_batch1"],
            ),
            ("student's part, batch 1 (ms)", medtex["student_latency_ms_batch1"], other["student_latency_ms_batch1"]),
            ("teacher timed in turn, batch 1 (ms)", teacher["latency_ms_batch1"], other["teacher_latency_ms_batch1"]),
            (
                f"images/s, batch {medtex['batch_size']}",
                medtex["throughput_images_per_second"],
                other["throughput_images_per_second"],
            ),
            *speedup_rows(results, other),
        ],
    )
    lines += [
        f"The same explainer; the student built with `{other['student_config']}` merged over the config (random"
        " weights: timing does not depend on them). Each explainer + student is timed in turn with the same teacher,"
        " call for call, and its speedups are over that teacher's timings (the row above). Same run, machine and"
        " images as above; what the other student costs or buys in accuracy and localisation is in docs/RESULTS.md.",
        "",
    ]
    return lines


def training_throughput_markdown(record: dict[str, Any] | None) -> list[str]:
    """The section on training images per second, teacher and MED-TEX, with AMP against fp32 on CUDA; none for JSON
    files written before it."""
    if not record:
        return []
    names = {"teacher": "teacher (configs/train_teacher.yaml)", "medtex": "MED-TEX (configs/train.yaml)"}
    amp = "amp" in record["precisions"]
    if amp:
        header = ["training", "AMP images/s", "fp32 images/s", "AMP speedup", "AMP peak MiB", "fp32 peak MiB"]
        rows = [
            (
                name,
                record[w]["amp"]["images_per_second"],
                record[w]["fp32"]["images_per_second"],
                record[w]["amp_speedup"],
                record[w]["amp"]["memory"]["peak_mib"],
                record[w]["fp32"]["memory"]["peak_mib"],
            )
            for w, name in names.items()
        ]
    else:
        header = ["training", "images/s", "peak MiB"]
        rows = [
            (name, record[w]["default"]["images_per_second"], record[w]["default"]["memory"]["peak_mib"])
            for w, name in names.items()
        ]
    shown = "amp" if amp else "default"  # the configs' defaults on this device
    precision_name = "AMP" if amp else "the configs' defaults"
    ratio = record["medtex"][shown]["images_per_second"] / record["teacher"][shown]["images_per_second"]
    lines = ["## Training images per second: the teacher's training and MED-TEX's", ""]
    lines += table(header, rows)
    lines += [
        f"Batch {record['batch_size']} at {record['image_size']} px, each workflow's own trainer and loader"
        " (augmentation included, data loading excluded): the teacher trains DenseNet121 on labelled images; a"
        " MED-TEX iteration runs the frozen teacher twice (clean and masked image) and trains the explainer and the"
        f" student. MED-TEX training moves {number(ratio)}x the images per second of the teacher's"
        f" ({precision_name}). "
        + (
            "AMP: the configs' defaults on CUDA (`amp` on, `teacher_bf16: auto`); fp32: `amp` off and the frozen"
            " teacher's passes in fp32 (`teacher_bf16: false`). Per workflow the two trainers start from the same"
            " seed and see the same batches, their iterations interleaved."
            if amp
            else "AMP is CUDA only (MONAI's autocast; the configs turn `amp` on where CUDA is available), so this run"
            " has the configs' defaults only: fp32, the frozen teacher's passes in MED-TEX in bfloat16:"
            f" {yes_no(record['medtex']['default']['teacher_bf16'])}."
        )
        + f" Medians after the warm-up; peak memory: {record['teacher'][shown]['memory']['what']}, one iteration.",
        "",
    ]
    return lines


def write_markdown(path: Path, results: dict[str, Any]) -> None:
    s, m = results["settings"], results["machine"]
    sal, inf, train, data = results["saliency_details"], results["inference"], results["training"], results["loading"]
    cuda = m["device"].startswith("cuda")
    where = f"GPU {m['device_name']} ({m['device']})" if cuda else f"CPU only ({m['device']})"
    lines = [
        "# Performance",
        "",
        f"Measured by `{s['command']}` on {results['created']} in {results['wall_seconds']:.0f} s"
        + (" (`--quick`: a smoke run with fewer repeats and passes)." if s["quick"] else "."),
        "Each figure is the median of several timed runs after warm-up, and every ratio divides two figures measured"
        " in this same run, on the same machine and images. Networks, data pipeline and trainer come from"
        " `configs/train.yaml` (fundus demo task); the teacher is a randomly initialised DenseNet121 (timing does not"
        " depend on the weights).",
        "",
        "| machine | |",
        "|---|---|",
        f"| device | {where} |",
        f"| CPU | {m['cpu']}, {m['logical_cores']} logical cores ({m['usable_cores']} usable) |",
        f"| torch threads | {m['torch_threads']} |",
        f"| software | Python {m['python']}, torch {m['torch']}, MONAI {m['monai']} |",
        f"| platform | {m['platform']} |",
        "",
        f"Settings: {s['image_size']} px images, batch {s['batch_size']} (training, throughput), saliency on"
        f" {s['saliency_batch']} image(s) ({s['per_image_images']} for SmoothGrad and occlusion), {s['repeats']}"
        f" repeats ({s['per_image_repeats']} for SmoothGrad and occlusion) after {s['warmup']} warm-up,"
        f" {s['num_workers']} loader worker(s), explainer scale {s['explainer_scale']}"
        f" ({s['explainer_scale_mode']}).",
        "",
        "## Targets",
        "",
    ]
    lines += table(
        ("measure", "value", "target", "met"),
        [(f"`{k}`", t["value"], t["target"], yes_no(t["met"], "**no**")) for k, t in results["targets"].items()],
    )
    lines += [
        "`student_speedup_vs_teacher` compares latency at batch 1; in images per second at batch"
        f" {inf['medtex']['batch_size']} the explainer + student is"
        f" {number(results['student_throughput_speedup_vs_teacher'])}x the teacher (inference section below)."
        + "".join(
            f" With the student of `{other['student_config']}`: {number(other['student_speedup_vs_teacher'])}x"
            f" latency at batch 1 (target >= {LATENCY_TARGET:g}: {yes_no(other['latency_target_met'], 'not met')}),"
            " section below."
            for other in results.get("other_students", [])
        ),
        "",
    ]
    lines += ["## Saliency maps per second", ""]
    rows = []
    for name, r in sal.items():
        mine = name in ("explainer", "medtex")
        speedups = (
            ("-", "-") if mine else (results[f"saliency_speedup_vs_{name}"], results[f"explain_speedup_vs_{name}"])
        )
        rows.append(
            (name, r["model"], r["maps_per_second"], 1000.0 * r["seconds_per_map"], *speedups)
            + (r["forward_images_per_map"], r["images"], r["repeats"])
        )
    header = ("method", "network", "maps/s", "ms per map", "explainer speedup", "explain speedup")
    header += ("forward images per map", "images")
    lines += table(header + ("repeats",), rows)
    lines += [
        "explainer: the saliency mask alone (`network.mask`, the explainer's forward; the targets use this rate);"
        " medtex: one `explain` call, the mask and the student's prediction on the masked image (no teacher)."
        f" Explainer scale {s['explainer_scale']} (the U-Net runs this factor below the image's resolution)."
        " Others: `bundle.explain.make_saliency` on the teacher, whose map also comes with the teacher's prediction."
        f" SmoothGrad: {s['smoothgrad_samples']} samples; occlusion: {s['occlusion_mask_size']} px patches,"
        f" overlap {s['occlusion_overlap']:g}"
        + (
            f" (fewer samples or passes than the full run's {SMOOTHGRAD_SAMPLES} samples and"
            f" image_size // {OCCLUSION_MASK_FRACTION} patches with overlap {OCCLUSION_OVERLAP:g}: those methods look"
            " faster here, so the speedups against them are lower bounds)."
            if reduced_posthoc(s)
            else " (the defaults of scripts/compare_saliency.py)."
        ),
        "",
        "## Inference latency and throughput",
        "",
    ]
    rows = []
    for name, label in (("teacher", "teacher (DenseNet121)"), ("medtex", "explainer + student (`explain`)")):
        r = inf[name]
        rows.append((label, r["parameters"], r["latency_ms_batch1"], r["throughput_images_per_second"]))
    lines += table(("network", "parameters", "latency, batch 1 (ms)", f"images/s, batch {s['batch_size']}"), rows)
    lines += [
        f"Speedup of explainer + student over the teacher: **{number(results['student_speedup_vs_teacher'])}x**"
        f" latency at batch 1, {number(results['student_throughput_speedup_vs_teacher'])}x throughput. At batch 1 the"
        f" explainer's part takes {number(inf['medtex']['explainer_latency_ms_batch1'])} ms and the student's"
        f" {number(inf['medtex']['student_latency_ms_batch1'])} ms (timed inside the same sequence of calls as"
        " `explain`; each network alone, call after call, runs faster from warm caches). The teacher and the"
        " explainer + student are called in turn in every repeat, so both see the same machine load. Both in fp32"
        " under `torch.inference_mode`, in the config's memory format; the explainer + student returns the logits"
        " and the saliency mask in this one pass.",
        "",
    ]
    norms = results.get("explainer_norms")
    if norms:
        batch = f"batch{s['saliency_batch']}"
        lines += ["## Explainer: group norms instead of instance norms (0.5.0)", ""]
        lines += table(
            ("explainer mask, ms per image", "group norms (now)", "MONAI's instance norms (before)", "speedup"),
            [
                ("batch 1", norms["group_norm_ms_batch1"], norms["instance_norm_ms_batch1"], norms["speedup_batch1"]),
                (
                    f"batch {s['saliency_batch']}",
                    norms[f"group_norm_ms_{batch}"],
                    norms[f"instance_norm_ms_{batch}"],
                    norms[f"speedup_{batch}"],
                ),
            ],
        )
        lines += [
            f"The explainer (scale {s['explainer_scale']}) with one-channel-per-group norms in its BasicUNet against"
            " the same explainer and weights with MONAI's instance norms, calls interleaved: the same function"
            f" (largest mask difference {norms['max_abs_mask_difference']:.1e}), but PyTorch runs instance norm"
            " through a batch norm that copies channels_last tensors to contiguous and back at every layer. Same run,"
            " machine and images as above.",
            "",
        ]
    other = results.get("other_explainer_scale")
    if other:
        scale = other["explainer_scale"]
        mode = other["explainer_scale_mode"]
        lines += [f"## Explainer scale {scale} ({mode}) instead of {s['explainer_scale']}", ""]
        lines += table(
            ("measure", f"scale {s['explainer_scale']} (above)", f"scale {scale}"),
            [
                ("explainer mask maps/s", sal["explainer"]["maps_per_second"], other["explainer_maps_per_second"]),
                (
                    "explainer's part of explain, batch 1 (ms)",
                    inf["medtex"]["explainer_latency_ms_batch1"],
                    other["explainer_latency_ms_batch1"],
                ),
                (
                    "`saliency_speedup_vs_gradcam`",
                    results["saliency_speedup_vs_gradcam"],
                    other["saliency_speedup_vs_gradcam"],
                ),
                (
                    "`saliency_speedup_vs_occlusion`",
                    results["saliency_speedup_vs_occlusion"],
                    other["saliency_speedup_vs_occlusion"],
                ),
                ("explain latency, batch 1 (ms)", inf["medtex"]["latency_ms_batch1"], other["latency_ms_batch1"]),
                (
                    "teacher timed in turn, batch 1 (ms)",
                    inf["teacher"]["latency_ms_batch1"],
                    other["teacher_latency_ms_batch1"],
                ),
                *speedup_rows(results, other),
            ],
        )
        lines += [
            "`explainer_scale: k` runs the explainer's U-Net k times below the image's resolution (1: full"
            " resolution), on k x k cells turned into k^2 channels (`explainer_scale_mode: unshuffle`, one logit per"
            " pixel back) or on the image average-pooled by k (`pool`, the logits interpolated back); the scale and"
            " mode are saved with the weights. Explain is timed in turn with the teacher, as above. Same run, machine"
            " and images as above; what the scale costs in accuracy and localisation is in docs/RESULTS.md.",
            "",
        ]
    for other in results.get("other_students", []):
        lines += other_student_markdown(results, other)
    compiled = results.get("compiled_inference")
    if compiled:
        lines += ["## Option: `torch.compile` for inference (`compile: true` in configs/inference.yaml)", ""]
        lines += table(
            ("explainer + student (`explain`)", "eager (above)", "compiled"),
            [
                ("latency, batch 1 (ms)", inf["medtex"]["latency_ms_batch1"], compiled["latency_ms_batch1"]),
                (
                    f"images/s, batch {inf['medtex']['batch_size']}",
                    inf["medtex"]["throughput_images_per_second"],
                    compiled["throughput_images_per_second"],
                ),
            ],
        )
        even = compiled["break_even_images"]
        lines += [
            f"Compiled ({compiled['backend']}): **{number(compiled['latency_speedup'])}x** latency,"
            f" **{number(compiled['throughput_speedup'])}x** throughput; compiling for the two input shapes"
            f" (inductor's cache empty) took {number(compiled['compile_seconds'])} s, so at this batch size it"
            f" {'pays after ' + number(even) + ' images' if even else 'never pays (no faster)'}; every new input"
            " shape (a last, smaller batch) compiles again. Outputs agree with eager to"
            f" {compiled['max_abs_difference']:.1e}. Same run, machine and images as above.",
            "",
        ]
    lines += [
        "## Training: engine overhead",
        "",
    ]
    lines += table(
        ("loop", "s per iteration", "images/s"),
        [
            ("bundle engine (`MedTexTrainer`, config handlers)", train["engine_seconds_per_iteration"])
            + (train["engine_images_per_second"],),
            ("hand-written PyTorch loop", train["loop_seconds_per_iteration"], train["loop_images_per_second"]),
        ],
    )
    lines += [
        f"Engine overhead: **{number(results['engine_overhead'])}** (engine / loop), batch {train['batch_size']},"
        f" median of {train['iterations_timed']} iterations after {train['warmup_iterations']} warm-up. Both run the"
        " same computation (teacher pass under `torch.inference_mode` with hooked features, explainer + student,"
        " the teacher on the masked image for the fidelity term, the config's `MedTexLoss`, backward, AdamW step) on"
        " the same pre-built batches, so data loading is excluded, and they alternate iteration by iteration so that"
        " both see the same machine load. The engine's time includes its events, handlers (metrics, TensorBoard,"
        " progress bar) and decollation; validation is off for the timed epoch."
        f" Teacher passes in bfloat16: {yes_no(train['teacher_bf16'])}; AMP: {yes_no(train['amp'])}.",
        "",
    ]
    if "precompute_teacher" in results:  # absent from JSON files written before the option
        pre, kd = results["precompute_teacher"], results["precompute_teacher_without_fidelity"]
        lines += ["### Precomputed teacher outputs (`configs/precompute_teacher.yaml`)", ""]
        lines += table(
            ("s per engine iteration", "teacher's clean pass every iteration", "its outputs cached", "speedup"),
            [
                (
                    "MED-TEX (config defaults: fidelity term on)",
                    pre["online_seconds_per_iteration"],
                    pre["precomputed_seconds_per_iteration"],
                    results["precompute_teacher_speedup"],
                ),
                (
                    "fidelity weight 0 (as the KD and VID baselines)",
                    kd["online_seconds_per_iteration"],
                    kd["precomputed_seconds_per_iteration"],
                    results["precompute_teacher_speedup_without_fidelity"],
                ),
            ],
        )
        lines += [
            f"Batch {pre['batch_size']}, the same engine and batches, the two kinds alternating in one run (medians"
            " after the warm-up). With augmentation off (`augmentation: []`, `cache_rate: 1.0`) the teacher's"
            " logits and VID features are computed once per image while the data set is cached (kept in"
            f" {pre['stored_dtype']}, the teacher's own precision); the teacher's pass on the masked image (fidelity"
            " term) stays in every iteration when that term is on. Augmentation off is a different training"
            " recipe: what it does to accuracy is not measured here.",
            "",
        ]
    ctrain = results.get("compiled_training")
    if ctrain:
        lines += ["### Option: `torch.compile` for training (`compile: true` in configs/train.yaml)", ""]
        lines += table(
            ("s per MED-TEX iteration", "eager", "compiled", "speedup"),
            [
                (
                    f"batch {ctrain['batch_size']}",
                    ctrain["eager_seconds_per_iteration"],
                    ctrain["compiled_seconds_per_iteration"],
                    ctrain["speedup"],
                )
            ],
        )
        even = ctrain["break_even_iterations"]
        lines += [
            f"Compiled ({ctrain['backend']}): {ctrain['compiled_modules']} (`bundle.engines.trainer.MedTexTrainer`)."
            " The first compiled iteration (inductor's cache empty) took"
            f" {number(ctrain['compile_seconds'])} s, so compiling"
            f" {'pays after ' + number(even) + ' iterations' if even else 'never pays (no faster)'}. The two trainers"
            " start from the same"
            " weights and see the same batches, their iterations interleaved (medians after the warm-up); the first"
            f" iteration's losses differ by at most {ctrain['max_loss_difference']:.1e}. Same run and machine.",
            "",
        ]
    lines += training_throughput_markdown(results.get("training_throughput"))
    lines += [
        "## Data loading",
        "",
    ]
    lines += table(
        ("pipeline", "images/s"),
        [
            ("decode PNG (`LoadMedicalImage`)", data["decode_png_images_per_second"]),
            ("decode DICOM, same pixels (`LoadMedicalImage`)", data["decode_dicom_images_per_second"]),
            ("training transforms, uncached, from PNG", data["uncached_png_images_per_second"]),
            ("training transforms, uncached, from DICOM", data["uncached_dicom_images_per_second"]),
            ("training transforms, cached (augmentation only)", data["cached_images_per_second"]),
            (f"cached training loader, {data['loader_num_workers']} worker(s)", data["loader_images_per_second"]),
        ]
        + (
            [("MONAI `ThreadDataLoader`, same data set, background thread", data["thread_loader_images_per_second"])]
            if "thread_loader_images_per_second" in data  # absent from JSON files written before it was measured
            else []
        )
        + [
            ("one training iteration consumes (engine)", train["engine_images_per_second"]),
        ],
    )
    lines += [
        f"Loader headroom: **{number(results['loader_headroom'])}x** (loader images/s / images/s one training"
        f" iteration consumes). Cached vs uncached (PNG): {number(data['cached_speedup_vs_uncached_png'])}x."
        f" Demo images are {data['source_image_size']} px; decoding and transforms run in the main process, one image"
        f" at a time ({data['files_decoded']} files); the loader rate is whole epochs of"
        f" {data['loader_images_per_epoch']} images (the {data['files_decoded']} files repeated), worker start-up"
        " included. On a CPU the loader workers and"
        " training share the same cores.",
        "",
        "## Memory",
        "",
    ]
    memory = (
        ("training (engine and loop, interleaved)", train["memory"]),
        (f"inference, teacher (batch {s['batch_size']})", inf["teacher"]["memory"]),
        (f"inference, explainer + student (batch {s['batch_size']})", inf["medtex"]["memory"]),
    )
    lines += table(
        ("phase", "peak (MiB)", "at phase start (MiB)", "increase (MiB)"),
        [(label, r["peak_mib"], r["start_mib"], r["increase_mib"]) for label, r in memory],
    )
    lines += [f"Measured: {train['memory']['what']}.", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


# --------------------------------------------------------------------------------------------------- main


def run(settings: Settings, work: Path) -> dict[str, Any]:
    """Every measurement in one process; returns the JSON document."""
    device = torch.device("cuda:0" if settings.device == "cuda" else "cpu")
    say(f"demo data: {settings.n_train} fundus images at {settings.image_size} px in {work}")
    datalist = generate_demo_data("fundus", work / "data", settings.n_train, 2, 0, size=settings.image_size)
    # the training list repeats the files up to an epoch of loader_images entries (the demo's MED-TEX epoch has 300
    # images): a loader epoch of a few batches would time little more than the workers' start-up
    files = datalist["training"]
    datalist["training"] = [dict(files[i % len(files)]) for i in range(settings.loader_images)]
    save_datalist(work / "data" / "datalist.json", datalist)
    teacher_ckpt = work / "teacher.pt"
    parser = load_config(settings, work, teacher_ckpt, "inference")
    teacher_net = parser.get_parsed_content("teacher_def")
    torch.save(teacher_net.state_dict(), teacher_ckpt)
    memory_format = parser.get_parsed_content("memory_format")
    teacher = FrozenTeacher(teacher_ckpt, network=teacher_net.to(memory_format=memory_format)).to(device).network
    network = parser.get_parsed_content("network").eval()
    preprocessing = parser.get_parsed_content("preprocessing")
    items = load_datalist(parser.get_parsed_content("datalist"), "training")[: settings.n_train]
    images = torch.stack([plain(preprocessing(dict(item))["image"]).float() for item in items]).to(device)

    say("saliency")
    saliency = bench_saliency(settings, images, network, teacher, parser.get_parsed_content("task"))
    say("inference")
    inference = bench_inference(settings, images, network, teacher)
    norms = bench_explainer_norms(settings, images, network)
    compiled = None
    if settings.compile:
        say("inference under torch.compile")
        compiled = bench_compiled_inference(settings, images, network, inference["medtex"])
    other_scale = None
    if settings.other_explainer_scale:
        say(f"explainer scale {settings.other_explainer_scale}")
        other_parser = load_config(
            dataclasses.replace(settings, explainer_scale=settings.other_explainer_scale), work, teacher_ckpt, "other"
        )
        other_network = other_parser.get_parsed_content("network").eval()
        maps = {n: r["maps_per_second"] for n, r in saliency.items()}
        other_scale = bench_other_scale(settings, images, other_network, teacher, maps)
        del other_network, other_parser
    other_students = []
    for student_config in settings.student_configs:
        say(f"student of {student_config}")
        student_parser = load_config(settings, work, teacher_ckpt, "student", overlay=student_config)
        student_network = student_parser.get_parsed_content("network").eval()
        other_students.append(bench_other_student(settings, images, student_network, teacher, student_config))
        del student_network, student_parser
    del teacher, network, parser
    gc.collect()

    say("training workflow from configs/train.yaml (initialize: builds the trainer, caches the data set)")
    parser = load_config(settings, work, teacher_ckpt, "training")
    parser.get_parsed_content("initialize")
    say("data loading")
    loading = bench_data_loading(settings, parser, work)
    say("training")
    batches = training_batches(settings, parser)
    training = bench_training(settings, parser, batches)
    say("training with precomputed teacher outputs")
    precomputed = bench_precomputed_teacher(settings, parser, batches)
    precomputed_kd = bench_precomputed_teacher(settings, parser, batches, fidelity=False)
    del parser
    gc.collect()
    say(
        "training images per second: the teacher's own training and MED-TEX's"
        + (", AMP and fp32" if device.type == "cuda" else "")
    )
    training_precision = bench_training_precision(settings, work, teacher_ckpt)
    compiled_training = None
    if settings.compile:
        say("training under torch.compile")
        compiled_training = bench_compiled_training(settings, work, teacher_ckpt, batches)

    # what every figure was measured with (the machine is recorded once, in "machine")
    context = {"image_size": settings.image_size, "threads": torch.get_num_threads(), "device": str(device)}
    for record in (*saliency.values(), *inference.values(), training, precomputed, precomputed_kd, loading):
        record.update(context)
    # the saliency map is the explainer's mask: its rate is the target's; explain (mask + prediction) beside it
    results: dict[str, Any] = {
        f"saliency_speedup_vs_{name}": saliency["explainer"]["maps_per_second"] / saliency[name]["maps_per_second"]
        for name in POSTHOC
    }
    for name in POSTHOC:
        results[f"explain_speedup_vs_{name}"] = (
            saliency["medtex"]["maps_per_second"] / saliency[name]["maps_per_second"]
        )
    results["saliency"] = {name: r["maps_per_second"] for name, r in saliency.items()}
    results["saliency_details"] = saliency
    teacher_latency, student_latency = (inference[n]["latency_ms_batch1"] for n in ("teacher", "medtex"))
    results["student_speedup_vs_teacher"] = teacher_latency / student_latency
    results["student_throughput_speedup_vs_teacher"] = (
        inference["medtex"]["throughput_images_per_second"] / inference["teacher"]["throughput_images_per_second"]
    )
    results["teacher_latency_ms_batch1"] = teacher_latency
    results["student_latency_ms_batch1"] = student_latency
    results["teacher_throughput_images_per_second"] = inference["teacher"]["throughput_images_per_second"]
    results["student_throughput_images_per_second"] = inference["medtex"]["throughput_images_per_second"]
    results["teacher_params"] = inference["teacher"]["parameters"]
    results["student_params"] = inference["medtex"]["parameters"]
    results["inference"] = inference
    results["engine_overhead"] = training["engine_seconds_per_iteration"] / training["loop_seconds_per_iteration"]
    results["training"] = training
    results["precompute_teacher_speedup"] = (
        precomputed["online_seconds_per_iteration"] / precomputed["precomputed_seconds_per_iteration"]
    )
    results["precompute_teacher"] = precomputed
    results["precompute_teacher_speedup_without_fidelity"] = (
        precomputed_kd["online_seconds_per_iteration"] / precomputed_kd["precomputed_seconds_per_iteration"]
    )
    results["precompute_teacher_without_fidelity"] = precomputed_kd
    results["loader_headroom"] = loading["loader_images_per_second"] / training["engine_images_per_second"]
    training_precision.update(context)
    results["training_throughput"] = training_precision
    results["loading"] = loading
    results["memory"] = {
        "training_peak_mib": training["memory"]["peak_mib"],
        "inference_teacher_peak_mib": inference["teacher"]["memory"]["peak_mib"],
        "inference_student_peak_mib": inference["medtex"]["memory"]["peak_mib"],
        "what": training["memory"]["what"],
    }
    if norms is not None:
        norms.update(context)
        results["explainer_norms"] = norms
    if other_scale is not None:
        other_scale.update(context)
        results["other_explainer_scale"] = other_scale
    if other_students:
        for other_student in other_students:
            other_student.update(context)
        results["other_students"] = other_students
    if compiled is not None:
        compiled.update(context)
        results["compiled_inference"] = compiled
    if compiled_training is not None:
        compiled_training.update(context)
        results["compiled_training"] = compiled_training
    results["targets"] = check_targets(results)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    _CLOCK["start"] = time.perf_counter()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = make_settings(args, argv)
    device = torch.device("cuda:0" if settings.device == "cuda" else "cpu")
    with tempfile.TemporaryDirectory(prefix="medtex-benchmark-") as tmp:
        # an empty inductor cache: compile times are those of a first run, not of kernels cached by earlier ones;
        # the caller's setting comes back afterwards (tests call main in a process that goes on)
        with mock.patch.dict(os.environ, {"TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor_cache")}):
            results = run(settings, Path(tmp))
    results["machine"] = machine_info(device)
    results["settings"] = asdict(settings)
    results["created"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results["wall_seconds"] = time.perf_counter() - _CLOCK["start"]
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
