"""The explainer's objective options in a real MED-TEX iteration: the deletion term and the hard gate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bundle.engines.trainer import MedTexTrainer
from bundle.losses import MaskPrior, MedTexLoss
from bundle.networks import Explainer, FrozenTeacher, MedTex, Student


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
