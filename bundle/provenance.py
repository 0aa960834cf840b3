"""Provenance of a measurement: the machine, the code and the command that made it, in one place for every script
that writes results (benchmark, learning curves, demo difficulty), so that they describe a machine the same way.

Paths are written relative to the bundle's root when they lie inside it (:func:`portable_path`): committed result
files must not name the folders of the machine that made them.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # the bundle's root: configs/, docs/, scripts/ beside bundle/


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo gives it, else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def cpu_capability() -> str:
    """The vector instructions torch's CPU kernels use here (``AVX512``, ``AVX2``, ``DEFAULT``...). Two machines with
    the same CPU name can differ in it, and then fixed seeds no longer train bit-identical weights: other kernels
    round differently."""
    import torch

    return torch.backends.cpu.get_cpu_capability()


def cpu_id() -> str | None:
    """An x86 CPU's family, model and stepping from /proc/cpuinfo (None elsewhere): a virtual machine's model name can
    be a bare "AMD EPYC", which names CPUs of several generations."""
    fields = {}
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("cpu family", "model", "stepping") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip() and fields:  # the first processor's block is enough
                    break
    if "cpu family" not in fields:
        return None
    return f"family {fields['cpu family']} model {fields.get('model', '?')} stepping {fields.get('stepping', '?')}"


def usable_cores() -> int | None:
    """Cores this process may run on (its affinity), which can be fewer than the machine has."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def device_name() -> str:
    """The GPU the bundle's runs use (the configs pick CUDA when there is one), else the CPU model, its cores and the
    vector instructions torch uses on it (``cpu_capability``)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{cpu_name()}, {os.cpu_count()} cores, {cpu_capability()}"


def package_version(module: str) -> str | None:
    """``module.__version__``, or None where it is not installed."""
    try:
        return __import__(module).__version__
    except ImportError:
        return None


# The libraries a training run's numbers depend on: torch's kernels, and numpy, scipy and Pillow, which make the demo
# and generic data (a changed rounding in one of them moves pixels, and then every weight trained on them).
NUMERICS_PACKAGES = ("torch", "numpy", "scipy", "PIL", "monai")


def numerics_record() -> dict[str, Any]:
    """What decides whether fixed seeds retrain bit-identical weights here: the CPU (name, family/model/stepping, the
    vector instructions torch uses), torch's threads and the versions of :data:`NUMERICS_PACKAGES`; a GPU's name
    where the runs use one. Two machines with different records may still agree; two that agree are expected to."""
    import torch

    record: dict[str, Any] = {
        "cpu": cpu_name(),
        "cpu_id": cpu_id(),
        "cpu_capability": cpu_capability(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        record["gpu"] = torch.cuda.get_device_name(0)
    return record | {name: package_version(name) for name in NUMERICS_PACKAGES}


def numerics_differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``key: before there, now here`` for every entry of two :func:`numerics_record` results that differs."""
    return [
        f"{key}: {before.get(key)!r} there, {now.get(key)!r} here"
        for key in dict.fromkeys([*before, *now])
        if before.get(key) != now.get(key)
    ]


def git_commit(root: str | os.PathLike = ROOT) -> str | None:
    """The commit checked out at ``root``, marked when the work tree has uncommitted changes; None without git."""
    if shutil.which("git") is None:
        return None
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout.strip()
    return result.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def portable_path(path: str | os.PathLike, root: str | os.PathLike = ROOT) -> str:
    """A path as committed result files hold it: relative to ``root`` when inside it (``.`` for the root itself),
    else absolute."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    return str(resolved.relative_to(base)) if resolved.is_relative_to(base) else str(resolved)


def command_line(command: Sequence[str]) -> str:
    """Shell form of a command; double quotes where they read better than shlex's (config lists)."""
    safe = set('"$`\\')
    return " ".join(f'"{a}"' if shlex.quote(a) != a and not safe.intersection(a) else shlex.quote(a) for a in command)


def machine_info(device: Any, bf16_native: bool | None = None) -> dict[str, Any]:
    """What a timing depends on: CPU, cores and threads, the device, library versions and the platform.

    ``device`` is a ``torch.device``; ``bf16_native`` (whether the device computes bfloat16 natively) is passed in by
    the caller, which knows how the bundle decides it.
    """
    import monai
    import torch

    cpu = cpu_name()
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "bf16_native": bf16_native,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_capability": cpu_capability(),
    }
