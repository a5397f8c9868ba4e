"""A classifier on a ViT encoder: a linear head, layer-wise learning-rate groups, prediction."""

from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.data import DataLoader

from sslvit.data import SeededViews
from sslvit.models import EncoderInfo, pooled_features
from sslvit.train.checkpoint import load_checkpoint
from sslvit.train.optim import layer_decay_groups

# MAE's head initialisation: near-zero logits, so the first steps do not disturb the encoder.
HEAD_INIT_STD = 2e-5


class ViTClassifier(nn.Module):
    """An encoder, its pooling ("cls" or "mean" of the final normalised tokens), a BatchNorm
    without affine parameters, and a linear head.

    The BatchNorm is MAE's linear-probe head (He et al., 2022, appendix A.2), kept for
    fine-tuning: a masked-image encoder's features can share one large component and differ
    between images only in a small one (the demo's MAE class token: embedding spread 0.0016 for a
    healthy 0.07). A head that reads them raw starts with the same logits for every image, and
    its near-zero initialisation passes almost no gradient to the encoder, so the loss sits at
    ln K; standardised per dimension, the differences reach the head from the first step.

    Maps normalised images `[B, C, H, W]` at the encoder's input size to logits `[B, K]`.
    Training needs batches of two or more images (batch statistics).
    """

    def __init__(self, encoder: VisionTransformer, n_classes: int, pool: str):
        super().__init__()
        self.encoder = encoder
        self.pool = pool
        self.feature_norm = nn.BatchNorm1d(encoder.embed_dim, affine=False, eps=1e-6)
        self.head = nn.Linear(encoder.embed_dim, n_classes)
        nn.init.trunc_normal_(self.head.weight, std=HEAD_INIT_STD)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = pooled_features(self.encoder, images, self.pool)
        return self.head(self.feature_norm(features.float()))


def vit_layer(name: str, depth: int) -> int:
    """The layer of a `ViTClassifier` parameter for layer-wise decay (BEiT's and MAE's rule).

    Patch embedding, position embedding and tokens are layer 0, block i is layer i + 1, and
    everything after the blocks (final norm, head) is the top layer, `depth + 1`.
    """
    name = name.removeprefix("encoder.")
    if name.startswith(("cls_token", "reg_token", "pos_embed", "patch_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def finetune_param_groups(
    model: ViTClassifier, weight_decay: float, layer_decay: float
) -> list[dict]:
    """AdamW groups of a `ViTClassifier`: layer `l` at `layer_decay ** (depth + 1 - l)` times the
    learning rate, no weight decay on norms, biases, position embedding and tokens."""
    depth = len(model.encoder.blocks)
    return layer_decay_groups(
        model,
        weight_decay,
        model.encoder.no_weight_decay(),
        lambda name: vit_layer(name, depth),
        depth + 1,
        layer_decay,
    )


def load_classifier(path: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a fine-tuned classifier from `checkpoints/best.pt` or `last.pt`.

    The encoder is rebuilt at the image and patch size the checkpoint records, so its position
    embedding comes back exactly as it was trained.

    Returns:
        `(model, info, classes)`: the classifier in eval mode on `device`, the `EncoderInfo` of
        its input (size, channels, normalisation) and the class names.
    """
    saved = load_checkpoint(path)
    info = EncoderInfo(**saved["info"])
    model = ViTClassifier(info.build(), len(saved["classes"]), info.pool)
    model.load_state_dict(saved["model"])
    return model.to(device).eval(), info, list(saved["classes"])


def predict(model: nn.Module, images, transform, device, dtype, batch_size: int = 256):
    """Logits `[N, K]` (float32, CPU) and labels `[N]` of every image, in order."""
    model.eval()
    loader = DataLoader(SeededViews(images, transform, 0), batch_size=batch_size)
    logits, labels = [], []
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        for views, targets, _ in loader:
            logits.append(model(views.to(device)).float().cpu())
            labels.append(targets)
    model.train()
    return torch.cat(logits), torch.cat(labels)
