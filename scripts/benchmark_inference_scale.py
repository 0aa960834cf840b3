"""Inference on a large folder through the bundle CLI: images/s, memory as the files are done, resuming after a kill.

    python scripts/benchmark_inference_scale.py [--n 10000] [--image-size 64] [--batch-size 32] [--num-workers 2] \
        [--kill-after 0.5] [--json out/inference_scale.json] [--md FILE] [--workdir DIR]

Writes ``--n`` random PNG images and a randomly initialised explainer + student, runs
``python -m monai.bundle run inference --config_file configs/inference.yaml`` on the folder as a subprocess
(``scripts/benchmarking/inference_scale.py`` says what is measured and how), and prints one line per figure.
Writes the JSON (``--json``) and, only when asked, a markdown table (``--md``; docs/results/inference_scale_cpu.md
for the docs). ``--from-json FILE --md OUT`` rewrites the table of a committed run without measuring.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.files import write_atomically  # noqa: E402
from bundle.provenance import command_line, git_commit, machine_info, portable_path  # noqa: E402

FIGURES = [
    ("wall_seconds", "wall seconds of the uninterrupted run (start-up included)"),
    ("images_per_s", "images/s over the whole command"),
    ("images_per_s_while_writing", "images/s from 10 % to 90 % of the files done"),
    ("peak_pss_mib", "peak PSS of the process tree, MiB"),
]
RESUME_FIGURES = [
    ("files_done_when_killed", "files in predictions.csv when SIGKILL came"),
    ("files_predicted_by_restart", "files the restarted run predicted"),
    ("files_predicted_again", "finished files predicted again after the restart"),
    ("rows_in_predictions_csv", "rows in the final predictions.csv"),
    ("each_file_once", "every file listed exactly once"),
    ("same_values_as_uninterrupted", "same probabilities and labels as the uninterrupted run"),
]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10000, help="images in the folder (10000)")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels, also the network's (64)")
    parser.add_argument("--batch-size", type=int, default=32, help="(32, the config's)")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers (2, the config's)")
    parser.add_argument("--kill-after", type=float, default=0.5, help="fraction of files done when killed (0.5)")
    parser.add_argument(
        "--json", type=Path, default=ROOT / "out" / "inference_scale.json", help="(out/inference_scale.json)"
    )
    parser.add_argument("--md", type=Path, help="markdown table, written only when asked")
    parser.add_argument("--workdir", type=Path, help="images and outputs (default: a temporary folder, removed)")
    parser.add_argument("--from-json", type=Path, help="measure nothing: write the --md table of this JSON")
    args = parser.parse_args(argv)
    if args.from_json is not None and args.md is None:
        parser.error("--from-json writes a markdown table: give --md FILE")
    if args.n < 10:
        parser.error("--n must be at least 10")
    if args.image_size < 16 or args.batch_size < 1 or args.num_workers < 0:
        parser.error("--image-size must be at least 16, --batch-size positive, --num-workers not negative")
    if not 0.0 < args.kill_after < 1.0:
        parser.error("--kill-after must be between 0 and 1")
    return args


def markdown(result: dict[str, Any]) -> str:
    """The table of one run, from its JSON alone."""
    m = result["machine"]
    lines = [
        "# Inference on a large folder, CPU",
        "",
        f"{m['cpu']}, {m['usable_cores']} usable cores, torch {m['torch']} ({m['torch_threads']} threads), MONAI "
        f"{m['monai']}. `{result['command']}` (commit {result['git_commit']}, {result['created']}): "
        f"{result['n_images']} random PNG images of {result['image_size']} px, default explainer + student at "
        f"{result['image_size']} px (random weights), batch {result['batch_size']}, {result['num_workers']} "
        "DataLoader workers, every output written (predictions, overlay PNG, NIfTI map). Memory: PSS summed over "
        f"the inference process and its workers, sampled every {result.get('sample_seconds', 0.25)} s while it ran. "
        f"Load average (1, 5, 15 min) before the run: {result.get('load_average_before', 'not recorded')}.",
        "",
        "| figure | value |",
        "|---|---:|",
    ]
    for key, label in FIGURES:
        lines.append(f"| {label} | {result[key]} |")
    for mark, pss in result["pss_mib_at_fraction_done"].items():
        lines.append(f"| PSS at {mark} of the files done, MiB | {pss} |")
    lines.append(f"| progress bar with the time left | {result['progress_bar_with_time_left']} |")
    resume = result["resume"]
    lines += [
        "",
        f"Killed with SIGKILL (the whole process group) at {resume['kill_after_fraction']} of the files, then the "
        "same command again:",
        "",
        "| figure | value |",
        "|---|---:|",
    ]
    for key, label in RESUME_FIGURES:
        lines.append(f"| {label} | {resume[key]} |")
    return "\n".join(lines) + "\n"


def summary_lines(result: dict[str, Any]) -> list[str]:
    lines = [f"{label}: {result[key]}" for key, label in FIGURES]
    lines += [f"PSS at {mark} done, MiB: {pss}" for mark, pss in result["pss_mib_at_fraction_done"].items()]
    lines.append(f"progress bar with the time left: {result['progress_bar_with_time_left']}")
    lines += [f"resume: {label}: {result['resume'][key]}" for key, label in RESUME_FIGURES]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(given)
    if args.from_json is not None:
        result = json.loads(args.from_json.read_text())
        write_atomically(args.md, lambda p: p.write_text(markdown(result)))
        print(f"markdown table of {args.from_json}: {args.md.resolve()}")
        return 0
    import torch

    from scripts.benchmarking.inference_scale import measure_streaming_inference

    for flag in ("--json", "--md", "--workdir"):  # committed results name no folder of the machine that made them
        if flag in given and given.index(flag) + 1 < len(given):
            given[given.index(flag) + 1] = portable_path(given[given.index(flag) + 1])
    load_before = [round(v, 2) for v in os.getloadavg()]  # other work on the machine slows the run
    with tempfile.TemporaryDirectory(prefix="medtex-inference-scale-") as tmp:
        workdir = args.workdir or Path(tmp)
        measured = measure_streaming_inference(
            args.n, args.image_size, workdir, args.num_workers, args.batch_size, args.kill_after
        )
    result = {
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line(["python", "scripts/benchmark_inference_scale.py", *given]),
        "git_commit": git_commit(),
        "machine": machine_info(torch.device("cpu")),
        "load_average_before": load_before,
        **measured,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(args.json, lambda p: p.write_text(json.dumps(result, indent=2) + "\n"))
    if args.md is not None:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(args.md, lambda p: p.write_text(markdown(result)))
    for line in summary_lines(result):
        print(line)
    print(f"JSON: {args.json.resolve()}" + (f"; markdown: {args.md.resolve()}" if args.md else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
