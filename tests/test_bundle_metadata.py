"""configs/metadata.json has every field the MONAI bundle specification and the Model Zoo require, consistent with the
configs and requirements, and passes MONAI's own ``verify_metadata`` against a schema of those requirements.

The Model Zoo's schema URL (``schema`` in the file) cannot be downloaded here, so the required fields are written out
from MONAI's code and documentation: ``monai.bundle.utils.DEFAULT_METADATA`` (what ``init_bundle`` writes),
``monai.bundle.properties.MetaProperties`` (required bundle properties) and the specification's list of mandatory
keys and tensor format keys (docs/source/mb_specification.rst; ``optional_packages_version`` is now
``required_packages_version``, ``monai.bundle.utils.DEPRECATED_ID_MAPPING``)."""

from __future__ import annotations

import json
import re
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest
from monai.bundle import ConfigParser, verify_metadata
from monai.bundle.properties import MetaProperties
from monai.bundle.utils import DEFAULT_METADATA, DEPRECATED_ID_MAPPING
from monai.utils import BundleProperty
from packaging.requirements import Requirement
from packaging.version import Version

from bundle.datasets.demo import FUNDUS_CLASSES

ROOT = Path(__file__).resolve().parents[1]
META = json.loads((ROOT / "configs" / "metadata.json").read_text())
SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
# mb_specification.rst: "The mandatory keys are as follows" (optional_packages_version renamed since)
SPEC_REQUIRED = [
    "version",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
]
# mb_specification.rst: tensor format specifiers "must be a dictionary containing at least these keys"
TENSOR_REQUIRED = [
    "type",
    "format",
    "modality",
    "num_channels",
    "spatial_shape",
    "dtype",
    "value_range",
    "is_patch_data",
    "channel_def",
]
# Model Zoo bundles also carry these; the issue asks for them
ZOO_REQUIRED = ["schema", "changelog", "name", "data_source", "data_type", "intended_use", "references"]
VERSION = {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"}
TENSOR = {
    "type": "object",
    "required": TENSOR_REQUIRED,
    "properties": {
        "type": {"type": "string"},
        "format": {"type": "string"},
        "modality": {"type": "string"},
        "num_channels": {"type": "integer", "minimum": 1},
        "spatial_shape": {"type": "array", "items": {"type": ["integer", "string"]}},
        "dtype": {"type": "string"},
        "value_range": {"type": "array", "items": {"type": "number"}, "maxItems": 2},
        "is_patch_data": {"type": "boolean"},
        "channel_def": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"}},
    },
}
SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": sorted(set(SPEC_REQUIRED) | set(ZOO_REQUIRED) | set(DEFAULT_METADATA)),
    "properties": {
        "schema": {"type": "string", "format": "uri"},
        "version": VERSION,
        "changelog": {"type": "object", "additionalProperties": {"type": "string", "minLength": 1}},
        "monai_version": VERSION,
        "pytorch_version": VERSION,
        "numpy_version": VERSION,
        "required_packages_version": {"type": "object", "additionalProperties": {"type": "string"}},
        "task": {"type": "string", "minLength": 1},
        "description": {"type": "string", "minLength": 1},
        "authors": {"type": "string", "minLength": 1},
        "copyright": {"type": "string", "minLength": 1},
        "data_source": {"type": "string", "minLength": 1},
        "intended_use": {"type": "string", "minLength": 1},
        "references": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "network_data_format": {
            "type": "object",
            "required": ["inputs", "outputs"],
            "properties": {
                "inputs": {"type": "object", "required": ["image"], "additionalProperties": TENSOR},
                "outputs": {"type": "object", "required": ["pred"], "additionalProperties": TENSOR},
            },
        },
    },
}


def test_monai_verify_metadata_passes_against_the_required_fields(tmp_path):
    schema = tmp_path / "schema.json"  # an existing file: verify_metadata skips the download and reads it
    schema.write_text(json.dumps(SCHEMA))
    verify_metadata(meta_file=str(ROOT / "configs" / "metadata.json"), filepath=str(schema))
    broken = dict(META)
    del broken["copyright"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="copyright"):  # the check does catch a missing field
        verify_metadata(meta_file=str(tmp_path / "broken.json"), filepath=str(schema))


def test_required_fields_of_monai_and_the_specification():
    assert META["schema"] == SCHEMA_URL
    for key in [*SPEC_REQUIRED, *ZOO_REQUIRED, *DEFAULT_METADATA]:
        assert key in META and META[key] not in ("", None), key
    for deprecated in DEPRECATED_ID_MAPPING:
        assert deprecated not in META
    parser = ConfigParser()
    parser.read_meta(str(ROOT / "configs" / "metadata.json"))
    for name, prop in MetaProperties.items():  # what a bundle workflow reads through its properties
        if prop[BundleProperty.REQUIRED]:
            assert parser.get(f"_meta_#{name}") == META[name], name


def test_version_has_a_changelog_entry_and_software_versions_are_met():
    assert META["version"] in META["changelog"]
    assert Version(META["version"]) == max(Version(v) for v in META["changelog"])
    assert Version(META["version"]) > Version("0.2.0")  # bumped for this release's changes
    for key, package in (("monai_version", "monai"), ("pytorch_version", "torch"), ("numpy_version", "numpy")):
        # "version the bundle was generated on, later versions expected to work"
        assert Version(installed_version(package)).release >= Version(META[key]).release, key


def test_required_packages_cover_requirements_txt():
    pinned = {name.lower(): v for name, v in META["required_packages_version"].items()}
    own_fields = {"torch", "monai", "numpy"}  # monai_version, pytorch_version, numpy_version
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        name = requirement.name.lower()
        if name in own_fields:
            continue
        assert name in pinned, f"{name} (requirements.txt) missing from required_packages_version"
        assert requirement.specifier.contains(pinned[name]), f"{name} {pinned[name]} outside {requirement.specifier}"


def test_references_cite_both_papers():
    text = " ".join(META["references"])
    for arxiv in ("2008.02593", "2008.13574"):
        assert f"arXiv:{arxiv}" in text and f"https://arxiv.org/abs/{arxiv}" in text
    assert re.search(r"research only", META["intended_use"], re.I) and "clinical" in META["intended_use"]


def test_network_data_format_matches_the_configs():
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.yaml"))
    size, channels, classes = (parser.get_parsed_content(k) for k in ("image_size", "in_channels", "num_classes"))
    image = META["network_data_format"]["inputs"]["image"]
    assert image["num_channels"] == channels and image["spatial_shape"] == [size, size]
    assert image["type"] == "image" and image["dtype"] == "float32" and len(image["channel_def"]) == channels
    mean, std = (parser.get_parsed_content(k) for k in ("intensity_mean", "intensity_std"))
    assert image["value_range"] == [(0 - mean) / std, (1 - mean) / std]  # [0, 1] display intensities, normalised

    pred = META["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == classes and pred["format"] == "classes" and pred["dtype"] == "float32"
    assert pred["value_range"] == []  # logits: unbounded
    assert [pred["channel_def"][str(i)] for i in range(classes)] == FUNDUS_CLASSES

    saliency = META["network_data_format"]["outputs"]["saliency"]
    assert saliency["num_channels"] == 1 and saliency["spatial_shape"] == [size, size]
    assert saliency["value_range"] == [0, 1] and saliency["type"] == "image"
