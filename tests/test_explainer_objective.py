"""The explainer's objective options in a real MED-TEX iteration: the deletion term, the hard gate and the teacher's
evidence (its input gradient, or its occlusion map computed once per image)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.transforms import Compose
from monai.visualize import VanillaGrad
from torch import nn

from bundle.data.caching import ITEM_OVERHEAD_BYTES, estimate_item_bytes
from bundle.data.caching import logger as caching_logger
from bundle.engines.precompute import (
    TEACHER_EVIDENCE,
    TEACHER_FEATURES,
    TEACHER_LOGITS,
    TeacherOcclusiond,
    teacher_evidence_transforms,
)
from bundle.engines.trainer import MedTexTrainer
from bundle.explain.saliency import make_saliency
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


@pytest.mark.parametrize("precomputed", [False, True])
def test_one_iteration_computes_the_evidence_term_against_the_teachers_gradient_and_moves_the_explainer(
    tmp_path, precomputed
):
    """One teacher pass serves KD and the evidence (online) or the evidence alone (outputs precomputed); the KD and
    evidence terms both match their values worked out from the teacher called directly."""
    torch.manual_seed(0)
    model, teacher = tiny_medtex("soft"), tiny_teacher(tmp_path)
    calls = []
    teacher.network.register_forward_hook(lambda *args: calls.append(1))
    loss = MedTexLoss("multiclass", kd_weight=1.0, fidelity_weight=0.0, evidence_weight=2.0, evidence_kernel=3)
    batch = {"image": torch.randn(4, 1, 32, 32), "label": torch.tensor([0, 1, 0, 1])}
    with torch.no_grad():
        teacher_logits = teacher.network(batch["image"])
    if precomputed:
        batch.update({TEACHER_LOGITS: teacher_logits, TEACHER_FEATURES: []})
    calls.clear()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay, the gradients are kept
    trainer = MedTexTrainer("cpu", 1, [batch], model, optimizer, loss, teacher=teacher, decollate=False)
    trainer.run()
    assert len(calls) == 1  # one pass with input gradients: KD's logits (unless given) and the evidence
    output = trainer.state.output
    expected_kd = loss.kd(output["pred"].detach(), teacher_logits)
    assert float(output["loss_kd"]) == pytest.approx(float(expected_kd), rel=1e-5)
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


class CornerTeacher(nn.Module):
    """Class 1's logit is ``scale`` times the mean of the top-left 8 x 8 pixels, class 0's is 0: the teacher looks at
    that corner only."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        corner = self.scale * x[:, :, :8, :8].mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(corner), corner], dim=1)


def test_teacher_occlusion_is_positive_where_the_teacher_looks_and_zero_elsewhere(tmp_path):
    net = CornerTeacher()
    torch.save(net.state_dict(), tmp_path / "corner.pt")
    teacher = FrozenTeacher(tmp_path / "corner.pt", network=net, bf16=False)
    image = torch.full((1, 32, 32), 0.5)  # class 1, p = sigmoid(2); occluding part of the corner lowers it
    item = TeacherOcclusiond(teacher, "cpu", "multiclass", mask_size=4)({"image": image, "label": 1})
    evidence = item[TEACHER_EVIDENCE]
    assert evidence.shape == (1, 32, 32) and evidence.dtype == torch.float32 and item["label"] == 1
    assert evidence[:, 2:6, 2:6].min() > 0.01  # patches inside the corner move the prediction
    assert evidence[:, 12:, :].max() < 1e-6 and evidence[:, :, 12:].max() < 1e-6  # patches outside cannot (rounding)
    # the same map as the post-hoc occlusion baseline that scripts/compare_saliency.py scores, before normalising
    expected = make_saliency("occlusion", net, "multiclass", mask_size=4, overlap=0.5, normalize=False)(image[None])
    torch.testing.assert_close(evidence, expected[0])
    with pytest.raises(ValueError, match="needs cache: auto, memory or disk"):
        teacher_evidence_transforms(teacher, "cpu", "multiclass", 32, cache_rate=1.0, cache="none")
    with pytest.raises(ValueError, match="cache: auto needs a cache_dir"):  # auto could fall back to no cache
        teacher_evidence_transforms(teacher, "cpu", "multiclass", 32, cache_rate=1.0, cache="auto")
    with pytest.raises(ValueError, match="cache_rate: 1.0 with cache: auto"):
        teacher_evidence_transforms(teacher, "cpu", "multiclass", 32, cache_rate=0.5, cache="auto", cache_dir="c")
    teacher_evidence_transforms(teacher, "cpu", "multiclass", 32, cache_rate=1.0, cache="auto", cache_dir="c")
    teacher_evidence_transforms(teacher, "cpu", "multiclass", 32, cache_rate=0.5, cache="disk")  # disk keeps all
    with pytest.raises(ValueError, match="cache_rate: 1.0"):
        teacher_evidence_transforms(teacher, "cpu", "multiclass", 32, cache_rate=0.5, cache="memory")
    (transform,) = teacher_evidence_transforms(teacher, "cpu", "multiclass", [64, 48], cache_rate=1.0)
    assert transform.occlusion.occlusion.mask_size == 6  # an eighth of the shorter side


def test_the_cache_size_estimate_sizes_the_occlusion_map_without_the_teachers_passes(tmp_path):
    net = CornerTeacher()
    torch.save(net.state_dict(), tmp_path / "corner.pt")
    transform = TeacherOcclusiond(
        FrozenTeacher(tmp_path / "corner.pt", network=net, bf16=False), "cpu", "multiclass", 4
    )
    item = {"image": torch.full((3, 32, 24), 0.5), "label": 1}
    cached = io.BytesIO()
    torch.save(transform(item), cached)
    transform.occlusion = None  # any occlusion pass fails from here on
    assert estimate_item_bytes([item], Compose([transform])) == cached.tell() + ITEM_OVERHEAD_BYTES


def test_an_iteration_with_precomputed_evidence_uses_it_and_runs_no_gradient_pass_of_the_teacher(tmp_path):
    torch.manual_seed(0)
    model, teacher = tiny_medtex("soft"), tiny_teacher(tmp_path)
    calls = []
    teacher.network.register_forward_hook(lambda *args: calls.append(1))
    loss = MedTexLoss("multiclass", kd_weight=1.0, fidelity_weight=0.0, evidence_weight=1.0)
    evidence = torch.rand(4, 1, 32, 32)
    batch = {"image": torch.randn(4, 1, 32, 32), "label": torch.tensor([0, 1, 0, 1]), TEACHER_EVIDENCE: evidence}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    trainer = MedTexTrainer("cpu", 1, [batch], model, optimizer, loss, teacher=teacher, decollate=False)
    trainer.run()
    assert len(calls) == 1  # the teacher on x for KD only
    with torch.no_grad():
        mask = model.mask(batch["image"])
    p = evidence.flatten(1) / evidence.flatten(1).sum(1, keepdim=True)  # the given maps, not pooled
    q = mask.flatten(1) / mask.flatten(1).sum(1, keepdim=True)
    expected = (p * (p.log() - q.log())).sum(1).mean()
    assert float(trainer.state.output["loss_evidence"]) == pytest.approx(float(expected), rel=1e-4)
    assert model.explainer.body.final_conv.weight.grad.abs().sum() > 0


def test_evidence_occlusion_overlay_caches_the_maps_and_moves_them_with_the_image(tmp_path, data, teacher_ckpt):
    """A flip of probability 1 as the only augmentation: each training item's evidence is the teacher's occlusion map
    of the un-augmented image, flipped as the image is; then one real epoch trains with it."""
    files = [str(ROOT / "configs" / "train.yaml"), str(ROOT / "configs" / "explainer" / "evidence_occlusion.yaml")]
    where = {"dataset_dir": str(data), "output_dir": str(tmp_path / "run"), "ckpt_dir": str(tmp_path / "models")}
    tiny = {"image_size": 32, "batch_size": 4, "num_workers": 0, "max_epochs": 1, "preflight": False}
    flip_only = {"augmentation#0#prob": 1.0, "augmentation#1#prob": 0.0, "use_unlabeled": False}
    train = ConfigWorkflow(
        config_file=files, workflow_type="train", teacher_ckpt=str(teacher_ckpt), **tiny, **where, **flip_only
    )
    train.initialize()
    dataset = train.parser.get_parsed_content("train#dataset")
    teacher = train.parser.get_parsed_content("train#trainer#teacher")
    occlusion = make_saliency("occlusion", teacher, "multiclass", mask_size=4, overlap=0.5, normalize=False)
    for index in (0, len(dataset) - 1):
        item = dataset[index]
        unflipped = torch.flip(torch.as_tensor(item["image"]), dims=[2])  # RandFlipd's spatial_axis 1: the width
        torch.testing.assert_close(item[TEACHER_EVIDENCE], torch.flip(occlusion(unflipped[None])[0], dims=[2]))
        assert item[TEACHER_EVIDENCE].amax() > 0
    train.run()
    output = train.parser.get_parsed_content("train#trainer").state.output
    assert float(output[0]["loss_evidence"]) > 0
    uncached = ConfigWorkflow(
        config_file=files, workflow_type="train", teacher_ckpt=str(teacher_ckpt), cache="none", **tiny, **where
    )
    with pytest.raises((ValueError, RuntimeError)) as error:  # MONAI wraps a config expression's error: RuntimeError
        uncached.initialize()
    assert any("evidence_occlusion needs cache: auto, memory" in str(e) for e in (error.value, error.value.__cause__))


def test_evidence_occlusion_maps_on_the_disk_cache_are_the_teachers_and_are_keyed_by_its_weights(
    tmp_path, data, teacher_ckpt, monkeypatch
):
    """train.yaml's cache: auto with a memory budget the data set exceeds: the maps go to the disk cache, every entry
    holding the teacher's occlusion map of its (un-augmented) image, computed in this process (num_workers 2
    notwithstanding: a GPU teacher cannot run in forked workers); a second run with the same teacher writes nothing
    and trains on them; a teacher with other weights gets a cache of its own."""
    messages: list[str] = []  # on the module's logger: the bundle's logging.conf replaces the root's handlers
    monkeypatch.setattr(caching_logger, "info", lambda message, *args: messages.append(message % args))
    files = [str(ROOT / "configs" / "train.yaml"), str(ROOT / "configs" / "explainer" / "evidence_occlusion.yaml")]
    cache_dir = tmp_path / "cache"
    settings = {
        "dataset_dir": str(data), "output_dir": str(tmp_path / "run"), "ckpt_dir": str(tmp_path / "models"),
        "image_size": 32, "batch_size": 4, "num_workers": 2, "max_epochs": 1, "preflight": False,
        "use_unlabeled": False, "cache_memory_gb": 1e-6, "cache_dir": str(cache_dir),
    }  # fmt: skip

    def workflow(ckpt: Path) -> ConfigWorkflow:
        run = ConfigWorkflow(config_file=files, workflow_type="train", teacher_ckpt=str(ckpt), **settings)
        run.initialize()
        return run

    first = workflow(teacher_ckpt)
    dataset = first.parser.get_parsed_content("train#dataset")
    teacher = first.parser.get_parsed_content("train#trainer#teacher")
    entries = sorted(dataset.folder.rglob("*.pt"))
    assert len(entries) == len(dataset) == 8
    assert "disk cache: filled in this process (its preprocessing runs a network)" in messages
    occlusion = make_saliency("occlusion", teacher, "multiclass", mask_size=4, overlap=0.5, normalize=False)
    for path in entries:
        entry = torch.load(path, weights_only=True)
        expected = occlusion(torch.as_tensor(entry["image"])[None].float())[0]
        torch.testing.assert_close(entry[TEACHER_EVIDENCE], expected)
        assert entry[TEACHER_EVIDENCE].amax() > 0
    written = {path: path.stat().st_mtime_ns for path in entries}

    second = workflow(teacher_ckpt)
    assert second.parser.get_parsed_content("train#dataset").folder == dataset.folder
    assert {path: path.stat().st_mtime_ns for path in dataset.folder.rglob("*.pt")} == written  # read, not rewritten
    second.run()
    assert float(second.parser.get_parsed_content("train#trainer").state.output[0]["loss_evidence"]) > 0

    state = torch.load(teacher_ckpt, weights_only=True)
    state["model"] = {
        name: value * 1.01 if value.is_floating_point() else value for name, value in state["model"].items()
    }
    torch.save(state, tmp_path / "other_teacher.pt")
    other = workflow(tmp_path / "other_teacher.pt").parser.get_parsed_content("train#dataset")
    assert other.folder != dataset.folder and len(list(other.folder.rglob("*.pt"))) == 8


# set by evidence_occlusion.yaml for the data pipeline, checked by the test above
PIPELINE_KEYS = ("augmentation#0#keys", "augmentation#1#keys", "plain_tensors#keys")


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
    if overlay == "evidence_occlusion.yaml":  # its maps live in the memory cache only
        tiny["cache_rate"] = 1.0
    train = ConfigWorkflow(config_file=files, workflow_type="train", teacher_ckpt=str(teacher_ckpt), **tiny, **where)
    train.initialize()
    settings = ConfigParser.load_config_file(ROOT / "configs" / "explainer" / overlay)
    assert settings, f"{overlay} sets nothing"
    loss, network = train.parser.get_parsed_content("loss"), train.parser.get_parsed_content("network")
    for key, value in settings.items():
        if key in PIPELINE_KEYS or key == "train#preprocessing#transforms":
            continue
        assert parsed_setting(key, loss, network) == value, key
    if overlay == "evidence.yaml":  # one real epoch: the term is computed and trains the explainer
        train.run()
        output = train.parser.get_parsed_content("train#trainer").state.output
        assert float(output[0]["loss_evidence"]) > 0
