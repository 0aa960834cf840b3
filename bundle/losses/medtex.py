"""The MED-TEX objective: weighted sum of supervised, distillation, feature and mask terms (DESIGN.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Optional, cast

import torch
import torch.nn.functional as F
from torch import nn

from bundle.losses.classification import ClassificationLoss
from bundle.losses.distillation import KDLoss, MaskPrior, VIDLoss


class MedTexLoss(nn.Module):
    """``a_ce CE(S(x'), y) + a_kd tau^2 KL(T(x) || S(x')) + a_vid sum_l VID(t_l, s_l) + a_m R(M)
    + a_fid KL(T(x) || T(x')) + a_del D(T(x), T(x_del)) + a_ev KL(E(x) || M)``.

    Every term has a weight; a zero weight skips the term (and, for KD and VID together, the teacher's forward
    pass). CE counts labelled images only (-1 labels are unknown), so unlabelled images train through KD and VID.

    Args:
        task: ``multiclass`` or ``multilabel``.
        ce_weight, kd_weight, vid_weight, mask_weight: the weights a_ce, a_kd, a_vid, a_m.
        fidelity_weight: a_fid, the teacher's fidelity to its own prediction on the masked image (temperature 1).
            The student adapts to whatever the mask leaves, so KD alone lets the explainer keep any cheap cue;
            the frozen teacher cannot adapt, so this term makes the mask keep what the teacher itself uses
            (the preservation objective of real-time saliency, Dabkowski and Gal 2017).
        deletion_weight: a_del, the teacher's agreement with its own prediction on the image with the mask's region
            removed, ``x_del = (1 - M) x + M b``: ``D = mean_b sum_c q_c p_c`` for a multi-class task (q, p the
            teacher's softmax on x and x_del: the chance that both predictions name the same class) and
            ``mean_{b,c} q_c p_c`` for a multi-label one (sigmoids: the findings the teacher saw should vanish).
            Preservation alone is met by any region that suffices; deletion also asks the mask to cover all the
            evidence (the deletion objective of real-time saliency), which is what a lesion map should show.
        evidence_weight: a_ev, the mask's divergence from the teacher's own evidence on the image:
            ``KL(E || M)`` with ``E`` and ``M`` each divided by its sum over the pixels, ``E`` the teacher's
            input-gradient magnitude ``|d T_c(x) / d x|`` (``c`` the class the teacher predicts, maximum over channels)
            averaged over ``evidence_kernel`` x ``evidence_kernel`` pixels (``teacher_evidence``). Preservation and
            deletion ask only that the mask's region serve the teacher, which a mask can meet with one fixed region
            for every image; this term ties each image's mask to where that image's evidence lies, learned from
            importance targets as CXPlain does (Schwab and Karlen 2019). ``M`` is only compared in shape (the KL
            ignores its scale), so its area stays the mask prior's. configs/explainer/evidence_occlusion.yaml gives
            ``E`` as the teacher's occlusion map instead (``bundle.engines.precompute.TeacherOcclusiond``, computed
            once per image while the data are cached; the trainer passes it in place of the gradient).
        evidence_kernel: the pooling window of ``E`` in pixels (odd; 1: none).
        temperature: KD temperature tau.
        vid: the VID module (regressors and variances) when ``vid_weight > 0``; one without layer pairs (a teacher
            whose layers cannot be hooked) switches VID off.
        mask_prior: the mask prior R when ``mask_weight > 0``.
        teacher_classes: the local classes the teacher's logits cover, in their order (``LabelMap.covered`` of a
            teacher from elsewhere); KD compares the student's logits of these classes only (for a multi-class task a
            softmax over them), CE still counts every class. ``None``: the teacher covers every class.
        num_classes: the local task's classes, to check ``teacher_classes`` against (and name what is missing).
    """

    def __init__(
        self,
        task: str,
        ce_weight: float = 1.0,
        kd_weight: float = 1.0,
        vid_weight: float = 0.0,
        mask_weight: float = 0.0,
        temperature: float = 4.0,
        fidelity_weight: float = 0.0,
        deletion_weight: float = 0.0,
        evidence_weight: float = 0.0,
        evidence_kernel: int = 5,
        vid: Optional[VIDLoss] = None,
        mask_prior: Optional[MaskPrior] = None,
        teacher_classes: Optional[Sequence[int]] = None,
        num_classes: Optional[int] = None,
    ) -> None:
        super().__init__()
        if vid is not None and len(vid.regressors) == 0:
            vid_weight, vid = 0.0, None  # nothing to pair (bundle.networks.teacher.teacher_vid_layers said why)
        if vid_weight > 0 and vid is None:
            raise ValueError("vid_weight > 0 needs a VIDLoss ('vid')")
        if mask_weight > 0 and mask_prior is None:
            raise ValueError("mask_weight > 0 needs a MaskPrior ('mask_prior')")
        if evidence_kernel < 1 or evidence_kernel % 2 == 0:
            raise ValueError(f"evidence_kernel must be an odd number of pixels >= 1, got {evidence_kernel}")
        self.evidence_kernel = int(evidence_kernel)
        self.weights = {
            "ce": ce_weight,
            "kd": kd_weight,
            "vid": vid_weight,
            "mask": mask_weight,
            "fidelity": fidelity_weight,
            "deletion": deletion_weight,
            "evidence": evidence_weight,
        }
        self.teacher_classes = self._check_teacher_classes(teacher_classes, num_classes, ce_weight, kd_weight)
        self.ce = ClassificationLoss(task)
        self.kd = KDLoss(task, temperature)
        self.fidelity = KDLoss(task, 1.0)
        self.task = task
        self.vid = vid
        self.mask_prior = mask_prior

    @staticmethod
    def _check_teacher_classes(
        classes: Optional[Sequence[int]], num_classes: Optional[int], ce_weight: float, kd_weight: float
    ) -> Optional[list[int]]:
        if classes is None or (num_classes is not None and list(classes) == list(range(num_classes))):
            return None
        classes = [int(c) for c in classes]
        if num_classes is not None:
            if any(not 0 <= c < num_classes for c in classes) or len(set(classes)) != len(classes):
                raise ValueError(f"teacher_classes {classes} are not distinct classes of the {num_classes}")
            lacking = sorted(set(range(num_classes)) - set(classes))
            if lacking and kd_weight > 0 and ce_weight <= 0:
                raise ValueError(
                    f"the teacher covers no output for local classes {lacking} (label_map) and ce_weight is 0: "
                    "only KD would train the student, which would never learn them; map them in label_map or "
                    "set ce_weight > 0"
                )
        return classes

    @property
    def needs_teacher(self) -> bool:
        return any(self.weights[name] > 0 for name in ("kd", "vid", "fidelity", "deletion", "evidence"))

    def forward(
        self,
        student_logits: torch.Tensor,
        label: Optional[torch.Tensor] = None,
        teacher_logits: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
        student_features: Sequence[torch.Tensor] = (),
        teacher_features: Sequence[torch.Tensor] = (),
        teacher_masked_logits: Optional[torch.Tensor] = None,
        teacher_deleted_logits: Optional[torch.Tensor] = None,
        evidence: Optional[torch.Tensor] = None,
    ) -> dict[str, torch.Tensor]:
        """Return ``{"loss": total, "ce": ..., "kd": ..., "vid": ..., "mask": ..., "fidelity": ..., "deletion": ...,
        "evidence": ...}`` (unweighted terms); ``teacher_masked_logits`` / ``teacher_deleted_logits`` are the teacher's
        logits on the masked image / on the image with the mask's region removed, with gradients to the mask;
        ``evidence`` is ``teacher_evidence``'s map of the same images.
        """
        zero = student_logits.sum() * 0.0
        terms = {name: zero for name in self.weights}
        if self.weights["ce"] > 0 and label is not None:
            terms["ce"] = self.ce(student_logits, label)
        if self.weights["kd"] > 0:
            if teacher_logits is None:
                raise ValueError("kd_weight > 0 but no teacher logits were given")
            terms["kd"] = self.kd(self._covered(student_logits), teacher_logits)
        if self.weights["vid"] > 0 and self.vid is not None:
            terms["vid"] = self.vid(student_features, teacher_features)
        if self.weights["mask"] > 0 and self.mask_prior is not None and mask is not None:
            terms["mask"] = self.mask_prior(mask)
        if self.weights["fidelity"] > 0 and teacher_masked_logits is not None:
            if teacher_logits is None:
                raise ValueError("fidelity_weight > 0 but no teacher logits were given")
            terms["fidelity"] = self.fidelity(teacher_masked_logits, teacher_logits)
        if self.weights["deletion"] > 0 and teacher_deleted_logits is not None:
            if teacher_logits is None:
                raise ValueError("deletion_weight > 0 but no teacher logits were given")
            terms["deletion"] = self.deletion(teacher_deleted_logits, teacher_logits)
        if self.weights["evidence"] > 0 and evidence is not None and mask is not None:
            terms["evidence"] = self.evidence_divergence(mask, evidence)
        # a sum of the weighted tensor terms, never sum()'s int start value
        terms["loss"] = cast(torch.Tensor, sum(self.weights[name] * terms[name] for name in self.weights))
        return terms

    def deletion(self, deleted_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """How much of its prediction the teacher keeps once the mask's region is removed (see ``deletion_weight``)."""
        if self.task == "multilabel":
            return (torch.sigmoid(teacher_logits.detach()) * torch.sigmoid(deleted_logits)).mean()
        agreement = torch.softmax(teacher_logits.detach(), dim=1) * torch.softmax(deleted_logits, dim=1)
        return agreement.sum(dim=1).mean()

    def teacher_evidence(
        self, teacher_logits_of: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor
    ) -> torch.Tensor:
        """``E`` of ``evidence_weight`` for a batch, ``(B, 1, H, W)``, without gradients (``evidence_of`` of a pass of
        the teacher on ``images`` with input gradients)."""
        inputs = images.detach().float().requires_grad_(True)
        with torch.enable_grad():
            return self.evidence_of(teacher_logits_of(inputs), inputs)

    def evidence_of(self, logits: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """``E`` from the teacher's ``logits`` of ``inputs`` (a leaf that requires grad), ``(B, 1, H, W)``, detached.

        Written here rather than with MONAI's ``VanillaGrad``, which takes one image at a time: one backward of the
        batch's summed predicted-class logits gives each image its own gradient (the images do not interact in a
        network in eval mode). ``torch.autograd.grad`` leaves the teacher's parameters' ``.grad`` untouched.
        """
        predicted = logits.detach().argmax(dim=1, keepdim=True)
        (gradient,) = torch.autograd.grad(logits.gather(1, predicted).sum(), inputs)
        evidence = gradient.abs().amax(dim=1, keepdim=True)
        if self.evidence_kernel > 1:
            evidence = F.avg_pool2d(
                evidence, self.evidence_kernel, stride=1, padding=self.evidence_kernel // 2, count_include_pad=False
            )
        return evidence.detach()

    @staticmethod
    def evidence_divergence(mask: torch.Tensor, evidence: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
        """``KL(E || M)`` per image, each map divided by its sum over the pixels, averaged over the batch. A mask
        coarser than the image (``explainer_scale`` with pooling) is compared with ``E`` averaged to its cells."""
        if evidence.shape[-2:] != mask.shape[-2:]:
            evidence = F.adaptive_avg_pool2d(evidence, (mask.shape[-2], mask.shape[-1]))
        target = evidence.flatten(1).float()
        target = target / target.sum(dim=1, keepdim=True).clamp_min(eps)
        predicted = mask.flatten(1).float()
        predicted = predicted / predicted.sum(dim=1, keepdim=True).clamp_min(eps)
        divergence = target * (torch.log(target.clamp_min(eps)) - torch.log(predicted.clamp_min(eps)))
        return divergence.sum(dim=1).mean()

    def _covered(self, student_logits: torch.Tensor) -> torch.Tensor:
        """The student's logits of the classes the teacher's logits cover, in the same order."""
        if self.teacher_classes is None:
            return student_logits
        return student_logits[:, self.teacher_classes]
