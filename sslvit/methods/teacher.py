"""The momentum (EMA) teacher shared by MoCo v3, BYOL, DINO and iBOT."""

import copy
import math

import torch
from torch import nn


def cosine_momentum(step: int, total_steps: int, base: float, final: float = 1.0) -> float:
    """Momentum rising from `base` at step 0 to `final` at the last step on a half cosine.

    This is the schedule of BYOL (tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2), used as well
    by MoCo v3 and DINO.
    """
    progress = min(1.0, max(0.0, step / max(1, total_steps)))
    return final - (final - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


class EMATeacher(nn.Module):
    """A frozen copy of a student network, moved towards it by exponential moving averages.

    The copy shares no storage with the student, holds no gradients, and after
    `update(student, m)` each parameter equals `m * old + (1 - m) * student`. Buffers
    (BatchNorm running statistics) are the teacher's own, kept up by its forward passes, as in
    the BYOL and MoCo v3 code; in training mode BatchNorm normalises by the batch's own
    statistics, so they do not enter the loss.

    Args:
        student: The module to copy (an encoder, or a `nn.ModuleDict` of encoder and heads).
    """

    def __init__(self, student: nn.Module):
        super().__init__()
        self.net = copy.deepcopy(student)
        for param in self.net.parameters():
            param.requires_grad_(False)
            param.grad = None

    def forward(self, *args, **kwargs):
        with torch.no_grad():
            return self.net(*args, **kwargs)

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float) -> None:
        """Move every teacher parameter towards the student's: t <- m t + (1 - m) s."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
        teacher_params = list(self.net.parameters())
        student_params = [p.detach() for p in student.parameters()]
        if len(teacher_params) != len(student_params):
            raise ValueError("the teacher and the student have different parameters")
        torch._foreach_mul_(teacher_params, momentum)
        torch._foreach_add_(teacher_params, student_params, alpha=1.0 - momentum)
