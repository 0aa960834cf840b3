"""Inference and saliency: the explainer's maps against post-hoc methods, explainer + student against the teacher."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from typing import Any

import torch

from bundle.explain import make_saliency  # noqa: E402
from bundle.networks.teacher import count_parameters  # noqa: E402

from .settings import LATENCY_TARGET, MODEL_NAMES, PER_IMAGE, POSTHOC, Settings
from .timing import PeakMemory, median_interleaved_seconds, median_part_seconds, median_seconds, say, synchronize


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

    Timed minutes apart they saw different machine speeds: on a 2-core VM the teacher's latency at batch 1 changed by
    over a quarter between two timings a few minutes apart (docs/RESULTS.md, "Explainer scale").
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
