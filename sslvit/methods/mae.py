"""MAE: masked autoencoders (He et al., "Masked Autoencoders Are Scalable Vision Learners",
CVPR 2022, https://arxiv.org/abs/2111.06377).

Mask convention, used everywhere in sslvit: `mask` is `[B, N]` over the patch grid in row-major
order, 1 = hidden from the encoder, 0 = visible. `ids_keep` `[B, n_keep]` lists the visible
patch indices of each sample; `ids_restore` `[B, N]` maps the shuffled order back to the grid.
"""

from dataclasses import dataclass

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from sslvit.methods.base import CheckedConfig, Method, pool_limit
from sslvit.methods.common import CollapseMonitor
from sslvit.methods.registry import register
from sslvit.models.band_groups import band_groups_of
from sslvit.models.pos_embed import sincos_2d


@dataclass
class MAEConfig(CheckedConfig):
    """MAE settings; defaults follow the paper except the decoder size.

    `decoder_embed_dim`/`decoder_depth` left as None pick the paper's 512 wide, 8 deep decoder
    for encoders of width 768 and more (ViT-Base, ViT-Large), and a decoder half as wide as the
    encoder and 2 blocks deep for ViT-Tiny and ViT-Small, whose encoders would otherwise be
    smaller than their decoders. Heads default to one per 32 channels.
    """

    name: str = "mae"
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True
    decoder_embed_dim: int | None = None
    decoder_depth: int | None = None
    decoder_num_heads: int | None = None
    pool: str = "cls"

    def limits(self) -> list:
        sizes = ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")
        return [
            pool_limit(self),
            ("mask_ratio", 0 <= self.mask_ratio < 1, "in [0, 1)"),
            *[(n, getattr(self, n) is None or getattr(self, n) >= 1, "at least 1") for n in sizes],
        ]


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cut images into flattened patches.

    Args:
        images: `[B, C, H, W]`, H and W divisible by `patch_size`.
        patch_size: Patch side p.

    Returns:
        `[B, N, p*p*C]` with N = (H/p)(W/p) in row-major grid order; inside a patch the values
        run over rows, then columns, then channels.
    """
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum("bcgphq->bghpqc", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of `patchify`: `[B, N, p*p*C]` back to `[B, C, H, W]` for a (rows, cols) grid."""
    b, n, d = patches.shape
    p = patch_size
    gh, gw = grid
    c = d // (p * p)
    x = patches.reshape(b, gh, gw, p, p, c)
    x = torch.einsum("bghpqc->bcgphq", x)
    return x.reshape(b, c, gh * p, gw * p)


def random_masking(
    batch_size: int,
    n_patches: int,
    mask_ratio: float,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw an independent uniform random mask for each sample.

    Returns:
        `(ids_keep [B, n_keep], ids_restore [B, N], mask [B, N])`, with
        n_keep = round(N * (1 - mask_ratio)) and mask 1 = hidden.
    """
    n_keep = int(round(n_patches * (1.0 - mask_ratio)))
    if not 1 <= n_keep <= n_patches:
        raise ValueError(
            f"mask ratio {mask_ratio} leaves {n_keep} of {n_patches} patches visible; "
            "at least one must stay visible"
        )
    noise = torch.rand(batch_size, n_patches, device=device, generator=generator)
    # the smallest noise values are kept, so a sort gives a uniform random subset
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :n_keep]
    mask = torch.ones(batch_size, n_patches, device=device)
    mask[:, :n_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_keep, ids_restore, mask


def masked_patch_loss(
    pred: torch.Tensor,
    patches: torch.Tensor,
    mask: torch.Tensor,
    norm_pix_loss: bool,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error over the hidden patches only, and inside a patch over its valid values.

    Args:
        pred: Predicted patches `[B, N, P]`.
        patches: Target patches `[B, N, P]` from `patchify`.
        mask: `[B, N]`, 1 = hidden; only these patches count.
        norm_pix_loss: Normalise each target patch by the mean and variance of its valid values
            first.
        valid: `[B, N, P]`, 1 where the target value is valid (not no-data), patchified like
            `patches`; None = all valid. Invalid values, whatever they hold, change nothing.

    Returns:
        Scalar loss: each hidden patch's squared error averaged over its valid values, then
        averaged over the hidden patches that have any valid value; 0 when none has.
    """
    target = patches.float()
    if valid is None:
        valid = torch.ones_like(target, dtype=torch.bool)
    else:
        valid = valid > 0
        target = torch.where(valid, target, 0.0)
    if norm_pix_loss:
        mean, var = _patch_stats(target, valid)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    n_valid = valid.sum(dim=-1)  # [B, N]
    squared = torch.where(valid, pred.float() - target, 0.0).pow(2)
    per_patch = squared.sum(dim=-1) / n_valid.clamp_min(1)
    counted = mask * (n_valid > 0)
    return (per_patch * counted).sum() / counted.sum().clamp_min(1)


def _patch_stats(target: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance of each patch's valid values: `[B, N, P]` -> `[B, N, 1]` each.

    `target` must hold finite numbers (any) at invalid positions.
    """
    n_valid = valid.sum(dim=-1, keepdim=True)
    mean = torch.where(valid, target, 0.0).sum(dim=-1, keepdim=True) / n_valid.clamp_min(1)
    squares = torch.where(valid, target - mean, 0.0).pow(2).sum(dim=-1, keepdim=True)
    return mean, squares / (n_valid - 1).clamp_min(1)


def _init_mae_weights(module: nn.Module) -> None:
    # the paper initialises every linear layer with Xavier-uniform
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@register("mae")
class MAE(Method):
    """Masked autoencoder around a timm ViT encoder.

    The encoder sees only the visible patches plus the class token; a lighter decoder with its
    own width and depth receives the encoded tokens with a shared learned mask token at every
    hidden position, adds fixed 2-D sine-cosine position embeddings, and predicts the pixels of
    every patch; the loss counts the hidden patches only.

    With an encoder whose patch embedding has band groups (`sslvit.models.band_groups`), a token
    is one group of bands at one patch: masking hides tokens, the decoder adds a learned group
    embedding of its own to the position table, and each token predicts its own bands' pixels.
    """

    config_class = MAEConfig
    keeps_invalid_pixels = True

    def __init__(self, config: MAEConfig, encoder: VisionTransformer):
        config.check()
        super().__init__(config, encoder)
        self.pool = config.pool
        self.patch_size = encoder.patch_embed.patch_size[0]
        self.grid = tuple(encoder.patch_embed.grid_size)
        width = encoder.embed_dim
        in_chans = encoder.patch_embed.proj.in_channels
        dec_dim = config.decoder_embed_dim or (512 if width >= 768 else width // 2)
        dec_depth = config.decoder_depth or (8 if width >= 768 else 2)
        dec_heads = config.decoder_num_heads or max(1, dec_dim // 32)
        groups = band_groups_of(encoder)
        self.n_groups = groups.n_groups if groups else 1
        token_chans = groups.group_size if groups else in_chans

        # the encoder's positions are the fixed sine-cosine table, as in the paper
        encoder.pos_embed.requires_grad_(False)
        self.decoder_embed = nn.Linear(width, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        positions = sincos_2d(dec_dim, *self.grid)
        if groups:
            positions = groups.position_table(positions)
        self.register_buffer("decoder_pos_embed", positions, persistent=False)
        # tells a mask token which group's bands to predict; the positions alone cannot
        self.decoder_group_embed = (
            nn.Parameter(torch.zeros(1, self.n_groups, dec_dim)) if groups else None
        )
        self.decoder_blocks = nn.ModuleList(
            Block(dec_dim, dec_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(dec_depth)
        )
        self.decoder_norm = nn.LayerNorm(dec_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(dec_dim, self.patch_size**2 * token_chans)
        self._initialize()
        # logged, never warned on: raw ViT class tokens share a large common direction, so their
        # spread is low in healthy runs too (MAE's pixel targets cannot collapse to a point)
        self.monitor = CollapseMonitor("class-token embedding", threshold=0.0)

    def _initialize(self) -> None:
        self.apply(_init_mae_weights)
        proj = self.encoder.patch_embed.proj.weight
        # one linear map per band group (a single one for the plain embedding)
        for part in proj.view(self.n_groups, proj.shape[0] // self.n_groups, -1):
            nn.init.xavier_uniform_(part)
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        if self.decoder_group_embed is not None:
            nn.init.normal_(self.decoder_group_embed, std=0.02)

    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """Each token's pixels `[B, L, P]`: `patchify`, or per band group with band groups."""
        groups = band_groups_of(self.encoder)
        return groups.patchify(images) if groups else patchify(images, self.patch_size)

    def to_image(self, tokens: torch.Tensor) -> torch.Tensor:
        """Inverse of `targets`: `[B, L, P]` -> `[B, C, H, W]` (C = P / p^2 without groups)."""
        groups = band_groups_of(self.encoder)
        if groups:
            return groups.unpatchify(tokens)
        return unpatchify(tokens, self.patch_size, self.grid)

    def encode_visible(self, images: torch.Tensor, mask_ratio: float, generator=None):
        """Encode the visible patches of a random mask.

        Args:
            images: `[B, C, H, W]` normalised.
            mask_ratio: Fraction of patches hidden.

        Returns:
            `(latent [B, 1 + n_keep, D], mask [B, N], ids_restore [B, N])`.
        """
        enc = self.encoder
        x = enc.patch_embed(images) + enc.pos_embed[:, enc.num_prefix_tokens :]  # [B, N, D]
        ids_keep, ids_restore, mask = random_masking(
            x.shape[0], x.shape[1], mask_ratio, x.device, generator
        )
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = enc.norm_pre(x)
        x = enc.blocks(x)
        return enc.norm(x), mask, ids_restore

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predict every patch from the encoded visible tokens.

        Args:
            latent: `[B, 1 + n_keep, D]` from `encode_visible`.
            ids_restore: `[B, N]`.

        Returns:
            Predicted patches `[B, N, p*p*C]`.
        """
        x = self.decoder_embed(latent)
        b, n = ids_restore.shape
        n_hidden = n + 1 - x.shape[1]
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(b, n_hidden, -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        if self.decoder_group_embed is not None:
            codes = self.decoder_group_embed.repeat_interleave(n // self.n_groups, dim=1)
            x = torch.cat([x[:, :1], x[:, 1:] + codes], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        # invalid (no-data) pixels arrive as NaN: the encoder sees them as the band mean, 0
        # after normalisation, and the loss leaves them out
        valid = torch.isfinite(images)
        images = torch.where(valid, images, 0.0)
        latent, mask, ids_restore = self.encode_visible(images, self.config.mask_ratio)
        pred = self.decode(latent, ids_restore)
        target = self.targets(images)
        valid = self.targets(valid.to(images.dtype))
        loss = masked_patch_loss(pred, target, mask, self.config.norm_pix_loss, valid)
        return loss, {"emb_std": self.monitor(latent[:, 0])}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, generator=None):
        """Reconstruct images from a random mask, for pictures.

        With `norm_pix_loss` the prediction is in per-patch normalised units; it is mapped back
        with each original patch's mean and variance, so the picture is in the input's units.
        Invalid (NaN) pixels go in as 0, as in training.

        Returns:
            `(recon [B, C, H, W], mask_pixels [B, 1, H, W])` with mask 1 = hidden; with band
            groups `mask_pixels` is `[B, C, H, W]`, since a token hides only its own bands.
        """
        valid = torch.isfinite(images)
        images = torch.where(valid, images, 0.0)
        latent, mask, ids_restore = self.encode_visible(images, self.config.mask_ratio, generator)
        pred = self.decode(latent, ids_restore).float()
        if self.config.norm_pix_loss:
            target = self.targets(images).float()
            mean, var = _patch_stats(target, self.targets(valid.float()) > 0)
            pred = pred * (var + 1.0e-6) ** 0.5 + mean
        recon = self.to_image(pred)
        grouped = band_groups_of(self.encoder) is not None
        per_token = pred.shape[-1] if grouped else self.patch_size**2
        mask_pixels = self.to_image(mask.unsqueeze(-1).expand(-1, -1, per_token))
        return recon, mask_pixels
