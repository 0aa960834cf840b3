"""The caching policy (bundle/data/caching.py): what each mode holds, the disk cache's keys and its safety."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose
from PIL import Image

from bundle.data import caching
from bundle.data.caching import ContentKeyedPersistentDataset, cached_dataset, fill_disk_cache, full_precision
from bundle.datasets.demo import generate_demo_data

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def fundus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fundus")
    generate_demo_data("fundus", out, n_train=6, n_val=6, n_test=2, size=48, seed=0, domain="A")
    return out


@pytest.fixture(scope="module")
def cxr(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cxr")
    generate_demo_data("cxr", out, n_train=6, n_val=6, n_test=2, size=48, seed=0, domain="A")
    return out


def _parser(dataset_dir: Path, cache_dir: Path, **override) -> ConfigParser:
    parser = ConfigParser()
    files = [CONFIGS / "train.yaml"]
    if "cxr" in dataset_dir.name:
        files.append(CONFIGS / "datasets" / "demo_cxr.yaml")
    parser.read_config([str(f) for f in files])
    parser.update(
        {
            "dataset_dir": str(dataset_dir),
            "image_size": 32,
            "num_workers": 0,
            "preflight": False,
            "cache_dir": str(cache_dir),
            "validate#dataset#progress": False,
            **override,
        }
    )
    return parser


def _images(dataset) -> torch.Tensor:
    return torch.stack([torch.as_tensor(dataset[i]["image"]) for i in range(len(dataset))])


def _cached_item(dataset, index: int) -> dict:
    """What the cache holds for one item (memory: the list; disk: the entry file)."""
    if isinstance(dataset, ContentKeyedPersistentDataset):
        return torch.load(dataset.entry_path(dataset.data[index][caching.CACHE_KEY]), weights_only=True)
    return dataset._cache[index]


@pytest.mark.parametrize("task, dtype", [("fundus", torch.uint8), ("cxr", torch.uint16)])
def test_every_cache_mode_gives_the_same_images_and_caches_them_at_the_sources_precision(
    task, dtype, request, tmp_path
):
    """8-bit PNGs are cached as uint8, 16-bit DICOMs as uint16; every mode hands out the same float32 images, and
    they are the full-precision chain's within half a level (the quantisation step)."""
    data = request.getfixturevalue(task)
    images = {}
    for mode in ("none", "memory", "disk", "auto"):
        dataset = _parser(data, tmp_path / "cache", cache=mode).get_parsed_content("validate#dataset")
        images[mode] = _images(dataset)
        if mode in ("memory", "disk"):
            held = _cached_item(dataset, 0)["image"]
            assert held.dtype == dtype and held.shape[-2:] == (32, 32), (mode, held.dtype)
    for mode in ("memory", "disk", "auto"):
        assert images[mode].dtype == torch.float32 and torch.equal(images[mode], images["none"]), mode
    parser = _parser(data, tmp_path / "cache", cache="none")
    exact = Compose(full_precision(parser.get_parsed_content("preprocessing").transforms))
    items = parser.get_parsed_content("validate#dataset").data
    reference = torch.stack([torch.as_tensor(exact(dict(item))["image"]) for item in items])
    levels = 255 if dtype == torch.uint8 else 65535
    step = 0.5 / levels / parser.get_parsed_content("intensity_std")  # half a level, in normalised units
    error = (images["none"] - reference).abs().max().item()
    assert 0 < error <= step * 1.0001, (error, step)  # 48 -> 32 px mixes levels: the rounding is visible, and bounded


def test_an_8_bit_image_at_its_own_size_is_cached_without_loss(fundus, tmp_path):
    """image_size equal to the file's side: resizing changes nothing and uint8 holds the image exactly."""
    parser = _parser(fundus, tmp_path / "cache", cache="memory", image_size=48)
    dataset = parser.get_parsed_content("validate#dataset")
    item = dataset.data[0]
    raw = np.asarray(Image.open(item["image"]).convert("RGB"))
    assert torch.equal(_cached_item(dataset, 0)["image"], torch.as_tensor(raw).permute(2, 0, 1).contiguous())


def _fill_again(data: Path, cache_dir: Path, **override) -> tuple[ContentKeyedPersistentDataset, dict]:
    parser = _parser(data, cache_dir, cache="disk", **override)
    dataset = parser.get_parsed_content("validate#dataset")
    return dataset, fill_disk_cache(dataset, num_workers=0, progress=False)


def test_the_disk_cache_is_reused_and_invalidated_by_content_and_preprocessing(fundus, tmp_path):
    cache_dir = tmp_path / "cache"
    first, _ = _fill_again(fundus, cache_dir)  # building the data set fills the cache
    entries = sorted(first.folder.rglob("*.pt"))
    assert len(entries) == len(first.data) == 6
    again, fill = _fill_again(fundus, cache_dir)
    assert fill["written"] == 0 and again.folder == first.folder

    moved = tmp_path / "moved" / fundus.name  # the same files elsewhere: the same keys
    shutil.copytree(fundus, moved)
    _, fill = _fill_again(moved, cache_dir)
    assert fill["written"] == 0

    changed = Path(json.loads((moved / "datalist.json").read_text())["validation"][0]["image"])
    changed = changed if changed.is_absolute() else moved / changed
    pixels = np.asarray(Image.open(changed)).copy()
    pixels[:4, :4] = 255 - pixels[:4, :4]
    Image.fromarray(pixels).save(changed)
    dataset, fill = _fill_again(moved, cache_dir)
    assert fill["written"] == 0  # building the data set wrote the one changed entry already
    assert len(list(dataset.folder.rglob("*.pt"))) == 7

    resized, _ = _fill_again(fundus, cache_dir, image_size=40)  # other preprocessing: another folder
    assert resized.folder != first.folder and len(list(resized.folder.rglob("*.pt"))) == 6
    assert _cached_item(resized, 0)["image"].shape[-1] == 40


def test_a_corrupt_entry_is_logged_recomputed_and_replaced(fundus, tmp_path, caplog):
    dataset, _ = _fill_again(fundus, tmp_path / "cache")
    expected = _images(dataset)
    entry = dataset.entry_path(dataset.data[2][caching.CACHE_KEY])
    entry.write_bytes(entry.read_bytes()[:100])  # a file cut short, e.g. by a full disk
    with caplog.at_level(logging.WARNING, logger="bundle.data.caching"):
        assert torch.equal(_images(dataset), expected)
    assert any(str(entry) in r.message and "recomputing" in r.message for r in caplog.records)
    assert torch.load(entry, weights_only=True)["image"].dtype == torch.uint8


def test_an_entry_cut_short_is_rewritten_by_the_fill_before_training(fundus, tmp_path):
    """Found by the fill pass (in the training process, where a GPU teacher can run), not by a loader worker."""
    dataset, _ = _fill_again(fundus, tmp_path / "cache")
    expected = _images(dataset)
    entry = dataset.entry_path(dataset.data[4][caching.CACHE_KEY])
    entry.write_bytes(entry.read_bytes()[:-30])  # the zip's end record lost, as after a power cut
    assert dataset.missing() == [4]
    fill = fill_disk_cache(dataset, num_workers=0, progress=False)
    assert fill["written"] == 1 and dataset.missing() == []
    assert torch.equal(_images(dataset), expected)


FILL_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[3])
from pathlib import Path
from tests.test_caching import _fill_again
dataset, fill = _fill_again(Path(sys.argv[1]), Path(sys.argv[2]))
print("WROTE", fill["written"], len(list(dataset.folder.rglob("*.pt"))))
"""


def test_two_processes_filling_one_cache_at_once_leave_whole_entries(fundus, tmp_path):
    """Two runs started together on one cache folder (as the ranks of a multi-node run on a shared file system):
    both finish, every entry loads, and no temporary file is left behind."""
    cache_dir = tmp_path / "shared"
    root = str(Path(__file__).resolve().parents[1])
    command = [sys.executable, "-c", FILL_SCRIPT, str(fundus), str(cache_dir), root]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    for out, _ in outputs:
        assert out.strip().splitlines()[-1].split()[-1] == "6", out
    entries = list(cache_dir.rglob("*.pt"))
    assert len(entries) == 6
    for path in entries:
        assert torch.load(path, weights_only=True)["image"].shape == (3, 32, 32)
    assert not [p for p in cache_dir.rglob("*") if p.name.startswith(".part-")]


def test_a_content_index_saved_while_another_writer_is_saving_it_lands_whole_for_both(tmp_path):
    """Two ranks saving ``content_index.json`` at once (the second saves while the first is between writing its
    temporary and renaming it): both saves succeed, the first's rename lands last, and nothing temporary is left.
    With one shared temporary name the second rename took the first's file away (FileNotFoundError on rank 0)."""
    image = tmp_path / "a.png"
    image.write_bytes(b"pixels")
    first, second = caching.ContentIndex(tmp_path), caching.ContentIndex(tmp_path)
    first.digest(str(image))
    second.entries["other|1|1"] = "f" * 64
    second.added = 1
    write = caching.write_atomically

    def first_write(path, fill):
        def fill_then_let_the_other_rank_save(tmp):
            fill(tmp)
            caching.write_atomically = write  # the other rank saves the plain way
            second.save()

        write(path, fill_then_let_the_other_rank_save)

    caching.write_atomically = first_write
    try:
        first.save()
    finally:
        caching.write_atomically = write
    saved = json.loads((tmp_path / "content_index.json").read_text())
    assert list(saved.values()) == [caching.file_sha256(image)]  # the first writer's merge, renamed last
    assert not list(tmp_path.glob(".part-*"))


def test_auto_keeps_what_fits_in_memory_and_writes_the_rest_to_disk(fundus, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="bundle.data.caching"):
        fits = _parser(fundus, tmp_path / "c", cache="auto").get_parsed_content("validate#dataset")
        small = _parser(fundus, tmp_path / "c", cache="auto", cache_memory_gb=1e-6)
        spilled = small.get_parsed_content("validate#dataset")
    assert isinstance(fits, caching.TrimmingCacheDataset) and isinstance(spilled, ContentKeyedPersistentDataset)
    lines = [r.message for r in caplog.records if r.message.startswith("cache (validation)")]
    assert "auto chose memory" in lines[0] and "auto chose disk" in lines[1] and "does not fit" in lines[1]
    assert "does not fit the budget of 0.00 GB (cache_memory_gb 1e-06" in lines[1]
    with pytest.raises((ValueError, RuntimeError)) as error:
        _parser(fundus, tmp_path / "c", cache="memory", cache_memory_gb=1e-6).get_parsed_content("validate#dataset")
    messages = f"{error.value} {error.value.__cause__}"
    assert "6 items x" in messages and "cache: disk" in messages


def test_the_size_estimate_is_what_the_cache_holds(fundus, cxr, tmp_path):
    """The estimate is the serialised size of a preprocessed item: at least its pixels at the cached precision (32 x
    32 x channels x bytes per pixel) and within a few kB of them (labels and metadata)."""
    for data, pixels in ((fundus, 3 * 32 * 32 * 1), (cxr, 1 * 32 * 32 * 2)):
        parser = _parser(data, tmp_path / "c", cache="none")
        dataset = parser.get_parsed_content("validate#dataset")
        estimate = caching.estimate_item_bytes(dataset.data, dataset.transform)
        assert pixels < estimate < pixels + 16_000, (data.name, estimate)


def test_the_default_budget_is_half_the_available_memory_shared_by_a_machines_processes(monkeypatch):
    import psutil

    class Memory:
        available = 8_000_000_000

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Memory)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    budget, why = caching.memory_budget_bytes(None)
    assert budget == 1_000_000_000 - caching._reserved_memory_bytes[0]
    assert "shared by 4 processes" in why
    assert caching.memory_budget_bytes(2.5)[0] == 2_500_000_000 - caching._reserved_memory_bytes[0]


def test_unknown_modes_and_a_disk_cache_without_a_folder_are_refused(fundus, tmp_path):
    dataset = _parser(fundus, tmp_path / "c", cache="none").get_parsed_content("validate#dataset")
    with pytest.raises(ValueError, match="cache must be one of"):
        cached_dataset(dataset.data, dataset.transform, cache="ram")
    with pytest.raises(ValueError, match="needs cache_dir"):
        cached_dataset(dataset.data, dataset.transform, cache="disk", cache_dir=None)


def test_the_memory_caching_pass_gives_freed_memory_back_as_it_goes(fundus, tmp_path, monkeypatch):
    """Every TRIM_EVERY cached items and at the end (the scale benchmark measured the pass's garbage otherwise)."""
    calls = []
    monkeypatch.setattr(caching, "release_freed_memory", lambda: calls.append(1))
    monkeypatch.setattr(caching, "TRIM_EVERY", 2)
    dataset = _parser(fundus, tmp_path / "c", cache="memory").get_parsed_content("validate#dataset")
    assert isinstance(dataset, caching.TrimmingCacheDataset) and len(dataset) == 6
    assert len(calls) == 6 // 2 + 1
