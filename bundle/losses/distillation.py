"""Knowledge-distillation losses: Hinton KD on the logits, VID on intermediate features, and the mask prior."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

TASKS = ("multiclass", "multilabel")


class KDLoss(nn.Module):
    """``tau^2 * KL(p_teacher || p_student)`` on temperature-softened outputs (Hinton et al. 2015).

    ``multiclass``: softmax over classes, KL summed over classes and averaged over the batch.
    ``multilabel``: each class a Bernoulli (sigmoid), binary KL averaged over classes and batch.
    """

    def __init__(self, task: str, temperature: float = 4.0) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.task = task
        self.temperature = temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        tau = self.temperature
        s, t = student_logits / tau, teacher_logits.detach() / tau
        if self.task == "multiclass":
            kl = F.kl_div(F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), reduction="batchmean", log_target=True)
        else:
            p = torch.sigmoid(t)
            # binary KL: p log p/q + (1-p) log (1-p)/(1-q), with log q = logsigmoid(s), log(1-q) = logsigmoid(-s)
            kl = (p * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p) * (F.logsigmoid(-t) - F.logsigmoid(-s))).mean()
        return tau * tau * kl


class VIDLoss(nn.Module):
    """Variational information distillation (Ahn et al., CVPR 2019) for pairs of student/teacher feature maps.

    Per pair: a regressor ``mu`` (1x1 conv - ReLU - 1x1 conv - ReLU - 1x1 conv) from student to teacher channels and
    a learned per-channel variance ``sigma_c^2 = softplus(alpha_c) + 1e-5``; the loss is the Gaussian negative
    log-likelihood of the teacher features, ``mean 0.5 * ((mu(s) - t)^2 / sigma_c^2 + log sigma_c^2)``, after
    average-pooling the larger map to the smaller one's size; summed over pairs.

    Args:
        student_channels: channels of each student feature map.
        teacher_channels: channels of each teacher feature map (same order).
        hidden_channels: width of the regressors' hidden layers (default: the teacher's channels).
        init_variance: initial ``sigma^2`` (VID uses 5).
    """

    def __init__(
        self,
        student_channels: Sequence[int],
        teacher_channels: Sequence[int],
        hidden_channels: Sequence[int] | None = None,
        init_variance: float = 5.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if len(student_channels) != len(teacher_channels):
            raise ValueError(
                "VID needs one teacher layer per student layer, "
                f"got {len(student_channels)} and {len(teacher_channels)}"
            )
        hidden = list(hidden_channels) if hidden_channels is not None else list(teacher_channels)
        self.regressors = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(s, h, 1),
                nn.ReLU(),
                nn.Conv2d(h, h, 1),
                nn.ReLU(),
                nn.Conv2d(h, t, 1),
            )
            for s, h, t in zip(student_channels, hidden, teacher_channels)
        )
        alpha = math.log(math.expm1(init_variance - eps))  # softplus^-1, so that sigma^2 starts at init_variance
        self.alphas = nn.ParameterList(nn.Parameter(torch.full((t,), alpha)) for t in teacher_channels)
        self.eps = eps

    def variances(self) -> list[torch.Tensor]:
        return [F.softplus(a) + self.eps for a in self.alphas]

    def forward(
        self, student_features: Sequence[torch.Tensor], teacher_features: Sequence[torch.Tensor]
    ) -> torch.Tensor:
        if len(student_features) != len(self.regressors) or len(teacher_features) != len(self.regressors):
            raise ValueError(
                f"VID was built for {len(self.regressors)} layer pairs, got {len(student_features)} student and "
                f"{len(teacher_features)} teacher feature maps"
            )
        total = student_features[0].new_zeros(())
        for s, t, regressor, variance in zip(student_features, teacher_features, self.regressors, self.variances()):
            s, t = _pool_to_common_size(s, t.detach())
            mu = regressor(s)
            if mu.shape != t.shape:
                raise ValueError(
                    f"VID regressor output {tuple(mu.shape)} does not match teacher features {tuple(t.shape)}"
                )
            var = variance.view(1, -1, 1, 1)
            total = total + (0.5 * ((mu - t) ** 2 / var + torch.log(var))).mean()
        return total


def _pool_to_common_size(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool whichever map is larger to the smaller one's spatial size."""
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    if tuple(a.shape[-2:]) != size:
        a = F.adaptive_avg_pool2d(a, size)
    if tuple(b.shape[-2:]) != size:
        b = F.adaptive_avg_pool2d(b, size)
    return a, b


class MaskPrior(nn.Module):
    """Prior on the explainer's mask: sparsity (``mean M``) or Bernoulli KL to a small rate, plus total variation.

    ``kind="sparsity"``: ``mean(M)``. ``kind="bernoulli_kl"``: ``mean KL(Bernoulli(M) || Bernoulli(rate))`` as in
    VIBI. Total variation ``mean |dM/dx| + mean |dM/dy|`` weighted by ``tv_weight`` favours connected regions.
    """

    def __init__(self, kind: str = "sparsity", rate: float = 0.1, tv_weight: float = 0.1, eps: float = 1e-6) -> None:
        super().__init__()
        if kind not in ("sparsity", "bernoulli_kl"):
            raise ValueError(f"kind must be 'sparsity' or 'bernoulli_kl', got {kind!r}")
        if not 0 < rate < 1:
            raise ValueError(f"rate must be in (0, 1), got {rate}")
        self.kind = kind
        self.rate = rate
        self.tv_weight = tv_weight
        self.eps = eps

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        if self.kind == "sparsity":
            size = mask.mean()
        else:
            m = mask.clamp(self.eps, 1 - self.eps)
            r = self.rate
            size = (m * torch.log(m / r) + (1 - m) * torch.log((1 - m) / (1 - r))).mean()
        tv = (mask[..., 1:, :] - mask[..., :-1, :]).abs().mean() + (mask[..., :, 1:] - mask[..., :, :-1]).abs().mean()
        return size + self.tv_weight * tv
