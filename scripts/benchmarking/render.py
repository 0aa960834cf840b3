"""The markdown report (docs/PERFORMANCE.md's layout) written from a benchmark JSON document alone."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .settings import LATENCY_TARGET, OCCLUSION_MASK_FRACTION, OCCLUSION_OVERLAP, SMOOTHGRAD_SAMPLES


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
