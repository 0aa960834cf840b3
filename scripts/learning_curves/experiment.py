"""One learning-curve experiment: the demo data of both sites, the shared networks trained once, and each run as
``monai.bundle run`` subprocesses (training, then evaluating), resumable."""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bundle.data.datalist import ITEM_LIST_KEYS, load_datalist, read_datalist_info, save_datalist  # noqa: E402
from bundle.data.splits import select_labeled  # noqa: E402
from bundle.datasets.demo import generate_demo_data  # noqa: E402
from bundle.files import file_sha256, folder_sha256  # noqa: E402
from bundle.networks import weights_sha256  # noqa: E402
from bundle.provenance import (
    command_line,
    device_name,
    git_commit,
    numerics_differences,
    numerics_record,
    package_version,
    portable_path,
)

from .methods import DATASET_CONFIGS, FROM_GENERIC, FROM_SOURCE, MEDTEX, ROOT, TEACHER, available_methods, task_channels
from .rows import read_rows

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


def network_sha256(ckpt: Path) -> str:
    """The digest a shared network is recorded by: of its weights where the file is a state dict or checkpoint
    (:func:`bundle.networks.weights_sha256`), else (a TorchScript or ONNX teacher, given as one file) of the file,
    marked ``file:``."""
    try:
        return weights_sha256(ckpt)
    except Exception:  # torch.load fails in many ways on a file that is not a pickled state dict
        return "file:" + file_sha256(ckpt)


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
        # the record of the finished runs in --out, read once, before this command's record replaces it
        finished: dict[str, Any] = json.loads(self.meta_path.read_text()) if self.meta_path.is_file() else {}
        self.made_on = finished.get("device")  # the machine the finished runs were made on
        # what their numerics depend on (CPU generation, threads, library versions); None in folders from before it
        self.made_with: dict[str, Any] | None = finished.get("numerics")
        self.numerics = numerics_record()
        self.pool = self._check_settings(finished)
        self.teacher_ckpt = args.teacher_ckpt.resolve() if args.teacher_ckpt else self.work["models"] / "teacher.pt"
        self.source_ckpt = (
            args.source_student_ckpt.resolve()
            if args.source_student_ckpt
            else self.work["models"] / "source_student" / "source_student.pt"
        )
        self.generic_ckpts = {
            part: (
                given.resolve()
                if (given := getattr(args, f"generic_{part}_ckpt", None))
                else self.work["models"] / "generic" / f"generic_{part}.pt"
            )
            for part in ("student", "teacher")
        }
        self.failures: list[str] = []
        # each CSV row records the code that made it: the commit this experiment started on (its runs are
        # subprocesses of that checkout), marked when the work tree had uncommitted changes
        self.code_version = git_commit() or "unknown"
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
            "n_generic": a.n_generic,  # the generic pretraining (transfer_generic_*), when one runs
            "generic_epochs": a.generic_epochs,
            "generic_student_ckpt": portable_path(a.generic_student_ckpt) if a.generic_student_ckpt else None,
            "generic_teacher_ckpt": portable_path(a.generic_teacher_ckpt) if a.generic_teacher_ckpt else None,
            "overrides": self.overrides(),
            "teacher_overrides": self.overrides(teacher=True),  # provenance: the teacher is trained once per --out
        }

    def _check_settings(self, finished: dict[str, Any]) -> int:
        """Refuse settings that differ from those the finished runs in ``--out`` were made with (``finished``: their
        JSON record, empty for a new folder); return the pool."""
        settings = self.settings()
        if not finished:
            return max(self.args.sizes)
        before = finished.get("settings", {})
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

    def write_metadata(self, report_only: bool = False, merged: list[dict[str, Any]] | None = None) -> None:
        """Settings and provenance of the runs: the machine, command and code that trained them. ``report_only``
        (tables and plot remade elsewhere, nothing trained) keeps the training machine's record. ``merged``: the
        folders whose rows the tables now hold (``merged_curves``); None keeps the list the JSON has."""
        previous = json.loads(self.meta_path.read_text()) if self.meta_path.is_file() else {}
        now = datetime.now().astimezone().isoformat(timespec="seconds")
        argv = [portable_path(a) if os.path.isabs(a) else a for a in self.argv]
        command = command_line([Path(sys.executable).name, "scripts/learning_curve.py", *argv])
        merged = previous.get("merged_from", []) if merged is None else merged
        if report_only and previous:
            meta = {k: v for k, v in previous.items() if k != "merged_from"}
            meta |= {"reported": now, "report_command": command} | ({"merged_from": merged} if merged else {})
            self.meta_path.write_text(json.dumps(meta, indent=2) + "\n")
            return
        # the record of the machine that started the folder and its shared networks (each command's is in "commands");
        # none for a folder from before the record: another machine's rows must not be credited to this one
        made_with = previous.get("numerics") if previous else self.numerics
        meta = {
            "created": previous.get("created", now),
            "updated": now,
            "host": platform.node(),
            "device": device_name(),
            "cwd": portable_path(os.getcwd()),
            "command": command,
            "git_commit": self.code_version,  # the code of this command's rows (HEAD may move while it runs)
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": package_version("torch"),
            "monai": package_version("monai"),
            "settings": {**self.settings(), "pool": self.pool},
            "teacher_ckpt": portable_path(self.teacher_ckpt),
            "networks_sha256": previous.get("networks_sha256", {}),  # the shared networks' weights the rows used
            **{key: previous[key] for key in ("weights_sha256",) if key in previous},  # files' hashes, before 0.16.14
            "data_sha256": previous.get("data_sha256", {}),  # the generated images they were made on
            **({"numerics": made_with} if made_with else {}),
            "csv": self.csv_path.name,
            "commands": self._commands(previous, command, self.code_version, now, self.numerics),
            **({"merged_from": merged} if merged else {}),
        }
        self.out.mkdir(parents=True, exist_ok=True)
        self.meta_path.write_text(json.dumps(meta, indent=2) + "\n")

    @staticmethod
    def _commands(
        previous: dict[str, Any], command: str, commit: str, now: str, numerics: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """Every command run on this folder, oldest first, with the commit it ran at: ``command`` and
        ``git_commit`` above name only the latest, and a curve grown by several commands (more seeds, methods) is
        reproduced by running them all, each with the ``numerics`` of the machine it ran on (``numerics_record``). A
        folder from before this list starts it with the one command it recorded (when that command last wrote, not when
        it started)."""
        history = list(previous.get("commands", []))
        if not history and previous.get("command"):
            history.append(
                {k: previous[k] for k in ("command", "git_commit") if k in previous}
                | {"last_updated": previous.get("updated", "")}
            )
        latest = {"command": command, "git_commit": commit, "started": now, "numerics": numerics}
        rerun = history and all(history[-1].get(k) == latest[k] for k in ("command", "git_commit", "numerics"))
        if not rerun:  # (each command writes this file when it starts and when it ends)
            history.append(latest)
        return history

    def merged_curves(
        self, folders: Sequence[Path], rows: list[dict[str, str]]
    ) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
        """The rows of other curves' folders (``--merge-from``) to join this one's ``rows`` in its tables and plot,
        and their provenance. They must share this curve's local test set and networks: the same settings but for
        the pool (a larger pool starts with the images of a smaller one: each image is seeded by its split and index),
        the same SHA-256 for every shared network both recorded, and no size of this curve. A teacher row of both
        must agree to the last digit (the same test set), and is kept once."""
        own_sizes = {r["n_labeled"] for r in rows if r["method"] != TEACHER} | (
            set() if self.args.report_only else {str(n) for n in self.args.sizes}  # the sizes this command trains
        )
        teacher = next((r for r in rows if r["method"] == TEACHER), None)  # kept once, from the first that has it
        settings = self.settings()
        previous = json.loads(self.meta_path.read_text()) if self.meta_path.is_file() else {}
        merged: list[dict[str, str]] = []
        provenance: list[dict[str, Any]] = []
        for folder in folders:
            meta_path, csv_path = folder / self.meta_path.name, folder / self.csv_path.name
            if not meta_path.is_file() or not csv_path.is_file():
                raise SystemExit(
                    f"--merge-from {folder}: no learning curve of task {self.task} ({meta_path.name} and"
                    f" {csv_path.name} are not both there)"
                )
            meta = json.loads(meta_path.read_text())
            theirs = meta.get("settings", {})
            # paths of given networks may differ (a folder's own teacher given to the next): their hashes decide
            differ = [
                f"{k}: {theirs.get(k)!r} there, {settings[k]!r} here"
                for k in FIXED
                if k not in ("teacher_ckpt", "source_student_ckpt") and theirs.get(k) != settings[k]
            ]
            for key, what in (("networks_sha256", "weights"), ("weights_sha256", "file")):  # files: before 0.16.14
                ours = previous.get(key, {})
                differ += [
                    f"{name} {what}: SHA-256 {digest[:12]} there, {ours[name][:12]} here"
                    for name, digest in meta.get(key, {}).items()
                    if name in ours and ours[name] != digest
                ]
            their_rows = read_rows(csv_path)
            both = sorted(own_sizes & {r["n_labeled"] for r in their_rows if r["method"] != TEACHER}, key=int)
            differ += [f"n = {', '.join(both)} in both"] if both else []
            their_teacher = next((r for r in their_rows if r["method"] == TEACHER), None)
            if teacher and their_teacher and teacher["auc"] != their_teacher["auc"]:
                differ.append(f"the teacher's test AUC {their_teacher['auc']} there, {teacher['auc']} here")
            if differ:
                raise SystemExit(
                    f"--merge-from {folder}: not a curve on this one's test set and networks ({'; '.join(differ)})"
                )
            keep = [r for r in their_rows if r["method"] != TEACHER or teacher is None]
            teacher = teacher or their_teacher
            merged += keep
            own_sizes |= {r["n_labeled"] for r in keep if r["method"] != TEACHER}
            provenance.append(
                {
                    "folder": portable_path(folder.resolve()),
                    "pool": theirs.get("pool"),
                    "sizes": sorted({int(r["n_labeled"]) for r in keep if r["method"] != TEACHER}),
                    "rows": len(keep),
                    **{key: meta[key] for key in ("networks_sha256", "weights_sha256") if key in meta},
                    **{key: meta.get(key) for key in ("host", "device", "platform", "torch", "monai")},  # its machine
                    "commands": meta.get("commands", []),
                }
            )
        return merged, provenance

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
        return run_bundle(workflow, config, log, [*overrides, *self.overrides(teacher="train_teacher.yaml" in config)])

    # --- data -------------------------------------------------------------------------------------------------

    def make_data(self, teacher_site: bool) -> None:
        a = self.args
        if teacher_site and not (self.teacher_data / "datalist.json").is_file():
            say(f"generating the teacher's data: {a.n_teacher} {self.task} images of domain {a.teacher_domain}")
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
            say(f"generating the local data: a pool of {self.pool} + {a.n_unlabeled} unlabelled images")
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

    def same_data(self) -> None:
        """Record one SHA-256 per generated site (``teacher_site``, ``local_site``: images and masks), or refuse the
        command when the finished runs were made on other images: their test set is not this one, and no row trained
        here could join theirs. numpy and scipy make the demo data, and their rounding can move between versions and
        CPUs. A folder whose runs predate the record gets none (these images need not be theirs)."""
        meta = json.loads(self.meta_path.read_text()) if self.meta_path.is_file() else {}
        recorded = meta.setdefault("data_sha256", {})
        rows = read_rows(self.csv_path)
        for name, folder in (("teacher_site", self.teacher_data), ("local_site", self.local_data)):
            if not (folder / "datalist.json").is_file():  # not made: a given teacher needs no teacher site
                continue
            digest = folder_sha256(folder)
            if name in recorded and recorded[name] != digest and rows:
                raise SystemExit(
                    f"REFUSED: the images in {folder} (SHA-256 {digest[:12]}) are not the {name.replace('_', ' ')}'s "
                    f"the runs in {self.csv_path} were made on ({recorded[name][:12]}).{self.other_machine()} Use "
                    "another --out."
                )
            if name in recorded or not rows or self.made_with is not None:
                recorded[name] = digest
        if recorded:
            self.meta_path.write_text(json.dumps(meta, indent=2) + "\n")

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
        """Record the SHA-256 of the shared network ``name``'s weights (teacher, source student, generic networks;
        ``networks_sha256``, of the tensors: :func:`bundle.networks.weights_sha256`) in the metadata, or, when the
        finished runs were made with other weights (a teacher given or trained again differently), refuse them:
        ``False``, and the runs that need it are skipped. Retraining is deterministic on one kind of machine (fixed
        seeds; the same CPU, threads and libraries), so an experiment continued there in a fresh ``--out`` that holds
        only the CSV and JSON keeps its runs; elsewhere the refusal names what differs. A folder from before 0.16.14
        recorded the checkpoint file's hash (``weights_sha256``), which differs on every save: a retrained network
        that is not that very file is refused, saying how to check it."""
        digest = network_sha256(ckpt)
        meta = json.loads(self.meta_path.read_text()) if self.meta_path.is_file() else {}
        recorded = meta.setdefault("networks_sha256", {}).get(name)
        file_record = meta.get("weights_sha256", {}).get(name)  # before 0.16.14: the file's hash
        rows = read_rows(self.csv_path)
        if recorded is not None and recorded != digest and rows:
            self.failures.append(f"{name}: {ckpt} differs from the one the finished runs used")
            say(
                f"REFUSED: the weights in {ckpt} (SHA-256 {digest[:12]}) are not the {name}'s the runs in "
                f"{self.csv_path} were made with ({recorded[:12]}); their rows would mix two {name}s."
                f"{self.other_machine()} Use another --out, or give the {name} they were made with."
            )
            return False
        if recorded is None and file_record is not None and file_record != file_sha256(ckpt) and rows:
            self.failures.append(f"{name}: {ckpt} is not the file the finished runs recorded")
            say(
                f"REFUSED: {ckpt} is not the {name} file whose hash the runs in {self.csv_path} recorded "
                f"({file_record[:12]}), and a file's hash changes on every save, so whether its weights are theirs is "
                f"not known.{self.other_machine()} To check: give it to one finished run that uses it in another --out "
                f"(the same command with --seeds and --methods of that run); if its row agrees to the last digit, "
                f"delete weights_sha256.{name} from {self.meta_path} and start this command again."
            )
            return False
        meta["networks_sha256"][name] = digest
        self.meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        return True

    def other_machine(self) -> str:
        """Why retraining here may not give the finished runs' weights, for a refusal: what differs between the record
        of the machine that made them and this one's, or that their folder predates the record."""
        if self.made_with is not None:
            differ = numerics_differences(self.made_with, self.numerics)
            if not differ:
                return " This machine's record is the same as theirs (CPU, threads, library versions)."
            return (
                f" They were made with {'; '.join(differ)}: fixed seeds retrain the same weights only where the CPU"
                " generation, vector instructions, threads and these libraries are the same (or the same GPU)."
            )
        here = device_name()
        if self.made_on and self.made_on != here:
            return (
                f" They were made on {self.made_on!r}, this machine is {here!r}: fixed seeds retrain the same weights"
                " only on the same CPU model and vector instructions (or the same GPU)."
            )
        return (
            " Their folder records no CPU generation or library versions (it predates that record), so what differs is"
            " not known: a CPU of another generation under the same name, or another numpy, scipy or Pillow, can"
            " train other weights."
        )

    def warn_other_numerics(self) -> None:
        """Say, before any training, where this machine's record differs from that of the finished runs: the runs of
        methods with a shared network are checked by its SHA-256, the others (``scratch``) cannot be."""
        if self.made_with is None or not read_rows(self.csv_path):
            return
        differ = numerics_differences(self.made_with, self.numerics)
        if differ:
            say(
                f"NOTE: the finished runs in {self.csv_path} were made with {'; '.join(differ)}. A shared network"
                " retrained here is refused if its weights differ; runs of methods without one (scratch) cannot be"
                " checked that way: rerun one finished run in another --out and compare its AUC first."
            )

    def train_once(self, name: str, configs: str, ckpt: Path, *overrides: str) -> bool:
        """Train a shared network (teacher, source student) on the teacher's data unless it is already there; whether
        it is there and the same as the finished runs used."""
        done = ckpt.parent / f"{ckpt.stem}.done.json"
        if ckpt.is_file() and done.is_file():
            return self.same_weights(name, ckpt)
        log = self.work["logs"] / f"{name}.log"
        say(f"training the {name} on the teacher's data (log: {log})")
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
            say(f"FAILED: the {name}'s training, see {log}")
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

    def generic(self, part: str) -> bool:
        """The network ``part`` (student, teacher) pretrained on the generic set: given, or pretrained once here by
        scripts/pretrain_generic.py at this curve's image size; whether it is there and the one the runs used."""
        ckpt = self.generic_ckpts[part]
        if getattr(self.args, f"generic_{part}_ckpt") is None and not ckpt.is_file():
            from scripts import pretrain_generic

            a = self.args
            argv = ["--out", str(ckpt.parent), "--work", str(self.out / "generic_pretraining" / self.task)]
            argv += ["--in-channels", str(task_channels(self.task)), "--networks", part, "--seed", str(a.data_seed)]
            argv += ["--n-train", str(a.n_generic), "--n-val", str(max(50, a.n_generic // 10))]
            argv += ["--image-size", str(a.image_size), "--epochs", str(a.generic_epochs)]
            for key in ("batch_size", "num_workers"):
                if getattr(a, key) is not None:
                    argv += [f"--{key.replace('_', '-')}", str(getattr(a, key))]
            say(f"pretraining the generic {part} (scripts/pretrain_generic.py {' '.join(argv)})")
            try:
                pretrain_generic.main(argv)
            except SystemExit as e:
                self.failures.append(f"generic_{part}: {e}")
                say(f"FAILED: {e}")
                return False
        return self.same_weights(f"generic_{part}", ckpt)

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
            # a killed attempt left a checkpoint to resume from: this attempt's time is not the run's, and none is kept
            resumed = any(run_dir.glob("train_checkpoint_*.pt"))
            init = ["--init_ckpt", str(self.source_ckpt)] if method in FROM_SOURCE else []
            if method in FROM_GENERIC:
                init = ["--init_ckpt", str(self.generic_ckpts[FROM_GENERIC[method]])]
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
                self._failed(method, name, "training", log)
                return None
            run_dir.mkdir(parents=True, exist_ok=True)
            done.write_text(json.dumps({"seconds": None if resumed else round(seconds, 1)}) + "\n")
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
                self._failed(method, name, "evaluation", log)
                return None
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
                self._failed(TEACHER, "evaluation", "evaluation", log)
                return None
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
            "code_version": self.code_version,
        }

    def _failed(self, method: str, name: str, stage: str, log: Path) -> None:
        self.failures.append(f"{method} {name}: {stage} failed, see {log}")
        say(f"FAILED: {method} {name} ({stage}), see {log}")


def run_bundle(workflow: str, config: str, log: Path, overrides: Sequence[str]) -> tuple[bool, float]:
    """``python -m monai.bundle run WORKFLOW --config_file CONFIG OVERRIDES`` from the bundle root in a subprocess, its
    command line and output appended to ``log``; whether it succeeded, and its seconds."""
    command = [sys.executable, "-m", "monai.bundle", "run", workflow, "--config_file", config, *overrides]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {command_line(command)}\n")  # to copy and paste, from the bundle root
        f.flush()
        result = subprocess.run(command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    return result.returncode == 0, time.perf_counter() - start


def config_list(files: Sequence[str]) -> str:
    """A ``--config_file`` list as the docs write it: ``['configs/train.yaml','configs/baselines/kd.yaml']``."""
    return "[" + ",".join(f"'{f}'" for f in files) + "]"


def _remove_resume_checkpoints(run_dir: Path) -> None:
    """A finished run needs only its best weights; full checkpoints (with optimizer state) are for resuming."""
    for path in run_dir.glob("train_checkpoint_*.pt"):
        path.unlink()


def say(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message)
