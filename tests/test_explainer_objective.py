"""The explainer's objective options in a real MED-TEX iteration: the deletion term, the hard gate and the teacher's
evidence."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.visualize import VanillaGrad
from torch import nn

from bundle.engines.trainer import MedTexTrainer
from bundle.losses import MaskPrior, MedTexLoss
from bundle.networks import Explainer, FrozenTeacher, MedTex, Student
from bundle.networks.medtex import GATES

ROOT = Path(__file__).resolve().parents[1]


def tiny_medtex(gate: str) -> MedTex:
    student = Student(in_channels=1, out_channels=2, init_features=8, growth_rate=4, block_config=(1, 1))
    return MedTex(student, Explainer(in_channels=1, features=(4, 4, 4, 8, 8, 4)), gate=gate)


def tiny_teacher(tmp_path) -> FrozenTeacher:
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    torch.save(net.state_dict(), tmp_path / "teacher.pt")
    return FrozenTeacher(tmp_path / "teacher.pt", network=net, bf16=False)


@pytest.mark.parametrize("gate", ["soft", "hard"])
def test_one_iteration_computes_the_deletion_term_on_the_image_with_the_masks_region_removed(tmp_path, gate):
    """The trainer's ``loss_deletion`` equals the loss's deletion term recomputed by hand from the teacher called
    directly on ``apply_mask(x, 1 - M)`` (evaluation gate: deterministic), and it moves the explainer."""
    torch.manual_seed(0)
    model, teacher = tiny_medtex(gate), tiny_teacher(tmp_path)
    loss = MedTexLoss(
        "multiclass", kd_weight=1.0, fidelity_weight=1.0, deletion_weight=2.0, mask_weight=1.0, mask_prior=MaskPrior()
    )
    batch = {"image": torch.randn(4, 1, 32, 32), "label": torch.tensor([0, 1, 0, 1])}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay, the gradients are kept
    trainer = MedTexTrainer("cpu", 1, [batch], model, optimizer, loss, teacher=teacher, decollate=False)
    model.eval()  # the hard gate's draws in training are random; the check recomputes a deterministic pass
    model.train = lambda mode=True: model  # keep evaluation mode inside the iteration
    trainer.run()
    output = trainer.state.output
    with torch.no_grad():
        mask = model.mask(batch["image"])
        full = teacher.network(batch["image"])
        deleted = teacher.network(model.apply_mask(batch["image"], 1.0 - mask))
        expected = (torch.softmax(full, 1) * torch.softmax(deleted, 1)).sum(1).mean()
    assert float(output["loss_deletion"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(output["loss_deletion"]) > 0
    assert model.explainer.body.final_conv.weight.grad.abs().sum() > 0


def test_without_the_deletion_weight_there_is_no_deletion_pass(tmp_path):
    model, teacher = tiny_medtex("soft"), tiny_teacher(tmp_path)
    calls = []
    teacher.network.register_forward_hook(lambda *args: calls.append(1))
    loss = MedTexLoss("multiclass", kd_weight=1.0, fidelity_weight=1.0)
    batch = {"image": torch.randn(2, 1, 32, 32), "label": torch.tensor([0, 1])}
    trainer = MedTexTrainer("cpu", 1, [batch], model, torch.optim.SGD(model.parameters(), 0.1), loss, teacher=teacher)
    trainer.run()
    assert len(calls) == 2  # the teacher on x (KD) and on the masked x (fidelity), not on x_del
    assert float(trainer.state.output[0]["loss_deletion"]) == 0.0


def test_evidence_divergence_is_the_kl_of_the_sum_normalised_maps_worked_out_by_hand():
    evidence = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)  # E / sum E = (0.25, 0.75)
    mask = torch.tensor([0.4, 0.4]).view(1, 1, 1, 2)  # M / sum M = (0.5, 0.5): its scale does not count
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)  # 0.1308
    assert MedTexLoss.evidence_divergence(mask, evidence).item() == pytest.approx(expected, rel=1e-5)
    assert MedTexLoss.evidence_divergence(3 * evidence, evidence).item() == pytest.approx(0.0, abs=1e-6)
    # a mask of 2 x 2 cells on a 4 x 4 image is compared with the evidence averaged over each cell
    fine = torch.zeros(1, 1, 4, 4)
    fine[..., :2, :2] = 1.0
    cells = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 1, 2, 2) + 1e-3
    assert MedTexLoss.evidence_divergence(cells, fine).item() == pytest.approx(-math.log(1 / 1.003), rel=1e-3)


@pytest.mark.parametrize("kernel", [1, 3])
def test_teacher_evidence_is_monais_vanillagrad_of_the_predicted_class_per_image(tmp_path, kernel):
    """One backward for the batch gives each image the map MONAI's one-image VanillaGrad gives it."""
    teacher = tiny_teacher(tmp_path)
    images = torch.randn(3, 1, 16, 16)
    loss = MedTexLoss("multiclass", evidence_weight=1.0, evidence_kernel=kernel)
    evidence = loss.teacher_evidence(lambda x: teacher(x)[0], images)
    vanilla = VanillaGrad(teacher.network)
    for i in range(3):
        predicted = int(teacher.network(images[i : i + 1]).argmax())
        expected = vanilla(images[i : i + 1].clone(), index=predicted).abs().amax(dim=1, keepdim=True)
        if kernel > 1:
            expected = F.avg_pool2d(expected, kernel, stride=1, padding=kernel // 2, count_include_pad=False)
        torch.testing.assert_close(evidence[i : i + 1], expected, rtol=1e-4, atol=1e-7)
    assert not evidence.requires_grad and all(p.grad is None for p in teacher.network.parameters())
    with pytest.raises(ValueError, match="evidence_kernel must be an odd"):
        MedTexLoss("multiclass", evidence_kernel=4)


def test_one_iteration_computes_the_evidence_term_against_the_teachers_gradient_and_moves_the_explainer(tmp_path):
    torch.manual_seed(0)
    model, teacher = tiny_medtex("soft"), tiny_teacher(tmp_path)
    calls = []
    teacher.network.register_forward_hook(lambda *args: calls.append(1))
    loss = MedTexLoss("multiclass", kd_weight=1.0, fidelity_weight=0.0, evidence_weight=2.0, evidence_kernel=3)
    batch = {"image": torch.randn(4, 1, 32, 32), "label": torch.tensor([0, 1, 0, 1])}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay, the gradients are kept
    trainer = MedTexTrainer("cpu", 1, [batch], model, optimizer, loss, teacher=teacher, decollate=False)
    trainer.run()
    assert len(calls) == 2  # the teacher on x for KD, and again with gradients for the evidence
    output = trainer.state.output
    vanilla = VanillaGrad(teacher.network)
    with torch.no_grad():
        mask = model.mask(batch["image"])
    maps = []
    for i in range(4):
        image = batch["image"][i : i + 1]
        gradient = vanilla(image.clone(), index=int(teacher.network(image).argmax())).abs().amax(dim=1, keepdim=True)
        maps.append(F.avg_pool2d(gradient, 3, stride=1, padding=1, count_include_pad=False))
    p = torch.cat(maps).flatten(1)
    p = p / p.sum(1, keepdim=True)
    q = mask.flatten(1) / mask.flatten(1).sum(1, keepdim=True)
    expected = (p * (p.log() - q.log())).sum(1).mean()
    assert float(output["loss_evidence"]) == pytest.approx(float(expected), rel=1e-4)
    assert float(output["loss_evidence"]) > 0.01
    assert model.explainer.body.final_conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.network.parameters())


def parsed_setting(key: str, loss: MedTexLoss, network: MedTex):
    """What the built loss or network holds for an overlay's config key (None: a key no check knows yet)."""
    if key.endswith("_weight") and key.removesuffix("_weight") in loss.weights:
        return loss.weights[key.removesuffix("_weight")]
    held = {
        "evidence_kernel": lambda: loss.evidence_kernel,
        "mask_prior_kind": lambda: loss.mask_prior.kind,
        "mask_prior_rate": lambda: loss.mask_prior.rate,
        "mask_gate": lambda: GATES[network.gate_index],
        "mask_keep_fraction": lambda: network.keep_fraction,
        "mask_baseline": lambda: "blur" if network.blur_baseline else "zero",
        "explainer_scale": lambda: network.explainer.scale,
        "explainer_scale_mode": lambda: "unshuffle" if network.explainer.unshuffle else "pool",
    }
    return held[key]() if key in held else None


@pytest.mark.parametrize("overlay", sorted(p.name for p in (ROOT / "configs" / "explainer").glob("*.yaml")))
def test_every_explainer_overlay_reaches_the_loss_and_the_network(overlay, tmp_path, data, teacher_ckpt):
    files = [str(ROOT / "configs" / "train.yaml"), str(ROOT / "configs" / "explainer" / overlay)]
    where = {"dataset_dir": str(data), "output_dir": str(tmp_path / "run"), "ckpt_dir": str(tmp_path / "models")}
    tiny = {"image_size": 32, "batch_size": 4, "num_workers": 0, "cache_rate": 0.0, "max_epochs": 1, "preflight": False}
    train = ConfigWorkflow(config_file=files, workflow_type="train", teacher_ckpt=str(teacher_ckpt), **tiny, **where)
    train.initialize()
    settings = ConfigParser.load_config_file(ROOT / "configs" / "explainer" / overlay)
    assert settings, f"{overlay} sets nothing"
    loss, network = train.parser.get_parsed_content("loss"), train.parser.get_parsed_content("network")
    for key, value in settings.items():
        assert parsed_setting(key, loss, network) == value, key
    if overlay == "evidence.yaml":  # one real epoch: the term is computed and trains the explainer
        train.run()
        output = train.parser.get_parsed_content("train#trainer").state.output
        assert float(output[0]["loss_evidence"]) > 0
