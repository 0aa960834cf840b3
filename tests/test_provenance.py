"""bundle.provenance: one description of the machine, code and command behind every result file."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import PIL
import scipy
import torch

from bundle.provenance import (
    ROOT,
    command_line,
    cpu_id,
    cpu_name,
    device_name,
    git_commit,
    machine_info,
    numerics_differences,
    numerics_record,
    portable_path,
)
from scripts import benchmark
from scripts.benchmarking.settings import make_settings


def test_paths_inside_the_repository_are_written_relative_to_it(tmp_path):
    assert ROOT == Path(__file__).resolve().parents[1]
    assert portable_path(ROOT) == "."
    assert portable_path(ROOT / "docs" / "results" / "x.json") == "docs/results/x.json"
    assert portable_path(ROOT / "docs" / ".." / "configs") == "configs"  # resolved first
    assert portable_path(tmp_path / "a.pt") == str((tmp_path / "a.pt").resolve())  # outside: absolute
    assert portable_path(tmp_path / "a.pt", root=tmp_path) == "a.pt"


def test_command_lines_can_be_pasted_into_a_shell():
    command = command_line(["python", "-m", "monai.bundle", "run", "--config_file", "['a.yaml','b.yaml']", "x y"])
    assert command == "python -m monai.bundle run --config_file \"['a.yaml','b.yaml']\" \"x y\""
    assert command_line(["echo", "$HOME"]) == "echo '$HOME'"  # a $ keeps shlex's single quotes


def test_machine_record_names_cpu_cores_threads_and_versions():
    info = machine_info(torch.device("cpu"), bf16_native=False)
    assert info["device"] == "cpu" and info["device_name"] == info["cpu"] == cpu_name() != ""
    assert info["logical_cores"] == os.cpu_count() and 1 <= info["usable_cores"] <= os.cpu_count()
    assert info["torch_threads"] == torch.get_num_threads() and info["torch"] == torch.__version__
    assert info["bf16_native"] is False
    assert list(info)[:7] == [
        "cpu",
        "logical_cores",
        "usable_cores",
        "torch_threads",
        "device",
        "device_name",
        "bf16_native",
    ]  # the order of the benchmark JSON's "machine" before the split


def test_a_cpu_is_named_with_the_vector_instructions_torch_uses_on_it(monkeypatch):
    # two "AMD EPYC, 2 cores" machines, one with AVX-512 and one without, train different weights from one seed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert device_name() == f"{cpu_name()}, {os.cpu_count()} cores, AVX512"
    assert machine_info(torch.device("cpu"))["cpu_capability"] == "AVX512"


def test_the_numerics_record_names_the_cpu_generation_threads_and_the_data_libraries(monkeypatch):
    # two "AMD EPYC, 2 cores, AVX2" machines trained different weights from one seed: the record says more than that
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    record = numerics_record()
    assert record["cpu"] == cpu_name() and record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["torch_threads"] == torch.get_num_threads() and "gpu" not in record
    assert (record["torch"], record["numpy"]) == (torch.__version__, np.__version__)
    assert (record["scipy"], record["PIL"]) == (scipy.__version__, PIL.__version__)
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    family = re.search(r"^cpu family\s*:\s*(\d+)", text, re.M)
    if family:  # an x86 Linux machine: the first processor's family, model and stepping
        model = re.search(r"^model\s*:\s*(\d+)", text, re.M)
        stepping = re.search(r"^stepping\s*:\s*(\d+)", text, re.M)
        assert cpu_id() == record["cpu_id"] == f"family {family[1]} model {model[1]} stepping {stepping[1]}"
    else:
        assert cpu_id() is None
    assert numerics_differences(record, dict(record)) == []
    assert numerics_differences({"numpy": "1.0", "cpu": "A"}, {"numpy": "2.0", "cpu": "A", "gpu": "H100"}) == [
        "numpy: '1.0' there, '2.0' here",
        "gpu: None there, 'H100' here",
    ]


def test_git_commit_is_the_checked_out_one_marked_when_dirty(tmp_path):
    assert git_commit(tmp_path) is None  # not a repository

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True)

    run("init", "-q")
    (tmp_path / "f").write_text("1")
    run("add", "f")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m")
    head = run("rev-parse", "HEAD").stdout.strip()
    assert git_commit(tmp_path) == head and re.fullmatch(r"[0-9a-f]{40}", head)
    (tmp_path / "f").write_text("2")
    assert git_commit(tmp_path) == head + " (with uncommitted changes)"


def test_the_benchmark_records_its_command_without_this_machines_folders(tmp_path):
    argv = ["--quick", "--json", str(ROOT / "out" / "b.json"), "--md", str(tmp_path / "p.md")]
    command = make_settings(benchmark.parse_args(argv), argv).command
    assert command == f"python scripts/benchmark.py --quick --json out/b.json --md {(tmp_path / 'p.md').resolve()}"
