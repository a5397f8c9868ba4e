"""SimSiam (Chen and He, "Exploring Simple Siamese Representation Learning", CVPR 2021,
https://arxiv.org/abs/2011.10566).

One encoder and projector shared by both views, a bottleneck predictor, and the symmetric
negative cosine `D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2` with a stop-gradient on the targets.
`stop_gradient: false` removes it, which the paper shows collapses at once; the collapse
monitor is there to catch exactly that. It watches the predictor's output: the projector ends
in a BatchNorm, which gives every dimension unit variance and so hides a collapse.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from sslvit.methods.common import TwoViewConfig, TwoViewMethod
from sslvit.methods.registry import register
from sslvit.models.heads import MLPHead


@dataclass
class SimSiamConfig(TwoViewConfig):
    """The paper's defaults: 3-layer projector of width 2048 ending in BatchNorm, predictor
    2048 -> 512 -> 2048, stop-gradient on, the predictor's learning rate held at its peak
    (`fix_pred_lr`, the paper's section 4.2), crop scale 0.2-1, colour jitter 0.4/0.4/0.4/0.1
    with p 0.8, grey p 0.2, blur p 0.5 on both views, no solarisation."""

    name: str = "simsiam"
    proj_dim: int = 2048
    pred_hidden_dim: int = 512
    stop_gradient: bool = True
    fix_pred_lr: bool = True
    crop_scale: tuple[float, float] = (0.2, 1.0)
    saturation: float = 0.4
    blur_prob: tuple[float, float] = (0.5, 0.5)
    solarize_prob: tuple[float, float] = (0.0, 0.0)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """`-cos(p, z)` averaged over the batch."""
    return -F.cosine_similarity(p.float(), z.float(), dim=1).mean()


@register("simsiam")
class SimSiam(TwoViewMethod):
    """Shared encoder + projector, predictor, stop-gradient, symmetric negative cosine."""

    config_class = SimSiamConfig
    watched = "predictor output"

    def __init__(self, config: SimSiamConfig, encoder: VisionTransformer):
        super().__init__(config, encoder)
        self.projector = MLPHead(
            encoder.embed_dim, config.proj_dim, config.proj_dim, 3, last_norm="bn_no_affine"
        )
        self.predictor = MLPHead(config.proj_dim, config.pred_hidden_dim, config.proj_dim, 2)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """With `fix_pred_lr`, the predictor in groups of its own whose rate stops at the peak
        after warm-up instead of decaying (the paper's default: it found the predictor must
        keep adapting to the latest representations)."""
        groups = super().param_groups(weight_decay)
        if not self.config.fix_pred_lr:
            return groups
        predictor = {id(p) for p in self.predictor.parameters()}
        split = []
        for group in groups:
            for held in (False, True):
                params = [p for p in group["params"] if (id(p) in predictor) == held]
                if params:
                    split.append({**group, "params": params, "hold_lr": held})
        return split

    def forward(self, views) -> tuple[torch.Tensor, dict[str, float]]:
        v1, v2 = self.check_views(views)
        z1, z2 = self.projector(self.features(v1)), self.projector(self.features(v2))
        p1, p2 = self.predictor(z1), self.predictor(z2)
        if self.config.stop_gradient:
            z1, z2 = z1.detach(), z2.detach()
        loss = negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2
        return loss, {"emb_std": self.monitor(p1.detach())}
