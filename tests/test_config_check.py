"""Command-line overrides checked against the configs: unknown keys and wrong value types stop the run, all listed."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from bundle.config_check import MONAI_RUN_ARGUMENTS, check_cli_overrides, check_overrides, find_problems, parse_cli
from tests.forked import run_python

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["configs/train.yaml"]
EVALUATE = ["configs/train.yaml", "configs/evaluate.yaml"]
BUNDLE_MAIN = "/usr/lib/python3/site-packages/monai/bundle/__main__.py"  # sys.argv[0] under python -m monai.bundle
CHECK_STEP = "$@bundle_fns#check_cli_overrides(@config_check)"


@pytest.fixture(autouse=True)
def _in_bundle_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # config paths as users give them, relative to the bundle root


def test_a_typo_key_is_reported_with_the_close_match():
    (problem,) = find_problems(TRAIN, {"learning_rat": 0.01})
    assert problem == "unknown config key 'learning_rat' (not in configs/train.yaml); did you mean 'learning_rate'?"


def test_a_wrong_type_names_the_expected_type_and_the_default():
    (problem,) = find_problems(TRAIN, {"max_epochs": "3O"})
    assert problem == "max_epochs: expected an integer (configs/train.yaml has 30), got '3O' (str)"
    problems = find_problems(TRAIN, {"max_epochs": 3.5, "resume": "false", "image_size": True, "data_roots": "/mnt"})
    assert [p.split(":")[0] for p in problems] == ["max_epochs", "resume", "image_size", "data_roots"]
    assert "expected True or False" in problems[1] and "expected a list" in problems[3]


def test_valid_overrides_of_every_kind_pass():
    overrides = {
        "max_epochs": 3,
        "learning_rate": 1,  # a float default takes an int
        "weight_decay": 1e-5,
        "resume": False,
        "dataset_dir": "/data/some site/fundus",
        "ckpt_name": "run2.pt",
        "data_roots": ["/mnt/a", "/mnt/b"],
        "teacher_feature_layers": ("features.denseblock3",),
        "teacher_bf16": False,  # the true/false/auto switch
        "batch_size": "$2 * 8",  # expressions and references are checked when resolved
        "network_def": "@teacher_def",
        "device": "cpu",  # an expression default takes anything
        "init_ckpt": "/models/source.pt",  # a null default takes anything
        "teacher_def#spatial_dims": 2,  # a nested id that exists
        "student#init_features": 16,  # a new argument of an existing component
        "augmentation#1#prob": 0.5,
        "+data_roots": ["/mnt/c"],  # MONAI's merge prefix
        "config_check": "warn",
    }
    assert find_problems(TRAIN, overrides) == []
    assert find_problems(EVALUATE, {"saliency_metrics": False, "pointing_game_tolerance": 2, "kd_weight": 0}) == []
    assert find_problems(["configs/inference.yaml"], {"input_dir": "/in", "threshold": 1, "write_dicom": False}) == []


def test_nested_ids_need_their_parent():
    problems = find_problems(TRAIN, {"train#dataloadr#shuffle": False, "augmentation#7#prob": 0.1, "student#x#y": 1})
    assert problems == [
        "train#dataloadr#shuffle: 'train' has no key 'dataloadr'; did you mean 'dataloader'?",
        "augmentation#7#prob: 'augmentation' is a list of 2 items, it has no item '7'",
        "student#x#y: 'student' has no key 'x'",
    ]
    (problem,) = find_problems(["configs/train.yaml", "configs/baselines/kd.yaml"], {"network_def#explainer#x": 1})
    assert "'network_def#explainer' is None" in problem  # the baseline removes the explainer


def test_a_new_key_of_a_component_must_be_an_argument_of_its_target():
    overrides = {
        "image_reader#scale_16bt": "dtype",  # bundle component, typo
        "augmentation#1#prb": 0.5,  # MONAI transform by its short name, typo beside the existing "prob"
        "student#x": 1,
        "student#dropout_prob": 0.1,  # a real argument the config does not set
        "student#_disabled_": True,  # MONAI's own "_name_" keys
        "train#dataloader#pin_memory": False,  # DataLoader: a real argument
        "optimizer#foreach": False,  # torch.optim.AdamW, by its dotted path
    }
    assert find_problems(TRAIN, overrides) == [
        "image_reader#scale_16bt: bundle.data.readers.MedicalImageReader (image_reader) takes no argument "
        "'scale_16bt'; did you mean 'scale_16bit'?",
        "augmentation#1#prb: RandAffined (augmentation#1) takes no argument 'prb'; did you mean 'prob'?",
        "student#x: bundle.networks.Student (student) takes no argument 'x'",
    ]


def test_a_none_override_that_monai_would_drop_is_reported():
    # MONAI's update_kwargs drops None values: --read_min_side None would silently keep 1024
    overrides = {"read_min_side": None, "frame": None, "init_ckpt": None, "student#dropout_prob": None}
    problems = find_problems(TRAIN, overrides)
    assert problems == [
        "read_min_side: None is dropped by MONAI's command line, so configs/train.yaml keeps 1024; "
        "write '$None' to set null",
        "student#dropout_prob: None is dropped by MONAI's command line, so the key is not set; write '$None' to set "
        "null",
    ]  # frame and init_ckpt are null already: nothing lost
    assert find_problems(TRAIN, {"read_min_side": "$None"}) == []


def test_the_last_config_that_sets_a_key_is_named_and_keys_of_any_config_count():
    (problem,) = find_problems(EVALUATE, {"saliency_metrics": "no", "kd_weight": 1, "fidelity_weight": 0.5})
    assert problem == "saliency_metrics: expected True or False (configs/evaluate.yaml has True), got 'no' (str)"
    cxr = ["configs/train.yaml", "configs/datasets/demo_cxr.yaml"]
    assert find_problems(cxr, {"num_classes": "4"}) == [
        "num_classes: expected an integer (configs/datasets/demo_cxr.yaml has 4), got '4' (str)"
    ]
    # inference.yaml has no training settings
    assert find_problems(["configs/inference.yaml"], {"max_epochs": 3})[0].startswith("unknown config key 'max_epochs'")


def test_policies(caplog):
    bad = {"learning_rat": 0.01, "max_epochs": "3O"}
    with pytest.raises(SystemExit) as stop:
        check_overrides(TRAIN, bad)
    message = str(stop.value)
    assert "learning_rat" in message and "'learning_rate'" in message and "max_epochs" in message
    assert "config_check: warn" in message
    with caplog.at_level(logging.WARNING, logger="bundle.config_check"):
        assert len(check_overrides(TRAIN, bad, policy="warn")) == 2
    assert "learning_rat" in caplog.text and "max_epochs" in caplog.text
    assert check_overrides(["configs/missing.yaml"], bad, policy="off") == []  # reads nothing
    assert check_overrides(TRAIN, {"max_epochs": 3}) == []
    with pytest.raises(ValueError, match="config_check must be one of"):
        check_overrides(TRAIN, {}, policy="ignore")


def test_the_command_line_is_read_as_fire_passes_it_to_monai(tmp_path):
    argv = ["run", "evaluating", "--config_file", "['configs/train.yaml','configs/evaluate.yaml']"]
    argv += ["--max-epochs=3", "--learning_rate", "1e-3", "--network_def#features", "16", "--lr", "-0.5"]
    argv += ["--dataset_dir", "/data/x", "--amp", "--nohorizontal_flip", "--frame", "None", "--meta_file", "None"]
    argv += ["--", "--help"]  # fire's own flags
    run_arguments, overrides = parse_cli(argv)
    assert run_arguments == {"run_id": "evaluating", "config_file": EVALUATE}
    assert overrides == {
        "max_epochs": 3,
        "learning_rate": 1e-3,
        "network_def#features": 16,
        "lr": -0.5,
        "dataset_dir": "/data/x",
        "amp": True,
        "horizontal_flip": False,
        "frame": None,  # MONAI drops it: kept for the check to report
    }
    args_file = tmp_path / "args.yaml"
    args_file.write_text("config_file: configs/train.yaml\nmax_epochs: 5\nseed: 1\n")
    assert parse_cli(["run", "training", "--args_file", str(args_file), "--max_epochs", "3O"]) == (
        {"run_id": "training", "args_file": str(args_file), "config_file": "configs/train.yaml"},
        {"max_epochs": "3O", "seed": 1},
    )
    assert parse_cli(["ckpt_export", "network_def", "--filepath", "x.ts"]) is None
    assert {"config_file", "meta_file", "tracking", "workflow_type", "properties_path"} <= MONAI_RUN_ARGUMENTS


def test_only_the_bundle_cli_is_checked():
    bad = ["run", "training", "--config_file", "configs/train.yaml", "--learning_rat", "0.01"]
    assert check_cli_overrides("error", ["/usr/bin/pytest", *bad[1:]]) == []  # the Python API and tests: no-op
    assert check_cli_overrides("off", [BUNDLE_MAIN, *bad]) == []
    assert len(check_cli_overrides("warn", [BUNDLE_MAIN, *bad])) == 1
    with pytest.raises(SystemExit, match="learning_rat"):
        check_cli_overrides("error", [BUNDLE_MAIN, *bad])
    tracked = [
        "run",
        "training",
        "--config_file",
        "configs/train.yaml",
        "--tracking",
        "mlflow",
        "--experiment_name",
        "x",
    ]
    assert check_cli_overrides("error", [BUNDLE_MAIN, *tracked]) == []  # keys that --tracking adds


@pytest.mark.parametrize(
    "configs", [["train.yaml"], ["train_teacher.yaml"], ["inference.yaml"], ["train.yaml", "evaluate.yaml"]]
)
def test_every_workflow_checks_first(configs):
    config = ConfigParser.load_config_files([f"configs/{c}" for c in configs])
    assert config["initialize"][0] == CHECK_STEP and config["config_check"] == "error"
    assert config["bundle_fns"]["check_cli_overrides"]["_target_"] == "bundle.config_check.check_cli_overrides"
    for multi in ("multi_gpu_train.yaml", "multi_gpu_evaluate.yaml"):  # after the process group is set up
        assert ConfigParser.load_config_file(f"configs/{multi}")["initialize"][2] == CHECK_STEP


def test_the_bundle_cli_stops_before_any_work():
    command = ["-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml"]
    command += [
        "--learning_rat",
        "0.01",
        "--max_epochs",
        "3O",
        "--dataset_dir",
        "/nonexistent",
        "--teacher_ckpt",
        "/no",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = run_python(command, cwd=ROOT, env=env, timeout=120)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "learning_rat" in log and "did you mean 'learning_rate'" in log and "max_epochs: expected an integer" in log
    assert "Traceback" not in log  # one clear message, before the datalist or the teacher is looked at
