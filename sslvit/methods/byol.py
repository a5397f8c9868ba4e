"""BYOL (Grill et al., "Bootstrap Your Own Latent", NeurIPS 2020,
https://arxiv.org/abs/2006.07733).

An online network (encoder, projector, predictor) predicts the projection that a target network
(an EMA of the online encoder and projector, momentum rising from 0.996 to 1 on a half cosine)
gives for the other view. The loss is the normalised MSE, 2 - 2 cos, summed over both
directions; no negatives.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from sslvit.methods.common import MomentumTwoViewMethod, TwoViewConfig
from sslvit.methods.registry import register
from sslvit.models.heads import MLPHead


@dataclass
class BYOLConfig(TwoViewConfig):
    """The paper's defaults: 2-layer projector and predictor of width 4096 to 256 dimensions,
    base momentum 0.996, and its asymmetric augmentations (blur p 1.0/0.1, solarisation
    p 0/0.2, colour jitter 0.4/0.4/0.2/0.1 with p 0.8, grey p 0.2, crop scale 0.08-1)."""

    name: str = "byol"
    proj_hidden_dim: int = 4096
    proj_dim: int = 256
    pred_hidden_dim: int = 4096
    momentum: float = 0.996


def regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's normalised MSE, `2 - 2 cos(p, z)`, averaged over the batch; `z` is a target."""
    p = F.normalize(p.float(), dim=1)
    z = F.normalize(z.float(), dim=1)
    return (2 - 2 * (p * z).sum(dim=1)).mean()


@register("byol")
class BYOL(MomentumTwoViewMethod):
    """Online encoder + projector + predictor regressing an EMA target's projections."""

    config_class = BYOLConfig

    def __init__(self, config: BYOLConfig, encoder: VisionTransformer):
        super().__init__(config, encoder)
        self.projector = MLPHead(encoder.embed_dim, config.proj_hidden_dim, config.proj_dim, 2)
        self.predictor = MLPHead(config.proj_dim, config.pred_hidden_dim, config.proj_dim, 2)
        self.init_teacher()

    def forward(self, views) -> tuple[torch.Tensor, dict[str, float]]:
        v1, v2 = self.check_views(views)
        z1, z2 = self.projector(self.features(v1)), self.projector(self.features(v2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        t1, t2 = self.teacher_project(v1), self.teacher_project(v2)
        loss = regression_loss(p1, t2) + regression_loss(p2, t1)
        return loss, {"emb_std": self.monitor(z1), "momentum": self.momentum}
