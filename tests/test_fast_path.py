"""The training fast path's settings (docs/RESULTS.md, "Speed") change speed, not results: plain tensors from the loader
workers with MONAI's seeding kept, channels_last weights that save and load like contiguous ones."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset, MetaTensor
from monai.transforms import Compose, EnsureTyped, RandAffined

from bundle.data.loading import plain_tensor_worker_init
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
    parser.update({"teacher_ckpt": str(tmp_path / "unused.pt"), "device": "$torch.device('cpu')"})
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
