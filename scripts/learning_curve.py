r"""Learning curves: test AUC against the number of local labels, per method, over several seeds, on demo data.

    python scripts/learning_curve.py --task fundus --sizes 25 50 100 200 --seeds 0 1 2 \
        --methods teacher scratch transfer_student transfer_teacher kd medtex --out out/learning_curve

The teacher's site has ``--n-teacher`` images of ``--teacher-domain``; the local site has a pool of max(sizes)
training images of ``--student-domain`` plus ``--n-unlabeled`` unlabelled ones and fixed validation and test splits.
For each size and seed the labelled set is a seeded, class-stratified subset of the pool and the rest of the pool
becomes unlabelled (bundle.data.splits.select_labeled); methods that use unlabelled images (MED-TEX, KD, VID) see it.
The teacher is trained once (configs/train_teacher.yaml) unless ``--teacher-ckpt`` is given; ``transfer_student``
and ``medtex_from_source`` start from a student trained once on the teacher's data with configs/baselines/scratch.yaml
(``--source-student-ckpt`` gives one instead). Every run is a
``python -m monai.bundle run training`` then ``evaluating`` (configs/evaluate.yaml) subprocess whose log is kept in
``<out>/logs``; a run that fails is reported and the others go on. Methods: ``medtex`` (configs/train.yaml as is),
every ``configs/baselines/<name>.yaml`` by its name, and ``teacher`` (the teacher evaluated on the local test set,
trained on no local labels: a reference line).

Outputs in ``--out``: learning_curve_<task>.csv (one row per finished run), .png (mean +- 1 sd over seeds), .md
(mean, sd and n per method and size; paired differences between methods on the same labelled sets and seeds),
.json (settings and provenance) and report.html (all results in one page).
Started again with the same ``--out``, finished runs are not redone and a run killed half-way resumes from its last
epoch; more sizes (up to the pool), seeds or methods can be added later. ``--jobs N`` trains N runs side by side
(for a GPU or many cores; on 2 CPU cores one at a time is fastest).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.data.datalist import ITEM_LIST_KEYS, load_datalist, read_datalist_info, save_datalist  # noqa: E402
from bundle.data.splits import select_labeled  # noqa: E402
from bundle.datasets.demo import DOMAINS, TASKS, generate_demo_data  # noqa: E402
from bundle.files import file_sha256  # noqa: E402
from bundle.report import write_html_report  # noqa: E402

TEACHER = "teacher"  # evaluated, not trained on local data
MEDTEX = "medtex"  # configs/train.yaml without overrides
FROM_SOURCE = ("transfer_student", "medtex_from_source")  # start from the student trained on the teacher's data
WITHOUT_TEACHER = ("scratch", "transfer_student")  # trained on local labels alone
DATASET_CONFIGS = {"fundus": [], "cxr": ["configs/datasets/demo_cxr.yaml"]}
COLUMNS = [
    "task",
    "method",
    "n_labeled",
    "n_unlabeled",
    "seed",
    "auc",
    "accuracy",
    "kappa",
    "teacher_domain",
    "student_domain",
    "image_size",
    "epochs",
    "train_seconds",
    "finished",
]
KEY = ("task", "method", "n_labeled", "seed", "teacher_domain", "student_domain")
# (method, compared with): the questions the curves answer; a pair is reported where both were run on the same
# labelled sets and seeds, so that the seed-to-seed spread of the data split cancels out
PAIRS = (
    ("medtex", "scratch"),
    ("kd", "scratch"),
    ("medtex", "kd"),
    ("medtex", "transfer_student"),
    ("medtex_from_source", "transfer_student"),
    ("medtex_from_source", "medtex"),
)
METRICS = ("auc", "accuracy", "kappa")
# settings that must not change between invocations on the same --out (they change what a finished run means)
FIXED = (
    "task",
    "teacher_domain",
    "student_domain",
    "image_size",
    "epochs",
    "teacher_epochs",
    "n_teacher",
    "n_unlabeled",
    "n_val",
    "n_test",
    "data_seed",
    "teacher_ckpt",
    "source_student_ckpt",
    "overrides",
)


def available_methods() -> dict[str, list[str]]:
    """Method name -> the configs stacked on configs/train.yaml (``teacher`` is evaluated only)."""
    baselines = sorted((ROOT / "configs" / "baselines").glob("*.yaml"))
    return {MEDTEX: [], **{p.stem: [f"configs/baselines/{p.name}"] for p in baselines}, TEACHER: []}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    methods = available_methods()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="fundus", choices=TASKS, help="demo task (default fundus)")
    parser.add_argument(
        "--sizes", nargs="+", type=int, default=[25, 50, 100, 200], help="labelled-set sizes (default 25 50 100 200)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=[TEACHER, "scratch", "transfer_student", "transfer_teacher", "kd", MEDTEX],
        choices=list(methods),
        metavar="METHOD",
        help=f"any of {', '.join(methods)} (default: %(default)s)",
    )
    parser.add_argument(
        "--method-config",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "FILES"),
        help="a method of your own, run beside --methods: config files (comma-separated) stacked on train.yaml and"
        " the task's dataset override, e.g. --method-config medtex_foreign out/foreign/teacher_state_dict.yaml; where"
        " they set teacher_ckpt or teacher_bundle, the method keeps that teacher (repeatable)",
    )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0, 1, 2],
        help="seeds of the labelled subsets and training (default 0 1 2)",
    )
    parser.add_argument(
        "--teacher-domain", default="A", choices=DOMAINS, help="domain of the teacher's data (default A)"
    )
    parser.add_argument(
        "--student-domain", default="B", choices=DOMAINS, help="domain of the local data (default B; A: in-domain)"
    )
    parser.add_argument("--n-teacher", type=int, default=2000, help="teacher's training images (default 2000)")
    parser.add_argument(
        "--n-unlabeled", type=int, default=200, help="local unlabelled images beyond the pool (default 200)"
    )
    parser.add_argument("--n-val", type=int, default=100, help="validation images, both sites (default 100)")
    parser.add_argument("--n-test", type=int, default=300, help="local test images (default 300)")
    parser.add_argument("--image-size", type=int, default=64, help="pixels, data and networks (default 64)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of each local run (default 30)")
    parser.add_argument("--teacher-epochs", type=int, default=8, help="epochs on the teacher's data (default 8)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the generated images (default 0)")
    parser.add_argument("--teacher-ckpt", type=Path, help="a trained teacher (default: train one)")
    parser.add_argument(
        "--source-student-ckpt", type=Path, help="source-domain student for transfer_student and medtex_from_source"
    )
    parser.add_argument("--batch-size", type=int, help="bundle batch_size (default: the configs')")
    parser.add_argument("--num-workers", type=int, help="bundle num_workers (default: the configs')")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at the same time (default 1; more only where cores or a GPU are to spare)",
    )
    parser.add_argument(
        "--override",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="extra bundle override for every run but the teacher's, e.g. --override learning_rate 0.0005"
        " (repeatable; a key no config of a run defines stops that run: config_check)",
    )
    parser.add_argument(
        "--teacher-override",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="extra override for the teacher's training (configs/train_teacher.yaml), e.g. --teacher-override"
        " learning_rate 0.0005 (repeatable)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("out/learning_curve"), help="output folder (default out/learning_curve)"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the table, plot and report from the runs already in the CSV and run nothing (partial results)",
    )
    args = parser.parse_args(argv)
    if min(args.sizes) < 1 or min(args.epochs, args.teacher_epochs, args.n_teacher, args.n_val, args.n_test) < 1:
        parser.error("sizes, epochs and image counts must be positive")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.n_unlabeled < 0:
        parser.error("--n-unlabeled must be >= 0")
    if args.image_size < 32:
        parser.error("--image-size must be at least 32")
    for name, files in args.method_config:
        if name in methods:
            parser.error(f"--method-config {name}: a method of that name exists already")
        for file in files.split(","):
            if not Path(file).is_file():
                parser.error(f"--method-config {name}: {file}: no such file")
    args.methods += [name for name, _ in args.method_config]
    args.sizes = sorted(set(args.sizes))
    args.seeds = sorted(set(args.seeds))
    args.methods = list(dict.fromkeys(args.methods))
    for name in ("teacher_ckpt", "source_student_ckpt"):
        path = getattr(args, name)
        if path is not None and not path.is_file():
            parser.error(f"--{name.replace('_', '-')} {path}: no such file")
    return args


class Experiment:
    """Paths, data, shared checkpoints and the bundle commands of one task's learning curve in ``--out``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.task = args.task
        self.out = args.out.resolve()
        self.methods = available_methods()
        self.methods.update(
            {name: [str(Path(f).resolve()) for f in files.split(",")] for name, files in args.method_config}
        )
        self.stem = f"learning_curve_{self.task}"
        self.csv_path = self.out / f"{self.stem}.csv"
        self.meta_path = self.out / f"{self.stem}.json"
        data = self.out / "data"
        self.teacher_data = data / f"{self.task}_teacher_{args.teacher_domain}"
        self.local_data = data / f"{self.task}_local_{args.student_domain}"
        self.work = {name: self.out / name / self.task for name in ("runs", "models", "eval", "logs")}
        self.pool = self._check_settings()
        self.teacher_ckpt = args.teacher_ckpt.resolve() if args.teacher_ckpt else self.work["models"] / "teacher.pt"
        self.source_ckpt = (
            args.source_student_ckpt.resolve()
            if args.source_student_ckpt
            else self.work["models"] / "source_student" / "source_student.pt"
        )
        self.failures: list[str] = []
        self.argv: list[str] = []  # the command-line arguments, for the provenance record

    # --- settings and provenance --------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        a = self.args
        return {
            "task": a.task,
            "teacher_domain": a.teacher_domain,
            "student_domain": a.student_domain,
            "image_size": a.image_size,
            "epochs": a.epochs,
            "teacher_epochs": a.teacher_epochs,
            "n_teacher": a.n_teacher,
            "n_unlabeled": a.n_unlabeled,
            "n_val": a.n_val,
            "n_test": a.n_test,
            "data_seed": a.data_seed,
            "teacher_ckpt": portable_path(a.teacher_ckpt) if a.teacher_ckpt else None,
            "source_student_ckpt": portable_path(a.source_student_ckpt) if a.source_student_ckpt else None,
            "overrides": self.overrides(),
            "teacher_overrides": self.overrides(teacher=True),  # provenance: the teacher is trained once per --out
        }

    def _check_settings(self) -> int:
        """Refuse settings that differ from those the finished runs in ``--out`` were made with; return the pool."""
        settings = self.settings()
        if not self.meta_path.is_file():
            return max(self.args.sizes)
        stored = json.loads(self.meta_path.read_text())
        before = stored.get("settings", {})
        before = {k: portable_path(v) if k.endswith("_ckpt") and v else v for k, v in before.items()}  # older, absolute
        changed = [f"{k}: {before.get(k)!r} -> {settings[k]!r}" for k in FIXED if before.get(k) != settings[k]]
        pool = int(before.get("pool", max(self.args.sizes)))
        if max(self.args.sizes) > pool:
            changed.append(f"largest size {max(self.args.sizes)} > the local pool of {pool} images")
        if changed:
            raise SystemExit(
                f"{self.out} holds a learning curve made with other settings ({'; '.join(changed)}). "
                "Use another --out, or the same settings to resume or extend it."
            )
        return pool

    def write_metadata(self, report_only: bool = False) -> None:
        """Settings and provenance of the runs: the machine, command and code that trained them. ``report_only``
        (tables and plot remade elsewhere, nothing trained) keeps the training machine's record."""
        previous = json.loads(self.meta_path.read_text()) if self.meta_path.is_file() else {}
        now = datetime.now().astimezone().isoformat(timespec="seconds")
        argv = [portable_path(a) if os.path.isabs(a) else a for a in self.argv]
        command = command_line([Path(sys.executable).name, "scripts/learning_curve.py", *argv])
        if report_only and previous:
            self.meta_path.write_text(json.dumps({**previous, "reported": now, "report_command": command}, indent=2))
            return
        meta = {
            "created": previous.get("created", now),
            "updated": now,
            "host": platform.node(),
            "device": _device_name(),
            "cwd": portable_path(os.getcwd()),
            "command": command,
            "git_commit": _git_commit(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": _version("torch"),
            "monai": _version("monai"),
            "settings": {**self.settings(), "pool": self.pool},
            "teacher_ckpt": portable_path(self.teacher_ckpt),
            "weights_sha256": previous.get("weights_sha256", {}),  # shared networks the rows were made with
            "csv": self.csv_path.name,
        }
        self.out.mkdir(parents=True, exist_ok=True)
        self.meta_path.write_text(json.dumps(meta, indent=2) + "\n")

    # --- bundle commands ----------------------------------------------------------------------------------------

    def overrides(self, teacher: bool = False) -> list[str]:
        """Overrides common to every bundle run, and ``--override`` (``--teacher-override`` for the teacher's)."""
        # The runs' datalists are this script's own subsets of one pool, and a small labelled subset missing a rare
        # class is part of what a learning curve measures: no pre-flight stop (check the pool with
        # scripts/validate_datalist.py; --override preflight True turns it back on).
        extra: list[str] = ["--image_size", str(self.args.image_size), "--preflight", "False"]
        if self.args.batch_size is not None:
            extra += ["--batch_size", str(self.args.batch_size)]
        if self.args.num_workers is not None:
            extra += ["--num_workers", str(self.args.num_workers)]
        # kept apart: train_teacher.yaml lacks MED-TEX's keys, which the config check would refuse there
        for key, value in self.args.teacher_override if teacher else self.args.override:
            extra += [f"--{key}", value]
        return extra

    def config_files(self, method: str, evaluate: bool = False) -> list[str]:
        """configs/train.yaml, the task's dataset override, the method's overrides [, configs/evaluate.yaml]."""
        files = ["configs/train.yaml", *DATASET_CONFIGS[self.task], *self.methods[method]]
        return files + ["configs/evaluate.yaml"] if evaluate else files

    def configs(self, method: str, evaluate: bool = False) -> str:
        """The same as a ``--config_file`` value."""
        return config_list(self.config_files(method, evaluate))

    def bundle(self, workflow: str, config: str, log: Path, *overrides: str) -> tuple[bool, float]:
        """Run one ``python -m monai.bundle run`` in a subprocess, appending its output to ``log``."""
        command = [sys.executable, "-m", "monai.bundle", "run", workflow, "--config_file", config, *overrides]
        command += self.overrides(teacher="train_teacher.yaml" in config)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        log.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(log, "a") as f:
            f.write(f"\n$ {command_line(command)}\n")  # to copy and paste, from the bundle root
            f.flush()
            result = subprocess.run(command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        return result.returncode == 0, time.perf_counter() - start

    # --- data -------------------------------------------------------------------------------------------------

    def make_data(self, teacher_site: bool) -> None:
        a = self.args
        if teacher_site and not (self.teacher_data / "datalist.json").is_file():
            _say(f"generating the teacher's data: {a.n_teacher} {self.task} images of domain {a.teacher_domain}")
            generate_demo_data(
                self.task,
                self.teacher_data,
                n_train=a.n_teacher,
                n_val=a.n_val,
                n_test=0,
                size=a.image_size,
                seed=a.data_seed,
                domain=a.teacher_domain,
                progress=True,
            )
        if not (self.local_data / "datalist.json").is_file():
            _say(f"generating the local data: a pool of {self.pool} + {a.n_unlabeled} unlabelled images")
            generate_demo_data(
                self.task,
                self.local_data,
                n_train=self.pool,
                n_val=a.n_val,
                n_test=a.n_test,
                size=a.image_size,
                seed=a.data_seed + 1,  # other images than the teacher's, also when both sites share a domain
                domain=a.student_domain,
                n_unlabeled=a.n_unlabeled,
                progress=True,
            )

    def datalist(self, size: int, seed: int) -> Path:
        """The local datalist with a seeded, stratified labelled subset of ``size`` images (the rest unlabelled)."""
        path = self.local_data / f"datalist_n{size}_seed{seed}.json"
        if not path.is_file():
            source = self.local_data / "datalist.json"
            full = {**read_datalist_info(source), **{k: load_datalist(source, k) for k in ITEM_LIST_KEYS}}
            subset = select_labeled(full, n_labeled=size, seed=seed)
            subset.pop("labeled_subset", None)
            save_datalist(path, subset)
        return path

    # --- shared checkpoints ---------------------------------------------------------------------------------------

    def same_weights(self, name: str, ckpt: Path) -> bool:
        """Record the SHA-256 of the shared network ``name`` (teacher, source student) in the metadata, or, when the
        finished runs were made with other weights (a teacher given or trained again differently), refuse them:
        ``False``, and the runs that need it are skipped. Retraining is deterministic on one machine (fixed seeds),
        so an experiment continued in a fresh ``--out`` that holds only the CSV and JSON keeps its runs."""
        digest = file_sha256(ckpt)
        meta = json.loads(self.meta_path.read_text()) if self.meta_path.is_file() else {}
        recorded = meta.setdefault("weights_sha256", {}).get(name)
        if recorded is not None and recorded != digest and read_rows(self.csv_path):
            self.failures.append(f"{name}: {ckpt} differs from the one the finished runs used")
            _say(
                f"REFUSED: {ckpt} (SHA-256 {digest[:12]}) is not the {name} the runs in {self.csv_path} were made "
                f"with ({recorded[:12]}); their rows would mix two {name}s. Use another --out."
            )
            return False
        meta["weights_sha256"][name] = digest
        self.meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        return True

    def train_once(self, name: str, configs: str, ckpt: Path, *overrides: str) -> bool:
        """Train a shared network (teacher, source student) on the teacher's data unless it is already there; whether
        it is there and the same as the finished runs used."""
        done = ckpt.parent / f"{ckpt.stem}.done.json"
        if ckpt.is_file() and done.is_file():
            return self.same_weights(name, ckpt)
        log = self.work["logs"] / f"{name}.log"
        _say(f"training the {name} on the teacher's data (log: {log})")
        ok, seconds = self.bundle(
            "training",
            configs,
            log,
            "--dataset_dir",
            str(self.teacher_data),
            "--output_dir",
            str(self.work["runs"] / name),
            "--ckpt_dir",
            str(ckpt.parent),
            "--ckpt_name",
            ckpt.name,
            "--max_epochs",
            str(self.args.teacher_epochs),
            "--seed",
            str(self.args.data_seed),
            *overrides,
        )
        if not ok or not ckpt.is_file():
            self.failures.append(f"{name}: training failed, see {log}")
            _say(f"FAILED: the {name}'s training, see {log}")
            return False
        done.write_text(json.dumps({"seconds": round(seconds, 1)}) + "\n")
        _remove_resume_checkpoints(self.work["runs"] / name)
        return self.same_weights(name, ckpt)

    def teacher(self) -> bool:
        if self.args.teacher_ckpt is not None:
            return self.same_weights(TEACHER, self.teacher_ckpt)
        train_teacher = config_list(["configs/train_teacher.yaml", *DATASET_CONFIGS[self.task]])
        return self.train_once(TEACHER, train_teacher, self.teacher_ckpt)

    def source_student(self) -> bool:
        if self.args.source_student_ckpt is not None:
            return self.same_weights("source_student", self.source_ckpt)
        return self.train_once("source_student", self.configs("scratch"), self.source_ckpt)

    # --- runs -----------------------------------------------------------------------------------------------------

    def own_teacher(self, method: str) -> bool:
        """Whether the method's own config files name its teacher (a --method-config with a teacher from elsewhere)."""
        import yaml

        for file in self.methods[method]:
            content = yaml.safe_load(Path(ROOT, file).read_text()) or {}
            if "teacher_ckpt" in content or "teacher_bundle" in content:
                return True
        return False

    def uses_unlabeled(self, method: str) -> bool:
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config([str(ROOT / c) for c in self.config_files(method)])
        return bool(parser.get_parsed_content("use_unlabeled"))

    def run(self, method: str, size: int, seed: int) -> dict[str, Any] | None:
        """Train (unless finished before) and evaluate one run; return its CSV row, or None if it failed."""
        a = self.args
        name = f"n{size}_seed{seed}"
        run_dir, ckpt_dir = self.work["runs"] / method / name, self.work["models"] / method / name
        eval_dir, log = self.work["eval"] / method / name, self.work["logs"] / method / f"{name}.log"
        datalist = self.datalist(size, seed)
        where = ["--dataset_dir", str(self.local_data), "--datalist", str(datalist), "--seed", str(seed)]
        if not self.own_teacher(method):
            where += ["--teacher_ckpt", str(self.teacher_ckpt)]
        done = run_dir / "train.done.json"
        if not done.is_file():
            init = ["--init_ckpt", str(self.source_ckpt)] if method in FROM_SOURCE else []
            ok, seconds = self.bundle(
                "training",
                self.configs(method),
                log,
                *where,
                *init,
                "--output_dir",
                str(run_dir),
                "--ckpt_dir",
                str(ckpt_dir),
                "--max_epochs",
                str(a.epochs),
            )
            if not ok:
                return self._failed(method, name, "training", log)
            run_dir.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps({"seconds": round(seconds, 1)}) + "\n")
            _remove_resume_checkpoints(run_dir)
        if not (eval_dir / "metrics.csv").is_file():
            ok, _ = self.bundle(
                "evaluating",
                self.configs(method, evaluate=True),
                log,
                *where,
                "--ckpt_dir",
                str(ckpt_dir),
                "--output_dir",
                str(eval_dir),
                "--saliency_metrics",
                "False",
            )
            if not ok:
                return self._failed(method, name, "evaluation", log)
        n_unlabeled = self.pool - size + a.n_unlabeled if self.uses_unlabeled(method) else 0
        seconds = json.loads(done.read_text())["seconds"]
        return self.row(method, size, seed, eval_dir / "metrics.csv", n_unlabeled, a.epochs, seconds)

    def run_teacher(self, seed: int) -> dict[str, Any] | None:
        """The teacher on the local test set: trained on the teacher's data only (no local labels)."""
        eval_dir, log = self.work["eval"] / TEACHER, self.work["logs"] / f"{TEACHER}_eval.log"
        if not (eval_dir / "metrics.csv").is_file():
            ok, _ = self.bundle(
                "evaluating",
                self.configs(MEDTEX, evaluate=True),
                log,
                "--dataset_dir",
                str(self.local_data),
                "--seed",
                str(seed),
                "--network_def",
                "@teacher_def",
                "--ckpt_dir",
                str(self.teacher_ckpt.parent),
                "--ckpt_name",
                self.teacher_ckpt.name,
                "--output_dir",
                str(eval_dir),
                "--saliency_metrics",
                "False",
            )
            if not ok:
                return self._failed(TEACHER, "evaluation", "evaluation", log)
        done = self.teacher_ckpt.parent / f"{self.teacher_ckpt.stem}.done.json"
        seconds = json.loads(done.read_text())["seconds"] if done.is_file() else ""
        epochs = self.args.teacher_epochs if self.args.teacher_ckpt is None else ""
        return self.row(TEACHER, 0, seed, eval_dir / "metrics.csv", 0, epochs, seconds)

    def row(
        self, method: str, size: int, seed: int, metrics_csv: Path, n_unlabeled: int, epochs: Any, seconds: Any
    ) -> dict[str, Any]:
        with open(metrics_csv) as f:
            metrics = {r[0]: r[1] for r in csv.reader(f) if len(r) >= 2}
        return {
            "task": self.task,
            "method": method,
            "n_labeled": size,
            "n_unlabeled": n_unlabeled,
            "seed": seed,
            "auc": metrics.get("test_auc", ""),
            "accuracy": metrics.get("accuracy", ""),
            "kappa": metrics.get("kappa", ""),
            "teacher_domain": self.args.teacher_domain,
            "student_domain": self.args.student_domain,
            "image_size": self.args.image_size,
            "epochs": epochs,
            "train_seconds": seconds,
            "finished": datetime.now().astimezone().isoformat(timespec="seconds"),
        }

    def _failed(self, method: str, name: str, stage: str, log: Path) -> None:
        self.failures.append(f"{method} {name}: {stage} failed, see {log}")
        _say(f"FAILED: {method} {name} ({stage}), see {log}")
        return None


# --- results --------------------------------------------------------------------------------------------------------


def map_unordered(pool: ThreadPoolExecutor, function: Any, items: Sequence[Any]) -> Any:
    """``function`` over ``items`` in ``pool``, yielding results as they finish (in order with one worker)."""
    futures = [pool.submit(function, item) for item in items]
    for future in as_completed(futures):
        yield future.result()


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append at once, so that a killed script keeps every run finished so far."""
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def row_key(row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row[k]) for k in KEY)


def summarise(rows: list[dict[str, str]], metric: str) -> dict[str, dict[int, tuple[float, float, int]]]:
    """method -> n_labeled -> (mean, sample standard deviation (0 for one seed), number of seeds)."""
    values: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        value = _float(row.get(metric, ""))
        if value is not None:
            values.setdefault(row["method"], {}).setdefault(int(row["n_labeled"]), []).append(value)
    out: dict[str, dict[int, tuple[float, float, int]]] = {}
    for method, by_size in values.items():
        for size, vals in by_size.items():
            mean = sum(vals) / len(vals)
            sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
            out.setdefault(method, {})[size] = (mean, sd, len(vals))
    return out


def paired_differences(rows: list[dict[str, str]], metric: str, first: str, second: str) -> dict[int, list[float]]:
    """n_labeled -> ``metric`` of ``first`` minus that of ``second``, one value per seed both were run with."""
    values = {(r["method"], int(r["n_labeled"]), r["seed"]): _float(r.get(metric, "")) for r in rows}
    out: dict[int, list[float]] = {}
    for (method, size, seed), value in sorted(values.items()):
        other = values.get((second, size, seed))
        if method == first and value is not None and other is not None:
            out.setdefault(size, []).append(value - other)
    return out


def _paired_lines(rows: list[dict[str, str]], sizes: list[int]) -> list[str]:
    lines = []
    known = {m for pair in PAIRS for m in pair} | {TEACHER} | set(available_methods())
    own = [m for m in dict.fromkeys(r["method"] for r in rows) if m not in known]  # --method-config methods
    for first, second in (*PAIRS, *((m, other) for m in own for other in (MEDTEX, "scratch"))):
        diffs = paired_differences(rows, "auc", first, second)
        if not diffs:
            continue
        cells = []
        for size in sizes:
            values = diffs.get(size, [])
            mean = sum(values) / len(values) if values else 0.0
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            wins = sum(v > 0 for v in values)
            cells.append(f"{mean:+.3f} ± {sd:.3f} ({wins}/{len(values)})" if values else "")
        lines.append(f"| {first} - {second} | " + " | ".join(cells) + " |")
    if not lines:
        return []
    header = [
        "## auc: paired differences (same labelled set and seed): mean ± sd (seeds where the first is higher / seeds)",
        "",
        "| methods | " + " | ".join(f"n = {s}" for s in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    return header + lines + [""]


def method_order(rows: list[dict[str, str]], preferred: Sequence[str]) -> list[str]:
    present = list(dict.fromkeys(r["method"] for r in rows))
    return [m for m in preferred if m in present] + [m for m in present if m not in preferred]


def write_markdown(path: Path, rows: list[dict[str, str]], methods: list[str], context: str) -> None:
    sizes = sorted({int(r["n_labeled"]) for r in rows if r["method"] != TEACHER})
    lines = [f"# Learning curve: {rows[0]['task'] if rows else ''}", "", context, ""]
    for metric in METRICS:
        stats = summarise(rows, metric)
        if not any(m in stats for m in methods if m != TEACHER):
            continue
        lines += [f"## {metric}: mean ± sd (n seeds)", ""]
        lines.append("| method | " + " | ".join(f"n = {s}" for s in sizes) + " |")
        lines.append("|---|" + "---:|" * len(sizes))
        for method in methods:
            if method == TEACHER or method not in stats:
                continue
            cells = [_fmt(stats[method].get(s)) for s in sizes]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        if TEACHER in stats:
            mean, _, _ = stats[TEACHER][0]
            lines += ["", f"Teacher (no local labels, trained on the teacher's data): {metric} {mean:.3f}."]
        lines.append("")
    lines += _paired_lines(rows, sizes)
    path.write_text("\n".join(lines))


def plot(path: Path, rows: list[dict[str, str]], methods: list[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    stats = summarise(rows, "auc")
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    sizes = sorted({s for m, by in stats.items() if m != TEACHER for s in by})
    for method in methods:
        if method == TEACHER or method not in stats:
            continue
        xs = sorted(stats[method])
        mean = [stats[method][x][0] for x in xs]
        sd = [stats[method][x][1] for x in xs]
        (line,) = ax.plot(xs, mean, marker="o", label=method)
        low, high = [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)]
        ax.fill_between(xs, low, high, alpha=0.2, color=line.get_color(), linewidth=0)
    if TEACHER in stats:
        ax.axhline(stats[TEACHER][0][0], color="gray", linestyle="--", label="teacher (no local labels)")
    ax.set_xscale("log")
    if sizes:
        ax.set_xticks(sizes)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("labelled local training images")
    ax.set_ylabel("test ROC AUC (macro), mean ± 1 sd")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def config_list(files: Sequence[str]) -> str:
    """A ``--config_file`` list as the docs write it: ``['configs/train.yaml','configs/baselines/kd.yaml']``."""
    return "[" + ",".join(f"'{f}'" for f in files) + "]"


def portable_path(path: str | os.PathLike) -> str:
    """A path as committed result files hold it: relative to the repository when inside it (``.`` for the root),
    else absolute, so that no file names the folders of the machine that made it."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(resolved)


def command_line(command: Sequence[str]) -> str:
    """Shell form of a command; double quotes where they read better than shlex's (config lists)."""
    safe = set('"$`\\')
    return " ".join(f'"{a}"' if shlex.quote(a) != a and not safe.intersection(a) else shlex.quote(a) for a in command)


def _fmt(stat: tuple[float, float, int] | None) -> str:
    return "" if stat is None else f"{stat[0]:.3f} ± {stat[1]:.3f} ({stat[2]})"


def _float(value: str) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _remove_resume_checkpoints(run_dir: Path) -> None:
    """A finished run needs only its best weights; full checkpoints (with optimizer state) are for resuming."""
    for path in run_dir.glob("train_checkpoint_*.pt"):
        path.unlink()


def _say(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message)


def _device_name() -> str:
    """The GPU the bundle runs use (configs pick CUDA when there is one), else the CPU model."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _git_commit() -> str | None:
    if shutil.which("git") is None:
        return None
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return result.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


# the orchestration of training runs is left out of the mutation run (docs/RELIABILITY.md, tests/test_learning_curve.py)
# pragma: no mutate block
def main(argv: Sequence[str] | None = None) -> int:
    from tqdm import tqdm

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    exp = Experiment(args)
    exp.argv = argv
    exp.out.mkdir(parents=True, exist_ok=True)
    exp.write_metadata(report_only=args.report_only)
    done = {row_key(r) for r in read_rows(exp.csv_path)}
    key_of = {"task": args.task, "teacher_domain": args.teacher_domain, "student_domain": args.student_domain}
    # seed-major: an interrupted experiment already has whole curves for its first seeds
    runs = [(m, n, s) for s in args.seeds for n in args.sizes for m in args.methods if m != TEACHER]
    if TEACHER in args.methods:
        runs.insert(0, (TEACHER, 0, args.data_seed))
    todo = [r for r in runs if row_key({**key_of, "method": r[0], "n_labeled": r[1], "seed": r[2]}) not in done]
    _say(f"{len(runs)} runs, {len(runs) - len(todo)} already finished in {exp.csv_path}")

    if todo and args.report_only:
        _say(f"--report-only: the {len(todo)} runs not done yet are left out")
    elif todo:
        needs_source = any(m in FROM_SOURCE for m, _, _ in todo) and args.source_student_ckpt is None
        needs_teacher = any(m not in WITHOUT_TEACHER for m, _, _ in todo)
        exp.make_data(teacher_site=(needs_teacher and args.teacher_ckpt is None) or needs_source)
        teacher_ok = exp.teacher() if needs_teacher else True
        source_ok = exp.source_student() if needs_source else True
        runnable = []
        for method, size, seed in todo:
            if (method not in WITHOUT_TEACHER and not teacher_ok) or (method in FROM_SOURCE and not source_ok):
                exp.failures.append(f"{method} n{size}_seed{seed}: skipped, its teacher/source student failed")
            else:
                runnable.append((method, size, seed))
        for _, size, seed in runnable:  # written once, before runs that share them may start side by side
            if size:
                exp.datalist(size, seed)

        def one_run(run: tuple[str, int, int]) -> tuple[tuple[str, int, int], dict[str, Any] | None, float]:
            method, size, seed = run
            start = time.perf_counter()
            row = exp.run_teacher(seed) if method == TEACHER else exp.run(method, size, seed)
            return run, row, time.perf_counter() - start

        bar = tqdm(total=len(runnable), desc=f"learning curve {args.task}", unit="run")
        # Each run is its own bundle subprocess, so threads suffice to keep --jobs of them going; rows are appended
        # here, in this thread, as runs finish.
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for (method, size, seed), row, seconds in map_unordered(pool, one_run, runnable):
                bar.update()
                bar.set_postfix_str(f"{method} n={size} seed={seed}")
                if row is not None:
                    append_row(exp.csv_path, row)
                    _say(f"{method} n={size} seed={seed}: AUC {row['auc']} ({seconds:.0f} s)")
        bar.close()

    rows = read_rows(exp.csv_path)
    methods = method_order(rows, args.methods)
    seeds = {int(r["seed"]) for r in rows if r["method"] != TEACHER}
    a = args
    context = (
        f"Task {a.task}; teacher trained on {a.n_teacher} images of domain {a.teacher_domain}"
        f"{' (given: ' + str(a.teacher_ckpt) + ')' if a.teacher_ckpt else f', {a.teacher_epochs} epochs'}; "
        f"local domain {a.student_domain}: labelled subsets of a pool of {exp.pool} images (the rest unlabelled) "
        f"plus {a.n_unlabeled} unlabelled, {a.n_val} validation and {a.n_test} test images; "
        f"{a.image_size} px, {a.epochs} epochs per run. Metrics on the local test set."
    )
    outputs = [exp.csv_path, exp.out / f"{exp.stem}.png", exp.out / f"{exp.stem}.md", exp.meta_path]
    write_markdown(outputs[2], rows, methods, context)
    title = f"{a.task}: teacher domain {a.teacher_domain} -> local domain {a.student_domain}, {a.image_size} px"
    plot(outputs[1], rows, methods, f"{title}, {a.epochs} epochs, seeds {', '.join(map(str, sorted(seeds)))}")
    exp.write_metadata(report_only=args.report_only)
    report = write_html_report(exp.out, exp.out / "report.html", "MED-TEX learning curves")
    print(f"\n{len(rows)} runs in the table. Written:")
    for path in [*outputs, report]:
        print(f"  {path}")
    print(f"  logs of every run: {exp.work['logs']}")
    if exp.failures:
        print(f"{len(exp.failures)} failed:")
        for failure in exp.failures:
            print(f"  {failure}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
