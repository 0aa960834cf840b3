"""Clocks and memory: medians of repeated timings (interleaved where two things are compared) and peak memory."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

CLOCK = {"start": time.perf_counter()}


def say(message: str) -> None:
    print(f"[benchmark {time.perf_counter() - CLOCK['start']:6.1f} s] {message}", flush=True)


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
    then added up to about a third less than one ``explain`` call (at 224 px on 2 cores).
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
