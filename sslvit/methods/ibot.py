"""iBOT (Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer", ICLR 2022,
https://arxiv.org/abs/2111.07832).

DINO's class-token self-distillation plus masked image modelling in feature space: the student
sees block-wise masked global views (the masked patches replaced by a learned mask token), the
teacher sees them whole, and the student's patch-token distributions at the masked positions are
trained to match the teacher's, with their own centre and temperatures.
"""

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from sslvit.methods.base import aspect_limit
from sslvit.methods.common import all_reduce_mean_
from sslvit.methods.dino import DINO, DINOConfig, dino_loss, linear_ramp
from sslvit.methods.masking import block_masks
from sslvit.methods.registry import register
from sslvit.models.heads import DINOHead
from sslvit.models.vit import forward_tokens

log = logging.getLogger("sslvit")


@dataclass
class IBOTConfig(DINOConfig):
    """iBOT's ViT-S/16 defaults: 8192 prototypes shared by the class and patch heads, patch
    teacher temperature 0.04 -> 0.07, prediction ratio 0.3 +- 0.2 with block-wise masks, global
    crop scale 0.14-1, 10 local crops of scale 0.05-0.4, both loss weights 1. `mask_prob` is the
    share of global views that get a mask at all (0.5 here: the other half is seen whole by the
    student too, and contributes only to the class-token loss); 1.0 masks every global view."""

    name: str = "ibot"
    out_dim: int = 8192
    patch_out_dim: int = 8192
    shared_head: bool = True
    teacher_patch_temp: float = 0.07
    warmup_teacher_patch_temp: float = 0.04
    center_momentum_patch: float = 0.9
    pred_ratio: float = 0.3
    pred_ratio_var: float = 0.2
    mask_prob: float = 0.5
    pred_aspect: tuple[float, float] = (0.3, 1 / 0.3)
    lambda_cls: float = 1.0
    lambda_patch: float = 1.0
    global_crop_scale: tuple[float, float] = (0.14, 1.0)
    local_crops: int = 10

    def limits(self) -> list:
        low, high = self.pred_ratio - self.pred_ratio_var, self.pred_ratio + self.pred_ratio_var
        return super().limits() + [
            ("patch_out_dim", self.patch_out_dim >= 1, "at least 1"),
            (
                "teacher_patch_temp",
                0 < self.teacher_patch_temp < math.inf,
                "a finite number above 0",
            ),
            (
                "warmup_teacher_patch_temp",
                0 < self.warmup_teacher_patch_temp < math.inf,
                "a finite number above 0",
            ),
            ("center_momentum_patch", 0 <= self.center_momentum_patch <= 1, "in [0, 1]"),
            ("pred_ratio", 0 <= self.pred_ratio <= 1, "in [0, 1]"),
            (
                "pred_ratio_var",
                self.pred_ratio_var >= 0 and 0 <= low and high <= 1,
                f"at least 0, with pred_ratio +- pred_ratio_var inside [0, 1] "
                f"(pred_ratio is {self.pred_ratio})",
            ),
            ("mask_prob", 0 <= self.mask_prob <= 1, "in [0, 1]"),
            aspect_limit(self, "pred_aspect"),
            ("lambda_cls", 0 <= self.lambda_cls < math.inf, "a finite number, at least 0"),
            ("lambda_patch", 0 <= self.lambda_patch < math.inf, "a finite number, at least 0"),
            (
                "lambda_cls",
                self.lambda_cls + self.lambda_patch > 0,
                "above 0 where lambda_patch is 0 (with both at 0 nothing trains)",
            ),
        ]


def masked_patch_distill(
    student_masked: torch.Tensor,
    teacher_masked: torch.Tensor,
    mask: torch.Tensor,
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
) -> torch.Tensor:
    """iBOT's masked-image-modelling loss for one view.

    Cross-entropy between the teacher's centred, sharpened patch distributions and the
    student's at the masked positions, averaged over the masked patches of each image and then
    over all images (an image without masked patches contributes 0). Only the masked positions'
    logits are passed: the others are never computed.

    Args:
        student_masked: `[M, K]` logits of the student's masked patch tokens, in the row-major
            order of `mask`'s ones (`patches[mask]`).
        teacher_masked: `[M, K]` the teacher's logits at the same positions.
        mask: `[B, N]`, 1 = masked for the student; M ones in all.
        center: `[K]` or any shape that broadcasts to `[M, K]`.
    """
    target = F.softmax((teacher_masked.float() - center.view(1, -1)) / teacher_temp, dim=-1)
    log_p = F.log_softmax(student_masked.float() / student_temp, dim=-1)
    per_patch = -(target * log_p).sum(dim=-1)  # [M]
    counts = mask.bool().sum(dim=1)
    weights = (1.0 / counts.clamp_min(1).float()).repeat_interleave(counts)
    return (per_patch * weights).sum() / mask.shape[0]


@register("ibot")
class IBOT(DINO):
    """DINO's objective on the class token plus masked patch-token distillation."""

    config_class = IBOTConfig

    def __init__(self, config: IBOTConfig, encoder: VisionTransformer):
        self._ibot_patch_head = not config.shared_head
        super().__init__(config, encoder)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, encoder.embed_dim))
        self.register_buffer("center_patch", torch.zeros(1, 1, config.patch_out_dim))
        self.monitor.loss_name = "the class-token loss (loss_cls)"
        if config.mask_prob == 0 or config.pred_ratio + config.pred_ratio_var == 0:
            log.warning(
                "iBOT with method.mask_prob %g and method.pred_ratio %g +- %g masks no patch: "
                "the patch loss is 0 and this run trains as DINO",
                config.mask_prob,
                config.pred_ratio,
                config.pred_ratio_var,
            )
        elif config.lambda_patch == 0:
            log.warning(
                "iBOT with method.lambda_patch 0: the patch loss does not count and this run "
                "trains as DINO on masked views"
            )

    def make_head(self, in_dim: int) -> nn.Module:
        cls_head = super().make_head(in_dim)
        if not self._ibot_patch_head:
            if self.config.patch_out_dim != self.config.out_dim:
                raise ValueError("a shared head needs patch_out_dim == out_dim")
            return cls_head
        c = self.config
        patch_head = DINOHead(
            in_dim,
            c.patch_out_dim,
            c.hidden_dim,
            c.bottleneck_dim,
            c.head_layers,
            c.norm_last_layer,
            c.head_bn,
        )
        return _TwoHeads(cls_head, patch_head)

    def patch_temp(self) -> float:
        c = self.config
        return linear_ramp(
            self.epoch,
            c.warmup_teacher_patch_temp,
            c.teacher_patch_temp,
            c.warmup_teacher_temp_epochs,
        )

    def draw_masks(self, batch: int, grid: tuple[int, int], device) -> torch.Tensor:
        """Block-wise masks for one global view; a fraction `mask_prob` of images is masked."""
        c = self.config
        lo, hi = c.pred_ratio - c.pred_ratio_var, c.pred_ratio + c.pred_ratio_var
        ratios = lo + torch.rand(batch) * (hi - lo)
        ratios = torch.where(torch.rand(batch) < c.mask_prob, ratios, torch.zeros(batch))
        masks = block_masks(batch, grid, ratios.tolist(), aspect=tuple(c.pred_aspect))
        return masks.to(device)

    def _heads(self, net: nn.ModuleDict):
        head = net["head"]
        if isinstance(head, _TwoHeads):
            return head.cls, head.patch
        return head, head

    def forward(self, views) -> tuple[torch.Tensor, dict[str, float]]:
        if not isinstance(views, (list, tuple)) or len(views) < 2:
            raise ValueError("iBOT expects a list of views: 2 global crops, then local crops")
        c = self.config
        globals_, locals_ = list(views[:2]), list(views[2:])
        b = globals_[0].shape[0]
        grid = (
            globals_[0].shape[-2] // self.encoder.patch_embed.patch_size[0],
            globals_[0].shape[-1] // self.encoder.patch_embed.patch_size[1],
        )
        masks = [self.draw_masks(b, grid, globals_[0].device) for _ in globals_]

        cls_head, patch_head = self._heads(self._student())
        tokens = forward_tokens(
            self.encoder, torch.cat(globals_), torch.cat(masks), self.mask_token
        )
        s_cls = list(cls_head(tokens[:, 0]).chunk(2))
        # the student's patch logits only where the loss reads them (a sixth of the tokens)
        counts = [int(m.sum()) for m in masks]
        s_patch = patch_head(tokens[:, 1:], select=torch.cat(masks)).split(counts)
        if locals_:
            s_cls += list(
                cls_head(torch.cat(self.encode(self.encoder, locals_))).chunk(len(locals_))
            )
        with torch.no_grad():
            t_net = self.teacher.net
            t_cls_head, t_patch_head = self._heads(t_net)
            t_tokens = forward_tokens(t_net["encoder"], torch.cat(globals_))
            t_cls = list(t_cls_head(t_tokens[:, 0]).chunk(2))
            t_patch = list(t_patch_head(t_tokens[:, 1:]).chunk(2))

        temp, ptemp = self.teacher_temp(), self.patch_temp()
        loss_cls = dino_loss(s_cls, t_cls, self.center, c.student_temp, temp)
        loss_patch = sum(
            masked_patch_distill(
                s_patch[i],
                t_patch[i][masks[i].bool()],
                masks[i],
                self.center_patch,
                c.student_temp,
                ptemp,
            )
            for i in range(len(globals_))
        ) / len(globals_)
        loss = c.lambda_cls * loss_cls + c.lambda_patch * loss_patch
        with torch.no_grad():
            t_all = torch.cat(t_cls).float()
            probs = F.softmax((t_all - self.center) / temp, dim=-1)
            self.update_center(t_all)
            patch_center = all_reduce_mean_(torch.cat(t_patch).float().mean(dim=(0, 1)))
            m = c.center_momentum_patch
            self.center_patch.mul_(m).add_(patch_center.view(1, 1, -1), alpha=1 - m)
        logs = self.monitor(probs, float(loss_cls.detach()))
        logs["emb_std"] = self.spread(t_tokens[:, 0])
        logs.update(
            loss_cls=float(loss_cls.detach()),
            loss_patch=float(loss_patch.detach()),
            teacher_temp=temp,
            momentum=self.momentum,
            masked=float(torch.cat(masks).float().mean()),
        )
        return loss, logs


class _TwoHeads(nn.Module):
    """Separate class-token and patch-token heads (iBOT with `shared_head: false`)."""

    def __init__(self, cls_head: nn.Module, patch_head: nn.Module):
        super().__init__()
        self.cls, self.patch = cls_head, patch_head
