"""Scale benchmark: how the caching pass, memory and epoch time grow with the data set, per cache mode.

    python scripts/benchmark_scale.py [--sizes 1000 5000 20000] [--image-size 224] [--modes none memory disk]
        [--dicom 200 --dicom-side 2048] [--epochs 2] [--num-workers 2] [--workdir out/scale]
        [--training-json docs/results/benchmark_cpu.json] [--json FILE] [--md FILE] [--png FILE]
    python scripts/benchmark_scale.py --from-json docs/results/scale_cpu.json --md FILE [--png FILE]

For each N, N synthetic 8-bit JPEG images of ``--image-size`` px are written to ``--workdir`` (kept and reused),
then for each cache mode a fresh process builds configs/train.yaml's training data set (the caching pass) and
iterates its loader (augmentation included, no network) for ``--epochs`` epochs; ``disk`` runs twice on one cache
folder, the second (``disk_warm``) as a later run finding the cache filled. The peak proportional memory (PSS) of
each run's process tree, its DataLoader workers included, is sampled a few times a second. ``--dicom`` adds a set
of 16-bit DICOM files of ``--dicom-side`` px (through configs/datasets/demo_cxr.yaml's settings), where decoding
dominates.

The loader's images/s are set against the training images/s of the teacher and of MED-TEX that
``scripts/benchmark.py`` measured at the same image size (``--training-json``; its machine is recorded beside), and
an epoch's time is extrapolated as N / min(loader, training) images/s. Writes JSON (``--json``), a markdown report
(``--md``) and a plot of memory and epoch time against N (``--png``); nothing into docs/ unless asked.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.provenance import command_line, git_commit, machine_info, portable_path  # noqa: E402
from scripts.benchmarking import scale  # noqa: E402

MODES = ("none", "memory", "disk")
# Public data sets (docs/DATA.md): training images as distributed, channels the dataset override reads, 8-bit sources
PUBLIC_SETS = (
    ("CheXpert-v1.0-small, train", 223414, 1),
    ("ChestX-ray14", 112120, 1),
    ("EyePACS (train + test)", 88702, 3),
    ("APTOS 2019, train", 3662, 3),
)
SERVER_BUDGET_GB = 64  # half the memory of a large training server
CHOSEN = {
    "Dataset": "none",
    "CacheDataset": "memory",
    "TrimmingCacheDataset": "memory",
    "ContentKeyedPersistentDataset": "disk",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--dicom", type=int, default=200, help="16-bit DICOM files (0: none)")
    parser.add_argument("--dicom-side", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workdir", type=Path, default=ROOT / "out" / "scale")
    parser.add_argument("--training-json", type=Path, default=ROOT / "docs" / "results" / "benchmark_cpu.json")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--md", type=Path, default=None)
    parser.add_argument("--png", type=Path, default=None)
    parser.add_argument("--from-json", type=Path, default=None, help="render --md/--png from a JSON, measure nothing")
    return parser.parse_args(argv)


def measure_set(args: argparse.Namespace, name: str, folder: Path, n: int, configs: list[str]) -> list[dict]:
    runs = []
    common = {
        "dataset_dir": str(folder),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
    }
    cache_dir = args.workdir / "cache" / f"{name}_{n}"
    for mode in args.modes:
        repeats = ["disk", "disk_warm"] if mode == "disk" else [mode]
        if mode == "disk":
            shutil.rmtree(cache_dir, ignore_errors=True)
        for label in repeats:
            overrides = {**common, "cache": mode, "cache_dir": str(cache_dir)}
            scale_run = scale.run_mode(Path(__file__), configs, overrides, args.epochs)
            run = {"set": name, "cache": label, **scale.summarise(scale_run, n, args.num_workers)}
            print(
                f"[scale] {name} N={n} {label}: caching pass {run['build_s']:.1f} s, epochs "
                + ", ".join(f"{s:.1f}" for s in run["epoch_s"])
                + f" s, {run['loader_images_per_s']:.0f} images/s, peak PSS {run['peak_pss_mib']:.0f} MiB",
                flush=True,
            )
            runs.append(run)
    return runs


def training_rates(path: Path) -> dict[str, Any]:
    """Training images/s of teacher and MED-TEX from a scripts/benchmark.py JSON, with its machine and settings."""
    if not path or not path.is_file():
        return {}
    record = json.loads(path.read_text())
    throughput = record.get("training_throughput") or {}
    return {
        "source": portable_path(path),
        "image_size": record["settings"]["image_size"],
        "batch_size": record["settings"]["batch_size"],
        "device_name": record["machine"]["device_name"],
        "teacher_images_per_s": throughput.get("teacher", {}).get("default", {}).get("images_per_second"),
        "medtex_images_per_s": throughput.get("medtex", {}).get("default", {}).get("images_per_second"),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import psutil
    import torch

    start = time.perf_counter()
    runs = []
    for n in args.sizes:
        folder = scale.write_jpeg_set(args.workdir / f"jpeg_{args.image_size}_{n}", n, args.image_size)
        runs += measure_set(args, "jpeg", folder, n, ["configs/train.yaml"])
    if args.dicom:
        folder = scale.write_dicom_set(
            args.workdir / f"dicom_{args.dicom_side}_{args.dicom}", args.dicom, args.dicom_side
        )
        configs = ["configs/train.yaml", "configs/datasets/demo_cxr.yaml"]
        runs += measure_set(args, f"dicom{args.dicom_side}", folder, args.dicom, configs)
    settings = {k: (portable_path(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "from_json"}
    return {
        "runs": runs,
        "training": training_rates(args.training_json),
        "settings": settings,
        "machine": {**machine_info(torch.device("cpu")), "memory_available_bytes": psutil.virtual_memory().available},
        "command": command_line(["python", "scripts/benchmark_scale.py", *sys.argv[1:]]),
        "git_commit": git_commit(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - start,
    }


def _runs(results: dict[str, Any], name: str, cache: str) -> dict[int, dict]:
    return {r["n"]: r for r in results["runs"] if r["set"] == name and r["cache"] == cache}


def goals(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(goal, measured, met) rows for the issue's goals, from the JPEG runs."""
    rows = []
    disk, memory = _runs(results, "jpeg", "disk_warm"), _runs(results, "jpeg", "memory")
    if len(disk) > 1:
        low, high = min(disk), max(disk)
        growth = disk[high]["peak_pss_mib"] / disk[low]["peak_pss_mib"]
        rows.append(
            (
                f"peak memory flat in N with the disk cache (N {low} -> {high})",
                f"{disk[low]['peak_pss_mib']:.0f} -> {disk[high]['peak_pss_mib']:.0f} MiB ({growth:.2f}x)",
                "yes" if growth <= 1.25 else "no",
            )
        )
    for n in sorted(set(disk) & set(memory)):
        ratio = disk[n]["epoch_s"][-1] / memory[n]["epoch_s"][-1]
        rows.append(
            (
                f"epoch {len(disk[n]['epoch_s'])} on disk within 1.2x of memory, N {n}",
                f"{ratio:.2f}x",
                _yes(ratio <= 1.2),
            )
        )
    training = results.get("training") or {}
    for n, run in sorted(disk.items()):
        for who in ("teacher", "medtex"):
            rate = training.get(f"{who}_images_per_s")
            if rate:
                rows.append(
                    (
                        f"loader (disk cache) keeps {who} training busy, N {n}",
                        f"{run['loader_images_per_s']:.0f} vs {rate:.1f} images/s",
                        _yes(run["loader_images_per_s"] >= rate),
                    )
                )
    return rows


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def recipe_rows(results: dict[str, Any]) -> list[str]:
    """What ``cache: auto`` picks for the public data sets at this benchmark's image size: the cached item's size
    from the measured RGB item (its pixels at one byte each, plus the measured rest), against half this machine's
    available memory and a server's budget; the MED-TEX epoch extrapolated from the recorded training images/s."""
    rgb = [r for r in results["runs"] if r["set"] == "jpeg" and r.get("item_bytes")]
    if not rgb:
        return []
    side = results["settings"]["image_size"]
    overhead = rgb[0]["item_bytes"] - 3 * side * side
    machine_budget = 0.5 * results["machine"].get("memory_available_bytes", 0)
    training = results.get("training") or {}
    rate = training.get("medtex_images_per_s") if training.get("image_size") == side else None
    lines = [
        "",
        f"What `cache: auto` picks at {side} px (cached item: measured on the RGB set, pixels at one byte each plus "
        f"the measured rest), with half of this machine's available memory ({machine_budget / 1e9:.1f} GB) and with "
        f"a {SERVER_BUDGET_GB} GB budget; MED-TEX epoch extrapolated from the training images/s above:",
        "",
        f"| data set | images | channels | cache size | auto here | auto, {SERVER_BUDGET_GB} GB | MED-TEX epoch here |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    for name, images, channels in PUBLIC_SETS:
        size = images * (channels * side * side + overhead)
        here = "memory" if size <= machine_budget else "disk"
        server = "memory" if size <= SERVER_BUDGET_GB * 1e9 else "disk"
        epoch = f"{images / rate / 3600:.1f} h" if rate else "n/a"
        lines.append(f"| {name} | {images} | {channels} | {size / 1e9:.1f} GB | {here} | {server} | {epoch} |")
    return lines


def write_markdown(path: Path, results: dict[str, Any]) -> None:
    s, m = results["settings"], results["machine"]
    lines = [
        "<!-- generated by scripts/benchmark_scale.py; edit the script, not this file -->",
        f"Machine: {m['device_name']}, {m['usable_cores']} usable cores; torch {m['torch']}, MONAI {m['monai']}. "
        f"Loader: batch {s['batch_size']}, {s['num_workers']} workers, augmentation on, {s['image_size']} px; "
        f"commit {results['git_commit']}, `{results['command']}`.",
        "",
        "| set | N | cache | chosen | caching pass s | epoch s | loader images/s | per worker | peak PSS MiB |",
        "|---|---:|---|---|---:|---|---:|---:|---:|",
    ]
    for r in results["runs"]:
        lines.append(
            f"| {r['set']} | {r['n']} | {r['cache']} | {CHOSEN.get(r['mode'], r['mode'])} | {r['build_s']:.1f} | "
            + " / ".join(f"{e:.1f}" for e in r["epoch_s"])
            + f" | {r['loader_images_per_s']:.0f} | {r['loader_images_per_s_per_worker']:.0f}"
            + f" | {r['peak_pss_mib']:.0f} |"
        )
    training = results.get("training") or {}
    if training.get("medtex_images_per_s") and training["image_size"] == s["image_size"]:
        lines += [
            "",
            f"Training images/s from `{training['source']}` ({training['device_name']}, {training['image_size']} px, "
            f"batch {training['batch_size']}): teacher {training['teacher_images_per_s']:.1f}, MED-TEX "
            f"{training['medtex_images_per_s']:.1f}. Epoch time extrapolated as N / min(loader, training):",
            "",
            "| N | MED-TEX epoch (extrapolated) |",
            "|---:|---:|",
        ]
        for n in (20000, 100000):
            lines.append(f"| {n} | {n / training['medtex_images_per_s'] / 3600:.1f} h |")
    lines += recipe_rows(results)
    rows = goals(results)
    if rows:
        lines += ["", "| goal | measured | met |", "|---|---|---|"] + [f"| {g} | {v} | {ok} |" for g, v, ok in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def write_plot(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (memory_axis, time_axis) = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for cache in ("none", "memory", "disk", "disk_warm"):
        runs = _runs(results, "jpeg", cache)
        if not runs:
            continue
        ns = sorted(runs)
        memory_axis.plot(ns, [runs[n]["peak_pss_mib"] / 1024 for n in ns], marker="o", label=cache)
        time_axis.plot(ns, [runs[n]["epoch_s"][-1] for n in ns], marker="o", label=cache)
    s = results["settings"]
    for axis, label in ((memory_axis, "peak memory (PSS, GiB)"), (time_axis, f"epoch {s['epochs']} time (s)")):
        axis.set_xscale("log")
        axis.set_xlabel(f"images ({s['image_size']} px JPEG)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    memory_axis.set_title("Memory of the training loader by cache mode")
    time_axis.set_title(f"Loader epoch, {s['num_workers']} workers, no network")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        scale.child_main(argv[1:])
        return
    args = parse_args(argv)
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        results = measure(args)
        out = args.json or args.workdir / "scale.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"[scale] results written to {out}")
    if args.md:
        write_markdown(args.md, results)
        print(f"[scale] report written to {args.md}")
    if args.png:
        write_plot(args.png, results)
        print(f"[scale] plot written to {args.png}")


if __name__ == "__main__":
    main()
