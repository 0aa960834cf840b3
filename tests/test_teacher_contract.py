"""A teacher from elsewhere: label maps, input views, output conversions and checkpoint keys, against values worked out
by hand or against the same network loaded directly."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from monai.networks.nets import DenseNet121
from torch import nn

from bundle.losses import KDLoss, MedTexLoss
from bundle.networks import FrozenTeacher, Student
from bundle.networks.contract import TeacherInput, TeacherOutputs, resolve_teacher_contract
from bundle.networks.features import match_feature_layers, output_shapes
from bundle.networks.labels import LabelMap

ROOT = Path(__file__).resolve().parents[1]


def logits_of(probabilities: list[float]) -> torch.Tensor:
    return torch.log(torch.tensor([probabilities]))


# --- label maps -------------------------------------------------------------------------------------------------
def test_merged_grades_add_their_probabilities():
    grades = ["0", "1", "2", "3", "4"]
    labels = LabelMap(grades, ["non-referable", "referable"], "multiclass", "multiclass",
                      {"non-referable": ["0", "1"], "referable": ["2", "3", "4"]})  # fmt: skip
    out = labels(logits_of([0.1, 0.2, 0.3, 0.25, 0.15]))
    assert torch.softmax(out, 1).tolist()[0] == pytest.approx([0.3, 0.7], abs=1e-6)
    assert out.exp().sum().item() == pytest.approx(1.0, abs=1e-6)  # log-probabilities: the logits of a distribution


def test_subset_in_another_order_is_renormalised_and_lacking_classes_are_listed():
    labels = LabelMap(["a", "b", "c"], ["C", "A", "x"], "multiclass", "multiclass")
    assert labels.covered == [0, 1] and labels.lacking == ["x"]
    out = labels(logits_of([0.5, 0.3, 0.2]))
    assert out.shape == (1, 2)
    assert out.exp().tolist()[0] == pytest.approx([0.2 / 0.7, 0.5 / 0.7], abs=1e-6)


def test_multilabel_reorders_renames_and_takes_the_most_likely_of_a_merge():
    merge, synonyms = {"mass or nodule": ["Nodule", "Mass"]}, [["effusion", "pleural_effusion"]]
    teacher_names = ["Pleural Effusion", "Nodule", "Mass", ""]
    labels = LabelMap(teacher_names, ["mass or nodule", "effusion"], "multilabel", "multilabel", merge, synonyms)
    out = labels(torch.tensor([[1.0, -2.0, 0.5, 9.0]]))
    assert out.tolist() == [[0.5, 1.0]]


def test_a_multiclass_teacher_gives_a_finding_the_sum_of_its_classes():
    labels = LabelMap(["0", "1", "2", "3"], ["referable"], "multiclass", "multilabel", {"referable": ["2", "3"]})
    out = labels(logits_of([0.1, 0.2, 0.3, 0.4]))
    assert torch.sigmoid(out).item() == pytest.approx(0.7, abs=1e-6)
    assert out.item() == pytest.approx(math.log(0.7 / 0.3), abs=1e-5)


def test_a_multilabel_teacher_makes_a_two_class_task_from_a_finding_and_its_absence():
    labels = LabelMap(["Effusion", "Mass"], ["normal", "effusion"], "multilabel", "multiclass",
                      {"normal": "not Effusion", "effusion": "Effusion"})  # fmt: skip
    out = labels(torch.tensor([[0.8, 3.0]]))
    p = 1 / (1 + math.exp(-0.8))
    assert torch.softmax(out, 1).tolist()[0] == pytest.approx([1 - p, p], abs=1e-6)


def test_identical_names_and_tasks_pass_the_logits_through():
    labels = LabelMap(["a", "b"], ["a", "b"], "multiclass", "multiclass")
    logits = torch.randn(3, 2)
    assert labels.identity and labels(logits) is logits


@pytest.mark.parametrize(
    "arguments, message",
    [
        ((["a", "b"], ["a", "b"], "multiclass", "multiclass", {"a": "z"}), "label_map: 'z' is not one of"),
        ((["a", "b"], ["a", "b"], "multiclass", "multiclass", {"q": "a"}), r"label_map: \['q'\] are not local classes"),
        ((["a", "b"], ["x", "y"], "multiclass", "multiclass"), "no local class"),
        ((["a", "b"], ["x", "y"], "multiclass", "multiclass", {"x": "a", "y": ["a", "b"]}), "feed several"),
        ((["a", "b"], ["x", "y", "z"], "multilabel", "multiclass", {"x": "a", "y": "b"}), "2-class task"),
        ((["a", "b"], ["x", "a"], "multilabel", "multilabel", {"x": "not a"}), "2-class task distilled from"),
        ((["Effusion", "Pleural Effusion"], ["effusion"], "multilabel", "multilabel", None,
          [["effusion", "pleural effusion"]]), "label_synonyms"),  # fmt: skip
    ],
)
def test_label_maps_that_make_no_sense_are_refused_naming_the_config_value(arguments, message):
    with pytest.raises(ValueError, match=message):
        LabelMap(*arguments)


def test_unknown_teacher_names_get_suggestions():
    with pytest.raises(ValueError, match="did you mean 'Pleural Effusion'"):
        LabelMap(["Pleural Effusion"], ["e"], "multilabel", "multilabel", {"e": "Pleural Efusion"})


# --- outputs -----------------------------------------------------------------------------------------------------
def test_probabilities_and_calibrated_scores_become_the_logits_again():
    z = torch.tensor([[-2.0, 0.3, 1.5]])
    labels = LabelMap(["a", "b", "c"], ["a", "b", "c"], "multilabel", "multilabel")
    assert TeacherOutputs("probabilities", "multilabel", labels)(torch.sigmoid(z)) == pytest.approx(z, abs=1e-4)
    thresholds = [0.1, 0.6, float("nan")]
    # torchxrayvision's op_norm, worked out here: below t, p / 2t; above, 1 - (1 - p) / 2(1 - t); NaN: untouched
    p = torch.sigmoid(z)[0].tolist()
    calibrated = [
        p[0] / 0.2 if p[0] < 0.1 else 1 - (1 - p[0]) / 1.8,
        p[1] / 1.2 if p[1] < 0.6 else 1 - (1 - p[1]) / 0.8,
    ]
    calibrated.append(p[2])
    out = TeacherOutputs("calibrated", "multilabel", labels, thresholds)(torch.tensor([calibrated]))
    assert out == pytest.approx(z, abs=1e-4)
    softmax_labels = LabelMap(["a", "b", "c"], ["a", "b", "c"], "multiclass", "multiclass")
    log_p = TeacherOutputs("probabilities", "multiclass", softmax_labels)(torch.softmax(z, 1))
    assert torch.softmax(log_p, 1) == pytest.approx(torch.softmax(z, 1), abs=1e-6)
    with pytest.raises(ValueError, match="teacher_thresholds"):
        TeacherOutputs("calibrated", "multilabel", labels, [0.5])


# --- the teacher's view of the image --------------------------------------------------------------------------------
def test_teacher_input_maps_display_intensities_channels_and_size_by_hand():
    view = TeacherInput(3, 0.5, 0.25, 1, 4, "nearest", (-1024, 1024), [0.0], [1.0])
    display = torch.tensor([0.0, 0.5, 1.0, 0.25]).view(1, 1, 2, 2).expand(1, 3, 2, 2)
    out = view((display - 0.5) / 0.25)  # the bundle's normalised gray image, as three equal channels
    expected = torch.tensor([[-1024.0, -1024.0, 0.0, 0.0], [-1024.0, -1024.0, 0.0, 0.0],
                             [1024.0, 1024.0, -512.0, -512.0], [1024.0, 1024.0, -512.0, -512.0]])  # fmt: skip
    assert out.shape == (1, 1, 4, 4) and torch.allclose(out[0, 0], expected, atol=1e-3)
    imagenet = TeacherInput(1, 0.5, 0.25, 3, None, "bilinear", (0, 1), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    out = imagenet(torch.zeros(1, 1, 2, 2))  # display 0.5 everywhere
    assert out[0, :, 0, 0].tolist() == pytest.approx(
        [(0.5 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0.5 - 0.406) / 0.225]
    )
    same = TeacherInput(3, 0.5, 0.25, 3, None, "bilinear", (0, 1), [0.5] * 3, [0.25] * 3)
    x = torch.randn(2, 3, 8, 8)
    assert not same.affine and same(x) is x


def test_gradients_reach_the_image_through_the_teachers_view(tmp_path):
    """The fidelity term back-propagates through the teacher to the mask: the view must be part of the graph. A
    nearest up-sampling by 2 that the foreign network area-pools back is exact, so the gradients are the original's."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )

    class Foreign(nn.Module):  # [-1024, 1024] at 16 px -> the original at 8 px
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return self.net((F.avg_pool2d((v + 1024) / 2048, 2) - 0.5) / 0.25)

    view = {"channels": 1, "size": 16, "resize_mode": "nearest", "value_range": [-1024, 1024], "mean": 0.0, "std": 1.0}
    contract = resolve_teacher_contract(["a", "b"], "multiclass", 1, 0.5, 0.25, 8, **view)
    foreign = Foreign()
    torch.save(foreign.state_dict(), tmp_path / "foreign.pt")
    teacher = FrozenTeacher(tmp_path / "foreign.pt", Foreign(), bf16=False, contract=contract)
    x = torch.randn(2, 1, 8, 8, requires_grad=True)
    teacher(x)[0].sum().backward()
    y = x.detach().clone().requires_grad_(True)
    net(y).sum().backward()
    assert x.grad.abs().sum() > 0 and torch.allclose(x.grad, y.grad, atol=1e-5)


# --- KD on the covered classes -----------------------------------------------------------------------------------
def test_kd_compares_the_covered_classes_only_and_ce_must_teach_the_rest():
    student = torch.tensor([[0.2, -1.0, 0.7]])
    teacher = torch.tensor([[1.0, -0.5]])  # logits of local classes 0 and 2
    loss = MedTexLoss("multiclass", ce_weight=1.0, kd_weight=1.0, teacher_classes=[0, 2], num_classes=3)
    terms = loss(student, torch.tensor([1]), teacher)
    expected_kd = KDLoss("multiclass", 4.0)(student[:, [0, 2]], teacher)
    assert terms["kd"].item() == pytest.approx(expected_kd.item(), rel=1e-6)
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(student, torch.tensor([1])).item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"local classes \[1\] \(label_map\) and ce_weight is 0"):
        MedTexLoss("multiclass", ce_weight=0.0, kd_weight=1.0, teacher_classes=[0, 2], num_classes=3)


# --- checkpoints from elsewhere -------------------------------------------------------------------------------------
def _theirs(monai_key: str, layout: str) -> str:
    """A MONAI DenseNet121 key as torchxrayvision (torchvision layout) or a CheXNet reimplementation saves it."""
    key = monai_key.replace(".layers.", ".").replace("class_layers.out.", "classifier.")
    if layout == "chexnet":
        for name in ("norm", "relu", "conv"):
            for i in ("1", "2"):
                key = key.replace(f".{name}{i}.", f".{name}.{i}.")
        key = "module.densenet121." + key.replace("classifier.", "classifier.0.")
    return key


@pytest.mark.parametrize("config, layout", [("torchxrayvision_densenet121", "xrv"), ("chexnet_densenet121", "chexnet")])
def test_ready_configs_map_other_libraries_keys_onto_monais_densenet(tmp_path, config, layout):
    settings = yaml.safe_load((ROOT / "configs" / "teachers" / f"{config}.yaml").read_text())
    channels, classes = settings["teacher_def"]["in_channels"], settings["teacher_def"]["out_channels"]
    torch.manual_seed(0)
    original = DenseNet121(spatial_dims=2, in_channels=channels, out_channels=classes).eval()
    state = {_theirs(k, layout): v for k, v in original.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert not any(k in original.state_dict() for k in state if ".denselayer" in k)  # really another layout
    if layout == "chexnet":
        state = {"state_dict": state, "epoch": 10}
    torch.save(state, tmp_path / "theirs.pt")
    teacher = FrozenTeacher(
        tmp_path / "theirs.pt",
        DenseNet121(spatial_dims=2, in_channels=channels, out_channels=classes),
        bf16=False,
        weights_key=settings.get("teacher_weights_key"),
        key_map=settings["teacher_key_map"],
    )
    x = torch.randn(2, channels, 64, 64)
    with torch.no_grad():
        assert torch.equal(teacher(x)[0], original(x))


def test_pickled_models_are_refused_and_convert_teacher_makes_a_state_dict(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    model.targets = ["Effusion", "", "Mass"]  # torchxrayvision's attribute: blank where not trained
    model.op_threshs = torch.tensor([0.1, float("nan"), 0.3])
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(ValueError, match="scripts/convert_teacher.py"):
        FrozenTeacher(tmp_path / "whole.pt", nn.Linear(1, 1))
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "convert_teacher.py"), "--input", str(tmp_path / "whole.pt"),
         "--output", str(tmp_path / "state.pt")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "teacher_output_names: ['Effusion', '', 'Mass']" in done.stdout
    assert "teacher_thresholds: [0.1, None, 0.3]" in done.stdout
    fresh = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    teacher = FrozenTeacher(tmp_path / "state.pt", fresh, bf16=False)
    x = torch.randn(1, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(teacher(x)[0], model(x))


def test_declared_inputs_and_outputs_are_checked_when_the_teacher_loads(tmp_path):
    net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=3)
    torch.save(net.state_dict(), tmp_path / "t.pt")

    def contract(**values):
        return resolve_teacher_contract(["a", "b", "c"], "multilabel", 1, 0.5, 0.25, 32, **values)

    with pytest.raises(ValueError, match="teacher_input_channels, teacher_input_size"):
        FrozenTeacher(tmp_path / "t.pt", net, contract=contract(channels=3, names=["a", "b", "c"]))
    with pytest.raises(ValueError, match="4 in teacher_output_names"):
        FrozenTeacher(tmp_path / "t.pt", net, contract=contract(names=["a", "b", "c", "d"]))


# --- VID with any architecture --------------------------------------------------------------------------------------
def test_automatic_vid_layers_sit_at_the_students_output_strides():
    teacher = DenseNet121(spatial_dims=2, in_channels=1, out_channels=6)
    student = Student(in_channels=1, out_channels=4)
    layers = ["features.denseblock2", "features.denseblock3"]
    chosen = match_feature_layers(teacher, (1, 96, 96), student, layers, (1, 48, 48))
    student_shapes, teacher_shapes = output_shapes(student, (1, 48, 48)), output_shapes(teacher, (1, 96, 96))
    for s, t in zip(layers, chosen):
        assert 48 / student_shapes[s][-1] == 96 / teacher_shapes[t][-1]  # the same stride, each on its own input
        widest = max(
            shape[1] for shape in teacher_shapes.values() if len(shape) == 4 and shape[-1] == teacher_shapes[t][-1]
        )
        assert teacher_shapes[t][1] == widest
    assert chosen[0] != chosen[1]


def test_an_onnx_teacher_gives_its_eager_outputs_and_refuses_the_fidelity_term(tmp_path):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    net.eval()
    torch.onnx.export(
        net, (torch.zeros(1, 1, 16, 16),), str(tmp_path / "t.onnx"), input_names=["image"], output_names=["pred"],
        dynamic_axes={"image": {0: "batch"}, "pred": {0: "batch"}}, dynamo=False,
    )  # fmt: skip
    contract = resolve_teacher_contract(["b", "a"], "multiclass", 1, 0.5, 0.25, 16, names=["a", "b", "c"])
    teacher = FrozenTeacher(tmp_path / "t.onnx", bf16=False, contract=contract)
    assert not teacher.hookable and not teacher.differentiable
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        log_q = torch.log_softmax(net(x), 1)
    expected = log_q[:, [1, 0]] - torch.logsumexp(log_q[:, [1, 0]], 1, keepdim=True)  # local b, a; c dropped
    assert torch.allclose(teacher(x)[0], expected, atol=1e-5)
    from bundle.engines.trainer import MedTexTrainer

    loss = MedTexLoss("multiclass", kd_weight=1.0, fidelity_weight=1.0, teacher_classes=contract.labels.covered)
    student = Student(in_channels=1, out_channels=2, init_features=8, growth_rate=4, block_config=(1, 1))
    with pytest.raises(ValueError, match="fidelity_weight > 0 needs gradients through the teacher"):
        MedTexTrainer("cpu", 1, [], student, torch.optim.SGD(student.parameters(), 0.1), loss, teacher=teacher)
    evidence = MedTexLoss("multiclass", kd_weight=1.0, evidence_weight=1.0, teacher_classes=contract.labels.covered)
    with pytest.raises(ValueError, match="so do deletion_weight and evidence_weight"):
        MedTexTrainer("cpu", 1, [], student, torch.optim.SGD(student.parameters(), 0.1), evidence, teacher=teacher)
