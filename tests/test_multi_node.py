"""configs/multi_gpu_train.yaml past one machine: two torchrun "nodes" of one CPU process each (gloo) on this machine,
rendezvous on 127.0.0.1, reading one shared data folder and writing one shared output folder as on a cluster. The
ranks train on disjoint shares, only rank 0 writes, both hold the saved weights, and a second run with the node ranks
swapped resumes from that checkpoint. And every rank resumes from rank 0's file or all stop (``agreed_checkpoint``)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from monai.networks.nets import DenseNet121

from bundle.datasets.demo import generate_demo_data
from bundle.handlers import agreed_checkpoint
from tests.conftest import inference_network
from tests.test_multi_gpu import N_TRAIN, N_UNLABELED, TINY

ROOT = Path(__file__).resolve().parents[1]
BATCH = int(TINY["batch_size"])  # type: ignore[call-overload]
PER_RANK = (N_TRAIN + N_UNLABELED) // 2  # training images per rank and epoch (DistributedSampler, 2 ranks)

# Test instrumentation, one more overlay after multi_gpu_train.yaml: before training each process prints its rank's
# share of the training images (the sampler of epoch 1) and then every file it writes through write_atomically (the
# one write of both checkpoint savers); after training, a sum over its network's parameters.
PROBE = """
probe_writes: >-
  $(lambda m, write: setattr(m, 'write_atomically', lambda path, *a, **k:
  print('PROBE-WRITE', os.environ['RANK'], path, flush=True) or write(path, *a, **k)))(
  sys.modules['bundle.handlers.checkpoint'], sys.modules['bundle.handlers.checkpoint'].write_atomically)
training:
  - >-
    $print('PROBE-SHARE', os.environ['RANK'],
    sorted(int(i) for i in (@train#sampler.set_epoch(1) or @train#sampler)), flush=True)
  - $@train#trainer
  - $@probe_writes
  - $@train#trainer.run()
  - >-
    $print('PROBE-WEIGHTS', os.environ['RANK'],
    repr(torch.cat([p.detach().flatten() for p in @network.module.parameters()]).double().sum().item()), flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def two_nodes(work: Path, tag: str, node_ranks: dict[str, int], overrides: dict[str, str]) -> dict[str, str]:
    """Launch processes "A" and "B" at once, each ``torchrun --nnodes 2 --nproc_per_node 1 --node_rank R`` with the
    static rendezvous on 127.0.0.1 (the node rank is the one given: c10d's rendezvous would number the nodes in
    order of arrival); wait for both, return what each printed (its torchrun --log-dir, --tee 3)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    configs = str(["configs/train.yaml", "configs/multi_gpu_train.yaml", str(work / "probe.yaml")])
    processes = {}
    for name, node_rank in node_ranks.items():
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
        command += ["--node_rank", str(node_rank), "--master_addr", "127.0.0.1", "--master_port", str(port)]
        command += ["--log-dir", str(work / "logs" / f"{tag}_{name}"), "--tee", "3"]
        command += ["-m", "monai.bundle", "run", "training", "--config_file", configs]
        for key, value in {**TINY, **overrides}.items():
            command += [f"--{key}", str(value)]
        # output to files, not pipes: a full pipe read after the other process's would stall both at a collective
        with open(work / f"{tag}_{name}.out", "w") as out:
            processes[name] = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
    try:
        for process in processes.values():
            process.wait(timeout=180)  # ranks stuck at mismatched collectives never finish
    finally:
        for process in processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)  # torchrun and the worker it started
    for name, process in processes.items():
        output = (work / f"{tag}_{name}.out").read_text()
        assert process.returncode == 0, f"process {name} (node {node_ranks[name]}):\n{output[-6000:]}"
    logs = {}
    for name in node_ranks:
        files = sorted((work / "logs").glob(f"{tag}_{name}/*/attempt_0/0/std*.log"))
        assert files, f"no logs of process {name}"
        logs[name] = "".join(f.read_text() for f in files)
    return logs


def probes(log: str, kind: str) -> list[list[str]]:
    """The fields after ``PROBE-<kind>`` of each probe line a process printed (writes into the shared disk cache's
    folder left out: every rank writes its share there, and its digests index, by design)."""
    found = [line.split(f"PROBE-{kind} ", 1)[1].split(" ", 1) for line in log.splitlines() if f"PROBE-{kind} " in line]
    return [fields for fields in found if not (kind == "WRITE" and "/cache/" in fields[-1])]


def parameter_sum(state: dict[str, torch.Tensor]) -> float:
    """The probe's sum over network_def's parameters, from a saved state dict."""
    network = inference_network()
    network.load_state_dict(state)
    return torch.cat([p.detach().flatten() for p in network.parameters()]).double().sum().item()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> dict:
    """Two runs over one shared folder: 1 epoch with A as node 0 and B as node 1, then to 2 epochs swapped."""
    work = tmp_path_factory.mktemp("multi_node")
    shared = work / "shared"  # what a cluster mounts on every node: data, outputs, checkpoints (and the disk cache)
    generate_demo_data(
        "fundus",
        shared / "data",
        n_train=N_TRAIN,
        n_val=6,
        n_test=6,
        n_unlabeled=N_UNLABELED,
        size=32,
        seed=0,
        domain="B",
    )
    torch.manual_seed(0)
    torch.save({"model": DenseNet121(spatial_dims=2, in_channels=3, out_channels=5).state_dict()}, shared / "t.pt")
    (work / "probe.yaml").write_text(PROBE)
    overrides = {
        "dataset_dir": str(shared / "data"),
        "teacher_ckpt": str(shared / "t.pt"),
        "output_dir": str(shared / "run"),
        "ckpt_dir": str(shared / "models"),
        "cache": "disk",  # both nodes fill and read one disk cache on the shared folder
        "cache_dir": str(shared / "cache"),
    }
    first = two_nodes(work, "first", {"A": 0, "B": 1}, {**overrides, "max_epochs": "1"})
    checkpoint_1 = sorted((shared / "run").glob("train_checkpoint_*.pt"))
    events_1 = sorted((shared / "run").glob("events.out.tfevents.*"))
    state_1 = torch.load(shared / "run" / "train_checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    second = two_nodes(work, "second", {"A": 1, "B": 0}, {**overrides, "max_epochs": "2"})
    return {
        "shared": shared,
        "first": first,
        "second": second,
        "checkpoints_1": checkpoint_1,
        "state_1": state_1,
        "events_1": events_1,
    }


def _entries_written(log: str, split: str) -> int:
    (line,) = [line for line in log.splitlines() if f"cache ({split}): disk at" in line]
    return int(re.search(r"; (\d+) of (\d+) entries written now", line).group(1))


def test_two_nodes_fill_one_shared_disk_cache_each_its_share_and_the_second_run_reads_it(cluster):
    shared, first, second = cluster["shared"], cluster["first"], cluster["second"]
    items = N_TRAIN + N_UNLABELED
    assert _entries_written(first["A"], "training") + _entries_written(first["B"], "training") == items
    assert _entries_written(first["A"], "training") == _entries_written(first["B"], "training") == items // 2
    assert len(list((shared / "cache").rglob("*.pt"))) == items + 6  # training and validation entries, once each
    assert all(_entries_written(log, split) == 0 for log in second.values() for split in ("training", "validation"))
    assert not [p for p in (shared / "cache").rglob("*") if p.name.startswith(".part-")]


def test_two_nodes_train_disjoint_shares_and_only_rank_0_writes_once(cluster):
    shared, logs = cluster["shared"], cluster["first"]
    shares = {rank: json.loads(indices) for log in logs.values() for rank, indices in probes(log, "SHARE")}
    assert [rank for rank, _ in probes(logs["A"], "SHARE")] == ["0"]  # A was node 0: global rank 0
    assert [rank for rank, _ in probes(logs["B"], "SHARE")] == ["1"]
    assert len(shares["0"]) == len(shares["1"]) == PER_RANK and not set(shares["0"]) & set(shares["1"])
    assert sorted(shares["0"] + shares["1"]) == list(range(N_TRAIN + N_UNLABELED))
    for log in logs.values():
        assert "MedTexTrainer - INFO - Epoch[1] Complete" in log and "Epoch[2]" not in log

    # every file write came from rank 0, once each: the full checkpoint and the best weights, in the shared folders
    writes = sorted(Path(path).relative_to(shared).as_posix() for _, path in probes(logs["A"], "WRITE"))
    assert writes == ["models/model.pt", "run/train_checkpoint_epoch=1.pt"]
    assert probes(logs["B"], "WRITE") == []
    assert [p.name for p in cluster["checkpoints_1"]] == ["train_checkpoint_epoch=1.pt"]
    # the handlers that log and write TensorBoard events run on global rank 0 only, not on node 1's local rank 0
    assert "Epoch[1] Metrics -- epoch_loss" in logs["A"] and "Metrics --" not in logs["B"]
    events = cluster["events_1"]  # names end in <host>.<pid>.<n>: one writing process
    assert len(events) == 2 and len({re.sub(r"\.\d+$", "", e.name).rsplit(".", 1)[-1] for e in events}) == 1

    # each rank ran its half of the epoch: 12 images / batch 4 = 3 iterations, one epoch of them
    state = cluster["state_1"]
    assert state["trainer"]["epoch_length"] == state["trainer"]["iteration"] == PER_RANK // BATCH
    # the saved weights are what both ranks hold at the end (DDP kept them identical)
    sums = {rank: float(value) for log in logs.values() for rank, value in probes(log, "WEIGHTS")}
    assert set(sums) == {"0", "1"} and sums["0"] == sums["1"] == parameter_sum(state["network"])


def test_swapped_nodes_resume_from_the_checkpoint_rank_0_wrote(cluster):
    """The run that node 1 joined before now has B as node 0: both ranks load epoch 1's checkpoint and go on to
    epoch 2 (not from 0); B, now rank 0, is the one that writes."""
    shared, logs = cluster["shared"], cluster["second"]
    assert [rank for rank, _ in probes(logs["B"], "SHARE")] == ["0"]
    assert [rank for rank, _ in probes(logs["A"], "SHARE")] == ["1"]
    first = shared / "run" / "train_checkpoint_epoch=1.pt"
    for log in logs.values():
        assert f"resuming from {first}" in log and f"Restored all variables from {first}" in log
        assert "MedTexTrainer - INFO - Epoch[2] Complete" in log
        assert not re.search(r"Epoch\[1\] Complete", log)  # epoch 1 was not run again
    writes = [Path(path).relative_to(shared).as_posix() for _, path in probes(logs["B"], "WRITE")]
    assert "run/train_checkpoint_epoch=2.pt" in writes and set(writes) <= {
        "run/train_checkpoint_epoch=2.pt",
        "models/model.pt",
    }
    assert probes(logs["A"], "WRITE") == []
    assert "Epoch[2] Metrics -- epoch_loss" in logs["B"] and "Metrics --" not in logs["A"]

    state = torch.load(shared / "run" / "train_checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert state["trainer"]["iteration"] == 2 * state["trainer"]["epoch_length"] == 2 * PER_RANK // BATCH
    sums = {rank: float(value) for log in logs.values() for rank, value in probes(log, "WEIGHTS")}
    assert sums["0"] == sums["1"] == parameter_sum(state["network"]) != parameter_sum(cluster["state_1"]["network"])


# ------------------------------------------------- every rank resumes from rank 0's checkpoint, or none of them starts


def _agree(rank: int, port: int, cases: dict[str, list[str]], out: str) -> None:
    """One of two gloo processes: in each case, from this rank's "node" folder (its working directory), the
    ``agreed_checkpoint`` of the relative output folder ``run``, or the error."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    results = {}
    for case, nodes in cases.items():
        os.chdir(nodes[rank])
        try:
            found = agreed_checkpoint("run")
            results[case] = found.name if found else None
        except RuntimeError as error:
            results[case] = f"error: {error}"
    dist.destroy_process_group()
    Path(out, f"{rank}.json").write_text(json.dumps(results))


def test_all_ranks_resume_from_rank_0s_file_or_all_stop(tmp_path):
    """A node whose output_dir is on its local disk (not the shared folder) must not start from scratch, or from its
    own stale file, while rank 0 resumes: the ranks would train different models under one DDP. Each "node" here is
    a folder the process works in, with the same relative output_dir on both."""

    def node(name: str, *epochs: int) -> str:
        (tmp_path / name / "run").mkdir(parents=True)
        for epoch in epochs:
            (tmp_path / name / "run" / f"train_checkpoint_epoch={epoch}.pt").write_bytes(b"x")
        return str(tmp_path / name)

    shared, empty = node("shared", 1, 2), node("empty")
    cases = {
        "shared": [shared, shared],
        "nothing yet": [empty, empty],
        "only rank 0's disk has it": [node("node0", 3), node("node1")],
        "a stale file on rank 1's disk": [node("node0b"), node("node1b", 1)],
    }
    mp.spawn(_agree, args=(free_port(), cases, str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    for rank, result in enumerate(results):
        assert result["shared"] == "train_checkpoint_epoch=2.pt" and result["nothing yet"] is None, rank
        assert "rank 1 cannot read run/train_checkpoint_epoch=3.pt" in result["only rank 0's disk has it"], rank
        assert "rank 1 found run/train_checkpoint_epoch=1.pt" in result["a stale file on rank 1's disk"], rank
        assert "shared filesystem" in result["only rank 0's disk has it"], rank
