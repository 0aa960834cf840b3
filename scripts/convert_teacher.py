r"""Convert a pickled whole model (or a checkpoint holding one) into a plain state dict the bundle can load.

    python scripts/convert_teacher.py --input ~/.torchxrayvision/models_data/FILE.pt --output models/xrv_densenet121.pt

The bundle never unpickles model objects: loading one runs code from the file (``torch.load(weights_only=False)``).
Run this once, yourself, on a file you trust, in the environment of the library that made it (torchxrayvision's
models unpickle only where torchxrayvision is installed): it needs nothing but PyTorch, not this bundle. It writes
``torch.save(model.state_dict())`` and prints what the model says about its outputs where it has the attributes
torchxrayvision's models carry (``targets`` / ``pathologies`` for the names, blank where not trained; ``op_threshs``
for the operating thresholds), as config lines for the teacher overlay (docs/TEACHERS.md).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

NAME_ATTRIBUTES = ("targets", "pathologies", "classes", "class_names")
THRESHOLD_ATTRIBUTES = ("op_threshs",)
WRAPPING_KEYS = ("model", "network", "net", "state_dict", "model_state_dict")


def find_state_dict(obj: Any, attribute: str | None = None) -> tuple[dict[str, torch.Tensor], Any]:
    """The state dict in ``obj`` (a module, a dict of tensors, or a dict holding either) and the module it came from."""
    if attribute:
        for part in attribute.split("."):
            obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    if isinstance(obj, torch.nn.Module):
        return {k: v.detach().cpu() for k, v in obj.state_dict().items()}, obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {k: v.detach().cpu() for k, v in obj.items()}, None
    if isinstance(obj, dict):
        for key in WRAPPING_KEYS:
            if key in obj:
                return find_state_dict(obj[key])
    raise SystemExit(
        f"no model or state dict found in a {type(obj).__name__}"
        + (f" with keys {list(obj)[:10]}" if isinstance(obj, dict) else "")
        + "; name where it is with --attribute"
    )


def describe_outputs(model: Any) -> list[str]:
    """Config lines for the names and thresholds the model object carries, if any."""
    lines = []
    for attribute in NAME_ATTRIBUTES:
        names = getattr(model, attribute, None)
        if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
            lines.append(f"teacher_output_names: {[str(n) for n in names]}  # '' = not trained for this output")
            break
    for attribute in THRESHOLD_ATTRIBUTES:
        thresholds = getattr(model, attribute, None)
        if thresholds is not None:
            values = [float(v) for v in (thresholds.tolist() if hasattr(thresholds, "tolist") else thresholds)]
            shown = [None if math.isnan(v) else float(f"{v:.7g}") for v in values]  # float32 holds ~7 digits
            lines.append(f"teacher_thresholds: {shown}  # only for teacher_output: calibrated")
            break
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, required=True, help="the pickled model or checkpoint (trusted!)")
    parser.add_argument("--output", type=Path, required=True, help="where to write the plain state dict")
    parser.add_argument("--attribute", help="where the model is inside the file, dots for nesting (default: found)")
    args = parser.parse_args(argv)
    if not args.input.is_file():
        raise SystemExit(f"{args.input}: no such file")
    try:
        obj = torch.jit.load(str(args.input), map_location="cpu")
    except Exception:  # not TorchScript: a pickle
        print(f"unpickling {args.input} (this runs code from the file: only for files you trust)", file=sys.stderr)
        obj = torch.load(args.input, map_location="cpu", weights_only=False)
    state, model = find_state_dict(obj, args.attribute)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.output)
    # the bundle reads it back with weights_only=True: check here that it can
    torch.load(args.output, map_location="cpu", weights_only=True)
    keys = list(state)
    print(f"wrote {args.output}: {len(keys)} tensors ({keys[0]} ... {keys[-1]})")
    lines = describe_outputs(model) if model is not None else []
    if lines:
        print("for the teacher overlay (configs/teachers/*.yaml):")
        print("\n".join("  " + line for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
