"""What both demo generators share: class names, tasks, domains, the per-image seeding and drawing primitives."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

FUNDUS_CLASSES = ["no DR", "mild", "moderate", "severe", "proliferative"]


CXR_CLASSES = ["nodule", "consolidation", "effusion", "pneumothorax"]


CXR_PREVALENCE = 0.33


TASKS = ("fundus", "cxr")


# Seed streams of :func:`sample_rng`: the demo tasks, then the generic pretraining set (``shapes.py``). Appended, so
# the fundus and chest X-ray images keep their seeds.
RNG_STREAMS = (*TASKS, "generic")


DOMAINS = ("A", "B")


# datalist split key -> file-name prefix
SPLIT_PREFIX = {"training": "train", "validation": "val", "test": "test", "unlabeled": "unlabeled"}


UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root, used with deterministic entropy


@dataclass
class DemoSample:
    """One generated image with its ground truth.

    ``image`` is ``(H, W, 3) uint8`` RGB for fundus and ``(H, W) float32`` in ``[0, 1]`` (bright = dense) for chest
    X-ray; ``mask`` is the ``(H, W) bool`` union of lesions/findings; ``label`` an int (fundus) or a list of 0/1 (cxr);
    ``info`` records lesion counts and the pixel budgets (used by tests and docs).
    """

    image: np.ndarray
    mask: np.ndarray
    label: int | list[int]
    info: dict[str, Any] = field(default_factory=dict)


def sample_rng(seed: int, task: str, domain: str, split: str, index: int) -> np.random.Generator:
    """Return the generator of one image; it depends only on its arguments (not on the split sizes).

    ``task`` is one of :data:`RNG_STREAMS` (a demo task or ``"generic"``).
    """
    key = [int(seed), RNG_STREAMS.index(task), DOMAINS.index(domain), list(SPLIT_PREFIX).index(split), int(index)]
    return np.random.default_rng(np.random.SeedSequence(key))


def _spawn(rng: np.random.Generator, n: int) -> list[np.random.Generator]:
    """Independent sub-streams, so that anatomy and appearance draws never depend on the label."""
    return [np.random.default_rng(int(s)) for s in rng.integers(0, 2**63 - 1, size=n)]


@lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)`` in pixel units (centre of pixel ``i`` is ``i + 0.5``)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    ys.setflags(write=False)
    xs.setflags(write=False)
    return ys, xs


@lru_cache(maxsize=16)
def _stencil(radius: int) -> tuple[np.ndarray, np.ndarray]:
    oy, ox = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return oy.ravel(), ox.ravel()


def _stroke_pixels(
    size: int, seg: np.ndarray, half_width: np.ndarray | float, t0: np.ndarray, t1: np.ndarray
) -> np.ndarray:
    """Unique flat pixel indices covered by thick segments, ordered by the time at which a stroke first reaches them.

    ``seg`` is ``(K, 4)``: ``x0, y0, x1, y1`` in pixel units; a segment is drawn from time ``t0`` to ``t1``. Every
    pixel that contains a point of the segment is covered (so lines are at least one pixel wide and 8-connected).
    """
    seg = np.asarray(seg, dtype=np.float64).reshape(-1, 4)
    if len(seg) == 0:
        return np.zeros(0, dtype=np.int64)
    hw = np.broadcast_to(np.asarray(half_width, dtype=np.float64), (len(seg),))
    dx, dy = seg[:, 2] - seg[:, 0], seg[:, 3] - seg[:, 1]
    n = np.ceil(np.hypot(dx, dy) / 0.7).astype(np.int64) + 1
    sid = np.repeat(np.arange(len(seg)), n)
    start = np.repeat(np.cumsum(n) - n, n)
    s = (np.arange(len(sid)) - start) / np.maximum(n[sid] - 1, 1)
    px, py = seg[sid, 0] + s * dx[sid], seg[sid, 1] + s * dy[sid]
    time = t0[sid] + s * (t1[sid] - t0[sid])
    r = int(np.ceil(hw.max() + 0.5))
    oy, ox = _stencil(r)
    cx, cy = np.floor(px)[:, None] + ox[None], np.floor(py)[:, None] + oy[None]
    d2 = (cx + 0.5 - px[:, None]) ** 2 + (cy + 0.5 - py[:, None]) ** 2
    hit = (d2 <= hw[sid, None] ** 2) | ((ox == 0) & (oy == 0))[None]
    hit &= (cx >= 0) & (cx < size) & (cy >= 0) & (cy < size)
    flat = (cy * size + cx)[hit].astype(np.int64)
    times = np.broadcast_to(time[:, None], hit.shape)[hit]
    order = np.argsort(times, kind="stable")
    flat, times = flat[order], times[order]
    uniq, first = np.unique(flat, return_index=True)
    return uniq[np.argsort(times[first], kind="stable")]


def _blob_pixels(size: int, cx: float, cy: float, rx: float, ry: float, angle: float = 0.0) -> np.ndarray:
    """Flat indices of a filled rotated ellipse (always including the pixel holding its centre)."""
    r = max(rx, ry)
    x0, x1 = int(max(0, np.floor(cx - r))), int(min(size, np.ceil(cx + r) + 1))
    y0, y1 = int(max(0, np.floor(cy - r))), int(min(size, np.ceil(cy + r) + 1))
    if x0 >= x1 or y0 >= y1:
        return np.zeros(0, dtype=np.int64)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    u, v = xx + 0.5 - cx, yy + 0.5 - cy
    c, s = np.cos(angle), np.sin(angle)
    inside = ((c * u + s * v) / rx) ** 2 + ((-s * u + c * v) / ry) ** 2 <= 1.0
    flat = (yy * size + xx)[inside].astype(np.int64)
    if 0 <= cx < size and 0 <= cy < size:
        flat = np.union1d(flat, [int(cy) * size + int(cx)])
    return flat


def _fill_budget(cmap: np.ndarray, ordered: np.ndarray, cls: int, allowed: np.ndarray, budget: int) -> int:
    """Paint ``cls`` on the first ``budget`` allowed pixels of ``ordered``; return how many were painted."""
    if budget <= 0 or len(ordered) == 0:
        return 0
    cand = ordered[allowed[ordered]][:budget]
    cmap[cand] = cls
    allowed[cand] = False
    return len(cand)


def _smooth_field(rng: np.random.Generator, size: int, n_waves: int = 6, max_freq: float = 4.0) -> np.ndarray:
    """Zero-mean smooth random texture (sum of random plane waves), roughly in ``[-1, 1]``."""
    c = np.arange(size) + 0.5
    out = np.zeros((size, size))
    for _ in range(n_waves):
        f = 2 * np.pi * rng.uniform(0.5, max_freq) / size
        a = rng.uniform(0, 2 * np.pi)
        px, py = f * np.cos(a) * c, f * np.sin(a) * c + rng.uniform(0, 2 * np.pi)
        # cos(px + py) as a sum of two outer products (separable, O(size) trigonometry)
        out += np.outer(np.cos(py), np.cos(px)) - np.outer(np.sin(py), np.sin(px))
    return out / np.sqrt(n_waves / 2)
