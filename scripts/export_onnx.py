"""Export the deployable explainer + student (``network_def``) to ONNX with both outputs and a dynamic batch axis.

    python scripts/export_onnx.py [--ckpt-file models/model.pt] [--filepath models/model.onnx] \
        [--config-file configs/inference.yaml [configs/datasets/demo_cxr.yaml ...]] [--image-size 224] \
        [--exporter dynamo|torchscript] [--no-verify]

The ONNX model has one input, ``image`` ``(batch, in_channels, image_size, image_size)`` (preprocessed as the
configs do), and two outputs, ``pred`` (class logits, ``(batch, num_classes)``) and ``saliency`` (the explainer's
mask in [0, 1], ``(batch, 1, image_size, image_size)``): the names of ``configs/metadata.json``.

MONAI's bundle exporter does the work: ``monai.bundle.onnx_export`` builds ``network_def`` from the configs, loads
the checkpoint into it and converts it with ``monai.networks.utils.convert_to_onnx``, which with ``--verify`` (the
default) also compares the ONNX outputs with PyTorch's on onnxruntime. This script only sets what the export
needs: ``network_def`` built as ``bundle.networks.ExplainingMedTex`` (the same module and weights, whose ``forward``
returns both outputs), the names, the dynamic batch axis and the input shape (``in_channels`` and ``image_size`` of
the configs unless ``--image-size`` is given). The same export as one MONAI command:

    python -m monai.bundle onnx_export network_def --filepath models/model.onnx --ckpt_file models/model.pt \
        --meta_file configs/metadata.json --config_file configs/inference.yaml \
        --network_def#_target_ bundle.networks.ExplainingMedTex --input_shape "[1, 3, 224, 224]" --use_trace True \
        --converter_kwargs "{'input_names': ['image'], 'output_names': ['pred', 'saliency'], \
            'dynamic_axes': {'image': {0: 'batch'}, 'pred': {0: 'batch'}, 'saliency': {0: 'batch'}}}"

``--exporter dynamo`` (default) is PyTorch's ``torch.export``-based exporter (needs ``onnxscript``);
``--exporter torchscript`` is the older TorchScript-based one (``dynamo=False``). Requirements: onnx, onnxruntime,
onnxscript (requirements-optional.txt).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from monai.bundle import ConfigParser, onnx_export

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

INPUT_NAMES = ["image"]
OUTPUT_NAMES = ["pred", "saliency"]
EXPLAINING_NETWORK = "bundle.networks.ExplainingMedTex"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--ckpt-file", default=str(ROOT / "models" / "model.pt"), help="explainer + student weights (state dict)"
    )
    parser.add_argument("--key-in-ckpt", default="", help="key of the weights in a checkpoint dict, e.g. model")
    parser.add_argument("--filepath", default=str(ROOT / "models" / "model.onnx"), help="ONNX file to write")
    parser.add_argument(
        "--config-file",
        nargs="+",
        default=[str(ROOT / "configs" / "inference.yaml")],
        help="bundle configs, merged in order",
    )
    parser.add_argument("--meta-file", default=str(ROOT / "configs" / "metadata.json"))
    parser.add_argument("--image-size", type=int, help="input height and width (default: the configs' image_size)")
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo")
    parser.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="skip the onnxruntime check")
    return parser.parse_args(argv)


def input_shape(config_files: Sequence[str], image_size: int | None = None) -> list[int]:
    """``[1, in_channels, image_size, image_size]`` from the configs (``image_size`` overrides theirs)."""
    parser = ConfigParser()
    parser.read_config(list(config_files))
    size = image_size or int(parser.get_parsed_content("image_size"))
    return [1, int(parser.get_parsed_content("in_channels")), size, size]


def export(
    ckpt_file: str,
    filepath: str,
    config_files: Sequence[str] = (str(ROOT / "configs" / "inference.yaml"),),
    meta_file: str | None = str(ROOT / "configs" / "metadata.json"),
    image_size: int | None = None,
    exporter: str = "dynamo",
    verify: bool = True,
    key_in_ckpt: str = "",
    opset: int | None = None,
) -> list[int]:
    """Export ``network_def`` with its weights to ``filepath``; returns the input shape used for the export."""
    shape = input_shape(config_files, image_size)
    Path(filepath).parent.mkdir(parents=True, exist_ok=True)
    onnx_export(
        net_id="network_def",
        filepath=filepath,
        ckpt_file=ckpt_file,
        meta_file=meta_file,
        config_file=list(config_files),
        key_in_ckpt=key_in_ckpt,
        use_trace=True,  # torch.onnx.export traces the module itself (both exporters); kwargs reach it
        input_shape=shape,
        converter_kwargs={
            "input_names": INPUT_NAMES,
            "output_names": OUTPUT_NAMES,
            "dynamic_axes": {name: {0: "batch"} for name in INPUT_NAMES + OUTPUT_NAMES},
            "opset_version": opset,
            "dynamo": exporter == "dynamo",
            "verify": verify,
            "use_ort": True,
            "device": "cpu",
            "rtol": 1e-4,
            "atol": 1e-5,  # masks near 0: a purely relative tolerance would fail on float rounding
        },
        **{"network_def#_target_": EXPLAINING_NETWORK},
        **({"image_size": image_size} if image_size else {}),  # the network for that size (the explainer's scale)
    )
    return shape


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    shape = export(
        args.ckpt_file,
        args.filepath,
        args.config_file,
        args.meta_file,
        args.image_size,
        args.exporter,
        args.verify,
        args.key_in_ckpt,
        args.opset,
    )
    print(f"ONNX model: {args.filepath} (input image {['batch', *shape[1:]]}, outputs {OUTPUT_NAMES})")


if __name__ == "__main__":
    main()
