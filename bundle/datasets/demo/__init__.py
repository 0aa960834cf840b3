"""Deterministic synthetic demo data: fundus-like photographs (5 DR-like grades) and chest-radiograph-like DICOMs.

Modules: ``common`` (seeding, shapes), ``fundus`` and ``cxr`` (drawing; DICOM encoding), ``generate`` (files and the
datalist). Both generators are pure numpy (plus PIL/pydicom for writing), vectorised, and seeded per image: image
``i`` of a split depends only on ``(seed, task, domain, split, i)``, so the same arguments give byte-identical files.

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

from .common import (
    CXR_CLASSES,
    CXR_PREVALENCE,
    DOMAINS,
    FUNDUS_CLASSES,
    RNG_STREAMS,
    SPLIT_PREFIX,
    TASKS,
    UID_ROOT,
    DemoSample,
    sample_rng,
)
from .cxr import synth_cxr, write_cxr_dicom
from .fundus import synth_fundus
from .generate import demo_sample, generate_demo_data, save_png
from .shapes import GENERIC_CLASSES, generate_generic_data, synth_generic

__all__ = [
    "CXR_CLASSES",
    "CXR_PREVALENCE",
    "DOMAINS",
    "FUNDUS_CLASSES",
    "GENERIC_CLASSES",
    "RNG_STREAMS",
    "SPLIT_PREFIX",
    "TASKS",
    "UID_ROOT",
    "DemoSample",
    "demo_sample",
    "generate_demo_data",
    "generate_generic_data",
    "sample_rng",
    "save_png",
    "synth_cxr",
    "synth_fundus",
    "synth_generic",
    "write_cxr_dicom",
]
