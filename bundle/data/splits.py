"""Seeded, stratified, patient-level splits and labelled-subset selection for datalist items.

Items are datalist dicts (``{"image", "label"[, "patient", "mask"]}``). Two rules hold everywhere:

- **patient-level**: items sharing a ``patient`` id always land in the same split (items without one are their own
  group), so no patient leaks between training, validation and test;
- **stratified**: each split gets about the same class shares. Multi-class items are stratified by label; multi-label
  items by a surrogate, their rarest positive finding (by frequency in the items being split) or ``"none"``; a patient
  takes the rarest surrogate among its items.

Strata too small to be spread over the requested splits (a class with one example, more classes than validation
slots) are pooled with the next-rarest stratum, with a logged warning, rather than failing; impossible requests (fewer
groups than non-empty splits, more labelled items than exist) raise ``ValueError`` with a plain message.
The same items, order and seed always give the same result.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("training", "validation", "test")


def split_items(
    items: Sequence[dict[str, Any]],
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    group_key: str | None = "patient",
    stratify: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Split items into ``{"training", "validation", "test"}`` by ``fractions`` (summing to 1; zeros allowed).

    Fractions count groups (patients), not items, when items carry ``group_key``; with one image per patient the two
    are the same. Returned items are shallow copies in their input order.
    """
    fractions = _check_fractions(fractions)
    items = list(items)
    if not items:
        raise ValueError("split_items: no items to split")
    units = _group_units(items, group_key)
    strata = _unit_strata(units, _item_strata(items) if stratify else ["all"] * len(items))
    _, n_val, n_test = _split_sizes(fractions, len(units), len(items))

    # Why not StratifiedGroupKFold: it yields equal folds (1/k each), so arbitrary fractions such as 0.75/0.1/0.15
    # would need many folds merged, and it cannot give a group-level split that is both exact in size and seeded the
    # way ShuffleSplit is. Instead each patient (group) gets one stratum and StratifiedShuffleSplit splits the groups:
    # exact group counts, stratified, seeded. Two stages: test out of all, then validation out of the rest.
    rest, test = _two_way(strata, n_test, seed, "test split")
    rest_train, rest_val = _two_way([strata[i] for i in rest], n_val, seed, "validation split")
    train, val = rest[rest_train], rest[rest_val]
    return {name: _gather(items, units, idx) for name, idx in zip(SPLIT_NAMES, (train, val, test))}


def select_labeled(
    datalist: dict[str, Any],
    n_labeled: int | None = None,
    labeled_fraction: float | None = None,
    seed: int = 0,
    group_key: str | None = "patient",
) -> dict[str, Any]:
    """Keep a stratified labelled subset of ``training``; move the rest, label removed, to ``unlabeled``.

    Give exactly one of ``n_labeled`` (items) or ``labeled_fraction`` (of the training items). Patients are kept
    whole where possible: groups are drawn stratified until ``n_labeled`` items are reached, and only the last group
    drawn may be cut to hit the count exactly (both parts are training data, so nothing leaks into evaluation).
    Validation and test are untouched. Returns a new datalist; the input is not modified.
    """
    train = list(datalist.get("training", []))
    n_total = len(train)
    n = _labeled_count(n_total, n_labeled, labeled_fraction)
    out = copy.deepcopy(datalist)
    out["labeled_subset"] = {"n_labeled": n, "n_training": n_total, "seed": seed}
    if n == n_total:
        return out

    units = _group_units(train, group_key)
    strata = _unit_strata(units, _item_strata(train))
    if len(units) == n_total:  # one item per group: an exact stratified draw of items
        _, chosen = _two_way(strata, n, seed, "labelled subset")
        order = list(chosen)
    else:
        # Draw about the right number of groups stratified, then walk them in a seeded order (drawn groups first,
        # the others after) until exactly n items are collected; the last group walked may be cut.
        n_groups = int(np.clip(round(n * len(units) / n_total), 1, len(units) - 1))
        rest, chosen = _two_way(strata, n_groups, seed, "labelled subset")
        rng = np.random.default_rng(seed)
        order = list(rng.permutation(chosen)) + list(rng.permutation(rest))
    keep: list[int] = []
    for u in order:
        keep.extend(units[u][: n - len(keep)])
        if len(keep) == n:
            break
    kept = set(keep)
    out["training"] = [copy.deepcopy(item) for i, item in enumerate(train) if i in kept]
    moved = [
        {k: copy.deepcopy(v) for k, v in item.items() if k != "label"} for i, item in enumerate(train) if i not in kept
    ]
    out["unlabeled"] = list(out.get("unlabeled", [])) + moved
    return out


def item_stratum(label: Any, positive_counts: Sequence[int] | None = None) -> str:
    """The stratification key of one label: ``"class k"`` (multi-class) or the rarest positive / ``"none"``."""
    if label is None:
        return "unlabeled"
    if isinstance(label, (list, tuple)):
        positives = [j for j, v in enumerate(label) if v == 1]
        if not positives:
            return "none"
        counts = positive_counts or [0] * len(label)
        return f"class {min(positives, key=lambda j: (counts[j], j))}"
    return f"class {label}"


def _item_strata(items: Sequence[dict[str, Any]]) -> list[str]:
    labels = [item.get("label") for item in items]
    n_classes = max((len(lab) for lab in labels if isinstance(lab, (list, tuple))), default=0)
    counts = [0] * n_classes
    for lab in labels:
        if isinstance(lab, (list, tuple)):
            for j, v in enumerate(lab):
                counts[j] += v == 1
    return [item_stratum(lab, counts) for lab in labels]


def _group_units(items: Sequence[dict[str, Any]], group_key: str | None) -> list[list[int]]:
    """Item indices per group, groups in order of first appearance; items without a group id stand alone."""
    units: list[list[int]] = []
    where: dict[Any, int] = {}
    for i, item in enumerate(items):
        group = item.get(group_key) if group_key else None
        if group is None or group == "":
            units.append([i])
        elif group in where:
            units[where[group]].append(i)
        else:
            where[group] = len(units)
            units.append([i])
    return units


def _unit_strata(units: list[list[int]], item_strata: list[str]) -> list[str]:
    """A group's stratum is the rarest stratum among its items (so rare classes are spread over the splits)."""
    freq = Counter(item_strata)
    return [min((item_strata[i] for i in unit), key=lambda s: (freq[s], s)) for unit in units]


def _two_way(strata: list[str], n_second: int, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted indices ``(first, second)`` with ``len(second) == n_second``, stratified where the counts allow."""
    n = len(strata)
    if n_second <= 0:
        return np.arange(n), np.arange(0)
    if n_second >= n:
        return np.arange(0), np.arange(n)
    y = _pool_rare_strata(strata, max_strata=min(n_second, n - n_second), what=what)
    x = np.zeros((n, 1))
    if len(set(y)) > 1:
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=n_second, random_state=seed)
        first, second = next(splitter.split(x, y))
    else:
        first, second = next(ShuffleSplit(n_splits=1, test_size=n_second, random_state=seed).split(x))
    return np.sort(first), np.sort(second)


def _pool_rare_strata(strata: list[str], max_strata: int, what: str) -> list[str]:
    """Merge the rarest stratum into the next rarest until StratifiedShuffleSplit's preconditions hold.

    StratifiedShuffleSplit needs every stratum to have at least 2 members and at most as many strata as each side of
    the split has members; checking that here turns its ValueError into a graceful, logged fallback.
    """
    counts = Counter(strata)
    name = {s: s for s in counts}
    pooled: list[str] = []
    while len(counts) > 1 and (min(counts.values()) < 2 or len(counts) > max_strata):
        rarest, next_rarest = sorted(counts, key=lambda s: (counts[s], s))[:2]
        merged = f"{next_rarest}+{rarest}"
        counts[merged] = counts.pop(rarest) + counts.pop(next_rarest)
        for s, current in name.items():
            if current in (rarest, next_rarest):
                name[s] = merged
        pooled.append(rarest)
    if pooled:
        logger.warning(
            "%s: too few examples to stratify %s separately; pooled with the next rarest stratum (%d strata left)",
            what,
            ", ".join(pooled),
            len(counts),
        )
    return [name[s] for s in strata]


def _gather(items: list[dict[str, Any]], units: list[list[int]], unit_idx: np.ndarray) -> list[dict[str, Any]]:
    idx = sorted(i for u in unit_idx for i in units[u])
    return [dict(items[i]) for i in idx]


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3:
        raise ValueError(f"fractions must be (train, val, test), got {tuple(fractions)}")
    train, val, test = (float(f) for f in fractions)
    if min(train, val, test) < 0 or abs(train + val + test - 1.0) > 1e-6:
        raise ValueError(f"fractions must be >= 0 and sum to 1, got ({train:g}, {val:g}, {test:g})")
    if train == 0:
        raise ValueError(f"the training fraction must be > 0, got fractions ({train:g}, {val:g}, {test:g})")
    return train, val, test


def _split_sizes(fractions: tuple[float, float, float], n_units: int, n_items: int) -> tuple[int, int, int]:
    """Largest-remainder rounding of ``fractions * n_units``; every non-zero fraction gets at least one group."""
    wanted = sum(f > 0 for f in fractions)
    if n_units < wanted:
        what = f"{n_items} items" + (f" ({n_units} patients)" if n_units < n_items else "")
        raise ValueError(
            f"cannot split {what} into {wanted} non-empty splits with fractions "
            f"{tuple(round(f, 4) for f in fractions)}; add data or set the validation/test fraction to 0"
        )
    raw = [f * n_units for f in fractions]
    sizes = [int(r) for r in raw]
    # largest remainder first, ties to the earlier split; rounded so that float noise (1 - 0.1 - 0.2) cannot break ties
    for j in sorted(range(3), key=lambda j: (-round(raw[j] - sizes[j], 6), j))[: n_units - sum(sizes)]:
        sizes[j] += 1
    for j in range(3):
        if fractions[j] > 0 and sizes[j] == 0:
            sizes[j] = 1
            sizes[max(range(3), key=lambda k: sizes[k])] -= 1
    return sizes[0], sizes[1], sizes[2]


def _labeled_count(n_total: int, n_labeled: int | None, labeled_fraction: float | None) -> int:
    if (n_labeled is None) == (labeled_fraction is None):
        raise ValueError("give exactly one of n_labeled and labeled_fraction")
    if n_total == 0:
        raise ValueError("the datalist has no 'training' items to select labelled ones from")
    if labeled_fraction is not None:
        if not 0 < labeled_fraction <= 1:
            raise ValueError(f"labeled_fraction must be in (0, 1], got {labeled_fraction}")
        return max(1, int(round(labeled_fraction * n_total)))
    if isinstance(n_labeled, bool) or not isinstance(n_labeled, (int, np.integer)) or n_labeled < 1:
        raise ValueError(f"n_labeled must be a positive int, got {n_labeled!r}")
    if n_labeled > n_total:
        raise ValueError(f"n_labeled={n_labeled} but the datalist has only {n_total} training items")
    return int(n_labeled)
