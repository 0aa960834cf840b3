"""scripts/benchmark_scale.py: a tiny run measures what it reports, and the committed report is its JSON's rendering."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts import benchmark_scale  # noqa: E402


def test_a_tiny_scale_run_times_each_cache_mode_and_finds_the_disk_cache_filled_the_second_time(tmp_path):
    out = tmp_path / "scale.json"
    command = [sys.executable, "scripts/benchmark_scale.py", "--sizes", "24", "--image-size", "32", "--modes"]
    command += ["memory", "disk", "--dicom", "0", "--epochs", "2", "--num-workers", "1", "--batch-size", "8"]
    command += ["--workdir", str(tmp_path), "--json", str(out), "--md", str(tmp_path / "scale.md")]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True, timeout=600)
    results = json.loads(out.read_text())
    runs = {r["cache"]: r for r in results["runs"]}
    assert list(runs) == ["memory", "disk", "disk_warm"]
    assert runs["memory"]["mode"] == "TrimmingCacheDataset" and runs["disk"]["mode"] == "ContentKeyedPersistentDataset"
    for run in runs.values():
        assert run["images_per_epoch"] == 24 and len(run["epoch_s"]) == 2  # 24 images, batches of 8, none dropped
        assert run["peak_pss_mib"] > 100 and run["loader_images_per_s"] == pytest.approx(24 / run["epoch_s"][-1])
        assert run["item_bytes"] > 3 * 32 * 32  # uint8 RGB pixels and some metadata
    assert "24 of 24 entries written" in runs["disk"]["log"] and "0 of 24 entries written" in runs["disk_warm"]["log"]
    assert len(list((tmp_path / "cache" / "jpeg_24").rglob("*.pt"))) == 24
    report = (tmp_path / "scale.md").read_text()
    assert "| jpeg | 24 | disk_warm | disk |" in report


def test_the_committed_scale_report_is_the_rendering_of_the_committed_json(tmp_path):
    committed = ROOT / "docs" / "results" / "scale_cpu.md"
    if not committed.is_file():
        pytest.skip("no committed scale benchmark yet")
    benchmark_scale.write_markdown(
        tmp_path / "scale.md", json.loads((ROOT / "docs/results/scale_cpu.json").read_text())
    )
    assert (tmp_path / "scale.md").read_text() == committed.read_text()
