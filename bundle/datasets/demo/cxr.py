"""The synthetic chest radiograph and its DICOM encoding (DX or CR, bit depths, MONOCHROME1, rescale, window)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from .common import (
    CXR_CLASSES,
    CXR_PREVALENCE,
    DOMAINS,
    UID_ROOT,
    DemoSample,
    _blob_pixels,
    _fill_budget,
    _grid,
    _smooth_field,
    _spawn,
    _stroke_pixels,
)

# chest X-ray class map codes
_X_AIR, _X_SOFT, _X_MED, _X_LUNG, _X_OPAC = range(5)


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
        forks = [(x, y, x + 0.05 * S * np.cos(ang + da), y + 0.05 * S * np.sin(ang + da)) for da in (0.0, 0.7)]
        bronchi = _stroke_pixels(S, np.array(forks), 0.5, np.zeros(2), np.ones(2))
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


def write_cxr_dicom(
    path: str | os.PathLike,
    image: np.ndarray,
    rng: np.random.Generator,
    uid_entropy: Sequence[object],
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
        UID,
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

    def uid(tag: str) -> UID:
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
