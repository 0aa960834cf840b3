"""Baseline overrides: every one parses into a full training and evaluation workflow; the transfer baselines start
from the given weights (and a resumed run from its own checkpoint), and a checkpoint that does not fit stops the run
with a message naming the file."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.networks.nets import DenseNet121

from bundle.networks import MedTex, Student

ROOT = Path(__file__).resolve().parents[1]
BASELINES = sorted(p.stem for p in (ROOT / "configs" / "baselines").glob("*.yaml"))
# toy data lacks some classes, which the pre-flight check would report (tests/test_validate_datalist.py covers it)
TINY = {"image_size": 32, "batch_size": 4, "num_workers": 0, "cache_rate": 0.0, "max_epochs": 1, "preflight": False}


@pytest.fixture(scope="module")
def student_ckpt(tmp_path_factory) -> Path:
    """A source-domain student as a bare state dict (what configs/baselines/scratch.yaml trains: no explainer)."""
    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("student") / "source_student.pt"
    torch.save(MedTex(Student(in_channels=3, out_channels=5)).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def generic_ckpts(tmp_path_factory) -> dict[str, Path]:
    """Networks as scripts/pretrain_generic.py saves them: pretrained on a 10-class generic set (another head)."""
    torch.manual_seed(3)
    folder = tmp_path_factory.mktemp("generic")
    networks = {
        "student": MedTex(Student(in_channels=3, out_channels=10)),
        "teacher": DenseNet121(spatial_dims=2, in_channels=3, out_channels=10),
    }
    for name, network in networks.items():
        torch.save({"model": network.state_dict()}, folder / f"generic_{name}.pt")
    return {name: folder / f"generic_{name}.pt" for name in networks}


def workflow(configs: list[str], tmp: Path, data: Path, **override) -> ConfigWorkflow:
    files = [str(ROOT / "configs" / c) for c in configs]
    where = {"dataset_dir": str(data), "output_dir": str(tmp / "run"), "ckpt_dir": str(tmp / "models")}
    return ConfigWorkflow(config_file=files, workflow_type="train", **{**TINY, **where, **override})


def weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("model", state)


def assert_same(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k].cpu(), expected[k]) for k in expected)


@pytest.mark.parametrize("baseline", BASELINES)
def test_baseline_parses(baseline, tmp_path, data, teacher_ckpt, student_ckpt, generic_ckpts):
    init = {"init_ckpt": str(student_ckpt)} if baseline in ("transfer_student", "medtex_from_source") else {}
    if baseline.startswith("transfer_generic_"):
        init = {"init_ckpt": str(generic_ckpts[baseline.rsplit("_", 1)[1]])}
    configs = ["train.yaml", f"baselines/{baseline}.yaml"]
    train = workflow(configs, tmp_path, data, teacher_ckpt=str(teacher_ckpt), **init)
    train.initialize()
    for key in ("network_def", "train#trainer", "train#dataset", "train#handlers", "validate#evaluator"):
        assert key in train.parser  # the bundle property IDs of DESIGN.md
    trainer = train.parser.get_parsed_content("train#trainer")
    assert trainer.network is train.parser.get_parsed_content("network")
    # its own places, so that runs of different baselines never resume from or overwrite each other's files
    own = ConfigParser.load_config_file(ROOT / "configs" / "baselines" / f"{baseline}.yaml")
    assert own["ckpt_name"] == f"{baseline}.pt" and own["output_dir"].endswith(f"/runs/{baseline}'")
    evaluate = workflow([*configs, "evaluate.yaml"], tmp_path, data, saliency_metrics=False)
    evaluate.initialize()
    assert evaluate.parser.get_parsed_content("validate#evaluator").network is not None


def test_unlabeled_images_per_method(tmp_path, data, teacher_ckpt):
    """MED-TEX distils on the unlabelled images too; its labelled-only variant and the CE-only baselines do not."""
    used = {}
    for name, configs in {"medtex": [], **{b: [f"baselines/{b}.yaml"] for b in BASELINES}}.items():
        wf = workflow(["train.yaml", *configs], tmp_path, data, teacher_ckpt=str(teacher_ckpt))
        used[name] = len(wf.parser.get_parsed_content("train#dataset")) > 8
    assert used["medtex"] and used["medtex_from_source"] and not used["medtex_labeled_only"]
    assert not any(used[b] for b in ("scratch", "transfer_student", "transfer_teacher"))


def test_transfer_teacher_fine_tunes_the_teacher_and_resume_wins(tmp_path, data, teacher_ckpt):
    configs = ["train.yaml", "baselines/transfer_teacher.yaml"]
    first = workflow(configs, tmp_path, data, teacher_ckpt=str(teacher_ckpt))
    first.initialize()
    network = first.parser.get_parsed_content("network")
    assert isinstance(network, DenseNet121)
    assert_same(network.state_dict(), weights(teacher_ckpt))  # training starts from the teacher's weights
    assert first.parser.get_parsed_content("train#trainer").network is network
    first.run()
    trained = {k: v.detach().clone() for k, v in network.state_dict().items()}
    assert not all(torch.equal(trained[k], v) for k, v in weights(teacher_ckpt).items())  # it was fine-tuned

    # started again on the same output_dir (a killed run restarted), the run's own checkpoint wins over init_ckpt
    second = workflow(configs, tmp_path, data, teacher_ckpt=str(teacher_ckpt), seed=1)  # retraining would differ
    second.initialize()
    second.run()
    assert_same(second.parser.get_parsed_content("network").state_dict(), trained)

    # evaluate.yaml works with the teacher's architecture as network_def (no explainer, no saliency metrics)
    evaluate = ConfigWorkflow(
        config_file=[str(ROOT / "configs" / c) for c in [*configs, "evaluate.yaml"]],
        workflow_type="eval",
        **TINY,
        dataset_dir=str(data),
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "eval"),
        saliency_metrics=False,
    )
    evaluate.initialize()
    evaluate.run()
    metrics = {row[0]: float(row[1]) for row in csv.reader(open(tmp_path / "eval" / "metrics.csv"))}
    assert 0.0 <= metrics["test_auc"] <= 1.0 and "kappa" in metrics


def test_transfer_student_starts_from_the_source_student(tmp_path, data, student_ckpt):
    wf = workflow(["train.yaml", "baselines/transfer_student.yaml"], tmp_path, data, init_ckpt=str(student_ckpt))
    wf.initialize()
    network = wf.parser.get_parsed_content("network")
    assert isinstance(network, MedTex) and network.explainer is None
    assert_same(network.state_dict(), weights(student_ckpt))
    assert wf.parser.get_parsed_content("train#trainer").network is network


def test_medtex_from_source_distils_into_the_source_student(tmp_path, data, teacher_ckpt, student_ckpt):
    configs = ["train.yaml", "baselines/medtex_from_source.yaml"]
    wf = workflow(configs, tmp_path, data, teacher_ckpt=str(teacher_ckpt), init_ckpt=str(student_ckpt))
    wf.initialize()
    network = wf.parser.get_parsed_content("network")
    assert isinstance(network, MedTex) and network.explainer is not None  # MED-TEX as is: explainer, KD, VID
    assert_same(
        network.student.state_dict(),
        {k[len("student.") :]: v for k, v in weights(student_ckpt).items() if k.startswith("student.")},
    )
    assert wf.parser.get_parsed_content("train#trainer").teacher is not None


@pytest.mark.parametrize("bare", [False, True])
def test_medtex_student_starts_from_a_source_student(bare, tmp_path, data, teacher_ckpt, student_ckpt):
    """init_submodule: student loads a from-scratch student's weights (``student.*`` keys or the student's own state
    dict) into explainer + student; the explainer keeps its random initialisation."""
    source = {k[len("student.") :]: v for k, v in weights(student_ckpt).items() if k.startswith("student.")}
    path = student_ckpt
    if bare:
        path = tmp_path / "bare_student.pt"
        torch.save(source, path)
    default = workflow(["train.yaml"], tmp_path, data, teacher_ckpt=str(teacher_ckpt))
    default.initialize()
    default_network = default.parser.get_parsed_content("train#trainer").network
    explainer_default = {k: v.clone() for k, v in default_network.explainer.state_dict().items()}
    assert not all(torch.equal(default_network.student.state_dict()[k], v) for k, v in source.items())

    wf = workflow(
        ["train.yaml"], tmp_path, data, teacher_ckpt=str(teacher_ckpt), init_ckpt=str(path), init_submodule="student"
    )
    wf.initialize()
    network = wf.parser.get_parsed_content("network")
    assert network.explainer is not None
    assert_same(network.student.state_dict(), source)
    assert_same(network.explainer.state_dict(), explainer_default)  # untouched: the seed's random weights


def test_init_submodule_that_does_not_exist_is_a_clear_error(tmp_path, data, teacher_ckpt, student_ckpt):
    wf = workflow(
        ["train.yaml"], tmp_path, data, teacher_ckpt=str(teacher_ckpt), init_ckpt=str(student_ckpt), init_submodule="x"
    )
    with pytest.raises(SystemExit, match="init_submodule.*no part named 'x'"):
        wf.initialize()


@pytest.mark.parametrize("part", ["student", "teacher"])
def test_transfer_generic_loads_all_but_the_head_which_stays_random(part, tmp_path, data, generic_ckpts):
    """A 10-class generic network into a 5-class local one: every weight but the head's as in the file, the head as a
    random initialisation with the same seed makes it (the init step changes nothing there)."""
    configs = ["train.yaml", f"baselines/transfer_generic_{part}.yaml"]
    before = workflow(configs, tmp_path / "random", data, init_ckpt=None)
    before.initialize()
    random_head = {
        k: v.clone() for k, v in before.parser.get_parsed_content("network").state_dict().items() if "class_layers" in k
    }
    wf = workflow(configs, tmp_path, data, init_ckpt=str(generic_ckpts[part]))
    wf.initialize()
    state = wf.parser.get_parsed_content("network").state_dict()
    source = weights(generic_ckpts[part])
    head = [k for k in state if "class_layers.out." in k]
    assert len(head) == 2 and all(state[k].shape[0] == 5 and source[k].shape[0] == 10 for k in head)
    assert all(torch.equal(state[k].cpu(), random_head[k]) for k in head)
    body = [k for k in state if k not in head]
    assert len(body) > 100 and all(torch.equal(state[k].cpu(), source[k]) for k in body)


def test_init_key_map_loads_another_librarys_names_and_exclude_that_matches_nothing_is_an_error(tmp_path, data):
    """torchvision's DenseNet121 names (no ``.layers.`` in dense layers, head ``classifier``) into teacher_def."""
    torch.manual_seed(4)
    monai_state = DenseNet121(spatial_dims=2, in_channels=3, out_channels=1000).state_dict()
    torchvision_state = {
        k.replace(".layers.", ".").replace("class_layers.out.", "classifier."): v for k, v in monai_state.items()
    }
    path = tmp_path / "densenet121_imagenet.pt"
    torch.save(torchvision_state, path)
    configs = ["train.yaml", "baselines/transfer_generic_teacher.yaml"]
    key_map = [[r"^(features\.denseblock\d+\.denselayer\d+)\.", r"\1.layers."]]
    wf = workflow(configs, tmp_path, data, init_ckpt=str(path), init_key_map=key_map)
    wf.initialize()
    state = wf.parser.get_parsed_content("network").state_dict()
    assert all(torch.equal(state[k].cpu(), v) for k, v in monai_state.items() if "class_layers" not in k)
    unmapped = workflow(configs, tmp_path / "unmapped", data, init_ckpt=str(path))
    with pytest.raises(SystemExit, match="weights missing from the file"):
        unmapped.initialize()
    nothing = workflow(configs, tmp_path / "nothing", data, init_ckpt=str(path), init_key_map=key_map)
    nothing.parser["init_exclude"] = "no_such_layer"
    with pytest.raises(SystemExit, match="init_exclude.*matches no weight"):
        nothing.initialize()


def test_medtex_default_has_no_initial_weights(tmp_path, data, teacher_ckpt):
    wf = workflow(["train.yaml"], tmp_path, data, teacher_ckpt=str(teacher_ckpt))
    assert wf.parser.get_parsed_content("init_ckpt") is None
    wf.initialize()  # no init step effect, no error


@pytest.mark.parametrize(
    "baseline, wrong, expected",
    [
        ("transfer_student", "teacher", "unexpected weights in the file"),  # a DenseNet121 into the student
        ("transfer_teacher", "student", "weights missing from the file"),  # a student into the DenseNet121
        ("transfer_student", "missing", "initial weights not found"),
        ("transfer_student", "garbage", "cannot read initial weights"),
    ],
)
def test_wrong_checkpoint_is_a_clear_error(baseline, wrong, expected, tmp_path, data, teacher_ckpt, student_ckpt):
    path = {"teacher": teacher_ckpt, "student": student_ckpt, "missing": tmp_path / "nope.pt"}.get(wrong)
    if wrong == "garbage":
        path = tmp_path / "garbage.pt"
        path.write_bytes(b"not a checkpoint")
    wf = workflow(["train.yaml", f"baselines/{baseline}.yaml"], tmp_path, data, init_ckpt=str(path))
    with pytest.raises(SystemExit) as error:
        wf.initialize()
    message = str(error.value)
    assert str(path) in message and "init_ckpt" in message and expected in message
