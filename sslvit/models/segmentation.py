"""A segmentation model: a ViT encoder and a decoder on its patch features.

The convolutional decoder ("conv", the default) takes the patch tokens after several blocks (by
default four, evenly spaced, as in SETR's multi-level head and DPT), lays each out on the patch
grid, projects and fuses them, then doubles the resolution step by step (bilinear x2, 3x3 conv,
GroupNorm, GELU) until it is back at the input size, and ends in one logit per class and pixel.

The linear decoder ("linear") is the frozen-feature probe of the self-supervised literature
(the linear segmentation evaluation of iBOT and DINOv2): one linear map per patch from the
standardised features to class logits, upsampled bilinearly. It has no capacity of its own, so
with a frozen encoder its score is a measure of the patch features; the convolutional decoder
learns a good deal on its own, even from the features of a random-weight encoder.
"""

import math

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from sslvit.models.vit import block_tokens

# Channels of the last upsampling stages: each x2 step halves the width, down to this floor.
MIN_WIDTH = 32


def spread_blocks(depth: int, n_levels: int) -> list[int]:
    """`n_levels` block indices spread evenly over `depth` blocks, ending with the last.

    Twelve blocks and four levels give [2, 5, 8, 11]; fewer blocks than levels give them all.
    """
    n_levels = min(n_levels, depth)
    return sorted({depth * (k + 1) // n_levels - 1 for k in range(n_levels)})


def _conv_block(in_chans: int, out_chans: int) -> nn.Sequential:
    # GroupNorm, not BatchNorm: segmentation batches are a few images, and eval must not
    # depend on running statistics gathered from them
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False),
        nn.GroupNorm(min(8, out_chans), out_chans),
        nn.GELU(),
    )


class SegmentationDecoder(nn.Module):
    """Patch-grid features of several blocks to per-pixel logits.

    Args:
        embed_dim: Width D of the encoder's tokens.
        n_levels: Number of feature maps it takes.
        patch_size: The encoder's patch side; log2 of it (rounded up) is the number of x2 steps.
        n_classes: Classes K.
        width: Channels after fusing; halved at each x2 step down to `MIN_WIDTH`.
    """

    def __init__(
        self, embed_dim: int, n_levels: int, patch_size: int, n_classes: int, width: int = 256
    ):
        super().__init__()
        self.project = nn.ModuleList(nn.Conv2d(embed_dim, width, 1) for _ in range(n_levels))
        self.fuse = _conv_block(width * n_levels, width)
        steps, chans = [], width
        for _ in range(math.ceil(math.log2(patch_size)) if patch_size > 1 else 0):
            out = max(MIN_WIDTH, chans // 2)
            steps.append(_conv_block(chans, out))
            chans = out
        self.up = nn.ModuleList(steps)
        self.classify = nn.Conv2d(chans, n_classes, 1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Features `n_levels x [B, D, h, w]` to logits `[B, K, H, W]` with `(H, W) = size`."""
        x = self.fuse(torch.cat([p(f) for p, f in zip(self.project, features, strict=True)], 1))
        for step in self.up:
            x = step(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        logits = self.classify(x)
        if tuple(logits.shape[-2:]) != tuple(size):
            # a patch side that is not a power of two overshoots; land on the input size
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits


class LinearDecoder(nn.Module):
    """Patch features of several blocks to logits by one linear map per patch.

    The concatenated features are standardised per channel by a BatchNorm without parameters
    (as the linear classification probe does), mapped to K logits by a 1x1 convolution on the
    patch grid, and resized bilinearly to the input size.

    Args:
        embed_dim: Width D of the encoder's tokens.
        n_levels: Number of feature maps it takes.
        n_classes: Classes K.
    """

    def __init__(self, embed_dim: int, n_levels: int, n_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(embed_dim * n_levels, affine=False, eps=1e-6)
        self.classify = nn.Conv2d(embed_dim * n_levels, n_classes, 1)

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Features `n_levels x [B, D, h, w]` to logits `[B, K, H, W]` with `(H, W) = size`."""
        logits = self.classify(self.norm(torch.cat(features, 1)))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


DECODERS = ("conv", "linear")


class ViTSegmenter(nn.Module):
    """A ViT encoder and a decoder: images `[B, C, H, W]` to logits `[B, K, H, W]`.

    H and W must be divisible by the patch size; any such size works (the position embedding
    is resampled when the grid differs from the encoder's). While `encoder_trainable` is False
    the encoder runs without gradients and its weights have `requires_grad=False`.

    Args:
        encoder: The ViT.
        n_classes: Classes K.
        n_levels: Blocks the decoder reads (spread by `spread_blocks`).
        width: The convolutional decoder's width after fusing.
        decoder: "conv" (`SegmentationDecoder`) or "linear" (`LinearDecoder`).
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        n_classes: int,
        n_levels: int = 4,
        width: int = 256,
        decoder: str = "conv",
    ):
        super().__init__()
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; choose one of {', '.join(DECODERS)}")
        self.encoder = encoder
        self.blocks = spread_blocks(len(encoder.blocks), n_levels)
        patch_size = encoder.patch_embed.patch_size[0]
        if decoder == "linear":
            self.decoder = LinearDecoder(encoder.embed_dim, len(self.blocks), n_classes)
        else:
            self.decoder = SegmentationDecoder(
                encoder.embed_dim, len(self.blocks), patch_size, n_classes, width
            )
        self.encoder_trainable = True

    def set_encoder_trainable(self, trainable: bool) -> None:
        """Freeze (False) or unfreeze (True) every encoder weight."""
        self.encoder_trainable = trainable
        self.encoder.requires_grad_(trainable)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Patch features of the chosen blocks, each `[B, D, H / p, W / p]`."""
        patch = self.encoder.patch_embed.patch_size
        grid = (images.shape[-2] // patch[0], images.shape[-1] // patch[1])
        prefix = self.encoder.num_prefix_tokens
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.encoder_trainable):
            tokens = block_tokens(self.encoder, images, self.blocks)
        # [B, 1 + N, D] -> [B, D, h, w]; the patch tokens are in row-major order
        return [t[:, prefix:].transpose(1, 2).reshape(t.shape[0], -1, *grid) for t in tokens]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.features(images), tuple(images.shape[-2:]))
