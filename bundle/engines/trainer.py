"""MED-TEX training on MONAI's SupervisedTrainer: one iteration = teacher pass, explainer+student pass, loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.distributed as dist
from ignite.metrics import Average, Metric
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.transforms import Decollated
from monai.utils import CommonKeys as Keys
from torch.nn.parallel import DistributedDataParallel

from bundle.engines.precompute import TEACHER_EVIDENCE, TEACHER_FEATURES, TEACHER_LOGITS
from bundle.losses.medtex import MedTexLoss
from bundle.networks.features import FeatureRecorder
from bundle.networks.medtex import MedTex
from bundle.networks.teacher import FrozenTeacher

MASK = "mask"
LOSS_TERMS = ("ce", "kd", "vid", "mask", "fidelity", "deletion", "evidence")


class DecollateWithoutSync:
    """Mixin for MONAI trainers: decollate each iteration's batch and output without waiting for the GPU.

    MONAI's trainers decollate with ``Decollated(detach=True)``, which turns every 0-d tensor (the loss, each loss
    term, each image's label) into a Python number with ``.item()``: on a GPU, a CPU-GPU synchronisation in every
    iteration, whether or not anything reads the number. Detaching first and decollating with ``detach=False`` gives
    the same items, with the numbers left as 0-d tensors on their device; handlers read them (and synchronise) only
    when they log (``log_interval`` in the training configs). Overrides ``Workflow._register_decollate``, which
    ``Workflow.__init__`` calls when ``decollate`` is true.
    """

    def _register_decollate(self) -> None:
        decollate = Decollated(keys=None, detach=False)

        @self.on(IterationEvents.MODEL_COMPLETED)  # type: ignore[attr-defined]
        def _decollate_data(engine: Any) -> None:
            if isinstance(engine.state.batch, (list, dict)):
                engine.state.batch = decollate(detached(engine.state.batch))
            if isinstance(engine.state.output, (list, dict)):
                engine.state.output = decollate(detached(engine.state.output))


def detached(data: Any) -> Any:
    """``data`` with every tensor in it (dicts and lists followed) detached from the autograd graph."""
    if isinstance(data, torch.Tensor):
        return data.detach()
    if isinstance(data, dict):
        return {key: detached(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(detached(value) for value in data)
    return data


class TeacherTrainer(DecollateWithoutSync, SupervisedTrainer):
    """MONAI's ``SupervisedTrainer`` (configs/train_teacher.yaml) without its per-iteration CPU-GPU synchronisation."""


class MedTexTrainer(DecollateWithoutSync, SupervisedTrainer):
    """``SupervisedTrainer`` whose iteration distils a frozen teacher into ``network`` (a ``MedTex`` module).

    ``network`` may also be a plain classifier without ``explain`` (the transfer baseline that fine-tunes the
    teacher's architecture): it then sees the whole image, and is its own student for VID. It may be wrapped in
    ``DistributedDataParallel`` (configs/multi_gpu_train.yaml): the forward then goes through the wrapper, which
    synchronises the network's gradients, and the gradients of the loss's own parameters (VID regressors) are
    averaged over the processes here.

    Per iteration: the teacher runs once under ``torch.inference_mode`` for logits and the configured features
    (or not at all, when the batch carries them: ``teacher_logits`` and ``teacher_features`` from
    ``bundle.engines.precompute.TeacherOutputsd``, computed once per image while the data were cached);
    ``inferer(image, network)`` runs the explainer, which masks the image, and the student, which classifies the
    masked image (the mask is read by a forward hook on ``network.explainer``); with a fidelity weight the teacher
    also classifies the masked image (its weights frozen, gradients flowing to the mask); with an evidence weight
    the teacher's pass on the image runs with input gradients instead, and its backward gives the input gradient
    (``MedTexLoss.evidence_of``), unless the batch carries the teacher's occlusion maps (``teacher_evidence``,
    ``TeacherOcclusiond``: evidence_occlusion.yaml);
    ``MedTexLoss`` combines the terms.
    ``engine.state.output`` holds ``image``, ``label``, ``pred`` (student logits), ``mask``, ``loss`` (the total,
    as MONAI's handlers expect) and ``loss_ce``, ``loss_kd``, ``loss_vid``, ``loss_mask``, ``loss_fidelity``,
    ``loss_deletion``, ``loss_evidence``.
    Everything else (AMP, handlers, metrics, events) is MONAI's; only the iteration body is replaced, because
    ``SupervisedTrainer`` computes ``loss_function(pred, label)`` and the MED-TEX loss needs more than that.

    ``compile``: ``torch.compile(**compile_kwargs)`` in place (``nn.Module.compile``: the modules, their forward
    hooks and their state dicts stay the same) on the explainer, the student (or a plain classifier) and the teacher's
    network, whose pass on the masked image, with its backward, is the larger part of an iteration. The explainer
    compiles since its U-Net pads up-sampled maps only where their size needs it (``bundle.networks.explainer``: MONAI's
    padding by zero pixels has a backward that PyTorch 2.13's inductor fails on for channels_last maps). Not MONAI's
    own ``compile``, which compiles the whole network as one module. The compiled modules need plain tensors
    (a MetaTensor would break their graphs): configs/train.yaml's training batches are (``plain_tensors``), and its
    validation, which runs the same student, gets them from ``bundle.data.loading.plain_tensor_batch``.

    Args:
        teacher: the frozen teacher; ``None`` is allowed only when the loss does not need it (KD and VID off).
        student_feature_layers: student layers (names in ``network.student``) paired with the teacher's
            ``feature_layers`` for VID, in the same order.
        compile, compile_kwargs: see above.
        other arguments: as ``monai.engines.SupervisedTrainer``.
    """

    loss_function: MedTexLoss  # narrower than SupervisedTrainer's Callable: __init__ takes only a MedTexLoss

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Any,
        network: MedTex | torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: MedTexLoss,
        teacher: FrozenTeacher | None = None,
        student_feature_layers: Sequence[str] = (),
        compile: bool = False,
        compile_kwargs: dict | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            **kwargs,
        )
        if loss_function.needs_teacher and teacher is None:
            raise ValueError("the loss has KD or VID weights > 0 but no teacher was given")
        self.teacher = teacher.to(device) if teacher is not None and loss_function.needs_teacher else None
        if self.teacher is not None and not getattr(self.teacher, "differentiable", True):
            if any(loss_function.weights[name] > 0 for name in ("fidelity", "deletion", "evidence")):
                raise ValueError(
                    "fidelity_weight > 0 needs gradients through the teacher (so do deletion_weight and evidence_weight"
                    " > 0), and an ONNX teacher has none: set them to 0 (KD only) or give the teacher as a state dict "
                    "or TorchScript"
                )
        use_vid = loss_function.weights["vid"] > 0
        if use_vid and self.teacher is not None and self.teacher.recorder is None:
            raise ValueError("vid_weight > 0 needs teacher feature_layers")
        model = unwrap(network)
        # the explainer's output is the mask: recorded during the forward, which may go through a DDP wrapper
        self.mask_recorder = (
            FeatureRecorder(model, ["explainer"]) if getattr(model, "explainer", None) is not None else None
        )
        # a plain classifier (transfer baseline with the teacher's architecture) is its own student
        student = getattr(model, "student", model)
        self.student_features = (
            FeatureRecorder(student, student_feature_layers) if use_vid and student_feature_layers else None
        )
        if use_vid and self.student_features is None:
            raise ValueError("vid_weight > 0 needs student_feature_layers")
        self.compile = compile
        if compile:
            to_compile = {"explainer": getattr(model, "explainer", None), "student": student}
            if self.teacher is not None:
                to_compile["teacher"] = self.teacher.network
            compiled = {name: module for name, module in to_compile.items() if module is not None}
            for module in compiled.values():
                module.compile(**(compile_kwargs or {}))
            self.logger.info(f"torch.compile({compile_kwargs or ''}) of the {', the '.join(compiled)}")

    # MONAI's Workflow runs self._iteration as Ignite's process function, which gets the engine itself: always a
    # MedTexTrainer, narrower than the SupervisedTrainer that MONAI's signature names
    def _iteration(self, engine: MedTexTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets = batch[0], batch[1]
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}

        teacher_logits, teacher_features, evidence = None, [], None
        weights = engine.loss_function.weights
        # the evidence term's target: the occlusion maps the batch carries (evidence_occlusion.yaml), else the
        # teacher's input gradient; without an explainer there is no mask to compare it with
        wants_evidence = weights["evidence"] > 0 and engine.teacher is not None and engine.mask_recorder is not None
        if wants_evidence and TEACHER_EVIDENCE in batchdata:
            evidence = batchdata[TEACHER_EVIDENCE].to(engine.state.device, torch.float32, engine.non_blocking)
        if TEACHER_LOGITS in batchdata:  # computed once per image while the data were cached (precompute_teacher)
            to_device = {"device": engine.state.device, "dtype": torch.float32, "non_blocking": engine.non_blocking}
            teacher_logits = batchdata[TEACHER_LOGITS].to(**to_device)
            teacher_features = [f.to(**to_device) for f in batchdata[TEACHER_FEATURES]]
        elif engine.teacher is not None and wants_evidence and evidence is None:
            # one pass with input gradients gives the logits and features for KD and VID and the gradient evidence
            images = inputs.detach().float().requires_grad_(True)
            with torch.enable_grad():
                teacher_logits, teacher_features = engine.teacher(images)
                evidence = engine.loss_function.evidence_of(teacher_logits, images)
            teacher_logits = teacher_logits.detach()
            teacher_features = [f.detach() for f in teacher_features]
        elif engine.teacher is not None:
            with torch.inference_mode():
                teacher_logits, teacher_features = engine.teacher(inputs)
            # inference tensors cannot be saved for backward; clones made outside inference mode can
            teacher_logits = teacher_logits.clone()
            teacher_features = [f.clone() for f in teacher_features]
        if wants_evidence and evidence is None:  # the teacher's outputs came with the batch: a pass for the gradient
            teacher = cast(FrozenTeacher, engine.teacher)
            evidence = engine.loss_function.teacher_evidence(lambda x: teacher(x)[0], inputs)

        def compute_loss() -> dict[str, torch.Tensor]:
            logits = engine.inferer(inputs, engine.network)
            if engine.mask_recorder is not None:
                mask = engine.mask_recorder.features[0]
                engine.mask_recorder.clear()
            else:  # a plain classifier, or MedTex without an explainer, sees the whole image
                mask = torch.ones_like(inputs[:, :1])
            engine.state.output[Keys.PRED] = logits
            engine.state.output[MASK] = mask
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            student_features = engine.student_features.features if engine.student_features is not None else []
            teacher_masked_logits = teacher_deleted_logits = None
            if engine.teacher is not None and engine.mask_recorder is not None:
                # after the student's pass, whose features were read above; the teacher's hooks record again.
                # Without an explainer x' = x: fidelity is zero and deletion meaningless, so no more teacher passes.
                model = cast(MedTex, unwrap(engine.network))  # has an explainer, so a MedTex (or one like it)
                if weights["fidelity"] > 0:
                    teacher_masked_logits = engine.teacher(model.apply_mask(inputs, mask))[0]
                if weights["deletion"] > 0:
                    teacher_deleted_logits = engine.teacher(model.remove_region(inputs, mask))[0]
            terms = engine.loss_function(
                logits,
                targets,
                teacher_logits,
                mask,
                student_features,
                teacher_features,
                teacher_masked_logits,
                teacher_deleted_logits,
                evidence,
            )
            engine.state.output[Keys.LOSS] = terms["loss"]
            for name in LOSS_TERMS:
                engine.state.output[f"loss_{name}"] = terms[name].detach()
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
            return terms

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                terms = compute_loss()
            engine.scaler.scale(terms["loss"]).backward()
            engine.average_loss_gradients()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            terms = compute_loss()
            terms["loss"].backward()
            engine.average_loss_gradients()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output

    def average_loss_gradients(self) -> None:
        """Average the gradients of the loss's parameters (VID regressors) over the processes of a DDP run.

        DDP synchronises only the wrapped network's gradients; the loss is not a module DDP could wrap (it has no
        parameters when VID is off, and its weights are read as attributes), so its few gradients are averaged here.
        Every process runs the same code path, so the same gradients exist everywhere.
        """
        if not isinstance(self.network, DistributedDataParallel) or not dist.is_initialized():
            return
        world_size = dist.get_world_size()
        for parameter in self.loss_function.parameters():
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad)
                parameter.grad.div_(world_size)


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` or ``DataParallel`` wrapper, else ``network`` itself."""
    wrappers = (DistributedDataParallel, torch.nn.DataParallel)
    return network.module if isinstance(network, wrappers) else network


def loss_term_metrics(device: str | torch.device = "cpu") -> dict[str, Metric]:
    """Ignite metrics for the trainer: the epoch mean of the total loss and of each term, as ``epoch_loss``,
    ``epoch_loss_ce`` ... in ``engine.state.metrics`` (averaged over processes in DDP runs), where every
    epoch-level logger finds them: StatsHandler, TensorBoard, and MLflow (``--tracking mlflow``). The first is the
    trainer's key metric (``train#key_metric``). The sums accumulate on ``device`` (the training device): Ignite's
    default, the CPU, would copy every iteration's loss off the GPU, a synchronisation per iteration.
    """
    keys = (Keys.LOSS,) + tuple(f"loss_{name}" for name in LOSS_TERMS)
    return {f"epoch_{key}": Average(output_transform=first_value(key), device=device) for key in keys}


def first_value(key: str) -> Any:
    """Output transform: ``key`` of a (decollated) engine output; scalars are replicated into every item."""

    def transform(output: Any) -> Any:
        return (output[0] if isinstance(output, (list, tuple)) else output)[key]

    return transform


def lower_is_better(current: float, best: float) -> bool:
    """``metric_cmp_fn`` for a loss as the key metric (MONAI's default counts higher values as better)."""
    return current < best


def loss_value(output: Any) -> float:
    """The total loss from a (decollated) trainer output, for Stats/TensorBoard handlers of a plain trainer."""
    return loss_terms(output)[Keys.LOSS]


def loss_terms(output: Any) -> dict[str, float]:
    """The total loss and each term from a (decollated) MED-TEX trainer output, for Stats/TensorBoard handlers."""
    first = output[0] if isinstance(output, (list, tuple)) else output
    keys = (Keys.LOSS,) + tuple(f"loss_{name}" for name in LOSS_TERMS)
    return {key: float(first[key]) for key in keys if key in first}
