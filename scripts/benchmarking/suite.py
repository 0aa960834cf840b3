"""Every measurement in one process, in order, and the JSON document they make (:func:`run`)."""

from __future__ import annotations

import dataclasses
import gc
from pathlib import Path
from typing import Any

import torch
from monai.utils import convert_to_tensor

from bundle.data.datalist import load_datalist, save_datalist  # noqa: E402
from bundle.datasets.demo import generate_demo_data  # noqa: E402
from bundle.networks.teacher import FrozenTeacher  # noqa: E402

from .fixtures import load_config
from .inference import (
    bench_compiled_inference,
    bench_explainer_norms,
    bench_inference,
    bench_other_scale,
    bench_other_student,
    bench_saliency,
)
from .loading import bench_data_loading
from .settings import POSTHOC, TARGETS, Settings
from .timing import say
from .training import (
    bench_compiled_training,
    bench_precomputed_teacher,
    bench_training,
    bench_training_precision,
    training_batches,
)


def check_targets(results: dict[str, Any]) -> dict[str, Any]:
    targets = {}
    for key, comparison, target in TARGETS:
        value = results[key]
        met = value >= target if comparison == ">=" else value <= target
        targets[key] = {"value": value, "target": f"{comparison} {target:g}", "met": bool(met)}
    return targets


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
    images = torch.stack(
        [convert_to_tensor(preprocessing(dict(item))["image"], track_meta=False).float() for item in items]
    ).to(device)

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
