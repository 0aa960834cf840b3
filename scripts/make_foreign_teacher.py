r"""Re-package a teacher trained by this bundle with another library's contract, in three forms (docs/TEACHERS.md).

    python scripts/make_foreign_teacher.py --teacher out/demo_cxr/models/teacher.pt \
        --datalist out/demo_cxr/central/datalist.json --in-channels 1 --image-size 64 --out out/foreign_teacher

The stand-in for a pretrained model from elsewhere (``bundle.networks.foreign.ForeignContractTeacher``): input of
``--size`` px (default twice ``--image-size``) in [-1024, 1024], sigmoid scores out for six findings of which the local
ones carry other names ("Pleural Effusion" for ``effusion``, "Lung Nodule" for ``nodule``) in another order, and two
distractors the local task lacks. Written to ``--out``:

- ``foreign_teacher.pt`` (a state dict) and ``teacher_state_dict.yaml``, its overlay (architecture and contract);
- ``foreign_teacher.ts`` (TorchScript) and ``teacher_torchscript.yaml``, to add after configs/teachers/torchscript.yaml;
- ``bundle/``, a MONAI bundle folder (metadata.json with the input and output contract, inference.json with
  network_def, models/model.pt), and ``teacher_bundle.yaml``, to add after configs/teachers/monai_bundle.yaml.

Each overlay then distils a student with ``python -m monai.bundle run training`` (docs/RESULTS.md, "A teacher from
elsewhere"; tests/test_foreign_teacher.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from monai.bundle import ConfigParser

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.data.datalist import read_datalist_info  # noqa: E402
from bundle.networks.teacher import load_weights  # noqa: E402

# the local demo findings under the names another data set gives them (docs/DEMO_DATA.md: the cxr task's classes)
RENAMED = {"nodule": "Lung Nodule", "effusion": "Pleural Effusion", "pneumothorax": "Pneumothorax"}
DISTRACTORS = ("Cardiomegaly", "Fracture")  # outputs the local task does not have
VALUE_RANGE = (-1024.0, 1024.0)


def foreign_layout(local_classes: Sequence[str]) -> tuple[list[str], list[int]]:
    """The foreign teacher's output names and, per output, the local class it is (``-1``: a distractor): the local
    classes renamed and in reverse order, a distractor after the first and after the fourth."""
    names: list[str] = []
    sources: list[int] = []
    for rank, index in enumerate(reversed(range(len(local_classes)))):
        name = local_classes[index]
        names.append(RENAMED.get(name, name[:1].upper() + name[1:]))
        sources.append(index)
        if rank in (0, 3) and sources.count(-1) < len(DISTRACTORS):
            names.append(DISTRACTORS[sources.count(-1)])
            sources.append(-1)
    return names, sources


def architecture(args: argparse.Namespace, num_classes: int, sources: Sequence[int]) -> dict[str, Any]:
    """The ``_target_`` config of the foreign teacher (what its state dict loads into)."""
    return {
        "_target_": "bundle.networks.foreign.ForeignContractTeacher",
        "network": {
            "_target_": "DenseNet121",
            "spatial_dims": 2,
            "in_channels": args.in_channels,
            "out_channels": num_classes,
        },
        "network_size": args.image_size,
        "network_mean": args.intensity_mean,
        "network_std": args.intensity_std,
        "sources": list(sources),
        "value_range": list(VALUE_RANGE),
    }


def contract(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """Config values that describe the foreign teacher's contract to the bundle."""
    return {
        "teacher_input_channels": args.in_channels,
        "teacher_input_size": args.size,
        "teacher_input_range": list(VALUE_RANGE),
        "teacher_input_mean": 0.0,
        "teacher_input_std": 1.0,
        "teacher_output": "probabilities",
        "teacher_task": "multilabel",
        "teacher_output_names": list(names),
    }


def synonyms(local_classes: Sequence[str]) -> list[list[str]]:
    return [[c, RENAMED[c]] for c in local_classes if c in RENAMED and RENAMED[c].casefold() != c.casefold()]


def write_yaml(path: Path, content: dict[str, Any], comment: str) -> Path:
    path.write_text(f"# {comment}\n" + yaml.safe_dump(content, sort_keys=False, width=120))
    return path


def write_bundle(folder: Path, args: argparse.Namespace, names: Sequence[str], net_config: dict, state: dict) -> Path:
    """A MONAI bundle folder in the Model Zoo layout holding the foreign teacher."""
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    metadata = {
        "version": "0.1.0",
        "changelog": {"0.1.0": "a bundle teacher re-packaged with another contract (scripts/make_foreign_teacher.py)"},
        "monai_version": "1.6.1",
        "pytorch_version": torch.__version__.split("+")[0],
        "name": "foreign contract teacher",
        "task": "multi-label chest X-ray findings",
        "description": "scripts/make_foreign_teacher.py: a stand-in for a teacher from elsewhere",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "XR",
                    "num_channels": args.in_channels,
                    "spatial_shape": [args.size, args.size],
                    "dtype": "float32",
                    "value_range": list(VALUE_RANGE),
                    "is_patch_data": False,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "classes",
                    "num_channels": len(names),
                    "spatial_shape": [1, len(names)],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {str(i): n for i, n in enumerate(names)},
                }
            },
        },
    }
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    inference = {"imports": ["$import torch"], "bundle_root": ".", "network_def": net_config}
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    torch.save(state, folder / "models" / "model.pt")
    return folder


def make(args: argparse.Namespace) -> list[Path]:
    info = read_datalist_info(args.datalist)
    local_classes = [str(c) for c in info["classes"]]
    if info.get("task") != "multilabel":
        raise SystemExit(f"{args.datalist}: the foreign teacher gives sigmoid scores: a multi-label task is needed")
    names, sources = foreign_layout(local_classes)
    net_config = architecture(args, len(local_classes), sources)
    parser = ConfigParser({"net": net_config})
    foreign = parser.get_parsed_content("net")
    foreign.network.load_state_dict(load_weights(args.teacher))
    foreign.eval()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    state = foreign.state_dict()
    torch.save(state, out / "foreign_teacher.pt")
    torch.jit.script(foreign).save(str(out / "foreign_teacher.ts"))
    bundle_dir = write_bundle(out / "bundle", args, names, net_config, state)
    renamed = synonyms(local_classes)
    common = {"label_synonyms": renamed, "teacher_feature_layers": "auto"}
    return [
        out / "foreign_teacher.pt",
        out / "foreign_teacher.ts",
        bundle_dir,
        write_yaml(
            out / "teacher_state_dict.yaml",
            {
                "teacher_ckpt": str(out / "foreign_teacher.pt"),
                "teacher_def": net_config,
                **contract(args, names),
                **common,
            },
            "the foreign teacher as a state dict: add after configs/train.yaml",
        ),
        write_yaml(
            out / "teacher_torchscript.yaml",
            {"teacher_ckpt": str(out / "foreign_teacher.ts"), **contract(args, names), "label_synonyms": renamed},
            "the foreign teacher as TorchScript: add after configs/train.yaml and configs/teachers/torchscript.yaml",
        ),
        write_yaml(
            out / "teacher_bundle.yaml",
            {"teacher_bundle": str(bundle_dir), "label_synonyms": renamed},
            "the foreign teacher as a MONAI bundle: add after configs/train.yaml, configs/teachers/monai_bundle.yaml",
        ),
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", type=Path, required=True, help="the bundle's teacher (teacher_def's state dict)")
    parser.add_argument("--datalist", type=Path, required=True, help="a datalist of the teacher's task (its classes)")
    parser.add_argument("--in-channels", type=int, default=1, help="the teacher's channels (1)")
    parser.add_argument("--image-size", type=int, required=True, help="the size the teacher was trained at")
    parser.add_argument("--intensity-mean", type=float, default=0.5, help="the bundle's intensity_mean (0.5)")
    parser.add_argument("--intensity-std", type=float, default=0.25, help="the bundle's intensity_std (0.25)")
    parser.add_argument("--size", type=int, help="the foreign teacher's input size (default: twice --image-size)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    args = parser.parse_args(argv)
    args.size = args.size or 2 * args.image_size
    return args


def main(argv: Sequence[str] | None = None) -> int:
    for path in make(parse_args(argv)):
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
