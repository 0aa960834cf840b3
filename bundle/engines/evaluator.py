"""Evaluation/inference on MONAI's SupervisedEvaluator that keeps the explainer's saliency mask with the logits."""

from __future__ import annotations

from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

SALIENCY = "saliency"  # the explainer's mask; "mask" is the datalist's ground-truth lesion mask
LESION_MASK = "mask"


class ExplainingEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` whose iteration runs ``network.explain(inputs)`` once and keeps both of its outputs.

    ``engine.state.output`` holds ``image``, ``label`` (``None`` without labels), ``pred`` (logits ``(B, C)``,
    activated by the postprocessing), ``saliency`` (``(B, 1, H, W)`` in [0, 1]) and, when the batch carries the
    datalist's ground-truth ``mask``, that mask too (for localisation metrics). Only the iteration body is
    replaced, because ``SupervisedEvaluator`` stores only ``inferer(inputs, network)`` (the logits) and calling
    the network a second time for the mask would double the cost. Everything else is MONAI's: the eval mode
    (``mode``: ``eval()`` plus ``torch.no_grad``; not ``torch.inference_mode``, whose tensors postprocessing and
    handlers could not update in place), AMP, the events (``FORWARD_COMPLETED``, ``MODEL_COMPLETED``),
    decollation, postprocessing, metrics and handlers.

    ``explain`` goes through the configured ``inferer`` (``SimpleInferer``: a plain call), which must return the
    ``(logits, mask)`` pair unchanged. Arguments are those of ``monai.engines.SupervisedEvaluator``. A network
    without ``explain`` (a teacher, any plain classifier) is evaluated as ``SupervisedEvaluator`` would, with no
    ``saliency`` in the output, so one evaluation config serves every model.

    ``compile``: run ``torch.compile(network.explain, **compile_kwargs)`` (or of the network without ``explain``),
    with MetaTensor inputs passed as plain tensors, as MONAI's own ``compile`` option does. Compiled here rather than
    by ``SupervisedEvaluator``, which compiles only ``forward``, not the ``explain`` this evaluator calls. It pays
    for long runs: compiling takes minutes, once per input shape (docs/PERFORMANCE.md).
    """

    def __init__(
        self,
        device: str | torch.device,
        val_data_loader: Any,
        network: torch.nn.Module,
        compile: bool = False,
        compile_kwargs: dict | None = None,
        **kwargs: Any,
    ):
        # torch.device(device): as MONAI's Workflow converts a str (SupervisedEvaluator's annotation says torch.device)
        super().__init__(device=torch.device(device), val_data_loader=val_data_loader, network=network, **kwargs)
        explain = getattr(network, "explain", None)
        self.forward = explain if callable(explain) else network
        if compile:
            self.forward = torch.compile(self.forward, **(compile_kwargs or {}))
        self.compiled = bool(compile)

    # MONAI's Workflow runs self._iteration as Ignite's process function, which gets the engine itself: always an
    # ExplainingEvaluator, narrower than the SupervisedEvaluator that MONAI's signature names
    def _iteration(  # type: ignore[override]
        self, engine: ExplainingEvaluator, batchdata: dict[str, torch.Tensor]
    ) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        if len(batch) == 2:
            inputs, targets = batch
            args: tuple = ()
            kwargs: dict = {}
        else:
            inputs, targets, args, kwargs = batch
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        if isinstance(batchdata, dict) and LESION_MASK in batchdata:
            engine.state.output[LESION_MASK] = batchdata[LESION_MASK].to(engine.state.device)
        explain = callable(getattr(engine.network, "explain", None))
        if engine.compiled and isinstance(inputs, MetaTensor):  # a tensor subclass would break the compiled graph
            inputs = inputs.as_tensor()
        with engine.mode(engine.network):
            if engine.amp:
                with torch.autocast("cuda", **engine.amp_kwargs):
                    result = engine.inferer(inputs, engine.forward, *args, **kwargs)
            else:
                result = engine.inferer(inputs, engine.forward, *args, **kwargs)
        if not explain:
            engine.state.output[Keys.PRED] = result
        elif isinstance(result, (tuple, list)) and len(result) == 2:
            engine.state.output[Keys.PRED], engine.state.output[SALIENCY] = result
        else:
            raise TypeError(f"network.explain through the inferer must return (logits, mask), got {type(result)}")
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
