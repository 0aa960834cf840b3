"""Training: the Ignite engine against a hand-written loop, precomputed teacher outputs, AMP, torch.compile."""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser

from bundle.engines.precompute import TEACHER_FEATURES, TEACHER_LOGITS  # noqa: E402
from bundle.engines.trainer import loss_terms  # noqa: E402
from bundle.networks.features import FeatureRecorder  # noqa: E402
from bundle.networks.teacher import native_bf16  # noqa: E402

from .fixtures import load_config
from .settings import CONFIG, TEACHER_CONFIG, Settings
from .timing import PeakMemory, say, synchronize


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
