r"""Pretrain the student's and the teacher's architectures on the generic set: the offline stand-in for ImageNet.

    python scripts/pretrain_generic.py --out models [--in-channels 3] [--n-train 5000] [--n-val 500] \
        [--image-size 64] [--epochs 10] [--networks student teacher] [--seed 0] [--work out/generic_pretraining]

Writes the generic set (``bundle.datasets.demo.generate_generic_data``; docs/DATA.md, "Generic pretraining set") to
``<work>/data``, trains each network with the bundle's own recipes on it (student: configs/train.yaml +
configs/baselines/scratch.yaml; teacher: configs/train_teacher.yaml; ``num_classes`` = the set's classes,
``in_channels`` as the local task will need: the RGB images are turned grey for 1 channel), evaluates each on the
set's validation images, and writes ``<out>/generic_student.pt``, ``<out>/generic_teacher.pt`` and
``<out>/generic_pretraining.json`` (settings, validation accuracy, seconds, SHA-256 and the code version).
configs/baselines/transfer_generic_{student,teacher}.yaml fine-tune them on local labels, their heads left random
(``init_exclude``). Started again, a finished network is kept and a killed one resumes from its last epoch; each
bundle run's output is kept in ``<work>/logs``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.data.datalist import load_datalist, read_datalist_info, save_datalist  # noqa: E402
from bundle.datasets.demo import GENERIC_CLASSES, generate_generic_data  # noqa: E402
from bundle.files import file_sha256  # noqa: E402
from bundle.networks import weights_sha256  # noqa: E402
from bundle.provenance import device_name, git_commit, numerics_record, portable_path  # noqa: E402
from scripts.learning_curves.experiment import config_list, run_bundle  # noqa: E402

RECIPES = {  # network -> the configs it is trained with (the same as the local baselines that start from it)
    "student": ["configs/train.yaml", "configs/baselines/scratch.yaml"],
    "teacher": ["configs/train_teacher.yaml"],
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("models"), help="where the weights go (default models)")
    parser.add_argument(
        "--work", type=Path, default=Path("out/generic_pretraining"), help="data, runs and logs (default %(default)s)"
    )
    parser.add_argument("--in-channels", type=int, default=3, choices=(1, 3), help="the local task's channels (3)")
    parser.add_argument("--networks", nargs="+", default=list(RECIPES), choices=list(RECIPES), help="(both)")
    parser.add_argument("--n-train", type=int, default=5000, help="generic training images (default 5000)")
    parser.add_argument("--n-val", type=int, default=500, help="generic validation images (default 500)")
    parser.add_argument("--image-size", type=int, default=64, help="pixels, data and networks (default 64)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per network (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images and of training (default 0)")
    parser.add_argument("--batch-size", type=int, help="bundle batch_size (default: the configs')")
    parser.add_argument("--num-workers", type=int, help="bundle num_workers (default: the configs')")
    args = parser.parse_args(argv)
    if min(args.n_train, args.n_val) < 1 or args.epochs < 1:
        parser.error("--n-train, --n-val and --epochs must be at least 1")
    return args


def generic_data(args: argparse.Namespace) -> tuple[Path, Path]:
    """The generic set (written once per size and seed) and a datalist whose test split is its validation split."""
    data = args.work / "data" / f"generic_{args.image_size}px_seed{args.seed}_{args.n_train}+{args.n_val}"
    if not (data / "datalist.json").is_file():
        print(f"writing the generic set: {args.n_train} + {args.n_val} images at {args.image_size} px to {data}")
        generate_generic_data(data, args.n_train, args.n_val, size=args.image_size, seed=args.seed, progress=True)
    evaluation = data / "datalist_evaluate.json"
    if not evaluation.is_file():
        source = data / "datalist.json"
        splits = {split: load_datalist(source, split) for split in ("training", "validation")}
        save_datalist(evaluation, {**read_datalist_info(source), **splits, "test": splits["validation"]})
    return data, evaluation


def pretrain(args: argparse.Namespace, network: str, data: Path, evaluation: Path) -> dict[str, Any]:
    """Train (unless done) and evaluate one network; its record for generic_pretraining.json."""
    ckpt = args.out / f"generic_{network}.pt"
    # one run folder per data set and channels: a run resumes only on the data it started with
    run_dir = args.work / "runs" / f"{network}_{args.in_channels}ch_{data.name}"
    log = args.work / "logs" / f"{network}.log"
    common = ["--dataset_dir", str(data), "--num_classes", str(len(GENERIC_CLASSES))]
    common += ["--in_channels", str(args.in_channels), "--image_size", str(args.image_size), "--preflight", "False"]
    common += ["--seed", str(args.seed)]
    for key in ("batch_size", "num_workers"):
        if getattr(args, key) is not None:
            common += [f"--{key}", str(getattr(args, key))]
    done = run_dir / "pretrain.done.json"
    if not (done.is_file() and ckpt.is_file()):
        print(f"pretraining the {network} ({args.epochs} epochs; log: {log})")
        where = ["--output_dir", str(run_dir), "--ckpt_dir", str(args.out), "--ckpt_name", ckpt.name]
        ok, seconds = run_bundle(
            "training", config_list(RECIPES[network]), log, [*common, *where, "--max_epochs", str(args.epochs)]
        )
        if not ok:
            raise SystemExit(f"the {network}'s pretraining failed: see {log}")
        run_dir.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps({"seconds": round(seconds, 1)}) + "\n")
    eval_dir = args.work / "eval" / run_dir.name
    if not (eval_dir / "metrics.csv").is_file():
        # as scripts/learning_curve.py evaluates them: the student by its training configs, the teacher as teacher_def
        configs = [*RECIPES["student"], "configs/evaluate.yaml"] if network == "student" else []
        configs = configs or ["configs/train.yaml", "configs/evaluate.yaml"]
        overrides = ["--datalist", str(evaluation), "--ckpt_dir", str(args.out), "--ckpt_name", ckpt.name]
        overrides += ["--output_dir", str(eval_dir), "--saliency_metrics", "False"]
        if network == "teacher":
            overrides += ["--network_def", "@teacher_def"]
        if not run_bundle("evaluating", config_list(configs), log, [*common, *overrides])[0]:
            raise SystemExit(f"the {network}'s evaluation failed: see {log}")
    with open(eval_dir / "metrics.csv") as f:
        metrics = {row[0]: row[1] for row in csv.reader(f) if len(row) >= 2}
    return {
        "checkpoint": portable_path(ckpt),
        "sha256": file_sha256(ckpt),  # this file's
        "weights_sha256": weights_sha256(ckpt),  # its weights': the same for the same weights saved again
        "validation_accuracy": round(float(metrics["accuracy"]), 4),
        "validation_auc": round(float(metrics["test_auc"]), 4),
        "train_seconds": json.loads(done.read_text())["seconds"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    data, evaluation = generic_data(args)
    record_path = args.out / "generic_pretraining.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "work", "networks")}
    for network in args.networks:
        result = pretrain(args, network, data, evaluation)
        record[network] = {**result, "settings": settings, "classes": GENERIC_CLASSES}
        record[network].update({"code_version": git_commit() or "unknown", "machine": device_name()})
        record[network]["numerics"] = numerics_record()  # what a retraining must share to give the same weights
        record_path.write_text(json.dumps(record, indent=2) + "\n")
        print(
            f"generic_{network}: validation accuracy {result['validation_accuracy']:.3f} on {args.n_val} generic "
            f"images (chance {1 / len(GENERIC_CLASSES):.3f}), {result['train_seconds']:.0f} s"
        )
    print(
        f"written to {args.out.resolve()}: "
        + ", ".join(f"generic_{n}.pt" for n in args.networks)
        + f", {record_path.name}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
