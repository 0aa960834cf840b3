"""Where a training run keeps its preprocessed images: in memory, in a disk cache, or nowhere.

``cache: auto | memory | disk | none`` (configs/train.yaml). ``auto`` estimates the cache's size before allocating
anything, by preprocessing a few items, and keeps it in memory when it fits a budget (``cache_memory_gb``, by default
half the memory available at start, shared by the processes of one machine), else writes a disk cache. It says which
it chose and why in one log line. An explicit ``memory`` that does not fit is refused before the caching pass starts,
instead of being killed by the kernel an hour later.

Images are cached at the precision their source carries (``SourceLevelsd`` and ``Quantized`` in the cached part of
the chain, ``Dequantized`` after it): 8-bit images as uint8, others on a 16-bit grid, so the same budget holds four
(or two) times more than float32. The chain quantises whatever the cache mode, so the mode never changes what the
network sees.

The disk cache is MONAI's ``PersistentDataset``, with three changes this bundle needs:

- each entry is keyed by the content (SHA-256) of the item's files, its other fields, and a key of the cached
  preprocessing (the transforms' settings, the versions of MONAI and torch, and the bundle's data code), so a file
  that changes, or a change of ``image_size`` or reader settings, is a miss and never a stale hit; moving the data
  folder keeps the cache valid. Hashing reads every file once per machine: the digests are kept in
  ``content_index.json`` by (path, size, modification time);
- entries are written to a unique temporary file in the cache's own folder and renamed into place, so two runs (or
  the ranks of a multi-node run) sharing the folder never see each other's half-written files; MONAI's writes go
  through the system's temporary folder, whose ``shutil.move`` onto another file system is a copy that others can
  read half-done. An entry that cannot be loaded is logged, recomputed and replaced;
- an explicit caching pass with a progress bar fills the cache before training (split between the ranks of a
  distributed run), so the first epoch is not the slow one and the time it took is reported.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import logging
import os
import pickle
import sys
import threading
import time
import weakref
import zipfile
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import Compose, MapTransform, RandomizableTrait, Transform, apply_transform
from monai.utils import convert_to_tensor

from bundle.files import file_sha256, write_atomically

logger = logging.getLogger(__name__)

CACHE_MODES = ("auto", "memory", "disk", "none")
MEMORY_SHARE = 0.5  # of the memory available at start, when cache_memory_gb is null
FILE_FIELDS = ("image", "mask")  # datalist fields holding file paths (a string or a list of strings)
CACHE_KEY = "_cache_key"
ESTIMATE_SAMPLES = 8
ITEM_OVERHEAD_BYTES = 2048  # a cached item's Python objects (dict, tensor headers), beside its serialised size
_DATA_CODE = ("readers.py", "transforms.py", "dicom_values.py", "caching.py")

_reserved_memory_bytes = [0]  # memory caches already granted in this process (training, then validation)


# --- precision ------------------------------------------------------------------------------------------------------
def _levels_key(key: Hashable) -> str:
    return f"_levels_{key}"


class SourceLevelsd(MapTransform):
    """Record the intensity grid the decoded image carries, for ``Quantized`` after resizing.

    Display intensities in [0, 1] that are multiples of 1/255 came from an 8-bit source (255 levels); other values in
    [0, 1] get 65535 levels; anything else (e.g. raw CT numbers) 0: kept as float32. Put it right after loading;
    resizing later mixes neighbouring values and the grid can no longer be seen.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        item = dict(data)
        for key in self.key_iterator(item):
            values = torch.as_tensor(item[key])
            if values.numel() == 0 or not values.is_floating_point():
                item[_levels_key(key)] = 0
            elif values.min() < 0 or values.max() > 1:
                item[_levels_key(key)] = 0
            else:
                scaled = values.double() * 255
                item[_levels_key(key)] = 255 if torch.allclose(scaled, scaled.round(), rtol=0, atol=1e-3) else 65535
        return item


class Quantized(MapTransform):
    """Store each image on the grid ``SourceLevelsd`` recorded, rounded to the nearest level: uint8 for 255 levels,
    uint16 for 65535, float32 unchanged otherwise. Put it after resizing, at the end of the cached part."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        item = dict(data)
        for key in self.key_iterator(item):
            levels = item.pop(_levels_key(key), 0)
            if levels:
                dtype = torch.uint8 if levels == 255 else torch.uint16
                image = item[key]
                item[key] = (image * levels).round_().clamp_(0, levels).to(dtype)
        return item


class Dequantized:
    """uint8 and uint16 images back to float32 display intensities in [0, 1] (others unchanged).

    Deliberately not a MONAI ``Transform``: MONAI's caching datasets cache every transform up to the first that is
    random or not a ``Transform``, so this one marks where the cache ends and keeps the cache at the source's precision.
    """

    def __init__(self, keys: str | Sequence[str], allow_missing_keys: bool = False) -> None:
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.allow_missing_keys = allow_missing_keys

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        item = dict(data)
        for key in self.keys:
            if key not in item:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"Dequantized: key {key!r} not in the item")
            image = item[key]
            if isinstance(image, torch.Tensor) and image.dtype in (torch.uint8, torch.uint16):
                levels = 255.0 if image.dtype == torch.uint8 else 65535.0
                item[key] = image.to(torch.float32) / levels
        return item


def full_precision(transforms: Sequence[Any]) -> list[Any]:
    """``transforms`` without the precision steps (``SourceLevelsd``, ``Quantized``, ``Dequantized``): the whole
    chain is then cached as float32, e.g. with transforms after normalisation that must be cached too (the teacher's
    outputs of configs/precompute_teacher.yaml)."""
    return [t for t in transforms if not isinstance(t, (SourceLevelsd, Quantized, Dequantized))]


# --- the memory cache ------------------------------------------------------------------------------------------------
TRIM_EVERY = 128  # cached items between two releases of freed memory during the caching pass


class TrimmingCacheDataset(CacheDataset):
    """MONAI's ``CacheDataset`` that gives freed memory back to the system every ``TRIM_EVERY`` items it caches and at
    the end (``release_freed_memory``), so that the process holds about the cache, not the cache and the garbage of
    the pass that filled it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._cached_since_trim = 0
        self._trim_lock = threading.Lock()
        super().__init__(*args, **kwargs)
        release_freed_memory()

    def _load_cache_item(self, idx: int) -> Any:
        item = super()._load_cache_item(idx)
        with self._trim_lock:
            self._cached_since_trim += 1
            trim = self._cached_since_trim >= TRIM_EVERY
            if trim:
                self._cached_since_trim = 0
        if trim:
            release_freed_memory()
        return item


def release_freed_memory() -> None:
    """Give the memory freed by the caching pass back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    Why: MONAI's caching pass decodes in threads, each with its own allocator arena, and the freed float32
    temporaries stayed in the process: after caching uint8 images its resident memory grew by several times the
    cache's size, which the budget does not count (seen with scripts/benchmark_scale.py)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
            pass


# --- what is cached -------------------------------------------------------------------------------------------------
def cached_part(transform: Compose) -> list[Any]:
    """The transforms MONAI's caching datasets cache: those before the first random or non-``Transform`` one."""
    cached = []
    for t in transform.flatten().transforms:
        if isinstance(t, RandomizableTrait) or not isinstance(t, Transform):
            break
        cached.append(t)
    return cached


def preprocessing_key(transform: Compose) -> str:
    """SHA-256 of the cached preprocessing: the pickled transforms (their settings), MONAI's and torch's versions and
    the source of the bundle's data code, so that a change to any of them starts a new cache.

    A transform with a ``cache_identity()`` method is keyed by what it returns instead of its pickle: a transform that
    runs a network (the teacher's outputs or occlusion maps, ``bundle.engines.precompute``) names the network's
    weights and its own code there, which pickle cannot stand for (locks, forward hooks, an ONNX session)."""
    digest = hashlib.sha256()
    cached = [t.cache_identity() if callable(getattr(t, "cache_identity", None)) else t for t in cached_part(transform)]
    digest.update(pickle.dumps(cached, protocol=4))
    digest.update(f"monai {monai.__version__} torch {torch.__version__}".encode())
    here = Path(__file__).parent
    for name in _DATA_CODE:
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


def _file_paths(value: Any) -> list[str] | None:
    if isinstance(value, (str, os.PathLike)):
        return [os.fspath(value)]
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (str, os.PathLike)) for v in value):
        return [os.fspath(v) for v in value]
    return None


class ContentIndex:
    """SHA-256 of files, remembered by (path, size, modification time) in ``content_index.json`` so that a later run,
    or another rank, reads each file once. Concurrent writers each replace the index atomically; an entry one of
    them loses is recomputed later, never wrong."""

    def __init__(self, cache_dir: Path) -> None:
        self.path = cache_dir / "content_index.json"
        self.entries: dict[str, str] = self._read()
        self.added = 0

    def _read(self) -> dict[str, str]:
        try:
            return dict(json.loads(self.path.read_text()))
        except (OSError, ValueError, TypeError):
            return {}

    def digest(self, path: str) -> str:
        stat = os.stat(path)
        key = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in self.entries:
            self.entries[key] = file_sha256(path)
            self.added += 1
        return self.entries[key]

    def save(self) -> None:
        if self.added:
            merged = {**self._read(), **self.entries}
            write_atomically(self.path, lambda tmp: tmp.write_text(json.dumps(merged, sort_keys=True)))
            self.added = 0


def content_keys(data: Sequence[Mapping[str, Any]], index: ContentIndex, progress: bool = True) -> list[str]:
    """One key per item: SHA-256 over its files' contents (not their paths) and its other fields."""
    items = tqdm_or_plain(data, progress and len(data) >= 100, "hashing files for the disk cache")
    keys = []
    for item in items:
        record: dict[str, Any] = {}
        for field, value in sorted(item.items(), key=lambda kv: str(kv[0])):
            paths = _file_paths(value) if field in FILE_FIELDS else None
            record[str(field)] = [index.digest(p) for p in paths] if paths is not None else value
        keys.append(hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest())
    index.save()
    return keys


def tqdm_or_plain(iterable: Any, show: bool, description: str, total: int | None = None) -> Any:
    if not show:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=description, total=total, mininterval=1.0)


# --- the disk cache -------------------------------------------------------------------------------------------------
class ContentKeyedPersistentDataset(PersistentDataset):
    """MONAI's ``PersistentDataset`` keyed by content and preprocessing, with atomic writes (see the module doc).

    Entries live at ``cache_dir/<preprocessing key>/<2 hex>/<item key>.pt``; the keys travel in the items as
    ``_cache_key`` and are taken out before the transforms run.
    """

    def __init__(self, data: Sequence[Mapping[str, Any]], transform: Compose, cache_dir: str | os.PathLike) -> None:
        root = Path(cache_dir)
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.folder = root / preprocessing_key(transform)[:20]
        keys = content_keys(data, ContentIndex(root))
        keyed = [{**dict(item), CACHE_KEY: key} for item, key in zip(data, keys)]
        super().__init__(keyed, transform, cache_dir=self.folder, hash_func=_item_key_bytes)

    def entry_path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.pt"

    def missing(self, indices: Sequence[int] | None = None) -> list[int]:
        """Indices whose entry is absent or cut short (no zip end record: entries are written without fsync, so a
        power cut can truncate one). The fill pass recomputes them in the training process, where a GPU teacher can
        run, rather than a loader worker in the middle of training."""
        indices = range(len(self.data)) if indices is None else indices
        return [i for i in indices if not zipfile.is_zipfile(self.entry_path(self.data[i][CACHE_KEY]))]

    def _cachecheck(self, item_transformed: Mapping[str, Any]) -> Any:
        item = dict(item_transformed)
        key = item.pop(CACHE_KEY)
        path = self.entry_path(key)
        if path.is_file():
            try:
                return torch.load(path, weights_only=True)
            except Exception as e:  # a truncated or foreign file: recompute it rather than fail the run
                logger.warning(f"disk cache: cannot load {path} ({type(e).__name__}: {e}); recomputing it")
        computed = self._pre_transform(item)
        self._write(path, computed)
        return computed

    def _write(self, path: Path, computed: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = convert_to_tensor(computed, convert_numeric=False, track_meta=False)
        write_atomically(path, lambda tmp: torch.save(entry, tmp), durable=False)


def _item_key_bytes(item: Mapping[str, Any]) -> bytes:
    return str(item[CACHE_KEY]).encode()


class _FillEntries(torch.utils.data.Dataset):
    """Computes and writes the missing entries of a disk cache (one per index), returning nothing."""

    def __init__(self, dataset: ContentKeyedPersistentDataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> int:
        self.dataset._cachecheck(self.dataset.data[self.indices[position]])
        return 1


def _count(batch: list[int]) -> int:
    return len(batch)


def fill_disk_cache(dataset: ContentKeyedPersistentDataset, num_workers: int, progress: bool = True) -> dict[str, Any]:
    """Write the entries the cache lacks, in ``num_workers`` processes, before training.

    In a distributed run each rank fills every ``world_size``-th missing entry and all wait for each other, so a
    shared cache folder is filled once. Returns the counts and the seconds it took.
    """
    rank, world = _rank_and_world()
    start = time.perf_counter()
    mine = dataset.missing(range(rank, len(dataset.data), world))
    if mine and num_workers and any(getattr(t, "runs_a_network", False) for t in cached_part(dataset.transform)):
        # a network on a GPU cannot run in forked worker processes, and on a CPU the workers would each hold a copy
        logger.info("disk cache: filled in this process (its preprocessing runs a network)")
        num_workers = 0
    if mine:
        loader = torch.utils.data.DataLoader(
            _FillEntries(dataset, mine), batch_size=8, num_workers=num_workers, collate_fn=_count
        )
        batches = tqdm_or_plain(loader, progress and rank == 0, "writing the disk cache", total=len(loader))
        for _ in batches:
            pass
    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return {"written": len(mine), "items": len(dataset.data), "seconds": time.perf_counter() - start}


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


# --- the policy -----------------------------------------------------------------------------------------------------
def estimate_item_bytes(data: Sequence[Mapping[str, Any]], transform: Compose, samples: int = ESTIMATE_SAMPLES) -> int:
    """Bytes one cached item takes, from the largest of up to ``samples`` items spread over ``data``, preprocessed
    as the cache would and serialised with their metadata (what memory holds, a little more than the disk cache).
    A cached transform with a ``stand_in(item)`` method (one whose outputs cost many network passes, as the teacher's
    occlusion maps) adds outputs of their real size and type without computing them: the cache computes them once,
    not the estimate as well."""
    if not data:
        return 0
    chain = cached_part(transform)
    picks = sorted({int(i) for i in np.linspace(0, len(data) - 1, min(samples, len(data)))})
    sizes = []
    for i in picks:
        try:
            item: Any = dict(data[i])
            for t in chain:
                item = t.stand_in(item) if hasattr(t, "stand_in") else apply_transform(t, item)
        except Exception as e:  # the pre-flight check reports bad files; an estimate does without this one
            logger.debug(f"cache size estimate: item {i} skipped ({e})")
            continue
        buffer = io.BytesIO()
        torch.save(item, buffer)
        sizes.append(buffer.tell())
    if not sizes:
        raise ValueError("cache size estimate: none of the sampled items could be preprocessed")
    return max(sizes) + ITEM_OVERHEAD_BYTES


def memory_budget_bytes(cache_memory_gb: float | None) -> tuple[int, str]:
    """The memory a cache of this process may take, and how it was decided (for the log line)."""
    if cache_memory_gb is not None:
        budget = int(float(cache_memory_gb) * 1e9)
        why = f"cache_memory_gb {float(cache_memory_gb):g}"
    else:
        import psutil

        available = psutil.virtual_memory().available
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        budget = int(MEMORY_SHARE * available / processes)
        why = f"{MEMORY_SHARE:g} of {_gb(available)} available" + (
            f" shared by {processes} processes" if processes > 1 else ""
        )
    left = max(budget - _reserved_memory_bytes[0], 0)
    if _reserved_memory_bytes[0]:
        why += f", less {_gb(_reserved_memory_bytes[0])} already cached"
    return left, why


def _release_memory(n: int) -> None:
    _reserved_memory_bytes[0] -= n


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def cached_dataset(
    data: Sequence[Mapping[str, Any]],
    transform: Compose,
    cache: str = "auto",
    cache_rate: float = 1.0,
    cache_memory_gb: float | None = None,
    cache_dir: str | os.PathLike | None = None,
    num_workers: int = 0,
    name: str = "data",
    progress: bool = True,
) -> Dataset:
    """The data set of one split under the caching policy ``cache`` (see the module doc).

    Args:
        data: the split's items.
        transform: the whole chain (cached part, ``Dequantized``, random augmentation).
        cache: ``auto``, ``memory`` (MONAI ``CacheDataset``), ``disk`` (content-keyed ``PersistentDataset``) or
            ``none`` (MONAI ``Dataset``: every epoch decodes every file).
        cache_rate: the share of items a memory cache holds (MONAI's ``cache_rate``).
        cache_memory_gb: the memory budget; null: half of what is available at start, shared by the processes of
            one machine (``LOCAL_WORLD_SIZE``).
        cache_dir: the disk cache's folder (shared between runs and processes).
        num_workers: threads of the memory caching pass, processes of the disk caching pass.
        name: the split's name, for the log line.

    Raises:
        ValueError: an unknown mode, ``memory`` over the budget, or ``disk`` without ``cache_dir``.
    """
    if cache not in CACHE_MODES:
        raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)}; got {cache!r}")
    if not isinstance(transform, Compose):
        transform = Compose(transform)
    if cache == "none" or not data or (cache in ("auto", "memory") and cache_rate <= 0):
        logger.info(f"cache ({name}): none: {len(data)} items decoded every epoch")
        return Dataset(data, transform)
    if cache == "disk" and cache_dir is None:
        raise ValueError("cache: disk needs cache_dir (a folder; it may be shared between runs)")
    cached_items = len(data) if cache == "disk" else int(round(len(data) * cache_rate))
    item_bytes = estimate_item_bytes(data, transform)
    needed = item_bytes * cached_items
    budget, why = memory_budget_bytes(cache_memory_gb)
    fits = needed <= budget
    need = f"{cached_items} items x {item_bytes / 1e3:.0f} kB = {_gb(needed)}"
    limit = f"the budget of {_gb(budget)} ({why})"
    if cache == "memory" and not fits:
        raise ValueError(
            f"cache ({name}): memory: {need} does not fit {limit}; set cache: disk with a cache_dir, or cache: auto, "
            "or a larger cache_memory_gb if this machine has the memory"
        )
    if cache == "auto" and not fits and cache_dir is None:
        logger.warning(f"cache ({name}): auto chose none: {need} does not fit {limit} and cache_dir is null")
        return Dataset(data, transform)
    if cache == "memory" or (cache == "auto" and fits):
        logger.info(f"cache ({name}): {'auto chose memory' if cache == 'auto' else 'memory'}: {need} fits {limit}")
        _reserved_memory_bytes[0] += needed
        memory_cache = TrimmingCacheDataset(
            data, transform, cache_rate=cache_rate, num_workers=num_workers, progress=progress
        )
        weakref.finalize(memory_cache, _release_memory, needed)
        return memory_cache
    dataset = ContentKeyedPersistentDataset(data, transform, cache_dir)  # type: ignore[arg-type]
    fill = fill_disk_cache(dataset, num_workers, progress)
    reason = f"{need} does not fit {limit}" if cache == "auto" else need
    logger.info(
        f"cache ({name}): {'auto chose disk' if cache == 'auto' else 'disk'} at {dataset.folder}: {reason}; "
        f"{fill['written']} of {fill['items']} entries written now in {fill['seconds']:.1f} s"
    )
    return dataset
