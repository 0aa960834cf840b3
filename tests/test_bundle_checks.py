"""MONAI's own bundle checks, as the Model Zoo runs them: ``verify_net_in_out`` and ``ckpt_export`` from the
repository root, and every workflow config through ``ConfigWorkflow`` with its properties checked, on tiny demo
data and weights written here (never into models/)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, verify_net_in_out
from monai.data import load_net_with_metadata
from monai.inferers import SimpleInferer
from monai.networks.nets import DenseNet

from bundle.data.transforms import LoadMedicalImaged
from bundle.networks.teacher import count_parameters, load_weights
from tests.conftest import inference_network
from tests.forked import run_python

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
META = json.loads((CONFIGS / "metadata.json").read_text())
TINY = {"image_size": 32, "batch_size": 4, "num_workers": 0, "device": "cpu", "amp": False, "preflight": False}


def monai_bundle(*args: str) -> str:
    """``python -m monai.bundle ARGS`` from the repository root, as a user runs it; its output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    result = run_python(["-m", "monai.bundle", *args], cwd=ROOT, env=env)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout + result.stderr


def test_verify_net_in_out_from_the_repository_root():
    log = monai_bundle(
        "verify_net_in_out",
        "network_def",
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.yaml",
    )
    assert "data shape of network is verified with no error" in log
    with pytest.raises(ValueError, match="output channel number"):  # the check compares with the metadata
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(CONFIGS / "metadata.json"),
            config_file=str(CONFIGS / "inference.yaml"),
            device="cpu",
            **{"_meta_#network_data_format#outputs#pred#num_channels": 4},
        )


def test_ckpt_export_torchscript_gives_the_eager_logits_and_masks(tmp_path, model_ckpt):
    exported = tmp_path / "model.ts"
    monai_bundle(
        "ckpt_export",
        "network_def",
        "--filepath",
        str(exported),
        "--ckpt_file",
        str(model_ckpt),
        "--meta_file",
        "configs/metadata.json",
        "--config_file",
        "configs/inference.yaml",
        "--image_size",  # the size the model was trained at: the explainer's default scale depends on it
        "32",
    )
    scripted, meta, extra = load_net_with_metadata(str(exported), more_extra_files=("inference.json",))
    assert isinstance(scripted, torch.jit.ScriptModule)  # scripted, not traced: explain() is exported too
    assert meta["version"] == META["version"] and meta["network_data_format"] == META["network_data_format"]
    assert json.loads(extra["inference.json"])["network_def"]["_target_"] == "bundle.networks.MedTex"

    eager = inference_network().eval()
    eager.load_state_dict(load_weights(model_ckpt))
    torch.manual_seed(2)
    for shape in [(2, 3, 224, 224), (1, 3, 96, 128)]:
        image = torch.randn(shape)
        with torch.no_grad():
            logits, mask = eager.explain(image)
            ts_logits, ts_mask = scripted.explain(image)
            torch.testing.assert_close(scripted(image), logits, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ts_logits, logits, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ts_mask, mask, rtol=1e-4, atol=1e-5)
        assert mask.shape == (shape[0], 1, *shape[2:]) and mask.min() < 0.3 and mask.max() > 0.7


def workflow(configs: list[str], workflow_type: str, **override) -> ConfigWorkflow:
    """Model Zoo unit-test style: initialise, check the properties, run, finalise."""
    wf = ConfigWorkflow(
        config_file=[str(CONFIGS / c) for c in configs],
        workflow_type=workflow_type,
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        **override,
    )
    wf.initialize()
    missing = wf.check_properties()
    assert missing == [], f"{configs}: missing or wrongly referenced properties {missing}"
    wf.run()
    wf.finalize()
    return wf


def test_train_teacher_workflow_properties(tmp_path, data):
    where = {"dataset_dir": str(data), "output_dir": str(tmp_path / "run"), "ckpt_dir": str(tmp_path / "models")}
    wf = workflow(["train_teacher.yaml"], "train", **TINY, **where, max_epochs=1, cache_rate=0.0)
    assert isinstance(wf.train_inferer, SimpleInferer) and wf.trainer.inferer is wf.train_inferer
    assert wf.trainer.state.epoch == 1 and (tmp_path / "models" / "teacher.pt").is_file()


def test_train_workflow_properties(tmp_path, data, teacher_ckpt):
    where = {"dataset_dir": str(data), "output_dir": str(tmp_path / "run"), "ckpt_dir": str(tmp_path / "models")}
    wf = workflow(
        ["train.yaml"], "train", **TINY, **where, max_epochs=1, cache_rate=0.0, teacher_ckpt=str(teacher_ckpt)
    )
    assert isinstance(wf.train_inferer, SimpleInferer) and wf.trainer.inferer is wf.train_inferer
    assert wf.train_preprocessing is wf.train_dataset.transform and wf.network_def is wf.trainer.network
    assert wf.val_preprocessing is wf.parser.get_parsed_content("preprocessing")
    # the epoch mean of every loss term is a trainer metric, the total loss the key metric (lower is better)
    metrics = wf.trainer.state.metrics
    assert wf.trainer.state.key_metric_name == "epoch_loss"
    for term in ("loss", "loss_ce", "loss_kd", "loss_vid", "loss_mask", "loss_fidelity"):
        assert f"epoch_{term}" in metrics
    assert metrics["epoch_loss"] > 0 and metrics["epoch_loss_ce"] > 0 and metrics["epoch_loss_kd"] >= 0
    assert wf.trainer.metric_cmp_fn(1.0, 2.0) and not wf.trainer.metric_cmp_fn(2.0, 1.0)
    state = load_weights(tmp_path / "models" / "model.pt")
    network = inference_network()
    network.load_state_dict(state)  # what training saved loads into the inference config's network_def


def test_evaluate_workflow_properties(tmp_path, data, model_ckpt):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(model_ckpt.read_bytes())
    where = {"dataset_dir": str(data), "output_dir": str(tmp_path / "eval"), "ckpt_dir": str(tmp_path / "models")}
    # evaluate.yaml overrides train.yaml, so the workflow is a "train" one, as in the Model Zoo's tests
    workflow(["train.yaml", "evaluate.yaml"], "train", **TINY, **where, cache_rate=0.0)
    with open(tmp_path / "eval" / "metrics.csv") as f:
        metrics = {row[0]: float(row[1]) for row in csv.reader(f)}
    assert {"test_auc", "accuracy", "kappa", "pointing_game"} <= set(metrics)


def test_inference_workflow_properties(tmp_path, data, model_ckpt):
    where = {"dataset_dir": str(data), "output_dir": str(tmp_path / "out"), "ckpt_dir": str(model_ckpt.parent)}
    wf = workflow(["inference.yaml"], "infer", **TINY, **where)
    assert isinstance(wf.inferer, SimpleInferer) and wf.evaluator.inferer is wf.inferer
    with open(tmp_path / "out" / "predictions.csv") as f:
        assert len(list(csv.DictReader(f))) == len(wf.dataset) == 4


@pytest.mark.parametrize("config", ["train.yaml", "train_teacher.yaml", "inference.yaml"])
def test_one_image_reader_serves_loader_writer_and_preflight(config):
    """``image_reader`` is the only place the reading settings live: an override reaches every reader of the run."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / config))
    parser.update({"frame": 2, "image_reader#scale_16bit": "dtype", "max_image_pixels": 1000})
    reader = parser.get_parsed_content("image_reader")
    assert (reader.frame, reader.scale_16bit, reader.max_pixels, reader.apply_voi) == (2, "dtype", 1000, True)
    transforms = parser.get_parsed_content("preprocessing").transforms
    loaders = [t for t in transforms if isinstance(t, LoadMedicalImaged)]
    assert len(loaders) == 1 and loaders[0].loader.medical_reader is reader
    if config == "inference.yaml":
        writer = parser.get_parsed_content("handlers#1")
        assert writer.reader is reader and writer.frame == 2
    else:  # the pre-flight check gets the same object
        assert "@image_reader" in parser.get("preflight_report") and "@frame" not in parser.get("preflight_report")


@pytest.mark.parametrize("config", ["train.yaml", "inference.yaml"])
def test_explainer_scale_follows_the_image_size_unless_set(config):
    """The configs' default explainer scale: 2 from 128 px up (the U-Net sees at least 64 px), 1 below; a value given
    on the command line wins (models trained before 0.5.0 at 224 px load with ``--explainer_scale 1``)."""
    from monai.bundle import ConfigParser

    for image_size, expected in ((32, 1), (64, 1), (127, 1), (128, 2), (224, 2), (512, 2)):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / config))
        parser["image_size"] = image_size
        explainer = parser.get_parsed_content("explainer")
        assert (explainer.scale, explainer.unshuffle) == (expected, expected > 1), image_size
        assert explainer(torch.rand(1, 3, image_size, image_size)).shape == (1, 1, image_size, image_size)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / config))
    parser.update({"image_size": 224, "explainer_scale": 1})
    assert parser.get_parsed_content("explainer").scale == 1


@pytest.mark.parametrize(
    "student, parameters, refusal",
    [
        ("small", 61521, "size mismatch for student.features.conv0.weight"),  # a sixth of the default student's
        ("shallow", 178253, "size mismatch for student.features.conv0.weight"),  # same class, other shapes
        ("resnet", 571541, "Unexpected key.*student.layer1"),  # another architecture
    ],
)
def test_student_overlay_builds_one_student_for_training_and_inference(student, parameters, refusal):
    """configs/students/*.yaml: the same student in train.yaml and inference.yaml, so its weights load there, and a
    plain inference config refuses them, naming what does not fit."""
    overlay = str(ROOT / "configs" / "students" / f"{student}.yaml")
    networks = {}
    for name, files in (
        ("train", [str(ROOT / "configs" / "train.yaml"), overlay]),
        ("inference", [str(ROOT / "configs" / "inference.yaml"), overlay]),
        ("plain", [str(ROOT / "configs" / "inference.yaml")]),
    ):
        parser = ConfigParser()
        parser.read_config(files)
        parser["image_size"] = 64
        networks[name] = parser.get_parsed_content("network_def")
    trained = networks["train"].state_dict()
    assert count_parameters(networks["train"].student) == parameters
    # the default student is MONAI's DenseNet with the Student's documented defaults: counted on one built directly
    default = DenseNet(spatial_dims=2, in_channels=3, out_channels=5, init_features=32, growth_rate=16,
                       block_config=(3, 6, 8, 4))  # fmt: skip
    assert count_parameters(networks["plain"].student) == count_parameters(default) == 373475
    networks["inference"].load_state_dict(trained, strict=True)
    with pytest.raises(RuntimeError, match=refusal):
        networks["plain"].load_state_dict(trained, strict=True)


def test_resnet_student_of_before_0_6_0_loads_with_the_overrides_the_overlay_names():
    """resnet.yaml built a narrower ResNet before 0.6.0 (widths 16-128, MONAI's 7 x 7 stem); its model.pt loads with
    the two overrides written in the overlay, and not without them."""
    from monai.networks.nets import ResNet

    from bundle.networks import Explainer, MedTex

    old_student = ResNet("basic", [1, 1, 1, 1], [16, 32, 64, 128], spatial_dims=2, conv1_t_stride=2, num_classes=5)
    saved = MedTex(old_student, Explainer(3)).state_dict()  # 64 px: explainer scale 1
    files = [str(CONFIGS / "inference.yaml"), str(CONFIGS / "students" / "resnet.yaml")]
    for overrides, loads in (({"student#widths": [16, 32, 64, 128], "student#stem_kernel_size": 7}, True), ({}, False)):
        parser = ConfigParser()
        parser.read_config(files)
        parser.update({"image_size": 64, **overrides})
        network = parser.get_parsed_content("network_def")
        if loads:
            assert count_parameters(network.student) == count_parameters(old_student) == 310325
            network.load_state_dict(saved, strict=True)
        else:
            with pytest.raises(RuntimeError, match="size mismatch for student.conv1.weight"):
                network.load_state_dict(saved, strict=True)


def test_resnet_student_trains_with_vid_on_its_own_stages(tmp_path, data, teacher_ckpt):
    """configs/students/resnet.yaml replaces the student and the stages VID pairs with the teacher's: one MED-TEX
    epoch runs with every loss term, and model.pt loads into inference.yaml with the same overlay."""
    where = {"dataset_dir": str(data), "output_dir": str(tmp_path / "run"), "ckpt_dir": str(tmp_path / "models")}
    configs = ["train.yaml", "students/resnet.yaml"]
    wf = workflow(configs, "train", **TINY, **where, max_epochs=1, cache_rate=0.0, teacher_ckpt=str(teacher_ckpt))
    assert type(wf.network_def.student).__name__ == "ResNetStudent"
    # VID's regressors start from the ResNet's layer2 and layer3 channels (48 and 96), not a DenseNet's
    vid = wf.parser.get_parsed_content("loss").vid
    assert [regressor[0].in_channels for regressor in vid.regressors] == [48, 96]
    assert wf.trainer.state.metrics["epoch_loss_vid"] != 0
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "inference.yaml"), str(CONFIGS / "students" / "resnet.yaml")])
    parser["image_size"] = 32
    parser.get_parsed_content("network_def").load_state_dict(load_weights(tmp_path / "models" / "model.pt"))
