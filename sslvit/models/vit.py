"""Vision Transformer encoders built from timm's definitions.

An encoder is a plain `timm.models.vision_transformer.VisionTransformer` without a classifier
(`num_classes=0`), so its weights keep timm's key names and load back into timm unchanged.
"""

import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer

from sslvit.models.band_groups import band_groups_of, grouped_embed_layer
from sslvit.models.pos_embed import sincos_2d

MODELS = {
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
    "vit_large": "vit_large_patch16_224",
}
POOLS = ("cls", "mean")


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def create_vit(
    model: str,
    img_size: int | tuple[int, int],
    patch_size: int,
    in_chans: int,
    drop_path: float = 0.0,
    band_groups: int = 0,
) -> VisionTransformer:
    """Build a randomly initialised ViT encoder.

    Args:
        model: One of `MODELS` ("vit_tiny", "vit_small", "vit_base", "vit_large").
        img_size: Input side in pixels, or (height, width); each divisible by `patch_size`.
        patch_size: Side of a square patch in pixels.
        in_chans: Input channels (1 for grey, 3 for RGB, any count for multi-band data).
        drop_path: Stochastic depth rate (0 for pretraining).
        band_groups: 0 for the plain patch embedding; K > 0 for a token per spatial patch and
            group of bands (`sslvit.models.band_groups`), for many-band images.

    Returns:
        A timm VisionTransformer with `num_classes=0` whose position embedding is the fixed 2-D
        sine-cosine table (MAE's choice; it stays trainable unless a method freezes it); with
        band groups, the same table for each group's tokens.
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    height, width = _pair(img_size)
    if patch_size < 1:
        raise ValueError(f"patch size {patch_size}: must be at least 1")
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"image size {height}x{width} is not divisible by the patch size {patch_size}"
        )
    if in_chans < 1:
        raise ValueError(f"in_chans must be at least 1, got {in_chans}")
    encoder = timm.create_model(
        MODELS[model],
        pretrained=False,
        img_size=(height, width),
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=0,
        drop_path_rate=drop_path,
        **({"embed_layer": grouped_embed_layer(band_groups)} if band_groups else {}),
    )
    grid_h, grid_w = patch_grid(encoder)
    table = sincos_2d(encoder.embed_dim, grid_h, grid_w)
    if band_groups:
        table = encoder.patch_embed.position_table(table)
    with torch.no_grad():
        encoder.pos_embed.copy_(table)
    return encoder


def select_attention_kernel(module: torch.nn.Module, device: torch.device) -> None:
    """Pick the faster attention implementation for `device` in every timm block of `module`.

    On GPUs the fused scaled-dot-product kernel wins. On CPUs the explicit product-softmax-
    product is faster: measured on this project's 2-core CPU for an MAE step of ViT-Tiny at
    32 px, patch 4, batch 128, 160 -> 171 images/s in fp32 and 181 -> 267 images/s in bf16
    (the fused CPU kernel's bf16 backward alone took a third of the step).
    """
    fused = device.type == "cuda"
    for sub in module.modules():
        if hasattr(sub, "fused_attn"):
            sub.fused_attn = fused


def patch_grid(encoder: VisionTransformer) -> tuple[int, int]:
    """The (rows, columns) of the encoder's patch grid."""
    return tuple(encoder.patch_embed.grid_size)


def resize_pos_embed(encoder: VisionTransformer, img_size: int | tuple[int, int]) -> None:
    """Change the encoder's input size in place, interpolating the position embedding.

    The class-token position is kept as it is; the patch positions are resampled bicubically
    from the old grid to the new one. Resizing to the current size changes nothing.
    """
    height, width = _pair(img_size)
    patch_h, patch_w = encoder.patch_embed.patch_size
    if height % patch_h or width % patch_w:
        raise ValueError(
            f"image size {height}x{width} is not divisible by the encoder's patch size "
            f"{patch_h if patch_h == patch_w else f'{patch_h}x{patch_w}'}"
        )
    new_grid = (height // patch_h, width // patch_w)
    old_grid = patch_grid(encoder)
    if new_grid == old_grid:
        return
    if band_groups_of(encoder) is not None:
        raise ValueError(
            f"an encoder with band groups runs at its own size {old_grid} patches only; "
            f"use that image size instead of {height}x{width}"
        )
    table = resample_abs_pos_embed(
        encoder.pos_embed.data,
        new_size=list(new_grid),
        old_size=list(old_grid),
        num_prefix_tokens=encoder.num_prefix_tokens,
    )
    encoder.pos_embed = torch.nn.Parameter(table, requires_grad=encoder.pos_embed.requires_grad)
    encoder.patch_embed.img_size = (height, width)
    encoder.patch_embed.grid_size = new_grid
    encoder.patch_embed.num_patches = new_grid[0] * new_grid[1]


def forward_tokens(
    encoder: VisionTransformer,
    images: torch.Tensor,
    mask: torch.Tensor | None = None,
    mask_token: torch.Tensor | None = None,
) -> torch.Tensor:
    """The encoder's final normalised tokens for images of any size, optionally masked.

    The position embedding is resampled (bicubic) on the fly when the image's patch grid differs
    from the encoder's, so one encoder takes DINO's global and local crops. With `mask`, the
    embeddings of the masked patches are replaced by `mask_token` before the positions are
    added (the BEiT/iBOT/MaskFeat convention: the encoder sees every position).

    Args:
        encoder: A timm ViT with a class token.
        images: `[B, C, H, W]`, H and W divisible by the patch size.
        mask: Optional `[B, N]` over the image's patch grid, 1 (or True) = masked.
        mask_token: `[1, 1, D]`, required with `mask`.

    Returns:
        `[B, 1 + N, D]`: the class token, then the patch tokens in row-major order.
    """
    x = _embed(encoder, images, mask, mask_token)
    return encoder.norm(encoder.blocks(x))


def block_tokens(
    encoder: VisionTransformer, images: torch.Tensor, blocks: list[int]
) -> list[torch.Tensor]:
    """The tokens after each of the listed blocks, through the encoder's final norm.

    Images of any size, as in `forward_tokens`; the blocks after the last listed one are not
    run. The final LayerNorm is applied to every output, so features of different depths come
    on one scale (DINOv2's choice for its dense evaluations).

    Args:
        encoder: A timm ViT with a class token.
        images: `[B, C, H, W]`, H and W divisible by the patch size.
        blocks: Block indices, 0-based, ascending.

    Returns:
        One `[B, 1 + N, D]` tensor per listed block, in the order given.
    """
    wanted = set(blocks)
    x, out = _embed(encoder, images), {}
    for i, block in enumerate(encoder.blocks[: max(blocks) + 1]):
        x = block(x)
        if i in wanted:
            out[i] = encoder.norm(x)
    return [out[i] for i in blocks]


def _embed(
    encoder: VisionTransformer,
    images: torch.Tensor,
    mask: torch.Tensor | None = None,
    mask_token: torch.Tensor | None = None,
) -> torch.Tensor:
    """Patch embedding, optional masking, class token and positions: `[B, 1 + N, D]`."""
    if band_groups_of(encoder) is not None:
        raise ValueError(
            "this needs the plain patch embedding: an encoder with band groups works with MAE, "
            "the two-view methods, features, kNN, linear and pixel probes, and fine-tuning"
        )
    patch = encoder.patch_embed
    x = patch.proj(images)  # [B, D, h, w]
    grid = tuple(x.shape[-2:])
    x = patch.norm(x.flatten(2).transpose(1, 2))
    if mask is not None:
        if mask_token is None:
            raise ValueError("a mask needs a mask_token")
        w = mask.unsqueeze(-1).to(x.dtype)
        x = x * (1 - w) + mask_token.to(x.dtype) * w
    pos = encoder.pos_embed
    if grid != patch_grid(encoder):
        pos = resample_abs_pos_embed(
            pos, new_size=list(grid), old_size=list(patch_grid(encoder)), num_prefix_tokens=1
        )
    cls = (encoder.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x + pos[:, 1:]], dim=1)
    return encoder.norm_pre(x)


def pooled_features(encoder: VisionTransformer, images: torch.Tensor, pool: str) -> torch.Tensor:
    """One feature vector per image from the encoder's final normalised tokens.

    Args:
        encoder: The ViT encoder.
        images: Normalised images `[B, C, H, W]` at the encoder's input size.
        pool: "cls" for the class token, "mean" for the mean of the patch tokens.

    Returns:
        Features `[B, embed_dim]`.
    """
    tokens = encoder.forward_features(images)  # [B, 1 + N, D]
    return pool_tokens(tokens, pool, encoder.num_prefix_tokens)


def pool_tokens(tokens: torch.Tensor, pool: str, prefix: int = 1) -> torch.Tensor:
    """`[B, prefix + N, D]` tokens to `[B, D]`: the class token ("cls") or the mean of the
    patch tokens after the `prefix` ones ("mean")."""
    if pool == "cls":
        return tokens[:, 0]
    if pool == "mean":
        return tokens[:, prefix:].mean(dim=1)
    raise ValueError(f"unknown pooling {pool!r}; choose one of {', '.join(POOLS)}")
