"""Make a DICOM header read from a real archive fit to copy into a new object: repair or drop values that do not
conform to their value representation (VR).

Archives hold what decades of modalities wrote: ACR-NEMA-era times with colons (``11:20:00`` in a TM), dates with
dots (``1965.04.12``), strings longer than their VR allows, ``IS``/``DS`` values that are not numbers. pydicom
reads them (with a warning) but refuses, or makes highdicom refuse, to build a new object from them, so the
Secondary Capture of such a source failed. ``repair_dataset`` checks every text value with
``pydicom.valuerep.validate_value`` in ``RAISE`` mode (the check pydicom applies when writing strictly) and:

- repairs what has one obvious meaning: colons removed from a TM (``11:20:00`` -> ``112000``); dots, dashes or
  slashes removed from a DA (``1965.04.12`` -> ``19650412``, when that is a real date); a CS in lower case
  upper-cased; an IS written as a float with an integer value (``12.0`` -> ``12``); a DS longer than 16
  characters re-formatted to 16 (``pydicom.valuerep.format_number_as_ds``); PatientSex other than ``M``/``F``/``O``
  reduced to its first letter when that is one of them (``male`` -> ``M``);
- drops everything else that does not conform, over-long strings included. Truncating was the alternative and was
  not taken: a patient ID, accession number or institution cut to 64 characters can name another one, and a PACS
  files an object by these; a missing value is plainly missing. Type 2 attributes the SC writer must have are
  written empty by it (highdicom) when dropped here.

UIDs (UI) are left as they are: the capture must join the source's study whatever its UIDs look like.
Each change is returned as an ``Amendment`` naming the tag and what was done but never the value: headers carry
patient data, and these go to the log.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom import config
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag
from pydicom.valuerep import DA, DS, IS, TM, format_number_as_ds, validate_value

# VRs of text values, the ones whose content pydicom validates; UI left out on purpose (see the module docstring)
TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"})
PATIENT_SEX = ("M", "F", "O")


@dataclass(frozen=True)
class Amendment:
    """One attribute changed: ``action`` is ``repaired`` or ``dropped``, ``why`` says what was wrong (no value)."""

    tag: BaseTag
    keyword: str
    vr: str
    action: str
    why: str

    def __str__(self) -> str:
        return f"{self.action} {self.tag} {self.keyword or 'private'} ({self.vr}: {self.why})"


def _text(vr: str, value: Any) -> Any:
    """The value as the file holds it, which is what pydicom validates: IS/DS objects (and numbers) as their
    string; person names as they are."""
    if vr in ("IS", "DS"):
        return getattr(value, "original_string", None) or str(value)
    return value if isinstance(value, (str, bytes)) or vr == "PN" else str(value)


def _conforms(vr: str, value: Any) -> bool:
    """Whether one value passes pydicom's strict check and, for dates, times and numbers, its own parser (which
    highdicom uses, and which also refuses e.g. hour 25 that the pattern lets through)."""
    if value is None or value == "":
        return True
    value = _text(vr, value)
    try:
        validate_value(vr, value, config.RAISE)
        parse: dict[str, Callable[[Any], Any]] = {"DA": DA, "TM": TM, "IS": IS, "DS": DS}
        if vr in parse and isinstance(value, str):
            with config.strict_reading():
                parse[vr](value)
    except Exception:
        return False
    return True


def _repair(vr: str, keyword: str, value: Any) -> tuple[Any, str] | None:
    """A conforming replacement of one non-conforming value and what was done, or ``None`` (drop it)."""
    text = str(_text(vr, value)).strip()
    candidate: Any = None
    how = ""
    if vr == "TM" and ":" in text:
        candidate, how = text.replace(":", ""), "colons removed (ACR-NEMA time)"
    elif vr == "DA" and re.fullmatch(r"\d{4}[./-]\d{2}[./-]\d{2}", text):
        candidate, how = re.sub(r"[./-]", "", text), "separators removed (ACR-NEMA date)"
    elif keyword == "PatientSex" and text[:1].upper() in PATIENT_SEX:
        candidate, how = text[:1].upper(), "reduced to M, F or O"
    elif vr == "CS" and text.upper() != text:
        candidate, how = text.upper(), "upper-cased"
    elif vr == "IS":
        try:
            number = float(text)
        except ValueError:
            return None
        if number.is_integer() and abs(number) < 2**31:
            candidate, how = str(int(number)), "integer written as a decimal"
    elif vr == "DS":
        try:
            number = float(text)
        except ValueError:
            return None
        candidate, how = format_number_as_ds(number), "re-formatted to 16 characters"
    if candidate is not None and candidate != value and _conforms(vr, candidate):
        return candidate, how
    return None


def _problem(vr: str, value: Any) -> str:
    """What is wrong with a value, without the value (it may identify the patient)."""
    text = str(_text(vr, value))
    try:
        validate_value(vr, _text(vr, value), config.RAISE)
    except Exception as e:
        if "length" in str(e):
            return f"{len(text)} characters, more than {vr} allows"
    return f"not a valid {vr}"


def repair_dataset(ds: Dataset) -> list[Amendment]:
    """Repair or drop, in place, every text value of ``ds`` (nested sequences included, group 0002 and pixel data
    not) that does not conform to its VR; return what was changed, in tag order.

    pydicom's own warnings while converting the raw values are silenced here (its reading validation set to
    ``IGNORE`` meanwhile): they quote the value, which may be patient data; the amendments say the same by tag."""
    mode = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.IGNORE
    try:
        return _repair_dataset(ds)
    finally:
        config.settings.reading_validation_mode = mode


def _repair_dataset(ds: Dataset) -> list[Amendment]:
    amendments: list[Amendment] = []
    for tag in list(ds.keys()):
        if tag.group == 0x0002 or tag.group == 0x7FE0:
            continue
        keyword = ds.get_item(tag).keyword if hasattr(ds.get_item(tag), "keyword") else ""
        try:
            element = ds[tag]  # converts a raw element; a value pydicom cannot even convert is dropped
        except Exception as e:
            del ds[tag]
            amendments.append(Amendment(tag, keyword, "?", "dropped", f"unreadable value ({type(e).__name__})"))
            continue
        keyword, vr = element.keyword, element.VR
        if vr == "SQ":
            for item in element.value or []:
                amendments.extend(_repair_dataset(item))
            continue
        if vr not in TEXT_VRS or element.value is None:
            continue
        multiple = isinstance(element.value, (list, MultiValue))
        values = list(element.value) if multiple else [element.value]
        if all(_conforms(vr, v) for v in values):
            continue
        repaired, hows = [], []
        for value in values:
            if _conforms(vr, value):
                repaired.append(value)
                continue
            fix = _repair(vr, keyword, value)
            if fix is None:
                repaired = []
                why = _problem(vr, value)
                break
            repaired.append(fix[0])
            hows.append(fix[1])
        if repaired:
            element.value = repaired if multiple else repaired[0]
            amendments.append(Amendment(tag, keyword, vr, "repaired", "; ".join(sorted(set(hows)))))
        else:
            del ds[tag]
            amendments.append(Amendment(tag, keyword, vr, "dropped", why))
    return amendments
