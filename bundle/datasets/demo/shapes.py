"""A generic synthetic image-classification set (shapes and textures): an offline stand-in for ImageNet pretraining.

Each image has a random two-colour background with a smooth gradient and texture, 1-3 instances of its class (a shape
or a texture patch at a random position, scale, rotation and colour), 0-4 distractors (thin straight segments and
thin elongated ellipses, which belong to no class), random contrast, gamma, blur and noise. Every colour is drawn
independently of the class (only the luminance contrast of an instance to the background under it is kept at least
0.2), so the class is in the shapes, not in the colours or the histogram. Image ``i`` of a split depends only on
``(seed, split, i)``: the same arguments write byte-identical files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .common import SPLIT_PREFIX, _blob_pixels, _grid, _smooth_field, _spawn, _stroke_pixels, sample_rng
from .generate import save_png

GENERIC_CLASSES = [
    "disc",
    "ring",
    "square",
    "triangle",
    "cross",
    "star",
    "stripes",
    "checkerboard",
    "dot grid",
    "scribble",
]

_LUMA = np.array([0.299, 0.587, 0.114])
_SS = 2  # supersampling factor of the shape masks (anti-aliased edges)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(rgb) @ _LUMA


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an ``(H, W, C)`` image with edge padding (no-op for tiny sigma)."""
    if sigma < 0.3:
        return img
    r = int(np.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    h, w = img.shape[:2]
    pad = np.pad(img, ((r, r), (0, 0), (0, 0)), mode="edge")
    img = sum(k[j] * pad[j : j + h] for j in range(2 * r + 1))
    pad = np.pad(img, ((0, 0), (r, r), (0, 0)), mode="edge")
    return np.asarray(sum(k[j] * pad[:, j : j + w] for j in range(2 * r + 1)))


def _downsample(mask: np.ndarray, size: int) -> np.ndarray:
    """Coverage in ``[0, 1]`` of each output pixel by a supersampled boolean mask."""
    return mask.reshape(size, _SS, size, _SS).mean(axis=(1, 3))


def _flat_mask(size: int, flat: np.ndarray) -> np.ndarray:
    m = np.zeros(size * size, dtype=bool)
    m[flat] = True
    return m.reshape(size, size)


def _shape_mask(rng: np.random.Generator, label: int, size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """Boolean mask on the supersampled grid of one instance of class ``label`` (coordinates in output pixels)."""
    ss = size * _SS
    ys, xs = _grid(ss)
    x, y = xs / _SS - cx, ys / _SS - cy
    a = rng.uniform(0, 2 * np.pi)
    u, v = np.cos(a) * x + np.sin(a) * y, -np.sin(a) * x + np.cos(a) * y
    r = np.hypot(u, v)
    name = GENERIC_CLASSES[label]
    if name == "disc":
        ax = rng.uniform(0.85, 1.15)
        return (u / (radius * ax)) ** 2 + (v * ax / radius) ** 2 <= 1.0
    if name == "ring":
        inner = min(radius - 1.5, radius * rng.uniform(0.45, 0.7))
        return (r <= radius) & (r >= inner)
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= radius * 0.8
    if name == "triangle":
        out = np.ones_like(u, dtype=bool)
        for k in range(3):
            t = 2 * np.pi * k / 3
            out &= u * np.cos(t) + v * np.sin(t) <= radius * 0.55
        return out
    if name == "cross":
        w = max(0.8, radius * rng.uniform(0.2, 0.35))
        return ((np.abs(u) <= radius) & (np.abs(v) <= w)) | ((np.abs(v) <= radius) & (np.abs(u) <= w))
    if name == "star":
        n = int(rng.integers(5, 7))
        inner = radius * rng.uniform(0.35, 0.5)
        phase = (np.arctan2(v, u) * n / (2 * np.pi)) % 1.0
        return r <= inner + (radius - inner) * np.abs(phase - 0.5) * 2
    if name == "scribble":
        steps = int(rng.integers(8, 15))
        step = radius * rng.uniform(0.45, 0.65)
        pts = [np.array([cx, cy]) + rng.uniform(-0.3, 0.3, 2) * radius]
        heading = rng.uniform(0, 2 * np.pi)
        for _ in range(steps):
            heading += rng.uniform(-1.8, 1.8)
            nxt = pts[-1] + step * np.array([np.cos(heading), np.sin(heading)])
            off = nxt - np.array([cx, cy])
            if np.hypot(*off) > radius:  # turn back towards the centre
                heading += np.pi
                nxt = pts[-1] + step * np.array([np.cos(heading), np.sin(heading)])
            pts.append(nxt)
        p = np.array(pts) * _SS
        seg = np.concatenate([p[:-1], p[1:]], axis=1)
        times = np.arange(len(seg), dtype=np.float64)
        hw = max(1.0, radius * _SS * rng.uniform(0.08, 0.13))
        return _flat_mask(ss, _stroke_pixels(ss, seg, hw, times, times + 1))
    # texture patches in a round or square window
    window = r <= radius if rng.random() < 0.5 else np.maximum(np.abs(u), np.abs(v)) <= radius * 0.85
    period = max(3.0, radius * rng.uniform(0.35, 0.6))
    if name == "stripes":
        return window & (np.sin(2 * np.pi * u / period) > 0)
    if name == "checkerboard":
        return window & (np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period) > 0)
    if name == "dot grid":
        du = (u / period) % 1.0 - 0.5
        dv = (v / period) % 1.0 - 0.5
        return window & (np.hypot(du, dv) <= rng.uniform(0.25, 0.32))
    raise ValueError(f"unknown class index {label}")


def _contrasting_colour(rng: np.random.Generator, under: float) -> np.ndarray:
    """A random RGB colour whose luminance differs from ``under`` by 0.2-0.6 (class-independent)."""
    gap = rng.uniform(0.2, 0.6)
    options = [t for t in (under - gap, under + gap) if 0.0 <= t <= 1.0] or [0.0 if under > 0.5 else 1.0]
    target = options[int(rng.integers(len(options)))]
    chroma = rng.uniform(0, 1, 3)
    chroma -= _luma(chroma)
    chroma *= rng.uniform(0, 1) * min(1.0, target / max(1e-6, -chroma.min()), (1 - target) / max(1e-6, chroma.max()))
    return np.clip(target + chroma, 0, 1)


def synth_generic(
    rng: np.random.Generator, size: int, channels: int = 3, label: int | None = None
) -> tuple[np.ndarray, int]:
    """Draw one image of the generic set: ``(H, W, 3)`` (``channels=3``) or ``(H, W)`` uint8, and its class index.

    ``label`` picks the class (index into :data:`GENERIC_CLASSES`); ``None`` draws it from ``rng``.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if label is None:
        label = int(rng.integers(len(GENERIC_CLASSES)))
    if not 0 <= label < len(GENERIC_CLASSES):
        raise ValueError(f"label must be in [0, {len(GENERIC_CLASSES)}), got {label}")
    bg_rng, shape_rng, clutter_rng, look_rng = _spawn(rng, 4)
    unit = size / 64.0

    # background: two random colours blended along a gradient plus smooth texture, fine texture on top
    ys, xs = _grid(size)
    a = bg_rng.uniform(0, 2 * np.pi)
    grad = ((np.cos(a) * xs + np.sin(a) * ys) / size - 0.5 * (np.cos(a) + np.sin(a))) * bg_rng.uniform(0, 1.5)
    t = np.clip(0.5 + grad + 0.25 * _smooth_field(bg_rng, size, 5, 3.0), 0, 1)
    c0, c1 = bg_rng.uniform(0, 1, 3), bg_rng.uniform(0, 1, 3)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    img += bg_rng.uniform(0, 0.08) * _smooth_field(bg_rng, size, 8, 12.0)[..., None]
    img = np.clip(img, 0, 1)

    def paint(mask: np.ndarray, cx: float, cy: float, rng_: np.random.Generator) -> None:
        nonlocal img
        ix, iy = int(np.clip(cx, 0, size - 1)), int(np.clip(cy, 0, size - 1))
        colour = _contrasting_colour(rng_, float(_luma(img[iy, ix])))
        alpha = _downsample(mask, size)[..., None]
        fill = colour * (1 + rng_.uniform(0, 0.15) * _smooth_field(rng_, size, 4, 6.0)[..., None])
        img = img * (1 - alpha) + np.clip(fill, 0, 1) * alpha

    # distractors first (instances may cover them): thin straight segments and thin elongated ellipses
    ss = size * _SS
    for _ in range(int(clutter_rng.integers(0, 5))):
        cx, cy = clutter_rng.uniform(0, size, 2)
        ang = clutter_rng.uniform(0, np.pi)
        length = clutter_rng.uniform(0.1, 0.35) * size
        if clutter_rng.random() < 0.5:
            dx, dy = 0.5 * length * np.cos(ang), 0.5 * length * np.sin(ang)
            seg = np.array([[cx - dx, cy - dy, cx + dx, cy + dy]]) * _SS
            flat = _stroke_pixels(ss, seg, clutter_rng.uniform(0.5, 1.0), np.zeros(1), np.ones(1))
        else:
            rx = 0.5 * length * _SS
            flat = _blob_pixels(ss, cx * _SS, cy * _SS, rx, rx / clutter_rng.uniform(3.0, 5.0), ang)
        paint(_flat_mask(ss, flat), cx, cy, clutter_rng)

    # 1-3 instances of the class
    for _ in range(int(shape_rng.integers(1, 4))):
        radius = shape_rng.uniform(0.12, 0.28) * size
        cx, cy = shape_rng.uniform(radius * 0.6, size - radius * 0.6, 2)
        paint(_shape_mask(shape_rng, label, size, cx, cy, radius), cx, cy, shape_rng)

    # appearance: contrast, gamma, blur, white balance (grey: luminance), noise
    mean = img.mean()
    img = np.clip(mean + (img - mean) * look_rng.uniform(0.6, 1.2) + look_rng.uniform(-0.1, 0.1), 0, 1)
    img = img ** look_rng.uniform(0.7, 1.4)
    img = _blur(img, look_rng.uniform(0, 0.9) * unit)
    img = img * look_rng.uniform(0.9, 1.1, 3)
    if channels == 1:
        img = _luma(img)[..., None]
    img = img + look_rng.normal(0, look_rng.uniform(0, 0.05), img.shape)
    out = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    return (out[..., 0] if channels == 1 else out), label


def generate_generic_data(
    out_dir: str | os.PathLike,
    n_train: int,
    n_val: int,
    size: int = 64,
    seed: int = 0,
    channels: int = 3,
    progress: bool = False,
) -> dict[str, Any]:
    """Write ``images/{train,val}_<index:05d>.png`` and ``datalist.json`` under ``out_dir``; return the datalist.

    Labels are ``index % 10`` (balanced); image ``i`` of a split is drawn from
    ``sample_rng(seed, "generic", "A", split, i)``. PNGs are 8-bit RGB (``channels=3``) or 8-bit grey (``channels=1``).
    """
    from bundle.data.datalist import save_datalist

    for name, n in (("n_train", n_train), ("n_val", n_val)):
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
            raise ValueError(f"{name} must be an int >= 0, got {n!r}")
    if not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an int of at least 32 px, got {size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    counts = {"training": int(n_train), "validation": int(n_val)}
    jobs = [(split, i) for split, n in counts.items() for i in range(n)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="generic shapes", unit="img")
    datalist: dict[str, Any] = {
        "name": "generic_shapes",
        "task": "multiclass",
        "classes": list(GENERIC_CLASSES),
        "training": [],
        "validation": [],
        "test": [],
        "unlabeled": [],
    }
    for split, i in jobs:
        image, label = synth_generic(
            sample_rng(seed, "generic", "A", split, i), int(size), channels, label=i % len(GENERIC_CLASSES)
        )
        path = out / "images" / f"{SPLIT_PREFIX[split]}_{i:05d}.png"
        save_png(path, image)
        datalist[split].append({"image": str(path), "label": label})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    save_datalist(out / "datalist.json", datalist)
    return datalist
