"""One way to write a file so that a reader, or a run resumed after a kill, sees the whole file or none of it; and
one way to tell whether a file is the same one a previous run used (its SHA-256)."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PART = ".part-"  # prefix of files being written: hidden, so never listed as inputs nor taken for checkpoints


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of the file's bytes, read ``chunk`` bytes at a time (checkpoints and images of any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_sha256(folder: str | os.PathLike, skip_suffixes: tuple[str, ...] = (".json",)) -> str:
    """One hex SHA-256 over the files under ``folder``: each one's path relative to it and its bytes, in sorted order.
    Files ending in ``skip_suffixes`` are left out (by default datalists: an experiment adds its labelled subsets to
    the folder as it grows). Two generated data sets have the same digest when their files agree byte for byte."""
    root = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(skip_suffixes)):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def temporary_beside(path: Path) -> Path:
    """A hidden ``.part-<unique>-<name>`` beside ``path``: the same suffix, so writers pick the same format, and a name
    of this writer's own, so that two processes writing the same file at once (ranks sharing a disk cache) never
    rename or remove each other's temporary."""
    return path.with_name(f"{PART}{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")


def write_atomically(path: str | os.PathLike, write: Callable[[Path], Any], durable: bool = True) -> None:
    """``write(tmp)`` to a hidden temporary beside ``path`` (``temporary_beside``), fsync it, rename it over ``path``
    (atomic on POSIX and Windows) and fsync the folder so the rename survives a power cut. A failure or a kill leaves
    the old file; a failure also removes the temporary one. Concurrent writers each land whole; the last one wins.
    ``durable=False`` leaves out the fsyncs, for files a power cut may lose because they are recomputed (cache
    entries): still never read half-written."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        write(tmp)
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_folder(path.parent)


def write_together(writes: Sequence[tuple[str | os.PathLike, Callable[[Path], Any]]]) -> None:
    """All of ``writes`` (``(path, write)`` pairs, as for ``write_atomically``) or none: each is written to its hidden
    ``.part-`` temporary and fsynced first, and only when every one succeeded are they renamed into place. A
    failure removes the temporaries and whatever an earlier run left at those paths (which would not belong with
    this run's result), then raises; so does a failed rename, after removing those already renamed. A kill
    between the renames can leave some in place; the caller records the set as done only after this returns, so a
    resumed run writes them again."""
    pairs = [(Path(path), path_write) for path, path_write in writes]
    temporaries = [temporary_beside(path) for path, _ in pairs]
    try:
        for (_, write), tmp in zip(pairs, temporaries):
            write(tmp)
            _fsync(tmp)
        for (path, _), tmp in zip(pairs, temporaries):
            os.replace(tmp, path)  # can still fail, e.g. where a folder has the target's name
    except BaseException:
        for (path, _), tmp in zip(pairs, temporaries):
            tmp.unlink(missing_ok=True)
            if path.is_file():
                path.unlink()
        raise
    for folder in sorted({path.parent for path, _ in pairs}):
        _fsync_folder(folder)


def _fsync(path: Path, flags: int = os.O_RDONLY) -> None:
    """Flush ``path`` (a file, or a folder with ``O_DIRECTORY``) to the disk."""
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Flush a folder's entries, so that a rename in it survives a power cut (not on Windows: no folder fsync)."""
    if hasattr(os, "O_DIRECTORY"):
        _fsync(folder, os.O_RDONLY | os.O_DIRECTORY)
