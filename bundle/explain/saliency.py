"""Saliency maps behind one interface: the MED-TEX explainer's mask and MONAI's post-hoc methods on a classifier.

    method = make_saliency("gradcam", teacher)          # or "medtex" with a bundle.networks.MedTex
    maps = method(images)                               # (B, 1, H, W) in [0, 1], for the predicted class

Methods (:data:`SALIENCY_METHODS`):

- ``medtex``: the explainer's mask from ``MedTex.explain`` (class-agnostic: ``class_index`` is ignored).
- ``gradcam`` / ``gradcampp``: ``monai.visualize.GradCAM`` / ``GradCAMpp`` at ``target_layer`` (default: see
  :func:`default_target_layer`), bilinearly upsampled to the input size.
- ``occlusion``: ``monai.visualize.OcclusionSensitivity``; the map is the drop of the class probability when a patch
  around the pixel is occluded, ``p(x) - p(occluded x)``.
- ``vanillagrad`` / ``smoothgrad``: ``monai.visualize.VanillaGrad`` / ``SmoothGrad``; ``|gradient|``, maximum over
  the image channels.

Normalisation: the post-hoc maps have arbitrary scales, so each is min-max normalised per image to [0, 1] (a
constant map becomes all zeros: it singles nothing out). The MED-TEX mask is already in [0, 1] and is what the
student's input is built from, so it is returned unchanged; ``normalize=True`` rescales it like the others.

MONAI quirks handled here: ``ModelWithHooks.class_score`` takes ``logits[:, class_idx]``, which for a batch with one
class per image is a ``(B, B)`` block whose sum mixes the classes of all images (and breaks GradCAM++'s
broadcasting for ``B > 1``; MONAI PR #8573 is open); CAM's default ``postprocessing`` maps (min, max) to (1, 0),
flipping the map; ``OcclusionSensitivity`` picks softmax or sigmoid from the number of *image* channels; and
``VanillaGrad``/``SmoothGrad``/``OcclusionSensitivity`` accept one image at a time (they are looped over images).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Optional

import torch
from monai.data import MetaTensor
from monai.networks.utils import eval_mode
from monai.visualize import GradCAM, GradCAMpp, ModelWithHooks, OcclusionSensitivity, SmoothGrad, VanillaGrad
from torch import nn

from bundle.explain.faithfulness import ClassIndex, class_indices, classifier_logits, probabilities
from bundle.networks.teacher import FrozenTeacher

SALIENCY_METHODS = ("medtex", "gradcam", "gradcampp", "occlusion", "vanillagrad", "smoothgrad")
# GradCAM layers by architecture: the last feature maps before global pooling
DEFAULT_TARGET_LAYERS = ("class_layers.relu", "layer4")  # MONAI DenseNet*, MONAI ResNet*
CONSTANT_TOLERANCE = 1e-5  # a map whose range is below this fraction of its magnitude is constant


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of ``(B, 1, H, W)`` to [0, 1]; constant maps become zeros.

    "Constant" allows for rounding: e.g. GradCAM on a 1x1 feature map (DenseNet121 at 32 px) upsampled to the input
    differs by a few ulps, which plain min-max scaling would blow up into noise over [0, 1].
    """
    flat = maps.flatten(1)
    low, high = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    span = high - low
    varies = span > CONSTANT_TOLERANCE * torch.maximum(low.abs(), high.abs())
    scaled = torch.where(varies, (flat - low) / span.clamp(min=torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return scaled.view_as(maps)


def default_target_layer(model: nn.Module) -> str:
    """GradCAM's layer: ``class_layers.relu`` (MONAI DenseNet: the final normalised, rectified features),
    ``layer4`` (MONAI ResNet), else the last ``Conv2d``."""
    names = [name for name, _ in model.named_modules()]
    for name in DEFAULT_TARGET_LAYERS:
        if name in names:
            return name
    convolutions = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    if not convolutions:
        raise ValueError("no default GradCAM layer for this model: name one with target_layer=")
    return convolutions[-1]


class SaliencyMethod:
    """``method(images, class_index=None) -> maps``: maps ``(B, 1, H, W)`` in [0, 1] at the input resolution.

    ``images`` are normalised as the model expects them; ``class_index`` (an int or a ``(B,)`` tensor) picks the
    class to explain, ``None`` the predicted one (the largest logit; for multi-label tasks the most probable
    finding). Subclasses implement :meth:`raw_maps`.
    """

    name = ""

    def __init__(self, model: nn.Module, normalize: bool = True) -> None:
        self.model = model
        self.normalize = normalize

    def __call__(self, images: torch.Tensor, class_index: ClassIndex = None) -> torch.Tensor:
        maps = self.raw_maps(images, class_index).detach().float()
        if maps.shape != (images.shape[0], 1, *images.shape[2:]):
            raise RuntimeError(f"{self.name}: map {tuple(maps.shape)} for images {tuple(images.shape)}")
        return normalize_maps(maps) if self.normalize else maps.clamp(0.0, 1.0)

    def raw_maps(self, images: torch.Tensor, class_index: ClassIndex) -> torch.Tensor:
        raise NotImplementedError

    def classes(self, images: torch.Tensor, class_index: ClassIndex) -> torch.Tensor:
        """The class to explain per image ``(B,)``."""
        if class_index is not None:
            return class_indices(images.new_zeros(images.shape[0], 1), class_index)
        with eval_mode(self.model):
            return class_indices(classifier_logits(self.model, images))


class MedTexSaliency(SaliencyMethod):
    """The MED-TEX explainer's mask (``network.explain(x) -> (logits, mask)``); no teacher needed."""

    name = "medtex"

    def __init__(self, model: nn.Module, normalize: bool = False) -> None:
        if not callable(getattr(model, "explain", None)):
            raise TypeError(f"'medtex' needs a network with explain(x) -> (logits, mask), got {type(model).__name__}")
        super().__init__(model, normalize)

    def raw_maps(self, images: torch.Tensor, class_index: ClassIndex) -> torch.Tensor:
        # checked callable in __init__; nn.Module's __getattr__ types it Tensor | Module
        explain: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] = getattr(self.model, "explain")
        with eval_mode(self.model):
            return explain(images)[1]


class _PerImageClassScores(ModelWithHooks):
    """MONAI's ``ModelWithHooks`` scoring each image's own class: ``logits[b, class_idx[b]]``, shaped ``(B, 1, 1, 1)``
    so that GradCAM++'s ``score.exp() * grad`` broadcasts over ``(B, C, h, w)`` gradients."""

    def class_score(self, logits: torch.Tensor, class_idx: Any) -> torch.Tensor:
        index = class_indices(logits, class_idx)
        return logits.gather(1, index[:, None]).view(-1, 1, 1, 1)


class GradCAMSaliency(SaliencyMethod):
    """``monai.visualize.GradCAM`` (or ``GradCAMpp`` with ``plus_plus``) at ``target_layer`` of a classifier."""

    name = "gradcam"

    def __init__(
        self, model: nn.Module, target_layer: Optional[str] = None, plus_plus: bool = False, normalize: bool = True
    ) -> None:
        super().__init__(model, normalize)
        self.name = "gradcampp" if plus_plus else "gradcam"
        self.target_layer = target_layer or default_target_layer(model)
        if self.target_layer not in dict(model.named_modules()):
            raise ValueError(f"target_layer {self.target_layer!r} is not a module of {type(model).__name__}")
        hooked = _PerImageClassScores(model, self.target_layer, register_forward=True, register_backward=True)
        cam = GradCAMpp if plus_plus else GradCAM
        # identity postprocessing: MONAI's default normaliser flips the map; normalisation happens in __call__
        # CAMBase takes a ModelWithHooks as it is (and wraps anything else in one); its annotation says nn.Module
        self.cam = cam(
            nn_module=hooked, target_layers=self.target_layer, postprocessing=lambda m: m  # type: ignore[arg-type]
        )

    def raw_maps(self, images: torch.Tensor, class_index: ClassIndex) -> torch.Tensor:
        index = self.classes(images, class_index)
        # the input requires grad so that gradients reach the target layer of a frozen (requires_grad=False) teacher
        inputs = images.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            return self.cam(inputs, class_idx=index)


class OcclusionSaliency(SaliencyMethod):
    """``monai.visualize.OcclusionSensitivity``: ``p(x) - p(x with a patch occluded)`` for the explained class.

    Args:
        task: ``multiclass`` (softmax) or ``multilabel`` (sigmoid) probabilities.
        mask_size, overlap, mode, n_batch: as ``OcclusionSensitivity`` (``mode="gaussian"`` fades patches
            towards 0, the mean intensity after normalisation).
    """

    name = "occlusion"

    def __init__(
        self,
        model: nn.Module,
        task: str = "multiclass",
        mask_size: int = 16,
        overlap: float = 0.6,
        mode: str | float = "gaussian",
        n_batch: int = 16,
        normalize: bool = True,
    ) -> None:
        super().__init__(model, normalize)
        self.task = task
        probabilities(torch.zeros(1, 1), task)  # validates the task now rather than on the first image
        self.occlusion = OcclusionSensitivity(
            model,
            mask_size=mask_size,
            n_batch=n_batch,
            verbose=False,
            mode=mode,
            overlap=overlap,
            activate=lambda logits: probabilities(logits, self.task),  # by task, not by image channels
        )

    def raw_maps(self, images: torch.Tensor, class_index: ClassIndex) -> torch.Tensor:
        index = self.classes(images, class_index)
        with eval_mode(self.model):
            full = probabilities(classifier_logits(self.model, images), self.task)
        maps = []
        for i in range(images.shape[0]):
            with warnings.catch_warnings():  # MONAI indexes with a list of slices: a deprecation warning per patch
                warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
                occluded, _ = self.occlusion(images[i : i + 1])
            occluded = occluded.as_tensor() if isinstance(occluded, MetaTensor) else occluded
            maps.append(full[i, index[i]] - occluded[:, index[i] : index[i] + 1])
        return torch.cat(maps)


class GradientSaliency(SaliencyMethod):
    """``monai.visualize.VanillaGrad`` or, with ``smooth``, ``SmoothGrad``: ``|d logit / d x|``, max over channels.

    Args:
        n_samples, stdev_spread, magnitude: as ``SmoothGrad`` (noise std = ``stdev_spread * (max - min)`` of the
            image; ``magnitude`` averages squared gradients).
    """

    name = "vanillagrad"

    def __init__(
        self,
        model: nn.Module,
        smooth: bool = False,
        n_samples: int = 25,
        stdev_spread: float = 0.15,
        magnitude: bool = True,
        normalize: bool = True,
    ) -> None:
        super().__init__(model, normalize)
        self.name = "smoothgrad" if smooth else "vanillagrad"
        if smooth:
            self.gradient: VanillaGrad = SmoothGrad(
                model, n_samples=n_samples, stdev_spread=stdev_spread, magnitude=magnitude, verbose=False
            )
        else:
            self.gradient = VanillaGrad(model)

    def raw_maps(self, images: torch.Tensor, class_index: ClassIndex) -> torch.Tensor:
        index = self.classes(images, class_index)
        maps = []
        with torch.enable_grad():
            for i in range(images.shape[0]):  # MONAI's gradient methods take one image at a time
                gradient = self.gradient(images[i : i + 1].detach().clone(), index=int(index[i]))
                maps.append(gradient.abs().amax(dim=1, keepdim=True))
        return torch.cat(maps)


def make_saliency(name: str, model: nn.Module, task: str = "multiclass", **options: Any) -> SaliencyMethod:
    """Build saliency method ``name`` (one of :data:`SALIENCY_METHODS`) for ``model``.

    ``model`` is a ``bundle.networks.MedTex`` for ``medtex`` and the classifier to explain (e.g. the teacher; a
    ``FrozenTeacher`` is unwrapped to its network) for the others. ``task`` matters for ``occlusion`` only.
    ``options`` go to the method's class: ``target_layer`` (GradCAM), ``mask_size``/``overlap``/``mode``/``n_batch``
    (occlusion), ``n_samples``/``stdev_spread``/``magnitude`` (SmoothGrad), ``normalize`` (all).
    """
    if name not in SALIENCY_METHODS:
        raise ValueError(f"unknown saliency method {name!r}, expected one of {SALIENCY_METHODS}")
    if name == "medtex":
        return MedTexSaliency(model, **options)
    if isinstance(model, FrozenTeacher):  # its forward returns (logits, features); MONAI's hooks need plain logits
        model = model.network
    if name in ("gradcam", "gradcampp"):
        return GradCAMSaliency(model, plus_plus=name == "gradcampp", **options)
    if name == "occlusion":
        return OcclusionSaliency(model, task=task, **options)
    return GradientSaliency(model, smooth=name == "smoothgrad", **options)
