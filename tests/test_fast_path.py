"""The training fast path's settings (docs/RESULTS.md, "The training fast path") change speed, not results: plain
tensors from the loader workers with MONAI's seeding kept, channels_last weights that save and load like contiguous
ones, teacher outputs precomputed once per image that give the losses of the teacher's pass."""

from __future__ import annotations

import copy
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import DataLoader, Dataset, MetaTensor, list_data_collate
from monai.transforms import Compose, EnsureTyped, RandAffined

from bundle.data.loading import plain_tensor_worker_init
from bundle.engines.precompute import TEACHER_FEATURES, TEACHER_LOGITS
from bundle.engines.trainer import LOSS_TERMS, loss_terms
from tests.conftest import CONFIGS, inference_network


def _augmented_batches(worker_init_fn) -> list[torch.Tensor]:
    torch.manual_seed(0)  # the images, then the loader's base seed for its workers, drawn from torch's generator
    items = [{"image": MetaTensor(torch.rand(1, 16, 16))} for _ in range(6)]
    augment = Compose([RandAffined(keys="image", prob=1.0, rotate_range=0.5), EnsureTyped(keys="image")])
    augment.set_random_state(seed=3)
    loader = DataLoader(Dataset(items, augment), batch_size=3, num_workers=1, worker_init_fn=worker_init_fn)
    return [batch["image"] for batch in loader]


def test_workers_hand_out_plain_tensors_with_the_same_random_draws():
    from monai.data.utils import worker_init_fn

    with_meta, plain = _augmented_batches(worker_init_fn), _augmented_batches(plain_tensor_worker_init)
    assert all(isinstance(b, MetaTensor) for b in with_meta)
    assert all(type(b) is torch.Tensor for b in plain)
    for a, b in zip(with_meta, plain):
        torch.testing.assert_close(a.as_tensor(), b)  # same seeding, same augmented images
    assert not torch.equal(plain[0], plain[1])


def test_channels_last_training_weights_load_into_the_deployed_network(tmp_path):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.yaml"))
    parser.update({"teacher_ckpt": str(tmp_path / "unused.pt"), "device": "$torch.device('cpu')", "image_size": 32})
    assert parser.get_parsed_content("channels_last") is True
    network = parser.get_parsed_content("network")
    conv = network.student.features.conv0.weight
    assert conv.dim() == 4 and conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    torch.save(network.state_dict(), tmp_path / "model.pt")

    deployed = inference_network().eval()
    deployed.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, mask = network.eval().explain(image)
        logits, deployed_mask = deployed.explain(image)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(deployed_mask, mask, atol=1e-5, rtol=1e-4)


class _RecordDtype(torch.nn.Module):
    """A tiny classifier that records the dtype its convolution computed in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        self.seen.append(y.dtype)
        return y.mean(dim=(2, 3))


def test_autocast_inferer_computes_in_bfloat16_and_returns_float32_with_gradients():
    from bundle.engines.inferers import AutocastInferer

    torch.manual_seed(0)
    net, image = _RecordDtype(), torch.randn(2, 3, 8, 8)
    logits = AutocastInferer(enabled=True)(image, net)
    assert net.seen == [torch.bfloat16] and logits.dtype == torch.float32
    logits.sum().backward()
    assert net.conv.weight.grad is not None and net.conv.weight.grad.dtype == torch.float32
    reference = AutocastInferer(enabled=False)(image, net)
    assert net.seen[-1] == torch.float32
    # bf16 keeps ~3 significant digits: close to fp32, not equal
    torch.testing.assert_close(logits, reference, atol=3e-2, rtol=3e-2)
    assert not torch.equal(logits, reference)


def test_autocast_inferer_auto_leaves_an_outer_autocast_alone():
    from bundle.engines.inferers import AutocastInferer

    inferer = AutocastInferer(enabled="auto")
    with torch.autocast("cpu", dtype=torch.float16):
        assert not inferer.active("cpu")
    with pytest.raises(ValueError, match="enabled must be"):
        AutocastInferer(enabled="yes")


def _tiny_workflow(config: str | list[str], run: Path, data: Path, **override) -> ConfigWorkflow:
    """A training workflow of ``config`` (files in configs/) on the tiny data set, on the CPU, writing below ``run``."""
    settings = {
        "dataset_dir": str(data),
        "output_dir": str(run / "run"),
        "ckpt_dir": str(run / "models"),
        "device": "$torch.device('cpu')",
        "image_size": 32,
        "batch_size": 4,
        "num_workers": 0,
        "preflight": False,
    }
    files = [str(CONFIGS / c) for c in ([config] if isinstance(config, str) else config)]
    return ConfigWorkflow(config_file=files, workflow_type="train", **{**settings, **override})


def _precompute_workflow(tmp_path, data, teacher_ckpt, **override) -> ConfigWorkflow:
    settings = {"teacher_ckpt": str(teacher_ckpt), "teacher_bf16": False}
    return _tiny_workflow(["train.yaml", "precompute_teacher.yaml"], tmp_path, data, **{**settings, **override})


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_precomputed_teacher_outputs_give_the_same_losses_with_one_teacher_pass_less(
    cache, tmp_path, data, teacher_ckpt
):
    """With augmentation off the cached teacher outputs (in memory, or on disk keyed by the teacher's weights) are
    those of the online pass, and the iteration uses them."""
    parser = _precompute_workflow(tmp_path, data, teacher_ckpt, cache=cache, cache_dir=str(tmp_path / "cache")).parser
    dataset = parser.get_parsed_content("train#dataset")
    if cache == "disk":
        assert len(list(dataset.folder.rglob("*.pt"))) == len(dataset)
    trainer = parser.get_parsed_content("train#trainer")
    teacher = trainer.teacher
    items = [dataset[i] for i in range(4)]
    assert all(TEACHER_LOGITS in item and len(item[TEACHER_FEATURES]) == 2 for item in items)
    batch = list_data_collate(items)
    with torch.no_grad():
        online_logits, online_features = teacher(batch["image"])
    torch.testing.assert_close(batch[TEACHER_LOGITS], online_logits, atol=1e-5, rtol=1e-4)
    for cached, online in zip(batch[TEACHER_FEATURES], online_features):
        torch.testing.assert_close(cached, online, atol=1e-5, rtol=1e-4)

    teacher_passes = []
    teacher.network.register_forward_hook(lambda *_: teacher_passes.append(1))
    start = {
        "network": copy.deepcopy(trainer.network.state_dict()),
        "loss": copy.deepcopy(trainer.loss_function.state_dict()),
        "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
    }
    losses = {}
    for name, this_batch in {
        "precomputed": batch,
        "online": {k: v for k, v in batch.items() if k not in (TEACHER_LOGITS, TEACHER_FEATURES)},
    }.items():
        trainer.network.load_state_dict(start["network"])
        trainer.loss_function.load_state_dict(start["loss"])
        trainer.optimizer.load_state_dict(start["optimizer"])
        teacher_passes.clear()
        losses[name] = loss_terms(trainer._iteration(trainer, this_batch))  # decollated: per item, same values
        losses[name + "_passes"] = len(teacher_passes)
    assert losses["online_passes"] == 2 and losses["precomputed_passes"] == 1  # the masked image's pass stays
    assert (
        len(losses["online"]) == 1 + len(LOSS_TERMS)
        and losses["online"]["loss_kd"] > 0
        and losses["online"]["loss_vid"] != 0
    )
    for key, value in losses["online"].items():
        assert losses["precomputed"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_precomputed_teacher_outputs_are_stored_in_the_teachers_precision(tmp_path, data, teacher_ckpt):
    """bfloat16 teacher passes give bfloat16 values: kept as such (half the cache), and float32 ones as float32."""
    for bf16, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        parser = _precompute_workflow(tmp_path, data, teacher_ckpt, teacher_bf16=bf16).parser
        item = parser.get_parsed_content("train#dataset")[0]
        assert item[TEACHER_LOGITS].dtype == dtype and item[TEACHER_LOGITS].shape == (5,)
        assert all(f.dtype == dtype and f.dim() == 3 for f in item[TEACHER_FEATURES])


@pytest.mark.parametrize(
    "override, message",
    [
        ({"augmentation": [{"_target_": "RandFlipd", "keys": "image", "prob": 0.5}]}, "needs augmentation off"),
        ({"cache_rate": 0.5}, "needs cache_rate: 1.0"),
    ],
)
def test_precompute_teacher_refuses_settings_where_the_outputs_would_be_wrong_or_uncached(
    override, message, tmp_path, data, teacher_ckpt
):
    parser = _precompute_workflow(tmp_path, data, teacher_ckpt, **override).parser
    with pytest.raises((ValueError, RuntimeError)) as error:  # MONAI wraps a config expression's error: RuntimeError
        parser.get_parsed_content("train#dataset")
    messages = [str(error.value), str(error.value.__cause__)]
    assert any(message in m and "precompute_teacher" in m for m in messages), messages


READS = ("item", "__float__", "__int__", "tolist", "numpy", "cpu")  # what copies a value off a GPU, waiting for it


@pytest.mark.parametrize("config", ["train.yaml", "train_teacher.yaml"])
def test_training_iterations_read_no_tensor_values_between_logs(config, tmp_path, data, teacher_ckpt, monkeypatch):
    """On a GPU, reading a tensor's value waits for the iteration to finish: between two logs (``log_interval``) no
    part of an iteration, the engine's decollation and handlers included, may read one. Counted on the CPU by
    wrapping the tensor methods that read values, from ITERATION_STARTED to the last ITERATION_COMPLETED handler."""
    from ignite.engine import Events

    reads_per_iteration = {}
    for log_interval in (1000, 1):
        settings = {"max_epochs": 1, "log_interval": log_interval}
        if config == "train.yaml":
            settings["teacher_ckpt"] = str(teacher_ckpt)
        workflow = _tiny_workflow(config, tmp_path / f"log{log_interval}", data, **settings)
        workflow.initialize()
        trainer = workflow.parser.get_parsed_content("train#trainer")
        counting = {"on": False, "reads": 0}
        reads: list[int] = []

        def start(_engine, counting=counting) -> None:
            counting.update(on=True, reads=0)

        def stop(_engine, counting=counting, reads=reads) -> None:
            counting["on"] = False
            reads.append(counting["reads"])

        trainer.add_event_handler(Events.ITERATION_STARTED, start)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, stop)  # after the config's handlers
        with monkeypatch.context() as patch:
            for name in READS:
                original = getattr(torch.Tensor, name)

                def counted(self, *args, _original=original, _counting=counting, **kwargs):
                    # Adam reads its step counters, which PyTorch keeps on the CPU even for GPU parameters
                    if _counting["on"] and f"torch{os.sep}optim{os.sep}" not in sys._getframe(1).f_code.co_filename:
                        _counting["reads"] += 1
                    return _original(self, *args, **kwargs)

                patch.setattr(torch.Tensor, name, counted)
            trainer.run()
        reads_per_iteration[log_interval] = reads
    # batch 4: MED-TEX trains on the 8 labelled and 4 unlabelled images, the teacher on the 8 labelled ones
    assert reads_per_iteration[1000] == [0] * (3 if config == "train.yaml" else 2)
    assert all(n > 0 for n in reads_per_iteration[1])  # the counter sees the progress bar and TensorBoard reading


def test_compiled_training_compiles_all_three_networks_and_saves_plain_weights(tmp_path, data, teacher_ckpt):
    """``compile: true`` compiles the explainer, the student and the teacher's network in place, an epoch runs on the
    loader's batches with the mask still read by its hook, and the saved weights load into the deployed network."""
    from torch._dynamo.utils import counters

    counters.clear()
    settings = {"teacher_ckpt": str(teacher_ckpt), "max_epochs": 1, "compile": True}
    workflow = _tiny_workflow("train.yaml", tmp_path, data, compile_kwargs={"backend": "eager"}, **settings)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    network = trainer.network
    assert network.student._compiled_call_impl is not None and trainer.teacher.network._compiled_call_impl is not None
    assert network.explainer._compiled_call_impl is not None
    workflow.run()
    assert counters["stats"]["unique_graphs"] >= 3  # TorchDynamo captured the three networks' graphs
    # the compiled explainer's masks, read by the trainer's hook (the output is decollated, one dict per image)
    mask = torch.stack([item["mask"] for item in trainer.state.output])
    assert mask.shape == (4, 1, 32, 32) and 0.0 <= float(mask.min()) < float(mask.max()) <= 1.0
    assert trainer.state.iteration == 3 and all(math.isfinite(v) for v in trainer.state.metrics.values())
    saved = torch.load(tmp_path / "models" / workflow.parser["ckpt_name"], map_location="cpu", weights_only=True)
    deployed = inference_network()
    deployed.load_state_dict(saved.get("model", saved))  # no "_orig_mod." keys from compiling
    assert saved.get("model", saved).keys() == deployed.state_dict().keys()


def test_compiled_teacher_training_saves_plain_weights(tmp_path, data):
    """train_teacher.yaml's ``compile: true`` is MONAI's option (the whole network compiled): the trainer runs a
    compiled wrapper and the saved weights are the plain network's."""
    from monai.networks.nets import DenseNet121
    from torch._dynamo.eval_frame import OptimizedModule

    settings = {"max_epochs": 1, "compile": True, "compile_kwargs": {"backend": "eager"}}
    workflow = _tiny_workflow("train_teacher.yaml", tmp_path, data, **settings)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert isinstance(trainer.network, OptimizedModule)
    workflow.run()
    assert trainer.state.iteration == 2
    saved = torch.load(tmp_path / "models" / "teacher.pt", map_location="cpu", weights_only=True)
    DenseNet121(spatial_dims=2, in_channels=3, out_channels=5).load_state_dict(saved)  # no "_orig_mod." keys
