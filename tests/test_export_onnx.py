"""ONNX export of explainer + student (scripts/export_onnx.py, on MONAI's onnx_export): onnxruntime gives the eager
logits and masks, for any batch size, with both PyTorch exporters."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from tests.conftest import inference_network
from tests.forked import run_python

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 64


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_onnxruntime_gives_the_eager_logits_and_masks(tmp_path, model_ckpt, exporter):
    exported = tmp_path / "model.onnx"
    command = ["scripts/export_onnx.py", "--ckpt-file", str(model_ckpt), "--filepath", str(exported)]
    command += ["--image-size", str(IMAGE_SIZE), "--exporter", exporter]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    result = run_python(command, cwd=ROOT, env=env)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"

    model = onnx.load(str(exported))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["pred", "saliency"]  # the names of configs/metadata.json
    for value in [*model.graph.input, *model.graph.output]:  # the batch axis is symbolic, the others fixed
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param and not dims[0].HasField("dim_value"), value.name
        assert all(d.HasField("dim_value") for d in dims[1:]), value.name

    eager = inference_network().eval()
    eager.load_state_dict(torch.load(model_ckpt, weights_only=True))
    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch in (1, 3):
        image = rng.normal(size=(batch, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
        logits, mask = session.run(["pred", "saliency"], {"image": image})
        with torch.no_grad():
            expected_logits, expected_mask = eager.explain(torch.from_numpy(image))
        assert logits.shape == (batch, 5) and mask.shape == (batch, 1, IMAGE_SIZE, IMAGE_SIZE)
        np.testing.assert_allclose(logits, expected_logits.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(mask, expected_mask.numpy(), rtol=1e-4, atol=1e-5)
        assert mask.min() < 0.3 and mask.max() > 0.7  # a mask with content, not a constant
