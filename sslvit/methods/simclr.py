"""SimCLR (Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020, https://arxiv.org/abs/2002.05709).

Two views per image, encoder, projection MLP, and the NT-Xent loss: each embedding must pick out
its partner view among all 2N - 1 other embeddings of the global batch. Under `torchrun` the
embeddings of every process are gathered with their gradients, so the loss and its gradient
equal those of one process holding the whole batch.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from sslvit.methods.common import TwoViewConfig, TwoViewMethod, gather, world
from sslvit.methods.registry import register
from sslvit.models.heads import MLPHead


@dataclass
class SimCLRConfig(TwoViewConfig):
    """SimCLR's defaults: a 2-layer projector of width 2048 to 128 dimensions, temperature 0.1
    (the paper's choice for large batches), and its augmentations (crop scale 0.08-1, colour
    jitter of strength 1: 0.8/0.8/0.8/0.2 with p 0.8, grey p 0.2, blur p 0.5 on both views)."""

    name: str = "simclr"
    proj_hidden_dim: int = 2048
    proj_dim: int = 128
    proj_layers: int = 2
    temperature: float = 0.1
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    blur_prob: tuple[float, float] = (0.5, 0.5)
    solarize_prob: tuple[float, float] = (0.0, 0.0)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """The NT-Xent loss of two batches of embeddings of the same images, `[n, d]` each.

    Negatives come from the global batch: with several processes, `z1` and `z2` are this
    process's rows and every process's rows are gathered (with gradients). The value is the
    mean over this process's 2n anchors, so the mean over processes is the loss of the whole
    batch.
    """
    rank, _ = world()
    n = z1.shape[0]
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    all1, all2 = gather(z1, with_grad=True), gather(z2, with_grad=True)
    total = all1.shape[0]
    local = torch.cat([z1, z2])  # [2n, d]
    keys = torch.cat([all1, all2])  # [2N, d]
    logits = local @ keys.T / temperature
    own = torch.arange(n, device=z1.device) + rank * n
    self_index = torch.cat([own, own + total])
    partner = torch.cat([own + total, own])
    rows = torch.arange(2 * n, device=z1.device)
    logits[rows, self_index] = float("-inf")
    return F.cross_entropy(logits, partner)


@register("simclr")
class SimCLR(TwoViewMethod):
    """Encoder + projection MLP trained with NT-Xent on two views."""

    config_class = SimCLRConfig

    def __init__(self, config: SimCLRConfig, encoder: VisionTransformer):
        super().__init__(config, encoder)
        self.projector = MLPHead(
            encoder.embed_dim, config.proj_hidden_dim, config.proj_dim, config.proj_layers
        )

    def forward(self, views) -> tuple[torch.Tensor, dict[str, float]]:
        v1, v2 = self.check_views(views)
        z = self.projector(self.features(torch.cat([v1, v2])))
        z1, z2 = z.chunk(2)
        loss = nt_xent(z1, z2, self.config.temperature)
        return loss, {"emb_std": self.monitor(z1)}
