"""MoCo v3 for ViTs (Chen, Xie and He, "An Empirical Study of Training Self-Supervised Vision
Transformers", ICCV 2021, https://arxiv.org/abs/2104.02057).

A query encoder with a projector and a predictor, a momentum key encoder (encoder and projector)
whose momentum rises from 0.99 to 1 on a half cosine, and the symmetric InfoNCE loss
`ctr(q1, k2) + ctr(q2, k1)` with keys gathered from every process, scaled by 2T as in the paper.
The paper's trick for stable ViT training, a frozen random patch projection, is on by default.
Unlike the official code this runs in one process and on a CPU as well.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from sslvit.methods.common import MomentumTwoViewMethod, TwoViewConfig, gather, world
from sslvit.methods.registry import register
from sslvit.models.heads import MLPHead


@dataclass
class MoCoV3Config(TwoViewConfig):
    """The paper's ViT settings: 3-layer projector and 2-layer predictor of width 4096 to 256
    dimensions (each ending in BatchNorm without affine terms), temperature 0.2, momentum 0.99
    rising to 1, frozen random patch projection, BYOL's augmentations."""

    name: str = "mocov3"
    proj_hidden_dim: int = 4096
    proj_dim: int = 256
    pred_hidden_dim: int = 4096
    temperature: float = 0.2
    momentum: float = 0.99
    freeze_patch_embed: bool = True


def info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3's contrastive loss of queries `[n, d]` against keys gathered from every process.

    The positive of query i is this process's key i; the other keys of the global batch are
    its negatives. Multiplied by 2T, as in the paper, so the gradient scale does not depend on T.
    """
    rank, _ = world()
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.float(), dim=1)
    keys = gather(k, with_grad=False)
    logits = q @ keys.T / temperature
    labels = torch.arange(q.shape[0], device=q.device) + rank * q.shape[0]
    return F.cross_entropy(logits, labels) * (2 * temperature)


@register("mocov3")
class MoCoV3(MomentumTwoViewMethod):
    """Query encoder + projector + predictor against a momentum encoder + projector."""

    config_class = MoCoV3Config
    # both heads end in a BatchNorm, which hides a collapse; watch the tensor before it
    watched = "predictor output before its last BatchNorm"

    def __init__(self, config: MoCoV3Config, encoder: VisionTransformer):
        super().__init__(config, encoder)
        self.projector = MLPHead(
            encoder.embed_dim, config.proj_hidden_dim, config.proj_dim, 3, "bn_no_affine"
        )
        self.predictor = MLPHead(
            config.proj_dim, config.pred_hidden_dim, config.proj_dim, 2, "bn_no_affine"
        )
        self.init_teacher()

    def forward(self, views) -> tuple[torch.Tensor, dict[str, float]]:
        v1, v2 = self.check_views(views)
        # each view is its own BatchNorm batch, as in the official code
        z1, z2 = self.projector(self.features(v1)), self.projector(self.features(v2))
        (q1, before_norm), q2 = self.predictor.forward_pre_norm(z1), self.predictor(z2)
        k1, k2 = self.teacher_project(v1), self.teacher_project(v2)
        temp = self.config.temperature
        loss = info_nce(q1, k2, temp) + info_nce(q2, k1, temp)
        return loss, {"emb_std": self.monitor(before_norm.detach()), "momentum": self.momentum}
