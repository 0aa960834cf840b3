"""Deterministic synthetic demo data: fundus-like photographs (5 DR-like grades) and chest-radiograph-like DICOMs.

Both generators are pure numpy (plus PIL/pydicom for writing), vectorised, and seeded per image: image ``i`` of a
split depends only on ``(seed, task, domain, split, i)``, so the same arguments give byte-identical files.

Fundus (``task="multiclass"``, :data:`FUNDUS_CLASSES`): an RGB colour photograph with a dark surround outside a
circular field of view (FOV), an optic disc with a pale cup, a branching vessel tree (temporal arcades curving around
the macula, nasal branches), a darker macula, choroidal texture, illumination falloff, blur and noise. Grade rule:

- 0 "no DR": no lesions;
- 1 "mild": 2-5 microaneurysms (MA: tiny dark-red dots) and nothing else;
- 2 "moderate": 1-2 haemorrhages (HE: dark-red blots) and 0-4 MA;
- 3 "severe": 2-4 HE, 0-4 MA and 1-2 clusters of hard exudates (EX: small bright-yellow dots);
- 4 "proliferative": everything of grade 3 plus 1-3 cotton-wool spots (CWS: larger whitish blobs).

Chest X-ray (``task="multilabel"``, :data:`CXR_CLASSES`): a PA chest radiograph (body outline, two lungs, mediastinum
and heart, spine, posterior ribs, clavicles, diaphragm domes, bronchovascular lung markings, noise) with four
independent findings, each present with probability :data:`CXR_PREVALENCE`: nodule (small round soft-tissue-dense
blob), consolidation (larger irregular soft-tissue-dense region with air bronchograms), effusion (homogeneous basal
fluid with a meniscus rising laterally, blunting the costophrenic angle) and pneumothorax (apical-lateral crescent
without lung markings, bounded by a thin visceral pleural line). Images are written as DICOM with varied bit depths,
rescale, windows and ~30% MONOCHROME1 (stored inverted; a correct reader shows bright = dense).

Honest labels. Lesions change pixel colours, so a histogram alone would reveal the label. Every lesion colour
therefore also occurs in a non-lesion structure whose amount is topped up to a per-image pixel budget drawn
independently of the label (exact pixel counts on a class map before colouring):

- fundus: dark red = vessels + MA + HE (the vessel tree grows until the red budget is met); yellow = reflex streaks +
  EX; white = reflex streaks + CWS (elongated nerve-fibre-layer reflex streaks fill the yellow and white budgets);
- chest X-ray: the aerated lung area of each lung is a budget; effusion fluid, nodules and consolidation are airless
  (soft-tissue density) and are paid for by a lower diaphragm dome, so the opaque area is the same with or without
  findings and only shapes differ (meniscus vs dome, a blob in the lung vs a lower dome); lung markings + pleural line
  are a second budget (markings are added until it is met); a pneumothorax keeps the lung's intensity and only lacks
  markings, which are drawn elsewhere.

Lesions are compact blobs and decoys thin lines, so the task needs local shape, not global statistics. On top, every
image has random exposure, white balance (fundus) or contrast (X-ray), gamma, blur and noise.

Domains: ``"B"`` is another camera/scanner: fundus with a green-blue colour cast, lower gamma, a larger FOV
cropped top and bottom, stronger vignetting, blur and noise; X-ray as CR instead of DX, lower contrast, stronger
blur and noise and more 8-bit files. Labelling rules are identical in both domains.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

FUNDUS_CLASSES = ["no DR", "mild", "moderate", "severe", "proliferative"]
CXR_CLASSES = ["nodule", "consolidation", "effusion", "pneumothorax"]
CXR_PREVALENCE = 0.33
TASKS = ("fundus", "cxr")
DOMAINS = ("A", "B")
# datalist split key -> file-name prefix
SPLIT_PREFIX = {"training": "train", "validation": "val", "test": "test", "unlabeled": "unlabeled"}
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root, used with deterministic entropy

# fundus class map codes and their colours (linear RGB before illumination and acquisition)
_F_BG, _F_DISC, _F_RED, _F_YEL, _F_WHT, _F_OUT = range(6)
_FUNDUS_PALETTE = np.array(
    [
        [0.80, 0.36, 0.14],  # background retina
        [0.98, 0.80, 0.52],  # disc
        [0.50, 0.11, 0.05],  # vessels, microaneurysms, haemorrhages
        [0.97, 0.85, 0.30],  # hard exudates and yellow reflex streaks
        [0.94, 0.90, 0.82],  # cotton-wool spots and white reflex streaks
        [0.0, 0.0, 0.0],  # outside the field of view
    ],
    dtype=np.float32,
)
# chest X-ray class map codes
_X_AIR, _X_SOFT, _X_MED, _X_LUNG, _X_OPAC = range(5)


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
    """Return the generator of one image; it depends only on its arguments (not on the split sizes)."""
    key = [int(seed), TASKS.index(task), DOMAINS.index(domain), list(SPLIT_PREFIX).index(split), int(index)]
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


# ----------------------------------------------------------------------------------------------------------- fundus


def _fundus_lesion_plan(rng: np.random.Generator, grade: int) -> dict[str, int]:
    """Number of lesions of each kind for a grade (the grading rule)."""
    n = {"ma": 0, "he": 0, "ex": 0, "cws": 0}
    if grade == 1:
        n["ma"] = int(rng.integers(2, 6))
    elif grade >= 2:
        n["ma"] = int(rng.integers(0, 5))
        n["he"] = int(rng.integers(1, 3)) if grade == 2 else int(rng.integers(2, 5))
    if grade >= 3:
        n["ex"] = int(rng.integers(1, 3))
    if grade == 4:
        n["cws"] = int(rng.integers(1, 4))
    return n


def _vessel_segments(
    rng: np.random.Generator,
    size: int,
    disc: tuple[float, float],
    fov: tuple[float, float, float],
    side: float,
    max_area: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A random vessel tree from the disc: segments ``(K, 4)``, half widths and start/end times (path length).

    Generation stops once the segments' nominal area exceeds ``max_area`` pixels."""
    fx, fy, fr = fov
    step = 0.035 * size
    w_trunk, w_min = 0.015 * size, 0.005 * size
    # (heading relative to the temporal direction, width factor, kind); kind 1 = temporal arcade
    trunks = [
        (-rng.uniform(0.9, 1.25), 1.0, 1),
        (rng.uniform(0.9, 1.25), 1.0, 1),
        (-np.pi + rng.uniform(0.5, 0.9), 0.8, 0),
        (np.pi - rng.uniform(0.5, 0.9), 0.8, 0),
    ]
    for _ in range(int(rng.integers(2, 4))):
        trunks.append((rng.uniform(-np.pi, np.pi), 0.55, 0))
    stack = [(float(disc[0]), float(disc[1]), float(a), w_trunk * wf, 0.0, kind) for a, wf, kind in trunks]
    # random numbers drawn in bulk (scalar generator calls dominate otherwise)
    pool = 1024
    turn, coin = rng.normal(0, 0.18, pool).tolist(), rng.random(pool).tolist()
    branch = (rng.choice([-1.0, 1.0], pool) * rng.uniform(0.45, 1.1, pool)).tolist()
    k = 0
    segs, widths, t0s = [], [], []
    area, r2 = 0.0, (0.97 * fr) ** 2
    sx = step * float(side)
    while stack and len(segs) < 600 and area < max_area and k < pool - 64:
        x, y, a, w, t, kind = stack.pop(0)
        for _ in range(60):
            if kind == 1 and abs(a) > 0.25:  # arcades bend towards the temporal horizontal, around the macula
                a -= math.copysign(0.12, a)
            a += turn[k]
            nx, ny = x + sx * math.cos(a), y + step * math.sin(a)
            if (nx - fx) ** 2 + (ny - fy) ** 2 > r2:
                break
            segs.append((x, y, nx, ny))
            widths.append(w / 2)
            area += step * max(w, 1.0)
            t0s.append(t)
            x, y, t = nx, ny, t + step
            if coin[k] < 0.4 and w * 0.72 >= w_min:
                stack.append((x, y, a + branch[k], w * 0.72, t, 0))
                w *= 0.93
            w *= 0.985
            k += 1
            if w < w_min:
                break
    seg = np.asarray(segs, dtype=np.float64).reshape(-1, 4)
    t0 = np.asarray(t0s, dtype=np.float64)
    return seg, np.maximum(np.asarray(widths), 0.5), t0, t0 + step


def _streak_segments(
    rng: np.random.Generator,
    size: int,
    n: int,
    disc: tuple[float, float],
    disc_r: float,
    fov: tuple[float, float, float],
    t_offset: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Short, slightly curved reflex streaks radiating from the disc (nerve-fibre-layer pattern): 3 segments each."""
    fx, fy, fr = fov
    rad = fr * np.sqrt(rng.uniform(0.02, 0.8, n))
    ang = rng.uniform(0, 2 * np.pi, n)
    x, y = fx + rad * np.cos(ang), fy + rad * np.sin(ang)
    near = np.hypot(x - disc[0], y - disc[1]) < disc_r * 1.6
    x[near] = fx + (x[near] - fx) * 0.3
    y[near] = fy + (y[near] - fy) * 0.3 + 0.15 * fr
    head = np.arctan2(y - disc[1], x - disc[0]) + rng.normal(0, 0.35, n)
    bend = rng.normal(0, 0.25, n)
    step = rng.uniform(0.03, 0.05, n) * size
    segs, t0 = [], []
    for k in range(3):
        a = head + k * bend
        nx, ny = x + step * np.cos(a), y + step * np.sin(a)
        segs.append(np.stack([x, y, nx, ny], 1))
        t0.append(t_offset + np.arange(n) + k / 3)
        x, y = nx, ny
    seg = np.concatenate(segs)
    t0 = np.concatenate(t0)
    return seg, t0, t0 + 1 / 3


def synth_fundus(
    rng: np.random.Generator, size: int, domain: str = "A", grade: int | None = None, compensate: bool = True
) -> DemoSample:
    """Generate one fundus photograph; ``grade`` is drawn uniformly from 0-4 when not given.

    ``compensate=False`` (ablation only) draws the decoys as if there were no lesions, so that lesion pixels add to the
    colour budgets and the grade leaks into the histogram.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    label_rng, anat_rng, lesion_rng, decoy_rng, app_rng = _spawn(rng, 5)
    grade = int(label_rng.integers(0, 5)) if grade is None else int(grade)
    if not 0 <= grade < 5:
        raise ValueError(f"grade must be in [0, 5), got {grade}")
    S = size
    ys, xs = _grid(S)
    b = domain == "B"

    # --- anatomy (label independent)
    fr = S * (anat_rng.uniform(0.53, 0.56) if b else anat_rng.uniform(0.44, 0.48))
    fx, fy = S / 2 + anat_rng.normal(0, 0.01 * S), S / 2 + anat_rng.normal(0, 0.01 * S)
    fov = (fx, fy, fr)
    inside = ((xs - fx) ** 2 + (ys - fy) ** 2 <= fr**2).ravel()
    side = anat_rng.choice([-1.0, 1.0])  # +1: disc on the left, temporal direction is +x
    disc_r = S * anat_rng.uniform(0.055, 0.07)
    disc = (fx - side * S * anat_rng.uniform(0.19, 0.23), fy + anat_rng.normal(0, 0.02 * S))
    fovea = (fx + side * S * anat_rng.uniform(0.02, 0.05), fy + anat_rng.normal(0, 0.01 * S))
    area = S * S
    budget_red = int(round(anat_rng.uniform(0.08, 0.1) * area))
    budget_yel = int(round(anat_rng.uniform(0.018, 0.022) * area))
    budget_wht = int(round(anat_rng.uniform(0.017, 0.021) * area))

    cmap = np.full(S * S, _F_OUT, dtype=np.uint8)
    cmap[inside] = _F_BG
    disc_pix = _blob_pixels(S, disc[0], disc[1], disc_r, disc_r * anat_rng.uniform(1.0, 1.15))
    cmap[disc_pix[cmap[disc_pix] == _F_BG]] = _F_DISC

    # --- lesions (the label)
    plan = _fundus_lesion_plan(lesion_rng, grade)
    lesion = np.zeros(S * S, dtype=bool)

    def place(margin: float) -> tuple[float, float]:
        for _ in range(100):
            rr, aa = fr * 0.85 * np.sqrt(lesion_rng.random()), lesion_rng.uniform(0, 2 * np.pi)
            x, y = fx + rr * np.cos(aa), fy + rr * np.sin(aa)
            if np.hypot(x - disc[0], y - disc[1]) > disc_r + 0.08 * S + margin and 0 <= x < S and 0 <= y < S:
                return x, y
        return fx, fy

    def paint(pix: np.ndarray, cls: int) -> None:
        pix = pix[(cmap[pix] == _F_BG) & ~lesion[pix]]
        cmap[pix] = cls
        lesion[pix] = True

    for _ in range(plan["cws"]):
        x, y = place(0.05 * S)
        rho = S * lesion_rng.uniform(0.02, 0.028)
        for _ in range(int(lesion_rng.integers(2, 4))):
            ox, oy = lesion_rng.normal(0, 0.45 * rho, 2)
            paint(
                _blob_pixels(S, x + ox, y + oy, rho, rho * lesion_rng.uniform(0.7, 1.0), lesion_rng.uniform(0, 3)),
                _F_WHT,
            )
    for _ in range(plan["ex"]):
        x, y = place(0.04 * S)
        for _ in range(int(lesion_rng.integers(3, 7))):
            ox, oy = lesion_rng.normal(0, 0.025 * S, 2)
            r = max(0.55, S * lesion_rng.uniform(0.016, 0.022))
            paint(_blob_pixels(S, x + ox, y + oy, r, r), _F_YEL)
    for _ in range(plan["he"]):
        x, y = place(0.04 * S)
        rho = S * lesion_rng.uniform(0.04, 0.055)
        for _ in range(int(lesion_rng.integers(1, 3))):
            ox, oy = lesion_rng.normal(0, 0.35 * rho, 2)
            paint(
                _blob_pixels(S, x + ox, y + oy, rho, rho * lesion_rng.uniform(0.65, 1.0), lesion_rng.uniform(0, 3)),
                _F_RED,
            )
    for _ in range(plan["ma"]):
        x, y = place(0.02 * S)
        r = max(0.55, S * lesion_rng.uniform(0.011, 0.015))
        paint(_blob_pixels(S, x, y, r, r), _F_RED)

    # --- compensation: vessels fill the red budget, reflex streaks the yellow and white budgets
    counts = {c: int(np.count_nonzero(cmap == c)) for c in (_F_RED, _F_YEL, _F_WHT)}
    # decoys keep a one-pixel gap around lesions, so that blobs stay blobs instead of merging into vessels/streaks
    ring = ndimage.binary_dilation(lesion.reshape(S, S), np.ones((3, 3), bool)).ravel()
    allowed = ((cmap == _F_BG) | (cmap == _F_DISC)) & ~ring
    drawn_red = counts[_F_RED] if compensate else 0
    for attempt in range(6):
        seg, hw, t0, t1 = _vessel_segments(decoy_rng, S, disc, fov, side, 1.8 * (budget_red - drawn_red))
        order = np.argsort(t0, kind="stable")
        seg, hw, t0, t1 = seg[order], hw[order], t0[order] + 1e3 * attempt, t1[order] + 1e3 * attempt
        cum = np.cumsum(2 * np.maximum(hw, 0.5) * (t1 - t0))
        start = 0
        while start < len(seg) and drawn_red < budget_red:  # stroke in time-ordered chunks of ~1.5x what is missing
            stop = max(start + 1, int(np.searchsorted(cum, cum[start] + 1.5 * (budget_red - drawn_red))))
            ordered = _stroke_pixels(S, seg[start:stop], hw[start:stop], t0[start:stop], t1[start:stop])
            drawn_red += _fill_budget(cmap, ordered, _F_RED, allowed, budget_red - drawn_red)
            start = stop
        if drawn_red >= budget_red:
            break
    allowed &= cmap == _F_BG
    hw_streak = max(0.5, 0.005 * S)
    for cls, budget in ((_F_YEL, budget_yel), (_F_WHT, budget_wht)):
        got = counts[cls] if compensate else 0
        for attempt in range(8):
            seg, t0, t1 = _streak_segments(decoy_rng, S, 24, disc, disc_r, fov, 100.0 * attempt)
            got += _fill_budget(cmap, _stroke_pixels(S, seg, hw_streak, t0, t1), cls, allowed, budget - got)
            if got >= budget:
                break

    # --- colour and acquisition (float32)
    col = _FUNDUS_PALETTE[cmap].reshape(S, S, 3)
    tex = _smooth_field(app_rng, S, max_freq=6.0)
    bgm = (cmap == _F_BG).reshape(S, S)
    macula = 1.0 - 0.35 * np.exp(-((xs - fovea[0]) ** 2 + (ys - fovea[1]) ** 2) / (2 * (0.07 * S) ** 2))
    dm = (cmap == _F_DISC).reshape(S, S)
    cup = np.exp(-((xs[dm] - disc[0]) ** 2 + (ys[dm] - disc[1]) ** 2) / (2 * (0.5 * disc_r) ** 2))
    col[dm] += (0.25 * cup)[:, None].astype(np.float32) * (1.0 - col[dm])
    rr2 = ((xs - fx) ** 2 + (ys - fy) ** 2) / fr**2
    ga = app_rng.uniform(0, 2 * np.pi)
    vign = app_rng.uniform(0.3, 0.5) + (0.15 if b else 0.0)
    illum = 1.0 - vign * rr2 + app_rng.uniform(0.0, 0.12) * ((xs - fx) * np.cos(ga) + (ys - fy) * np.sin(ga)) / fr
    shade = np.where(bgm, (1 + 0.06 * tex) * macula, 1 + 0.02 * tex) * illum
    wb = app_rng.uniform(0.97, 1.03, 3) * app_rng.uniform(0.9, 1.1)
    if b:
        wb *= np.array([0.9, 1.12, 1.3])
    gamma = app_rng.uniform(0.95, 1.05) * (0.8 if b else 1.0)
    img = col * shade.astype(np.float32)[..., None] * wb.astype(np.float32)
    np.clip(img, 0, 1, out=img)
    np.power(img, np.float32(gamma), out=img)
    img[~inside.reshape(S, S)] = 0.015
    sigma = S * (app_rng.uniform(0.007, 0.01) if b else app_rng.uniform(0.003, 0.008))
    img = ndimage.gaussian_filter(img, (sigma, sigma, 0), mode="nearest", truncate=3.0)
    noise = app_rng.uniform(0.03, 0.045) if b else app_rng.uniform(0.01, 0.025)
    img += app_rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise)
    image = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    info = {
        **{f"n_{k}": v for k, v in plan.items()},
        "budget_red": budget_red,
        "budget_yellow": budget_yel,
        "budget_white": budget_wht,
        "red_pixels": int(np.count_nonzero(cmap == _F_RED)),
        "yellow_pixels": int(np.count_nonzero(cmap == _F_YEL)),
        "white_pixels": int(np.count_nonzero(cmap == _F_WHT)),
    }
    return DemoSample(image=image, mask=lesion.reshape(S, S), label=grade, info=info)


# -------------------------------------------------------------------------------------------------- chest X-ray


def synth_cxr(
    rng: np.random.Generator,
    size: int,
    domain: str = "A",
    labels: Sequence[int] | None = None,
    compensate: bool = True,
) -> DemoSample:
    """Generate one PA chest radiograph (display intensities, bright = dense); findings drawn when not given.

    ``compensate=False`` (ablation only): solid findings and effusion fluid replace aerated lung instead of lowering
    the diaphragm, and the markings ignore the pleural line, so findings change the histogram.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    label_rng, anat_rng, find_rng, mark_rng, app_rng = _spawn(rng, 5)
    if labels is None:
        labels = [int(v) for v in label_rng.random(len(CXR_CLASSES)) < CXR_PREVALENCE]
    labels = [int(v) for v in labels]
    if len(labels) != len(CXR_CLASSES) or any(v not in (0, 1) for v in labels):
        raise ValueError(f"labels must be {len(CXR_CLASSES)} values in {{0, 1}}, got {labels}")
    has = dict(zip(CXR_CLASSES, labels))
    S = size
    ys, xs = _grid(S)
    X, Y = xs / S, ys / S
    b = domain == "B"

    # --- anatomy (label independent)
    bx, bw = 0.5 + anat_rng.normal(0, 0.01), anat_rng.uniform(0.42, 0.47)
    body = np.abs((X - bx) / bw) ** 3 + np.abs((Y - 0.6) / 0.57) ** 3 <= 1
    body_thick = np.sqrt(np.clip(1 - ((X - bx) / bw) ** 2, 0, 1))
    mw = anat_rng.uniform(0.045, 0.06)
    heart_c = (bx + anat_rng.uniform(0.025, 0.05), anat_rng.uniform(0.6, 0.63))
    heart_r = (anat_rng.uniform(0.14, 0.17), anat_rng.uniform(0.11, 0.13))
    heart = ((X - heart_c[0]) / heart_r[0]) ** 2 + ((Y - heart_c[1]) / heart_r[1]) ** 2 <= 1
    cmap = np.where(body, _X_SOFT, _X_AIR).astype(np.uint8).ravel()
    med = (body & ((np.abs(X - bx) < mw) & (Y > 0.08)) | heart).ravel()
    cmap[med] = _X_MED

    lungs = []
    aerated = np.zeros(S * S, dtype=bool)
    for s in (-1.0, 1.0):  # -1: image left (patient's right lung)
        a, bb = anat_rng.uniform(0.15, 0.17), anat_rng.uniform(0.32, 0.35)
        xc, yc = bx + s * (mw + a * anat_rng.uniform(0.85, 0.95)), anat_rng.uniform(0.45, 0.48)
        env = (((X - xc) / a) ** 2 + ((Y - yc) / bb) ** 2 <= 1) & ((X - bx) * s > mw) & ~heart & body
        env = env.ravel() & (cmap != _X_MED)
        frac = anat_rng.uniform(0.74, 0.82)
        h = anat_rng.uniform(0.03, 0.05)
        lungs.append(dict(s=s, a=a, b=bb, xc=xc, yc=yc, env=env, n_aer=int(round(frac * env.sum())), h=h))
    budget_opac = int(round(anat_rng.uniform(0.026, 0.034) * S * S))
    ribs = np.zeros((S, S))
    rib_hw = max(0.5 / S, 0.014)
    for s in (-1.0, 1.0):
        lat = np.clip((X - bx) * s, 0, None)
        for i in range(10):
            y0 = 0.12 + 0.062 * i + anat_rng.normal(0, 0.004)
            yc_rib = y0 - 0.25 * lat + 1.6 * lat**2
            ribs += (np.abs(Y - yc_rib) < rib_hw * (1 + 0.5 * lat)) & (lat > 0.03) & (lat < bw * 0.95)
        clav = np.abs(Y - (0.16 - 0.12 * lat + 0.02 * anat_rng.normal())) < max(0.6 / S, 0.013)
        ribs += 1.5 * (clav & (lat > 0.03) & (lat < 0.3))
    spine = (np.abs(X - bx) < 0.035) * (Y > 0.05) * (0.7 + 0.3 * (np.sin(Y * 2 * np.pi / 0.05) > -0.6))

    # --- findings. Nodule, consolidation and effusion fluid are airless lung with soft-tissue density; the per-lung
    # aerated budget pays for them (the diaphragm dome sits lower), so the amount of lung stays the same and only
    # shapes differ. A pneumothorax keeps the lung's intensity and only lacks markings.
    fmask = np.zeros(S * S, dtype=bool)
    Xf, Yf = X.ravel(), Y.ravel()
    eff_side, ptx_side, nod_side, cons_side = (int(v) for v in find_rng.integers(0, 2, 4))
    eff_delta, eff_m = find_rng.uniform(0.05, 0.09), find_rng.uniform(0.05, 0.09)
    ptx_rho = find_rng.uniform(0.58, 0.72)
    rhos = [np.sqrt(((Xf - lu["xc"]) / lu["a"]) ** 2 + ((Yf - lu["yc"]) / lu["b"]) ** 2) for lu in lungs]
    zones = [
        lu["env"] & ((Xf - lu["xc"]) * lu["s"] > -0.35 * lu["a"]) & (Yf < lu["yc"] + 0.1) for lu in lungs
    ]  # apical-lateral zone where a pneumothorax collects
    ptx_region = zones[ptx_side] & (rhos[ptx_side] > ptx_rho) if has["pneumothorax"] else np.zeros(S * S, bool)

    def place(k: int) -> tuple[float, float]:
        lu = lungs[k]
        ok = lu["env"] & (Yf < lu["yc"] + 0.3 * lu["b"]) & (rhos[k] < 0.8) & ~ptx_region
        idx = np.flatnonzero(ok)
        p = idx[int(find_rng.integers(0, len(idx)))]
        return (p % S) + 0.5, (p // S) + 0.5

    solid = np.zeros(S * S, dtype=bool)  # airless finding pixels inside the lung envelopes
    nodule = np.zeros(0, dtype=np.int64)
    cons = np.zeros(0, dtype=np.int64)
    if has["nodule"]:
        x, y = place(nod_side)
        r = max(0.8, S * find_rng.uniform(0.025, 0.035))
        nodule = _blob_pixels(S, x, y, r, r)
        nodule = nodule[lungs[nod_side]["env"][nodule] & ~ptx_region[nodule]]
        solid[nodule] = True
    if has["consolidation"]:
        x, y = place(cons_side)
        blobs = []
        for _ in range(int(find_rng.integers(2, 5))):
            ox, oy = find_rng.normal(0, 0.025 * S, 2)
            r = S * find_rng.uniform(0.03, 0.045)
            blobs.append(_blob_pixels(S, x + ox, y + oy, r, r * find_rng.uniform(0.7, 1.0), find_rng.uniform(0, 3)))
        cons = np.unique(np.concatenate(blobs))
        cons = cons[lungs[cons_side]["env"][cons] & ~ptx_region[cons]]
        # air bronchograms: thin aerated branches inside the opacity
        ang = find_rng.uniform(0, 2 * np.pi)
        seg = [(x, y, x + 0.05 * S * np.cos(ang + da), y + 0.05 * S * np.sin(ang + da)) for da in (0.0, 0.7)]
        bronchi = _stroke_pixels(S, np.array(seg), 0.5, np.zeros(2), np.ones(2))
        bronchi = bronchi[np.isin(bronchi, cons)][:-2]
        solid[np.setdiff1d(cons, bronchi)] = True

    above = np.zeros(S * S, dtype=bool)  # inside a lung envelope, above its diaphragm dome
    for k, lung in enumerate(lungs):
        idx = np.flatnonzero(lung["env"])
        u = np.clip((Xf[idx] - lung["xc"]) / lung["a"], -1, 1)
        key = Yf[idx] + lung["h"] * (1 - u**2)
        key_eff = key
        if has["effusion"] and k == eff_side:
            t = np.clip(((Xf[idx] - lung["xc"]) * lung["s"] / lung["a"] + 1) / 2, 0, 1)
            key_eff = np.maximum(key, Yf[idx] + eff_m * t**2 + eff_delta)
        if compensate:  # the n_aer lowest keys among pixels that are not solid findings
            cand = np.flatnonzero(~solid[idx])
            chosen = cand[np.argsort(key_eff[cand], kind="stable")[: lung["n_aer"]]]
            lam = key_eff[chosen].max()
        else:  # ablation: findings replace aerated lung without moving the diaphragm
            chosen = np.argsort(key, kind="stable")[: lung["n_aer"]]
            lam = key[chosen].max()
            chosen = chosen[(key_eff[chosen] <= lam) & ~solid[idx[chosen]]]
        aerated[idx[chosen]] = True
        above[idx[key <= lam]] = True
        if has["effusion"] and k == eff_side:
            fmask[idx[(key <= lam) & ~aerated[idx] & ~solid[idx]]] = True
    cmap[aerated] = _X_LUNG
    # non-aerated parts of the envelopes (abdomen below the domes, fluid, solid findings) stay soft tissue
    fmask[nodule[above[nodule]]] = True
    fmask[cons[above[cons]]] = True

    ptx = np.zeros(S * S, dtype=bool)
    if has["pneumothorax"]:
        zone = zones[ptx_side] & aerated
        ptx = zone & ptx_region
        line_w = max(0.55 / S, 0.005) / min(lungs[ptx_side]["a"], lungs[ptx_side]["b"])
        line = zone & (rhos[ptx_side] <= ptx_rho) & (rhos[ptx_side] > ptx_rho - 2 * line_w) & ~fmask
        cmap[line] = _X_OPAC
        fmask |= ptx | line
    free = aerated & ~ptx

    # --- compensation: lung markings (radial lines from the hila) fill the opacity budget
    drawn = int(np.count_nonzero(cmap == _X_OPAC)) if compensate else 0
    allowed = (cmap == _X_LUNG) & free & ~fmask
    hw = max(0.5, 0.004 * S)
    for attempt in range(8):
        n = 60
        idx = np.flatnonzero(allowed)
        if len(idx) == 0:
            break
        p = idx[mark_rng.integers(0, len(idx), n)]
        px, py = (p % S) + 0.5, (p // S) + 0.5
        hx = np.where(px < bx * S, (bx - mw - 0.02) * S, (bx + mw + 0.02) * S)
        ang = np.arctan2(py - 0.45 * S, px - hx) + mark_rng.normal(0, 0.25, n)
        ln = mark_rng.uniform(0.03, 0.07, n) * S
        dx, dy = ln / 2 * np.cos(ang), ln / 2 * np.sin(ang)
        seg = np.stack([px - dx, py - dy, px + dx, py + dy], 1)
        t0 = np.arange(n) + 100.0 * attempt
        drawn += _fill_budget(cmap, _stroke_pixels(S, seg, hw, t0, t0 + 1), _X_OPAC, allowed, budget_opac - drawn)
        if drawn >= budget_opac:
            break

    # --- densities and acquisition
    dens = np.array([0.03, 0.44, 0.52, 0.14, 0.28])[cmap].reshape(S, S)
    inside = body
    tex = _smooth_field(app_rng, S, max_freq=5.0)
    dens = dens + inside * (0.12 * body_thick + 0.015 * tex + 0.05 * ribs + 0.05 * spine)
    gain = app_rng.uniform(0.85, 1.1) * (0.75 if b else 1.0)
    offset = app_rng.uniform(-0.03, 0.05) + (0.1 if b else 0.0)
    gamma = app_rng.uniform(0.8, 1.25)
    img = np.clip(dens * gain + offset, 0, 1) ** gamma
    sigma = S * (app_rng.uniform(0.011, 0.016) if b else app_rng.uniform(0.0, 0.006))
    if sigma > 0.05:
        img = ndimage.gaussian_filter(img, sigma, mode="nearest", truncate=3.0)
    noise = app_rng.uniform(0.025, 0.04) if b else app_rng.uniform(0.008, 0.02)
    img = np.clip(img + app_rng.normal(0, noise, img.shape), 0, 1).astype(np.float32)
    info = {
        "budget_opacity": budget_opac,
        "opacity_pixels": int(np.count_nonzero(cmap == _X_OPAC)),
        "aerated_pixels": int(np.count_nonzero((cmap == _X_LUNG) | (cmap == _X_OPAC))),
        "budget_aerated": int(sum(lung["n_aer"] for lung in lungs)),
    }
    return DemoSample(image=img, mask=fmask.reshape(S, S), label=labels, info=info)


# ---------------------------------------------------------------------------------------------------------- writers


def save_png(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an 8-bit PNG (``(H, W)`` grey or ``(H, W, 3)`` RGB; bool is written as 0/255)."""
    from PIL import Image

    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    Image.fromarray(arr.astype(np.uint8)).save(path, format="PNG")


def write_cxr_dicom(
    path: str | os.PathLike,
    image: np.ndarray,
    rng: np.random.Generator,
    uid_entropy: Sequence[str],
    patient_id: str,
    domain: str = "A",
    instance_number: int = 1,
) -> dict[str, Any]:
    """Write a display image (``[0, 1]``, bright = dense) as a DX (domain A) or CR (domain B) DICOM file.

    Encoding varies per image (drawn from ``rng``): 12-bit-in-16, 16-bit or 8-bit storage, ~30% MONOCHROME1 (stored
    inverted), rescale slope/intercept on some 16-bit files, and a window covering the data. UIDs are deterministic
    (hashes of ``uid_entropy``); nothing depends on the clock. Returns the encoding choices.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        PYDICOM_IMPLEMENTATION_UID,
        ComputedRadiographyImageStorage,
        DigitalXRayImageStorageForPresentation,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    img = np.clip(np.asarray(image, dtype=np.float64), 0, 1)
    rows, cols = img.shape
    mix = (0.3, 0.3, 0.4) if domain == "B" else (0.5, 0.3, 0.2)
    kind = int(rng.choice(3, p=mix))
    bits_alloc, bits_stored = [(16, 12), (16, 16), (8, 8)][kind]
    maxval = 2**bits_stored - 1
    lo, hi = rng.uniform(0.0, 0.04) * maxval, rng.uniform(0.85, 1.0) * maxval
    value = np.round(lo + img * (hi - lo)).astype(np.int64)
    mono1 = bool(rng.random() < 0.3)
    stored = (maxval - value) if mono1 else value
    slope, intercept = 1.0, 0.0
    rescale = bits_alloc == 16 and bool(rng.random() < 0.5)
    if rescale:
        slope, intercept = [(1.0, -1024.0), (0.5, 0.0), (2.0, -100.0)][int(rng.integers(0, 3))]
    modality = stored * slope + intercept
    wlo, whi = np.percentile(modality, [0.5, 99.5])
    width = max((whi - wlo) * rng.uniform(1.0, 1.15), 2.0)
    center = (wlo + whi) / 2

    def uid(tag: str) -> str:
        return generate_uid(prefix=UID_ROOT, entropy_srcs=[*map(str, uid_entropy), tag])

    cr = domain == "B"
    sop_class = ComputedRadiographyImageStorage if cr else DigitalXRayImageStorageForPresentation
    sop_uid = uid("sop")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MEDTEX_DEMO"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    day = int(rng.integers(0, 3650))
    ds.StudyDate = (np.datetime64("2012-01-01") + np.timedelta64(day, "D")).astype(str).replace("-", "")
    ds.StudyTime = f"{int(rng.integers(7, 19)):02d}{int(rng.integers(0, 60)):02d}00"
    ds.AccessionNumber = uid("accession").replace(".", "")[-16:]
    ds.Modality = "CR" if cr else "DX"
    ds.Manufacturer = "MEDTEX synthetic scanner " + domain
    ds.InstitutionName = "Synthetic demo"
    ds.ReferringPhysicianName = ""
    ds.PatientName = f"DEMO^{patient_id}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.StudyInstanceUID = uid("study")
    ds.SeriesInstanceUID = uid("series")
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = int(instance_number)
    ds.PatientOrientation = ["L", "F"]
    if not cr:
        ds.PresentationIntentType = "FOR PRESENTATION"
    spacing = f"{430.0 / max(rows, cols):.4f}"
    ds.PixelSpacing = [spacing, spacing]
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1 if mono1 else -1
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.set_pixel_data(
        stored.astype(np.uint8 if bits_alloc == 8 else np.uint16),
        photometric_interpretation="MONOCHROME1" if mono1 else "MONOCHROME2",
        bits_stored=bits_stored,
        generate_instance_uid=False,
    )
    if rescale:
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleType = "US"
    ds.WindowCenter = f"{center:.1f}"
    ds.WindowWidth = f"{width:.1f}"
    ds.VOILUTFunction = "LINEAR"
    ds.save_as(path, enforce_file_format=True)
    return {"bits_stored": bits_stored, "bits_allocated": bits_alloc, "monochrome1": mono1, "rescale": rescale}


# ---------------------------------------------------------------------------------------------------------- dataset


def demo_sample(task: str, split: str, index: int, size: int = 64, seed: int = 0, domain: str = "A") -> DemoSample:
    """Regenerate in memory the sample that :func:`generate_demo_data` writes as ``<split prefix>_<index>``.

    For ``cxr`` the returned image is the display image before DICOM encoding (bright = dense, ``[0, 1]``).
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    img_rng = _spawn(sample_rng(seed, task, domain, split, index), 2)[0]
    return synth_fundus(img_rng, size, domain) if task == "fundus" else synth_cxr(img_rng, size, domain)


def generate_demo_data(
    task: str,
    out_dir: str | os.PathLike,
    n_train: int,
    n_val: int,
    n_test: int,
    size: int = 64,
    seed: int = 0,
    domain: str = "A",
    n_unlabeled: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Write ``images/``, ``masks/`` and ``datalist.json`` under ``out_dir``; return the datalist (absolute paths).

    Files are ``images/<prefix>_<index:05d>.png|.dcm`` and ``masks/<same stem>.png`` (0/255) with prefixes ``train``,
    ``val``, ``test``, ``unlabeled``. Unlabelled items carry ``image`` and ``mask`` but no ``label``.
    """
    from .datalist import save_datalist

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    if size < 32:
        raise ValueError(f"size must be at least 32 px, got {size}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    counts = {"training": n_train, "validation": n_val, "test": n_test, "unlabeled": n_unlabeled}
    jobs = [(split, i) for split, n in counts.items() for i in range(int(n))]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc=f"demo {task} {domain}", unit="img")
    datalist: dict[str, Any] = {
        "name": f"demo_{task}",
        "task": "multiclass" if task == "fundus" else "multilabel",
        "classes": list(FUNDUS_CLASSES if task == "fundus" else CXR_CLASSES),
        "domain": domain,
        **{split: [] for split in counts},
    }
    for split, i in jobs:
        stem = f"{SPLIT_PREFIX[split]}_{i:05d}"
        img_rng, enc_rng = _spawn(sample_rng(seed, task, domain, split, i), 2)
        patient = f"DEMO{task.upper()}{domain}{seed}-{stem}"
        if task == "fundus":
            sample = synth_fundus(img_rng, size, domain)
            image_path = out / "images" / f"{stem}.png"
            save_png(image_path, sample.image)
        else:
            sample = synth_cxr(img_rng, size, domain)
            image_path = out / "images" / f"{stem}.dcm"
            write_cxr_dicom(
                image_path, sample.image, enc_rng, ["medtex-demo", task, domain, seed, split, i], patient, domain, i + 1
            )
        mask_path = out / "masks" / f"{stem}.png"
        save_png(mask_path, sample.mask)
        item: dict[str, Any] = {"image": str(image_path), "mask": str(mask_path)}
        if split != "unlabeled":
            item["label"] = sample.label
        datalist[split].append(item)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    save_datalist(out / "datalist.json", datalist)
    return datalist
