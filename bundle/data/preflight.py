"""Pre-flight datalist validation: every problem of a datalist in one report, before hours of training start.

``preflight(datalist)`` checks, collecting every problem instead of stopping at the first:

- the JSON and its header (``task``, ``classes``) and every label against the task (as ``validate_datalist``);
- that every file (``image`` and ``mask`` of every item list) exists, is not empty and decodes with
  ``MedicalImageReader``, and that its pixel values are finite (the reader's min-max scaling would turn an image
  with a single NaN into zeros, so raw float data is checked here);
- leakage between splits: the same image path, the same ``patient`` id (training/validation/test) or the same
  file content (sha256) in two splits;
- that every class occurs in each labelled split, and that the datalist agrees with the config's task and classes.

Under torchrun (a process group set up before the check) the processes share the file checks, each file decoded by
one of them, and every process gets the same whole report.

Policies. ``"error"``: any error-level problem fails the check. ``"skip"``: problems of one item's own files or
label (missing, empty, unreadable, non-finite, bad label) mark the item as skipped, and ``Report.skipped`` lists the
indices to drop per list. Split-level problems (overlaps, duplicate content, missing classes, task mismatch, empty
splits) stay errors under both policies: the fix is to rebuild the splits, and dropping items silently would either
keep the leak (which copy is the wrong one?) or quietly train and evaluate on other data than the user thinks.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist

from ..files import file_sha256
from .datalist import ITEM_LIST_KEYS, PATH_KEYS, SPLIT_KEYS, TASKS, _is_binary_or_unknown, load_datalist
from .readers import ImageReadError, MedicalImageReader, sniff_format

logger = logging.getLogger(__name__)

POLICIES = ("error", "skip")
LABELLED_SPLITS = ("training", "validation", "test")
# Problems of one item's own files or label: the "skip" policy drops the item instead of failing.
LABEL_KINDS = frozenset({"bad_item", "no_image", "missing_label", "bad_label", "label_out_of_range"})
ITEM_KINDS = LABEL_KINDS | {"outside_root", "missing_file", "zero_byte", "unreadable", "non_finite"}
# Listing order: the datalist itself, then labels, files, leakage, classes.
KIND_ORDER = (
    "missing_datalist",
    "bad_json",
    "bad_header",
    "task_mismatch",
    "empty_split",
    "bad_item",
    "no_image",
    "missing_label",
    "bad_label",
    "label_out_of_range",
    "missing_file",
    "zero_byte",
    "unreadable",
    "non_finite",
    "outside_root",
    "split_overlap_path",
    "split_overlap_patient",
    "duplicate_content",
    "class_missing",
)
PROGRESS_MIN_FILES = 200
_NON_FINITE_REASON = "pixel values contain NaN or infinity"  # MedicalImageReader's message
_MAX_LISTED = 5  # files named per split in one overlap message


@dataclass
class Problem:
    """One finding. ``split``/``index`` locate the item (``None`` for datalist-level problems)."""

    severity: str  # "error" or "warning"
    kind: str
    split: str | None
    index: int | None
    file: str | None
    message: str
    skipped: bool = False  # the item is dropped under policy "skip" instead of failing the check


@dataclass
class Report:
    """All problems of one datalist, the items to drop under policy ``skip``, and how to print them."""

    datalist: str
    policy: str
    problems: list[Problem] = field(default_factory=list)
    skipped: dict[str, list[int]] = field(default_factory=dict)
    items: dict[str, int] = field(default_factory=dict)
    files_checked: int = 0
    decoded: bool = True

    @property
    def errors(self) -> list[Problem]:
        """Error-level problems that fail the check (skipped items excluded)."""
        return [p for p in self.problems if p.severity == "error" and not p.skipped]

    @property
    def warnings(self) -> list[Problem]:
        """Warning-level problems (listed, never failing)."""
        return [p for p in self.problems if p.severity == "warning" and not p.skipped]

    @property
    def skipped_files(self) -> list[str]:
        """The files of the items dropped under policy ``skip``."""
        return sorted({p.file for p in self.problems if p.skipped and p.file})

    @property
    def ok(self) -> bool:
        """True when nothing fails the check under the report's policy."""
        return not self.errors

    def summary(self) -> str:
        """One line: the datalist, the verdict and the counts."""
        n_skipped = sum(len(v) for v in self.skipped.values())
        counts = f"{_plural(len(self.errors), 'error')}, {_plural(len(self.warnings), 'warning')}"
        if n_skipped:
            counts += f", {_plural(n_skipped, 'item')} skipped"
        return f"{'OK' if self.ok else 'FAILED'}: {self.datalist}: {counts} (policy '{self.policy}')"

    def format(self, max_per_kind: int | None = None) -> str:
        """The readable listing: every problem with its file, grouped by kind, with counts per kind."""
        items = ", ".join(f"{k} {n}" for k, n in self.items.items())
        lines = [
            f"Pre-flight check of {self.datalist} (policy '{self.policy}')",
            f"  items: {items or 'none'}; files checked: {self.files_checked}"
            + ("" if self.decoded else " (not decoded: --no-decode)"),
        ]
        groups: dict[str, list[Problem]] = defaultdict(list)
        for p in self.problems:
            groups[p.kind].append(p)
        for kind in sorted(groups, key=_kind_rank):
            group = groups[kind]
            counts = Counter("skipped" if p.skipped else p.severity for p in group)
            lines.append(f"{kind} ({', '.join(_plural(n, s) for s, n in sorted(counts.items()))})")
            shown = group if max_per_kind is None else group[:max_per_kind]
            for p in shown:
                where = f"{p.split}[{p.index}]" if p.index is not None else (p.split or "datalist")
                lines.append(f"  {'skipped' if p.skipped else p.severity:<8}{where:<18} {p.message}")
            if len(shown) < len(group):
                lines.append(f"  ... and {len(group) - len(shown)} more")
        if any(self.skipped.values()):
            lines.append("skip list (item indices dropped under policy 'skip'):")
            lines += [f"  {split}: {indices}" for split, indices in self.skipped.items() if indices]
        lines.append(self.summary())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready content: verdict, counts per severity and kind, the skip list and every problem."""
        by_kind = Counter(p.kind for p in self.problems)
        return {
            "datalist": self.datalist,
            "policy": self.policy,
            "ok": self.ok,
            "summary": self.summary(),
            "counts": {
                "error": len(self.errors),
                "warning": len(self.warnings),
                "skipped_items": sum(len(v) for v in self.skipped.values()),
            },
            "by_kind": {k: by_kind[k] for k in sorted(by_kind, key=_kind_rank)},
            "items": self.items,
            "files_checked": self.files_checked,
            "decoded": self.decoded,
            "skipped": self.skipped,
            "problems": [asdict(p) for p in self.problems],
        }

    def write_json(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` as indented JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def preflight(
    datalist_path: str | os.PathLike,
    task: str | None = None,
    num_classes: int | None = None,
    policy: str = "error",
    decode: bool = True,
    workers: int | None = None,
    reader: MedicalImageReader | None = None,
    progress: bool | None = None,
    allowed_roots: Sequence[str | os.PathLike] | None = None,
) -> Report:
    """Check a datalist and return a :class:`Report` of every problem (see the module docstring).

    Args:
        task, num_classes: the config's values; a datalist that disagrees is a ``task_mismatch`` error.
        policy: ``"error"`` or ``"skip"`` (items with bad files or labels go to ``Report.skipped``).
        decode: decode every file with ``MedicalImageReader`` (``False``: existence, size and content hash only).
        workers: threads that read files (default: CPU count, at most 8).
        reader: the reader training uses (the config's ``image_reader``: its frame of multi-frame DICOM and NIfTI
            volumes, its pixel limit); ``None``: ``MedicalImageReader()``. Decoding only proves a file readable,
            so the reader's reduction of large images makes the check cheaper, not weaker.
        progress: a tqdm bar over files; default when there are more than 200 files.
        allowed_roots: when given, every path must resolve (symlinks followed) inside the datalist's folder or one of
            these folders; others are ``outside_root`` errors and are not opened. ``None``: no such check.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    path = Path(datalist_path)
    report = Report(datalist=str(path), policy=policy, decoded=decode)
    content = _load_json(path, report)
    if content is None:
        return report
    base = path.parent
    n_classes = _check_header(content, report, task, num_classes)
    lists = _item_lists(content, report)
    report.items = {key: len(items) for key, items in lists.items() if key in content}
    if n_classes is not None:
        for key in SPLIT_KEYS:
            for i, item in enumerate(lists[key]):
                _check_label(content["task"], n_classes, key, i, item, base, report)
    roots = None if allowed_roots is None else [base.resolve(), *(Path(r).resolve() for r in allowed_roots)]
    reader = reader if reader is not None else MedicalImageReader()
    files = _check_files(lists, base, report, decode, workers, reader, progress, roots)
    bad = {(p.split, p.index) for p in report.problems if p.kind in ITEM_KINDS}
    if policy == "skip":
        for p in report.problems:
            p.skipped = p.kind in ITEM_KINDS
        for key in ITEM_LIST_KEYS:
            report.skipped[key] = sorted(i for s, i in bad if s == key and i is not None)  # item kinds have an index
    kept = {key: [i for i in range(len(lists[key])) if policy == "error" or (key, i) not in bad] for key in lists}
    _check_empty(content, lists, kept, report)
    _check_overlaps(lists, kept, base, files, report)
    if n_classes is not None:
        unlabelled = {(p.split, p.index) for p in report.problems if p.kind in LABEL_KINDS}
        _check_classes(content["task"], content["classes"], lists, kept, unlabelled, report)
    report.problems.sort(key=lambda p: (_kind_rank(p.kind), _split_rank(p.split), p.index or 0))
    if policy == "skip" and any(report.skipped.values()):
        reasons = Counter(p.kind for p in report.problems if p.skipped)
        n = sum(len(v) for v in report.skipped.values())
        logger.warning(
            "%s: skipping %d files under policy 'skip' (%s)",
            path,
            n,
            ", ".join(f"{k}: {c}" for k, c in sorted(reasons.items(), key=lambda kc: _kind_rank(kc[0]))),
        )
    return report


def preflight_or_exit(
    datalist: str | os.PathLike,
    task: str | None = None,
    num_classes: int | None = None,
    policy: str = "error",
    enabled: bool = True,
    reader: MedicalImageReader | None = None,
    decode: bool = True,
    allowed_roots: Sequence[str | os.PathLike] | None = None,
) -> Report | None:
    """A config step: raise ``SystemExit`` with the report when the check fails, else return the report (``None``
    when disabled). Under policy ``skip`` the report lists the items to drop (``usable_items`` drops them); warnings
    are logged, not fatal."""
    if not enabled:
        return None
    report = preflight(
        datalist,
        task,
        num_classes,
        policy=policy,
        decode=decode,
        reader=reader,
        allowed_roots=allowed_roots,
    )
    if not report.ok:
        if policy == "skip":
            remedy = "these problems cannot be skipped: rebuild the splits or fix the datalist's header"
        else:
            remedy = (
                "or set preflight_policy: skip to drop the items with bad files or labels (overlaps, duplicates "
                "and missing classes are never skipped)"
            )
        raise SystemExit(
            f"{report.format(max_per_kind=20)}\nThe datalist {datalist} failed the pre-flight check under "
            f"preflight_policy={policy!r}. Fix it (full listing: python scripts/validate_datalist.py {datalist} "
            f"--policy {policy}); "
            f"{remedy}; or set preflight: false to turn the check off."
        )
    if report.problems:
        logger.warning("%s", report.format(max_per_kind=20))
    else:
        logger.info("%s", report.summary())
    return report


def usable_items(datalist: str | os.PathLike, key: str, report: Report | None = None) -> list[dict]:
    """``load_datalist(datalist, key)`` less the items ``report`` skipped (policy ``skip``), each named in the log."""
    items = load_datalist(datalist, key)
    skipped = set(report.skipped.get(key, [])) if report is not None else set()
    if skipped:
        logger.warning(f"{datalist}: {key}: leaving out {len(skipped)} item(s) under preflight_policy 'skip'")
    return [item for i, item in enumerate(items) if i not in skipped]


# --- the datalist and its labels --------------------------------------------------------------------------------


def _load_json(path: Path, report: Report) -> dict[str, Any] | None:
    if not path.is_file():
        report.problems.append(Problem("error", "missing_datalist", None, None, str(path), f"{path}: no such file"))
        return None
    try:
        with open(path) as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        report.problems.append(Problem("error", "bad_json", None, None, str(path), f"{path}: not valid JSON: {e}"))
        return None
    if not isinstance(content, dict):
        message = f"{path}: expected a JSON object, got {type(content).__name__}"
        report.problems.append(Problem("error", "bad_json", None, None, str(path), message))
        return None
    return content


def _check_header(content: dict[str, Any], report: Report, task: str | None, num_classes: int | None) -> int | None:
    """Check ``task`` and ``classes`` (and the config's values); return the class count, ``None`` if unusable."""

    def add(kind: str, message: str) -> None:
        report.problems.append(Problem("error", kind, None, None, report.datalist, message))

    valid = True
    if content.get("task") not in TASKS:
        add("bad_header", f"'task' must be one of {TASKS}, got {content.get('task')!r}")
        valid = False
    classes = content.get("classes")
    if not isinstance(classes, list) or not classes:
        add("bad_header", f"'classes' must be a non-empty list of class names, got {classes!r}")
        valid = False
    if task is not None and content.get("task") != task:
        add("task_mismatch", f"task is {content.get('task')!r} in the datalist but {task!r} in the config")
    if num_classes is not None and isinstance(classes, list) and len(classes) != num_classes:
        add("task_mismatch", f"the datalist has {len(classes)} classes but the config's num_classes is {num_classes}")
    return len(classes) if valid and isinstance(classes, list) else None


def _item_lists(content: dict[str, Any], report: Report) -> dict[str, list[Any]]:
    lists = {}
    for key in ITEM_LIST_KEYS:
        items = content.get(key, [])
        if not isinstance(items, list):
            message = f"'{key}' must be a list of items, got {type(items).__name__}"
            report.problems.append(Problem("error", "bad_header", key, None, report.datalist, message))
            items = []
        lists[key] = items
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                message = f"{key}[{i}] is not an object: {item!r:.80}"
                report.problems.append(Problem("error", "bad_item", key, i, None, message))
            elif not isinstance(item.get("image"), str) or not item["image"]:
                message = f"{key}[{i}] has no 'image' path: {item!r:.120}"
                report.problems.append(Problem("error", "no_image", key, i, None, message))
    return lists


def _check_label(task: str, n: int, key: str, i: int, item: Any, base: Path, report: Report) -> None:
    """The rules of ``validate_datalist``, collected instead of raised."""
    if not isinstance(item, dict):
        return
    image = item.get("image")
    path = _resolve(image, base) if isinstance(image, str) and image else None

    def add(kind: str, message: str) -> None:
        report.problems.append(Problem("error", kind, key, i, path, f"{key}[{i}] ({image}) {message}"))

    if "label" not in item:
        if key != "unlabeled":
            add("missing_label", "has no 'label'")
        return
    label = item["label"]
    if task == "multiclass":
        if not isinstance(label, int) or isinstance(label, bool):
            add("bad_label", f"label {label!r} is not an int class index")
        elif not 0 <= label < n:
            add("label_out_of_range", f"label {label} is not a class index in [0, {n})")
    elif not isinstance(label, list) or len(label) != n:
        add("bad_label", f"label {label!r:.80} is not a list of {n} values 0/1/-1")
    elif not all(isinstance(v, int) and not isinstance(v, bool) for v in label):
        add("bad_label", f"label {label!r:.80} holds values that are not ints 0/1/-1")
    elif not all(_is_binary_or_unknown(v) for v in label):
        add("label_out_of_range", f"label {label!r:.80} holds values other than 0/1/-1")


# --- files ------------------------------------------------------------------------------------------------------


@dataclass
class _FileResult:
    kind: str | None  # a problem kind, or None when the file is fine
    reason: str
    digest: str | None


def _resolve(raw: str, base: Path) -> str:
    return raw if os.path.isabs(raw) else str(base / raw)


def _check_files(
    lists: dict[str, list[Any]],
    base: Path,
    report: Report,
    decode: bool,
    workers: int | None,
    reader: MedicalImageReader,
    progress: bool | None,
    roots: list[Path] | None = None,
) -> dict[str, _FileResult]:
    """Check each distinct file once (threads), then report per referencing item; return results by path."""
    refs: dict[str, list[tuple[str, int, str, str]]] = defaultdict(list)  # path -> (list, index, key, raw)
    hashed: set[str] = set()
    for key, items in lists.items():
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            for path_key in PATH_KEYS:
                raw = item.get(path_key)
                if isinstance(raw, str) and raw:
                    path = _resolve(raw, base)
                    refs[path].append((key, i, path_key, raw))
                    if path_key == "image" and key in SPLIT_KEYS:
                        hashed.add(path)
    paths = list(refs)
    report.files_checked = len(paths)
    # In a distributed run (torchrun, the process group already set up) each process checks its share of the files
    # and all get every result, so the check costs one decode per file in all, not one per file and process.
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
    mine = paths[rank::world]
    workers = max(1, workers or min(8, os.cpu_count() or 1))
    show = (len(paths) > PROGRESS_MIN_FILES if progress is None else progress) and rank == 0
    results: dict[str, _FileResult] = {}
    from tqdm import tqdm

    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(mine), desc="checking files", unit="file", disable=not show) as bar,
    ):
        chunk = workers * 32  # bounded: at most this many files in flight
        for start in range(0, len(mine), chunk):
            batch = mine[start : start + chunk]
            done = pool.map(lambda p: _check_file(p, reader, decode, p in hashed, roots), batch)
            for path, result in zip(batch, done):
                results[path] = result
                bar.update(1)
    if world > 1:
        shares: list[Any] = [None] * world
        dist.all_gather_object(shares, results)
        every = {path: result for share in shares for path, result in share.items()}
        results = {path: every[path] for path in paths}  # the datalist's order, the same in every process
    for path, result in results.items():
        if result.kind is None:
            continue
        for key, i, path_key, raw in refs[path]:
            message = f"{key}[{i}] {path_key} {raw}: {result.reason}"
            report.problems.append(Problem("error", result.kind, key, i, path, message))
    return results


def _check_file(
    path: str, reader: MedicalImageReader, decode: bool, want_hash: bool, roots: list[Path] | None = None
) -> _FileResult:
    """Where it points, existence, size, content hash, decoding and finite values of one file; never raises."""
    try:
        if roots is not None and not any(Path(path).resolve().is_relative_to(root) for root in roots):
            where = ", ".join(str(r) for r in roots)
            return _FileResult(
                "outside_root",
                f"resolves outside the dataset's folders ({where}); not opened. Allow its folder with the config "
                "value data_roots (validate_datalist.py --allow-root)",
                None,
            )
        if not os.path.exists(path):
            return _FileResult("missing_file", "file not found", None)
        if not os.path.isfile(path):
            return _FileResult("unreadable", "is a folder, not an image file", None)
        if os.path.getsize(path) == 0:
            return _FileResult("zero_byte", "empty file (0 bytes)", None)
        digest = file_sha256(path) if want_hash else None
        if decode:
            try:
                reader.read_file(path)
            except ImageReadError as e:
                if _NON_FINITE_REASON not in e.reason:
                    return _FileResult("unreadable", e.reason, digest)
                n_bad, n_total = _count_non_finite(path)  # the reader refuses them; say how many
                detail = f"{n_bad} of {n_total} pixel values are NaN or infinite" if n_bad else e.reason
                return _FileResult("non_finite", detail, digest)
        return _FileResult(None, "", digest)
    except Exception as e:  # one odd file (permissions, decoder bug) must not stop the whole report
        return _FileResult("unreadable", f"{type(e).__name__}: {e}", None)


def _count_non_finite(path: str) -> tuple[int, int]:
    """Non-finite values in the stored data of float images (NIfTI, float TIFF, float DICOM), before scaling.

    ``MedicalImageReader`` min-max scales such data, and ``min`` of an array with one NaN is NaN, so the image
    would silently become zeros; integer formats cannot hold NaN and are not read again.
    """
    fmt = sniff_format(path)
    data = None
    if fmt == "nifti":
        import nibabel as nib

        img: Any = nib.load(path)  # a NIfTI image: dtype and dataobj (nibabel's stubs say FileBasedImage)
        if img.get_data_dtype().kind in "fc" or img.dataobj.slope != 1 or img.dataobj.inter != 0:
            data = np.asanyarray(img.dataobj)
    elif fmt == "natural":
        from PIL import Image

        with Image.open(path) as im:
            if im.mode == "F":
                data = np.asarray(im)
    elif fmt == "dicom":
        import pydicom

        ds = pydicom.dcmread(path, force=True, defer_size="1 KB")  # pixel data read only if it is float
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            data = ds.pixel_array
    if data is None or data.dtype.names:
        return 0, 0
    return int((~np.isfinite(data)).sum()), int(data.size)


# --- splits -----------------------------------------------------------------------------------------------------


def _check_empty(
    content: dict[str, Any], lists: dict[str, list[Any]], kept: dict[str, list[int]], report: Report
) -> None:
    for key, severity in (("training", "error"), ("validation", "error"), ("test", "warning")):
        if kept[key]:
            continue
        if not lists[key]:
            why = "is missing from the datalist" if key not in content else "has no items"
        else:
            why = f"has no items left after skipping {len(lists[key])} bad ones"
        report.problems.append(Problem(severity, "empty_split", key, None, report.datalist, f"'{key}' {why}"))


def _check_overlaps(
    lists: dict[str, list[Any]],
    kept: dict[str, list[int]],
    base: Path,
    files: dict[str, _FileResult],
    report: Report,
) -> None:
    """The same image path, patient id or file content in two splits: test data leaking into training."""
    by_path: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    by_patient: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    by_digest: dict[str, dict[str, dict[str, list[int]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for key in SPLIT_KEYS:
        for i in kept[key]:
            item = lists[key][i]
            if not isinstance(item, dict) or not isinstance(item.get("image"), str) or not item["image"]:
                continue
            path = _resolve(item["image"], base)
            real = os.path.realpath(path)
            by_path[real][key].append(i)
            if key in LABELLED_SPLITS and item.get("patient") is not None:
                by_patient[str(item["patient"])][key].append(i)
            digest = files[path].digest if path in files else None
            if digest is not None:
                by_digest[digest][real][key].append(i)

    def listing(splits: dict[str, list[int]]) -> str:
        parts = []
        for key, indices in sorted(splits.items(), key=lambda kv: _split_rank(kv[0])):
            names = [f"{lists[key][i]['image']}" for i in indices[:_MAX_LISTED]]
            more = f" and {len(indices) - _MAX_LISTED} more" if len(indices) > _MAX_LISTED else ""
            parts.append(f"{key} {indices[:_MAX_LISTED]} ({', '.join(names)}{more})")
        return "; ".join(parts)

    def last(splits: dict[str, list[int]]) -> tuple[str, int]:
        key = max(splits, key=_split_rank)
        return key, splits[key][0]

    for real, splits in by_path.items():
        if len(splits) > 1:
            key, i = last(splits)
            message = f"image {lists[key][i]['image']} is in {len(splits)} splits: {listing(splits)}"
            report.problems.append(Problem("error", "split_overlap_path", key, i, real, message))
    for patient, splits in by_patient.items():
        if len(splits) > 1:
            key, i = last(splits)
            message = f"patient {patient!r} is in {len(splits)} splits: {listing(splits)}"
            path = _resolve(lists[key][i]["image"], base)
            report.problems.append(Problem("error", "split_overlap_patient", key, i, path, message))
    for digest, group in by_digest.items():
        splits_of_group = {key for splits in group.values() for key in splits}
        if len(group) < 2 or len(splits_of_group) < 2:
            continue  # one path in two splits is split_overlap_path; copies within one split do not leak
        members: dict[str, list[int]] = defaultdict(list)
        for splits in group.values():
            for key, indices in splits.items():
                members[key].extend(indices)
        key, i = last(members)
        message = f"{len(group)} files with identical content (sha256 {digest[:12]}) in {listing(members)}"
        path = _resolve(lists[key][i]["image"], base)
        report.problems.append(Problem("error", "duplicate_content", key, i, path, message))


def _check_classes(
    task: str,
    classes: list[Any],
    lists: dict[str, list[Any]],
    kept: dict[str, list[int]],
    unlabelled: set[tuple[str | None, int | None]],
    report: Report,
) -> None:
    """Each class in each labelled split: an error for training (never learnt), a warning for evaluation splits.

    Counted over the items that stay (all under policy ``error``, so a bad file does not also report its class)
    and have a valid label.
    """
    n = len(classes)
    for key in LABELLED_SPLITS:
        labels = [lists[key][i]["label"] for i in kept[key] if (key, i) not in unlabelled]
        if not labels:
            continue  # reported as empty_split or as bad labels
        if task == "multiclass":
            present = set(labels)
        else:
            present = {c for c in range(n) if any(label[c] == 1 for label in labels)}
        missing = [c for c in range(n) if c not in present]
        if not missing:
            continue
        names = ", ".join(f"{c} ({classes[c]})" for c in missing)
        what = "no item of class" if task == "multiclass" else "no positive label for class"
        severity = "error" if key == "training" else "warning"
        consequence = (
            "the model cannot learn it"
            if key == "training"
            else "its per-class metrics are undefined (a small split? use a stratified split)"
        )
        message = f"{key} ({len(labels)} labelled items) has {what}{'es' if len(missing) > 1 else ''} {names}: "
        report.problems.append(Problem(severity, "class_missing", key, None, report.datalist, message + consequence))


def _kind_rank(kind: str) -> int:
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def _split_rank(split: str | None) -> int:
    return ITEM_LIST_KEYS.index(split) if split in ITEM_LIST_KEYS else -1


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 or word == 'skipped' else 's'}"
