r"""Learning curves: test AUC against the number of local labels, per method, over several seeds, on demo data.

    python scripts/learning_curve.py --task fundus --sizes 25 50 100 200 --seeds 0 1 2 \
        --methods teacher scratch transfer_student transfer_teacher kd medtex --out out/learning_curve

The teacher's site has ``--n-teacher`` images of ``--teacher-domain``; the local site has a pool of max(sizes)
training images of ``--student-domain`` plus ``--n-unlabeled`` unlabelled ones and fixed validation and test splits.
For each size and seed the labelled set is a seeded, class-stratified subset of the pool and the rest of the pool
becomes unlabelled (bundle.data.splits.select_labeled); methods that use unlabelled images (MED-TEX, KD, VID) see it.
The teacher is trained once (configs/train_teacher.yaml) unless ``--teacher-ckpt`` is given; ``transfer_student``
and ``medtex_from_source`` start from a student trained once on the teacher's data with configs/baselines/scratch.yaml
(``--source-student-ckpt`` gives one instead); ``transfer_generic_student`` and ``transfer_generic_teacher`` start
from networks pretrained once on the generic set (scripts/pretrain_generic.py, ``--n-generic`` images for
``--generic-epochs``; ``--generic-student-ckpt`` / ``--generic-teacher-ckpt`` give your own). Every run is a
``python -m monai.bundle run training`` then ``evaluating`` (configs/evaluate.yaml) subprocess whose log is kept in
``<out>/logs``; a run that fails is reported and the others go on. Methods: ``medtex`` (configs/train.yaml as is),
every ``configs/baselines/<name>.yaml`` by its name, and ``teacher`` (the teacher evaluated on the local test set,
trained on no local labels: a reference line).

Outputs in ``--out``: learning_curve_<task>.csv (one row per finished run, with the commit that made it;
``train_seconds`` blank where a run resumed after a kill), .png
(mean +- 1 sd over seeds), .md (mean, sd and n per method and size; paired differences between methods on the same
labelled sets and seeds, with the 95% interval of their mean), .json (settings and provenance, with every command run
on the folder) and report.html (all results in one page).
Started again with the same ``--out``, finished runs are not redone and a run killed half-way resumes from its last
epoch; more sizes (up to the pool), seeds or methods can be added later. The JSON holds one SHA-256 per generated site
and one of each shared network's weights, and what the numerics depend on (``numerics``: the CPU's generation and
instructions, threads, the torch, numpy, scipy, Pillow and MONAI versions); a command that would mix other images or
networks into the finished runs is refused, naming what differs between the machines. Sizes beyond the pool go to
another ``--out`` with the same settings and networks (its larger pool starts with this one's images, the test set is
the same); ``--merge-from`` that folder puts its rows in this one's tables and plot and all of them in
learning_curve_<task>_merged.csv, and refuses a folder on another test set or with other networks. ``--jobs N`` trains N
runs side by side (for a GPU or many cores; on 2 CPU cores one at a time is fastest).

The parts live in ``scripts/learning_curves/``: ``experiment`` (data, training and evaluation runs), ``rows`` (the CSV)
and ``render`` (tables and plot from the CSV alone; ``--report-only`` runs nothing else).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.datasets.demo import DOMAINS, TASKS  # noqa: E402
from bundle.report import write_html_report  # noqa: E402
from scripts.learning_curves.experiment import Experiment, say  # noqa: E402
from scripts.learning_curves.methods import (  # noqa: E402
    FROM_GENERIC,
    FROM_SOURCE,
    MEDTEX,
    TEACHER,
    WITHOUT_TEACHER,
    available_methods,
)
from scripts.learning_curves.render import method_order, plot, write_markdown  # noqa: E402
from scripts.learning_curves.rows import append_row, read_rows, row_key, write_rows  # noqa: E402


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
    parser.add_argument(
        "--generic-student-ckpt", type=Path, help="a generically pretrained student for transfer_generic_student"
    )
    parser.add_argument(
        "--generic-teacher-ckpt",
        type=Path,
        help="a generically pretrained teacher_def for transfer_generic_teacher (e.g. ImageNet weights you have)",
    )
    parser.add_argument(
        "--n-generic", type=int, default=5000, help="generic images to pretrain on when none is given (default 5000)"
    )
    parser.add_argument("--generic-epochs", type=int, default=10, help="epochs of that pretraining (default 10)")
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
        "--merge-from",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="another curve's --out on the same local test set and networks, e.g. larger sizes made with a larger pool:"
        " its rows join this folder's tables and plot, all of them in <out>/learning_curve_<task>_merged.csv; nothing"
        " there is rerun (repeatable)",
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
    for name in ("teacher_ckpt", "source_student_ckpt", "generic_student_ckpt", "generic_teacher_ckpt"):
        path = getattr(args, name)
        # --report-only loads none of them: the tables are remade where the networks are not (another machine)
        if path is not None and not path.is_file() and not args.report_only:
            parser.error(f"--{name.replace('_', '-')} {path}: no such file")
    return args


def map_unordered(pool: ThreadPoolExecutor, function: Any, items: Sequence[Any]) -> Any:
    """``function`` over ``items`` in ``pool``, yielding results as they finish (in order with one worker)."""
    futures = [pool.submit(function, item) for item in items]
    for future in as_completed(futures):
        yield future.result()


# the orchestration of training runs is left out of the mutation run (docs/RELIABILITY.md, tests/test_learning_curve.py)
# pragma: no mutate block
def main(argv: Sequence[str] | None = None) -> int:
    from tqdm import tqdm

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    exp = Experiment(args)
    exp.argv = argv
    exp.out.mkdir(parents=True, exist_ok=True)
    # a folder --merge-from refuses is refused now, not after hours of training, and not recorded in the JSON
    exp.merged_curves(args.merge_from, read_rows(exp.csv_path))
    exp.write_metadata(report_only=args.report_only)
    done = {row_key(r) for r in read_rows(exp.csv_path)}
    key_of = {"task": args.task, "teacher_domain": args.teacher_domain, "student_domain": args.student_domain}
    # seed-major: an interrupted experiment already has whole curves for its first seeds
    runs = [(m, n, s) for s in args.seeds for n in args.sizes for m in args.methods if m != TEACHER]
    if TEACHER in args.methods:
        runs.insert(0, (TEACHER, 0, args.data_seed))
    todo = [r for r in runs if row_key({**key_of, "method": r[0], "n_labeled": r[1], "seed": r[2]}) not in done]
    say(f"{len(runs)} runs, {len(runs) - len(todo)} already finished in {exp.csv_path}")

    if todo and args.report_only:
        say(f"--report-only: the {len(todo)} runs not done yet are left out")
    elif todo:
        exp.warn_other_numerics()
        needs_source = any(m in FROM_SOURCE for m, _, _ in todo)  # given or trained here: its hash is recorded
        needs_teacher = any(m not in WITHOUT_TEACHER for m, _, _ in todo)
        exp.make_data(
            teacher_site=(needs_teacher and args.teacher_ckpt is None)
            or (needs_source and args.source_student_ckpt is None)
        )
        exp.same_data()
        teacher_ok = exp.teacher() if needs_teacher else True
        source_ok = exp.source_student() if needs_source else True
        generic_ok = {part: exp.generic(part) for part in {FROM_GENERIC[m] for m, _, _ in todo if m in FROM_GENERIC}}
        runnable = []
        for method, size, seed in todo:
            if (
                (method not in WITHOUT_TEACHER and not teacher_ok)
                or (method in FROM_SOURCE and not source_ok)
                or (method in FROM_GENERIC and not generic_ok[FROM_GENERIC[method]])
            ):
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
                    say(f"{method} n={size} seed={seed}: AUC {row['auc']} ({seconds:.0f} s)")
        bar.close()

    rows = read_rows(exp.csv_path)
    merged_rows, merged = exp.merged_curves(args.merge_from, rows)
    larger = [
        f"n = {', '.join(map(str, curve['sizes']))}: of a pool of {curve['pool']} in {curve['folder']}, merged"
        for curve in merged
        if curve["sizes"]
    ]
    pools = f"a pool of {exp.pool} images (the rest unlabelled" + "".join(f"; {text}" for text in larger)
    pools += "; each smaller pool is the first images of a larger)" if larger else ")"
    rows += merged_rows
    methods = method_order(rows, args.methods)
    seeds = {int(r["seed"]) for r in rows if r["method"] != TEACHER}
    a = args
    uses_teacher = any(m not in WITHOUT_TEACHER for m in methods)
    teacher = (
        f"teacher trained on {a.n_teacher} images of domain {a.teacher_domain}"
        f"{' (given: ' + str(a.teacher_ckpt) + ')' if a.teacher_ckpt else f', {a.teacher_epochs} epochs'}; "
        if uses_teacher
        else "no teacher (every method learns from the local labels alone); "
    )
    context = (
        f"Task {a.task}; {teacher}"
        f"local domain {a.student_domain}: labelled subsets of {pools} "
        f"plus {a.n_unlabeled} unlabelled, {a.n_val} validation and {a.n_test} test images; "
        f"{a.image_size} px, {a.epochs} epochs per run. Metrics on the local test set."
    )
    if any(m in FROM_GENERIC for m in methods):
        pretrained = (
            f"pretrained on {a.n_generic} generic images for {a.generic_epochs} epochs (scripts/pretrain_generic.py)"
        )
        given = [part for part in ("student", "teacher") if getattr(a, f"generic_{part}_ckpt")]
        context += f" transfer_generic_*: {pretrained}" + (f", the {' and '.join(given)} given" if given else "")
        context += "; heads left random, fine-tuned on the local labels."
    outputs = [exp.csv_path, exp.out / f"{exp.stem}.png", exp.out / f"{exp.stem}.md", exp.meta_path]
    all_rows = exp.out / f"{exp.stem}_merged.csv"  # the table's rows in one file, where other folders' join them
    all_rows.unlink(missing_ok=True)
    if merged:
        write_rows(all_rows, rows)
        outputs.append(all_rows)
    write_markdown(outputs[2], rows, methods, context)
    title = f"{a.task}: teacher domain {a.teacher_domain} -> local domain {a.student_domain}, {a.image_size} px"
    plot(outputs[1], rows, methods, f"{title}, {a.epochs} epochs, seeds {', '.join(map(str, sorted(seeds)))}")
    exp.write_metadata(report_only=args.report_only, merged=merged)
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
    sys.exit(main())
