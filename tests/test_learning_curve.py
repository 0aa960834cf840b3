"""scripts/learning_curve.py end to end on tiny data: CSV, figure, tables and report; resuming redoes nothing; a
failing run is reported without losing the others; other settings on the same output folder are refused."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from bundle.files import file_sha256, folder_sha256
from bundle.networks import load_weights, weights_sha256
from bundle.provenance import device_name, git_commit, numerics_record
from scripts import learning_curve  # a package module: a mutation run replaces scripts/
from scripts.learning_curves import experiment, render
from scripts.learning_curves.rows import COLUMNS, append_row
from tests.forked import ForkingSubprocess, run_python

ROOT = Path(__file__).resolve().parents[1]

SIZES, METHODS, SEEDS = (8, 16), ("scratch", "kd"), (0,)
N_UNLABELED = 4


def arguments(out: Path, *extra: str) -> list[str]:
    return [
        *("--task", "fundus", "--sizes", *map(str, SIZES), "--seeds", *map(str, SEEDS)),
        *("--n-teacher", "16", "--n-unlabeled", str(N_UNLABELED), "--n-val", "8", "--n-test", "16"),
        *("--image-size", "32", "--epochs", "1", "--teacher-epochs", "1", "--batch-size", "8", "--num-workers", "0"),
        *("--out", str(out)),
        *extra,
    ]


def run_script(*args: str) -> subprocess.CompletedProcess:
    """``python scripts/learning_curve.py ARGS`` in a fork (tests/forked.py), its bundle runs forks too when the test
    has put ForkingSubprocess in place of ``experiment.subprocess``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return run_python(["scripts/learning_curve.py", *args], cwd=ROOT, env=env, timeout=900)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_learning_curve_end_to_end(tmp_path, monkeypatch, capsys):
    out = tmp_path / "lc"
    # a given source student (never loaded: the transfer_student runs below are simulated), so none is trained; its
    # SHA-256 is recorded once a method that starts from it runs
    source = tmp_path / "source_student.pt"
    source.write_bytes(b"unused")
    args = arguments(out, "--source-student-ckpt", str(source))
    monkeypatch.setattr(experiment, "subprocess", ForkingSubprocess)  # the bundle runs: forks, for the suite's time
    first = run_script(*args, "--methods", *METHODS)
    assert first.returncode == 0, f"{first.stdout[-3000:]}\n{first.stderr[-5000:]}"

    csv_path = out / "learning_curve_fundus.csv"
    rows = read_rows(csv_path)
    assert sorted((r["method"], int(r["n_labeled"]), int(r["seed"])) for r in rows) == sorted(
        (m, n, s) for m in METHODS for n in SIZES for s in SEEDS
    )
    for row in rows:
        assert 0.0 <= float(row["auc"]) <= 1.0 and 0.0 <= float(row["accuracy"]) <= 1.0
        assert math.isfinite(float(row["kappa"]))  # fundus grading has a kappa
        assert (row["task"], row["teacher_domain"], row["student_domain"]) == ("fundus", "A", "B")
        assert float(row["train_seconds"]) > 0
        # KD also distils on the rest of the pool and the extra unlabelled images; scratch uses labels only
        expected = max(SIZES) - int(row["n_labeled"]) + N_UNLABELED if row["method"] == "kd" else 0
        assert int(row["n_unlabeled"]) == expected
        assert row["code_version"] == git_commit()  # the code that made the row
    # the labelled sets are subsets of the local pool, of the requested sizes, the rest unlabelled
    local = out / "data" / "fundus_local_B"
    pool = {item["image"] for item in json.loads((local / "datalist.json").read_text())["training"]}
    for size in SIZES:
        datalist = json.loads((local / f"datalist_n{size}_seed0.json").read_text())
        assert len(datalist["training"]) == size and {i["image"] for i in datalist["training"]} <= pool
        assert len(datalist["unlabeled"]) == max(SIZES) - size + N_UNLABELED
        assert not any("label" in item for item in datalist["unlabeled"])

    png = out / "learning_curve_fundus.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    md = (out / "learning_curve_fundus.md").read_text()
    assert "| method | n = 8 | n = 16 |" in md and "| scratch |" in md and "| kd |" in md
    assert f"each row, its count): {git_commit()} ({len(rows)} rows)." in md
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    for row in rows:  # the values appear both in the markdown summary (mean of one seed) and the raw CSV table
        assert f"{float(row['auc']):.3f} ± 0.000 (1)" in html and row["auc"] in html
    assert "scripts/learning_curve.py" in html  # the command that made the results

    # started again as it was: every run is finished, so no bundle command runs and the CSV is unchanged
    def no_command(self, *args, **kwargs):
        raise AssertionError(f"a finished run ran again: {args}")

    monkeypatch.setattr(learning_curve.Experiment, "bundle", no_command)
    assert learning_curve.main([*args, "--methods", *METHODS]) == 0
    assert read_rows(csv_path) == rows
    # --report-only with runs still to do (another seed) runs nothing and reports the finished ones
    (out / "learning_curve_fundus.md").unlink()
    trained_by = json.loads((out / "learning_curve_fundus.json").read_text())
    assert learning_curve.main([*args, "--methods", *METHODS, "--seeds", "0", "7", "--report-only"]) == 0
    reported = json.loads((out / "learning_curve_fundus.json").read_text())
    assert {k: reported[k] for k in trained_by} == trained_by  # the training machine's record survives a re-report
    assert "--report-only" in reported["report_command"] and trained_by["device"]
    # ... also where the networks the command names are not (the tables remade on another machine); a training
    # command is refused before any work
    gone = ["--source-student-ckpt", str(source), "--generic-student-ckpt", str(tmp_path / "gone.pt")]
    assert learning_curve.main([*arguments(out, *gone), "--methods", *METHODS, "--report-only"]) == 0
    with pytest.raises(SystemExit):
        learning_curve.parse_args([*arguments(out, *gone), "--methods", *METHODS])
    assert read_rows(csv_path) == rows and (out / "learning_curve_fundus.md").is_file()

    # extended by a method whose runs crash and a seed whose runs succeed (bundle commands simulated, for time):
    # the crash is reported and the runs after it still finish; finished runs are not redone, nothing is duplicated
    calls = []

    def simulated(self, workflow, config, log, *overrides):
        where = dict(zip(overrides[::2], overrides[1::2]))
        calls.append((workflow, where["--output_dir"]))
        if "transfer_student" in config:
            return False, 0.5
        if workflow == "evaluating":
            Path(where["--output_dir"]).mkdir(parents=True)
            (Path(where["--output_dir"]) / "metrics.csv").write_text("test_auc,0.75\naccuracy,0.5\nkappa,0.25\n")
        return True, 1.0

    monkeypatch.setattr(learning_curve.Experiment, "bundle", simulated)
    # (two runs at a time: the rows still arrive once each, failures are still reported). HEAD moves while the
    # command runs (a commit landing beside an experiment): its rows and its JSON entry keep the commit it started at
    commits = iter(["commit-at-start"])
    monkeypatch.setattr(experiment, "git_commit", lambda: next(commits, "commit-moved"))
    extend = [*args, "--methods", *METHODS, "transfer_student", "--seeds", "0", "1", "--sizes", "8", "--jobs", "2"]
    killed = out / "runs" / "fundus" / "scratch" / "n8_seed1"  # an attempt killed after epoch 3: the run resumes
    killed.mkdir(parents=True)
    (killed / "train_checkpoint_3.pt").write_bytes(b"")
    code = learning_curve.main(extend)
    assert code == 1 and "FAILED: transfer_student n8_seed0 (training)" in capsys.readouterr().out
    assert all("seed0" not in output or "transfer_student" in output for _, output in calls)
    new = read_rows(csv_path)
    assert new[: len(rows)] == rows
    assert sorted((r["method"], r["n_labeled"], r["seed"], r["auc"]) for r in new[len(rows) :]) == [
        ("kd", "8", "1", "0.75"),
        ("scratch", "8", "1", "0.75"),
    ]
    # the JSON keeps every command that ran on the folder (the rerun above and the re-report add none)
    commands = json.loads((out / "learning_curve_fundus.json").read_text())["commands"]
    assert len(commands) == 2 and "--jobs" not in commands[0]["command"] and "--jobs 2" in commands[1]["command"]
    assert commands[1]["git_commit"] == "commit-at-start" and commands[0]["started"] <= commands[1]["started"]
    assert json.loads((out / "learning_curve_fundus.json").read_text())["git_commit"] == "commit-at-start"
    assert {r["code_version"] for r in new[len(rows) :]} == {"commit-at-start"}
    # the resumed run's time covers only its last attempt: left blank rather than reported short
    assert {r["method"]: r["train_seconds"] for r in new[len(rows) :]} == {"kd": "1.0", "scratch": ""}
    assert not any(killed.glob("train_checkpoint_*.pt"))

    # a teacher other than the one the rows were made with (given, or retrained differently in a fresh folder that
    # holds only the CSV and JSON) is refused: the runs that need it are skipped, the others go on
    teacher = out / "models" / "fundus" / "teacher.pt"
    meta_path = out / "learning_curve_fundus.json"
    recorded = json.loads(meta_path.read_text())["networks_sha256"]
    # given, then used; a file torch cannot read as weights (the test's stand-in source student) by the file's hash
    assert recorded == {"teacher": weights_sha256(teacher), "source_student": "file:" + file_sha256(source)}
    # the digest is of the weights, not of the file: the same tensors saved again are another file, and are accepted
    state, saved_file = load_weights(teacher), file_sha256(teacher)
    torch.save(state, teacher)
    assert file_sha256(teacher) != saved_file  # torch.save: another serialization id
    exp = experiment.Experiment(learning_curve.parse_args(args))
    assert exp.same_weights("teacher", teacher) and not exp.failures
    # one weight moved is another teacher
    name = next(key for key, value in state.items() if value.is_floating_point())
    state[name] = state[name] + 1e-3
    torch.save(state, teacher)
    code = learning_curve.main([*args, "--methods", *METHODS, "--seeds", "2", "--sizes", "8"])
    printed = capsys.readouterr().out
    assert code == 1 and "REFUSED" in printed and "not the teacher's the runs" in " ".join(printed.split())
    assert "They were made" not in printed  # the same machine made the rows: nothing to say about it
    assert "This machine's record is the same as theirs" in " ".join(printed.split())  # say() may wrap the line
    assert [(r["method"], r["seed"]) for r in read_rows(csv_path)[len(new) :]] == [("scratch", "2")]
    # the record of what retraining must share, for the folder and for each command that ran on it
    meta = json.loads(meta_path.read_text())
    assert meta["numerics"] == numerics_record() and meta["numerics"]["numpy"] == np.__version__
    assert all(entry["numerics"] == numerics_record() for entry in meta["commands"])

    def refusal(meta: dict, seed: str) -> str:
        """The output of a kd run (it needs the teacher, which is refused: nothing trains) on a folder whose JSON
        says ``meta`` (the record before this command replaces it)."""
        meta_path.write_text(json.dumps(meta))
        assert learning_curve.main([*args, "--methods", "kd", "--seeds", seed, "--sizes", "8"]) == 1
        return " ".join(capsys.readouterr().out.split())  # say() may wrap the line

    # rows made with another numpy: the refusal, and a note before any run, name what differs
    printed = refusal({**meta, "numerics": {**meta["numerics"], "numpy": "0.0"}}, "3")
    assert f"made with numpy: '0.0' there, {np.__version__!r} here" in printed and "REFUSED" in printed
    assert printed.index("NOTE: the finished runs") < printed.index("REFUSED")
    # a folder from before the record, made on another kind of machine: the refusal names both machines
    older = {k: v for k, v in meta.items() if k != "numerics"}
    printed = refusal({**older, "device": "Other CPU, 2 cores, AVX512"}, "3")
    assert f"made on 'Other CPU, 2 cores, AVX512', this machine is {device_name()!r}" in printed
    assert "numerics" not in json.loads(meta_path.read_text())  # another machine's rows are not credited to this one
    assert json.loads(meta_path.read_text())["device"] == device_name()  # this command's machine, recorded
    # ... and on a machine of the same name: what differs is not known, and the refusal says what can
    printed = refusal({**older, "device": device_name()}, "3")
    assert "predates that record" in printed and "another numpy, scipy or Pillow" in printed
    # a folder from before 0.16.14 recorded the teacher file's hash: that very file is accepted, any other refused with
    # the check that can tell (a finished run given it)
    legacy = {k: v for k, v in older.items() if k != "networks_sha256"}
    meta_path.write_text(json.dumps({**legacy, "weights_sha256": {"teacher": file_sha256(teacher)}}))
    assert experiment.Experiment(learning_curve.parse_args(args)).same_weights("teacher", teacher)
    printed = refusal({**legacy, "weights_sha256": {"teacher": "ab" * 32}}, "3")
    assert "a file's hash changes on every save" in printed and "delete weights_sha256.teacher from" in printed

    # the images the rows were made on, one digest per generated site: a changed pixel refuses the command before any
    # run (the test set would not be theirs), naming the folder
    local = out / "data" / "fundus_local_B"
    digests = json.loads(meta_path.read_text())["data_sha256"]
    assert set(digests) == {"teacher_site", "local_site"} and digests["local_site"] == folder_sha256(local)
    image = sorted((local / "images").glob("*.png"))[0]
    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] ^= 1
    Image.fromarray(pixels).save(image)
    with pytest.raises(SystemExit, match=f"REFUSED: the images in {re.escape(str(local))} .* not the local site's"):
        learning_curve.main([*args, "--methods", *METHODS, "--seeds", "4", "--sizes", "8"])

    # the same folder with other settings would mix incomparable runs: refused before any work
    with pytest.raises(SystemExit, match="other settings.*epochs: 1 -> 2"):
        learning_curve.main([*args, "--methods", *METHODS, "--epochs", "2"])


def test_a_csv_from_before_a_new_column_is_rewritten_with_its_rows_kept(tmp_path):
    csv_path = tmp_path / "learning_curve_fundus.csv"
    old_columns = [c for c in COLUMNS if c != "code_version"]
    old_row = {c: f"old {c}" for c in old_columns}
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=old_columns)
        writer.writeheader()
        writer.writerow(old_row)
    new_row = {c: f"new {c}" for c in COLUMNS}
    append_row(csv_path, new_row)
    with open(csv_path, newline="") as f:
        assert next(csv.reader(f)) == COLUMNS
    assert read_rows(csv_path) == [{**old_row, "code_version": ""}, new_row]


def test_paired_differences_compare_the_same_labelled_sets_and_seeds(tmp_path):
    def row(method, n, seed, auc):
        return {"task": "fundus", "method": method, "n_labeled": str(n), "seed": str(seed), "auc": str(auc)}

    rows = [
        *(row("kd", 25, s, a) for s, a in ((0, 0.60), (1, 0.70), (2, 0.65))),
        *(row("medtex", 25, s, a) for s, a in ((0, 0.64), (1, 0.69), (2, 0.71))),
        row("medtex", 50, 0, 0.80),  # kd has no n = 50 run: no pair there
        row("kd", 50, 1, 0.75),  # other seed: no pair either
    ]
    diffs = render.paired_differences(rows, "auc", "medtex", "kd")
    assert diffs.keys() == {25} and diffs[25] == pytest.approx([0.04, -0.01, 0.06])
    path = tmp_path / "lc.md"
    render.write_markdown(path, rows, ["kd", "medtex"], "context")
    md = path.read_text()
    # mean +0.030, sample sd of (0.04, -0.01, 0.06) = 0.036, medtex higher on 2 of 3 seeds; 95% interval of the mean
    # +0.030 ± t(0.975, 2 dof) 4.303 * 0.036 / sqrt(3) = +0.030 ± 0.090
    assert "| medtex - kd | +0.030 ± 0.036 [-0.060, +0.120] (2/3) |  |" in md
    low, high = stats.ttest_1samp([0.04, -0.01, 0.06], 0.0).confidence_interval()  # scipy's paired t-test
    assert render.paired_interval(0.03, statistics.stdev([0.04, -0.01, 0.06]), 3) == pytest.approx((low, high))
    assert "medtex - scratch" not in md  # pairs without runs are left out
    generic = [*(row("transfer_generic_student", 25, s, a) for s, a in ((0, 0.70), (1, 0.66), (2, 0.62)))]
    render.write_markdown(path, [*rows, *generic], ["kd", "medtex", "transfer_generic_student"], "context")
    # medtex - transfer_generic_student: (-0.06, +0.03, +0.09): mean +0.020, sd 0.0755, medtex higher on 2 of 3
    assert "| medtex - transfer_generic_student | +0.020 ± 0.075 [-0.168, +0.208] (2/3) |  |" in path.read_text()
    teacher_arch = [row("transfer_generic_teacher", 25, s, a) for s, a in ((0, 0.62), (1, 0.72), (2, 0.66))]
    render.write_markdown(path, [*rows, *generic, *teacher_arch], ["kd", "transfer_generic_teacher"], "context")
    # kd - transfer_generic_teacher: (-0.02, -0.02, -0.01): mean -0.017, sd 0.006, kd higher on none; the interval
    # -0.017 ± 4.303 * 0.0058 / sqrt(3) = -0.017 ± 0.014 holds no 0
    assert "| kd - transfer_generic_teacher | -0.017 ± 0.006 [-0.031, -0.002] (0/3) |  |" in path.read_text()
    # the teacher's architecture against the student's, both generically pretrained: (-0.08, +0.06, +0.04)
    assert "| transfer_generic_teacher - transfer_generic_student | +0.007 ± 0.076 [-0.181, +0.195] (2/3) |  |" in (
        path.read_text()
    )


def test_table_means_sample_sds_and_seed_counts_worked_out_by_hand(tmp_path):
    def row(method, n, seed, auc, accuracy="", kappa=""):
        return {
            "task": "fundus",
            "method": method,
            "n_labeled": str(n),
            "seed": str(seed),
            "auc": auc,
            "accuracy": accuracy,
            "kappa": kappa,
        }

    rows = [
        {
            **row("teacher", 0, 0, "0.9", accuracy="0.8"),
            "code_version": "abc1234",
        },  # accuracy of the teacher alone: no accuracy table
        *(row("kd", 25, s, a, kappa=k) for s, a, k in ((0, "0.60", "0.5"), (1, "0.70", ""), (2, "0.65", ""))),
        *(row("medtex", 25, s, a, kappa=k) for s, a, k in ((0, "0.64", "0.6"), (1, "0.69", ""), (2, "0.71", ""))),
        {**row("medtex", 50, 0, "0.80"), "code_version": "abc1234"},
        row("medtex", 50, 1, "nan"),  # a failed evaluation: left out, not averaged in
        row("medtex", 50, 2, ""),
    ]
    stats = render.summarise(rows, "auc")
    assert stats["kd"][25] == pytest.approx((0.65, 0.05, 3))  # sample sd: sqrt((0.05^2 + 0.05^2) / 2)
    assert stats["medtex"][50] == (0.80, 0.0, 1)
    two = render.summarise([row("kd", 8, 0, "0.5"), row("kd", 8, 1, "0.7")], "auc")
    assert two["kd"][8] == pytest.approx((0.6, math.sqrt(0.02), 2))
    path = tmp_path / "lc.md"
    render.write_markdown(path, rows, ["medtex", "teacher", "kd"], "on 2 cores")
    # medtex sd at n = 25: sqrt((0.04^2 + 0.01^2 + 0.03^2) / 2) = 0.036; medtex - kd: 0.04, -0.01, 0.06
    assert path.read_text().split("\n") == [
        "# Learning curve: fundus",
        "",
        "on 2 cores",
        "",
        "## auc: mean ± sd (n seeds)",
        "",
        "| method | n = 25 | n = 50 |",
        "|---|---:|---:|",
        "| medtex | 0.680 ± 0.036 (3) | 0.800 ± 0.000 (1) |",
        "| kd | 0.650 ± 0.050 (3) |  |",
        "",
        "Teacher (no local labels, trained on the teacher's data): auc 0.900.",
        "",
        "## kappa: mean ± sd (n seeds)",
        "",
        "| method | n = 25 | n = 50 |",
        "|---|---:|---:|",
        "| medtex | 0.600 ± 0.000 (1) |  |",
        "| kd | 0.500 ± 0.000 (1) |  |",
        "",
        "## auc: paired differences (same labelled set and seed): mean ± sd [95% confidence interval of the mean,"
        " paired t] (seeds where the first is higher / seeds)",
        "",
        "An interval that holds 0 shows no difference at these seeds; with few seeds it is wide (t = 4.30 for 3 seeds),"
        " which is why differences under 0.03 get 5 seeds.",
        "",
        "| methods | n = 25 | n = 50 |",
        "|---|---:|---:|",
        "| medtex - kd | +0.030 ± 0.036 [-0.060, +0.120] (2/3) |  |",
        "",
        "Code versions (git commit that made each row, its count): not recorded (8 rows); abc1234 (2 rows).",
        "",
    ]
    render.write_markdown(path, [row("kd", 8, 0, "0.5")], ["kd"], "one run")
    assert path.read_text().startswith("# Learning curve: fundus\n\none run\n\n## auc")
    render.write_markdown(path, [], [], "nothing finished yet")
    assert path.read_text() == "# Learning curve: \n\nnothing finished yet\n"


def test_paired_table_for_own_methods_single_seeds_and_ties(tmp_path):
    def row(method, n, seed, auc):
        return {"task": "fundus", "method": method, "n_labeled": str(n), "seed": str(seed), "auc": str(auc)}

    rows = [
        row("medtex", 25, 0, 0.70),
        row("medtex", 25, 1, 0.60),
        row("scratch", 25, 0, 0.60),
        row("scratch", 25, 1, 0.60),  # a tie: not a seed where medtex is higher
        row("mine", 25, 0, 0.75),  # a --method-config method, compared with medtex and scratch
        row("vid", 25, 0, 0.65),  # a baseline of configs/baselines/ outside the pairs: no row of its own
        row("medtex", 50, 0, 0.80),
        row("scratch", 50, 0, 0.85),
    ]
    path = tmp_path / "lc.md"
    methods = render.method_order(rows, ["medtex", "scratch"])
    assert methods == ["medtex", "scratch", "mine", "vid"]
    render.write_markdown(path, rows, methods, "context")
    lines = path.read_text().split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("## auc: paired differences"))
    assert lines[start:] == [
        lines[start],
        "",
        "An interval that holds 0 shows no difference at these seeds; with few seeds it is wide"
        " (t = 12.71 for 2 seeds), which is why differences under 0.03 get 5 seeds.",
        "",
        "| methods | n = 25 | n = 50 |",
        "|---|---:|---:|",
        # 0.10, 0.00: sd sqrt(0.005), interval +0.050 ± t(0.975, 1 dof) 12.706 * 0.0707 / sqrt(2) = ± 0.635; one seed:
        # no interval
        "| medtex - scratch | +0.050 ± 0.071 [-0.585, +0.685] (1/2) | -0.050 ± 0.000 (0/1) |",
        "| mine - medtex | +0.050 ± 0.000 (1/1) |  |",  # one seed in common: sd 0
        "| mine - scratch | +0.150 ± 0.000 (1/1) |  |",
        "",
        f"Code versions (git commit that made each row, its count): not recorded ({len(rows)} rows).",
        "",
    ]
    # t(0.975, 2) = 4.303 and t(0.975, 4) = 2.776 from a printed t table: a table with 3- and 5-seed rows names both
    assert render._t_multipliers([3, 5]) == "t = 4.30 for 3 seeds, t = 2.78 for 5 seeds"
    render.write_markdown(path, [r for r in rows if r["seed"] == "0"], methods, "context")
    assert "One seed per row: no interval." in path.read_text().split("\n")


def test_command_history_starts_from_a_folder_recorded_before_it():
    """A JSON from before the history (one command, its commit) keeps that command first; the same command at the
    same commit on the same machine again adds nothing, at another commit or on another machine it is a new entry."""
    from scripts.learning_curves.experiment import Experiment

    here, there = {"numpy": "2.0"}, {"numpy": "1.0"}
    old = {"command": "python scripts/learning_curve.py --seeds 0", "git_commit": "abc", "updated": "t1"}
    history = Experiment._commands(old, "python scripts/learning_curve.py --seeds 1", "def", "t2", here)
    assert history[0] == {
        "command": "python scripts/learning_curve.py --seeds 0",
        "git_commit": "abc",
        "last_updated": "t1",
    }
    assert history[1]["command"].endswith("--seeds 1") and history[1]["started"] == "t2" and len(history) == 2
    assert history[1]["numerics"] == here
    again = {**old, "commands": history}
    assert Experiment._commands(again, history[1]["command"], "def", "t3", here) == history
    moved = {**old, "commands": [*history[:1], {**history[1], "git_commit": "other"}]}
    assert len(Experiment._commands(moved, history[1]["command"], "def", "t3", here)) == 3
    elsewhere = Experiment._commands(again, history[1]["command"], "def", "t3", there)
    assert len(elsewhere) == 3 and elsewhere[-1]["numerics"] == there


def test_merge_from_joins_a_larger_pool_on_the_same_test_set_and_refuses_any_other(tmp_path):
    """--merge-from: the other folder's rows join the tables, plot and one CSV, its teacher row once; a folder with
    other settings, other weights, a size of this curve or another teacher score is refused, naming what differs."""
    small, large = tmp_path / "small", tmp_path / "large"
    args = arguments(small, "--methods", "scratch", "kd", "--report-only")

    def make_curve(folder: Path, pool: int, rows: list[tuple[str, int, int, float]], **changed) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        exp = experiment.Experiment(learning_curve.parse_args(arguments(folder)))
        settings = {**exp.settings(), "pool": pool, **changed}
        meta = {"settings": settings, "networks_sha256": {"teacher": "ab" * 32}, "commands": [{"command": str(pool)}]}
        (folder / "learning_curve_fundus.json").write_text(json.dumps(meta))
        for method, n, seed, auc in rows:
            append_row(
                folder / "learning_curve_fundus.csv",
                {
                    "task": "fundus",
                    "method": method,
                    "n_labeled": n,
                    "seed": seed,
                    "auc": auc,
                    "teacher_domain": "A",
                    "student_domain": "B",
                    "code_version": "c0ffee",
                },
            )

    make_curve(small, 16, [("teacher", 0, 0, 0.75), ("scratch", 16, 0, 0.60), ("kd", 16, 0, 0.70)])
    large_rows = [("teacher", 0, 0, 0.75), *(("scratch", 64, s, a) for s, a in ((0, 0.80), (1, 0.70)))]
    large_rows += [("kd", 64, s, a) for s, a in ((0, 0.78), (1, 0.76))]
    make_curve(large, 64, large_rows)
    assert learning_curve.main([*args, "--merge-from", str(large)]) == 0
    md = (small / "learning_curve_fundus.md").read_text()
    assert "| kd | 0.700 ± 0.000 (1) | 0.770 ± 0.014 (2) |" in md  # kd at 64: (0.78 + 0.76) / 2, sd 0.0141
    # kd - scratch at 64: (-0.02, +0.06): mean +0.020, sd 0.0566, kd higher on 1 of 2
    assert "| kd - scratch | +0.100 ± 0.000 (1/1) | +0.020 ± 0.057" in md
    assert (
        f"(the rest unlabelled; n = 64: of a pool of 64 in {large.resolve()}, merged; each smaller" in md
        and "a pool of 16 images" in md
    )
    merged_csv = read_rows(small / "learning_curve_fundus_merged.csv")
    assert len(merged_csv) == 3 + 4 and sum(r["method"] == "teacher" for r in merged_csv) == 1
    assert len(read_rows(small / "learning_curve_fundus.csv")) == 3  # the folder's own runs are left as they were
    meta = json.loads((small / "learning_curve_fundus.json").read_text())
    assert [(m["pool"], m["sizes"], m["rows"], m["commands"]) for m in meta["merged_from"]] == [
        (64, [64], 4, [{"command": "64"}])
    ]

    training = arguments(small, "--methods", "scratch", "kd")  # refused before it trains or is recorded
    refusals = {
        "image_size: 64 there, 32 here": {"image_size": 64},
        "teacher weights: SHA-256 cdcdcdcdcdcd there": {},
        "n = 16 in both": {},
        "the teacher's test AUC 0.76 there, 0.75 here": {},
    }
    for i, (message, changed) in enumerate(refusals.items()):
        other = tmp_path / f"other{i}"
        rows = [("teacher", 0, 0, 0.76 if "AUC" in message else 0.75), ("kd", 16 if "16" in message else 64, 0, 0.7)]
        make_curve(other, 64, rows, **changed)
        if "SHA" in message:
            meta_path = other / "learning_curve_fundus.json"
            meta_path.write_text(
                json.dumps({**json.loads(meta_path.read_text()), "networks_sha256": {"teacher": "cd" * 32}})
            )
        with pytest.raises(SystemExit, match=message):
            learning_curve.main([*training, "--merge-from", str(other)])
    with pytest.raises(SystemExit, match="no learning curve of task fundus"):
        learning_curve.main([*training, "--merge-from", str(tmp_path / "nothing")])
    commands = json.loads((small / "learning_curve_fundus.json").read_text()).get("commands", [])
    assert not any("other" in c["command"] or "nothing" in c["command"] for c in commands)  # refused: not recorded

    assert learning_curve.main(args) == 0  # without it, the table is the folder's own again
    assert "n = 64" not in (small / "learning_curve_fundus.md").read_text()
    assert not (small / "learning_curve_fundus_merged.csv").exists()
    assert "merged_from" not in json.loads((small / "learning_curve_fundus.json").read_text())


def test_a_folder_digest_covers_every_file_and_its_name_but_not_its_datalists(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        (folder / "images").mkdir(parents=True)
        (folder / "images" / "x.png").write_bytes(b"\x00\x01")
        (folder / "images" / "y.png").write_bytes(b"\x02")
        (folder / "datalist.json").write_text(json.dumps({"training": [{"image": str(folder / "images" / "x.png")}]}))
    assert folder_sha256(a) == folder_sha256(b)  # the same files elsewhere, datalists left out
    (b / "datalist_n8_seed0.json").write_text("{}")
    assert folder_sha256(a) == folder_sha256(b)  # a labelled subset written later changes nothing
    (b / "images" / "y.png").rename(b / "images" / "z.png")
    assert folder_sha256(a) != folder_sha256(b)  # the same bytes under another name
    (b / "images" / "z.png").rename(b / "images" / "y.png")
    (b / "images" / "y.png").write_bytes(b"\x03")
    assert folder_sha256(a) != folder_sha256(b)
    (b / "images" / "y.png").write_bytes(b"\x02")
    (b / "images" / "w.png").write_bytes(b"")
    assert folder_sha256(a) != folder_sha256(b)  # one file more, even an empty one
