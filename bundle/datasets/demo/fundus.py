"""The synthetic fundus photograph: field of view, disc, vessel tree, lesions by grade, decoy reflex streaks."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .common import DOMAINS, DemoSample, _blob_pixels, _fill_budget, _grid, _smooth_field, _spawn, _stroke_pixels

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
    segs: list[tuple[float, float, float, float]] = []
    widths: list[float] = []
    t0s: list[float] = []
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
    segs, starts = [], []
    for k in range(3):
        a = head + k * bend
        nx, ny = x + step * np.cos(a), y + step * np.sin(a)
        segs.append(np.stack([x, y, nx, ny], 1))
        starts.append(t_offset + np.arange(n) + k / 3)
        x, y = nx, ny
    seg = np.concatenate(segs)
    t0 = np.concatenate(starts)
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
