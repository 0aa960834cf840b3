"""The methods a learning curve compares: MED-TEX, the baselines of configs/baselines/ and the teacher."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


TEACHER = "teacher"  # evaluated, not trained on local data


MEDTEX = "medtex"  # configs/train.yaml without overrides


FROM_SOURCE = ("transfer_student", "medtex_from_source")  # start from the student trained on the teacher's data


# start from a network pretrained on the generic set (scripts/pretrain_generic.py): method -> which network
FROM_GENERIC = {"transfer_generic_student": "student", "transfer_generic_teacher": "teacher"}


WITHOUT_TEACHER = ("scratch", "transfer_student", *FROM_GENERIC)  # trained on local labels alone


DATASET_CONFIGS = {"fundus": [], "cxr": ["configs/datasets/demo_cxr.yaml"]}


def available_methods() -> dict[str, list[str]]:
    """Method name -> the configs stacked on configs/train.yaml (``teacher`` is evaluated only)."""
    baselines = sorted((ROOT / "configs" / "baselines").glob("*.yaml"))
    return {MEDTEX: [], **{p.stem: [f"configs/baselines/{p.name}"] for p in baselines}, TEACHER: []}


def task_channels(task: str) -> int:
    """The image channels of a demo task's networks (its dataset override's ``in_channels``, else train.yaml's 3)."""
    import yaml

    channels = 3
    for file in DATASET_CONFIGS[task]:
        channels = int((yaml.safe_load((ROOT / file).read_text()) or {}).get("in_channels", channels))
    return channels
