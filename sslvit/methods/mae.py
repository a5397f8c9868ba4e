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

from sslvit.methods.base import Method
from sslvit.methods.common import CollapseMonitor
from sslvit.methods.registry import register
from sslvit.models.pos_embed import sincos_2d


@dataclass
class MAEConfig:
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
    pred: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor, norm_pix_loss: bool
) -> torch.Tensor:
    """Mean squared error over the hidden patches only.

    Args:
        pred: Predicted patches `[B, N, P]`.
        patches: Target patches `[B, N, P]` from `patchify`.
        mask: `[B, N]`, 1 = hidden; only these patches count.
        norm_pix_loss: Normalise each target patch by its own mean and variance first.

    Returns:
        Scalar loss: per-patch MSE averaged over the hidden patches.
    """
    target = patches.float()
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    per_patch = (pred.float() - target).pow(2).mean(dim=-1)  # [B, N]
    return (per_patch * mask).sum() / mask.sum()


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
    """

    config_class = MAEConfig

    def __init__(self, config: MAEConfig, encoder: VisionTransformer):
        super().__init__(config, encoder)
        if not 0.0 <= config.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {config.mask_ratio}")
        self.pool = config.pool
        self.patch_size = encoder.patch_embed.patch_size[0]
        self.grid = tuple(encoder.patch_embed.grid_size)
        width = encoder.embed_dim
        in_chans = encoder.patch_embed.proj.in_channels
        dec_dim = config.decoder_embed_dim or (512 if width >= 768 else width // 2)
        dec_depth = config.decoder_depth or (8 if width >= 768 else 2)
        dec_heads = config.decoder_num_heads or max(1, dec_dim // 32)

        # the encoder's positions are the fixed sine-cosine table, as in the paper
        encoder.pos_embed.requires_grad_(False)
        self.decoder_embed = nn.Linear(width, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.register_buffer("decoder_pos_embed", sincos_2d(dec_dim, *self.grid), persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(dec_dim, dec_heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(dec_depth)
        )
        self.decoder_norm = nn.LayerNorm(dec_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(dec_dim, self.patch_size**2 * in_chans)
        self._initialize()
        # logged, never warned on: raw ViT class tokens share a large common direction, so their
        # spread is low in healthy runs too (MAE's pixel targets cannot collapse to a point)
        self.monitor = CollapseMonitor("class-token embedding", threshold=0.0)

    def _initialize(self) -> None:
        self.apply(_init_mae_weights)
        proj = self.encoder.patch_embed.proj.weight
        nn.init.xavier_uniform_(proj.view(proj.shape[0], -1))
        nn.init.normal_(self.encoder.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

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
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        latent, mask, ids_restore = self.encode_visible(images, self.config.mask_ratio)
        pred = self.decode(latent, ids_restore)
        target = patchify(images, self.patch_size)
        loss = masked_patch_loss(pred, target, mask, self.config.norm_pix_loss)
        return loss, {"emb_std": self.monitor(latent[:, 0])}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, generator=None):
        """Reconstruct images from a random mask, for pictures.

        With `norm_pix_loss` the prediction is in per-patch normalised units; it is mapped back
        with each original patch's mean and variance, so the picture is in the input's units.

        Returns:
            `(recon [B, C, H, W], mask_pixels [B, 1, H, W])` with mask 1 = hidden.
        """
        latent, mask, ids_restore = self.encode_visible(images, self.config.mask_ratio, generator)
        pred = self.decode(latent, ids_restore).float()
        if self.config.norm_pix_loss:
            target = patchify(images, self.patch_size).float()
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            pred = pred * (var + 1.0e-6) ** 0.5 + mean
        recon = unpatchify(pred, self.patch_size, self.grid)
        mask_patches = mask.unsqueeze(-1).expand(-1, -1, self.patch_size**2)
        mask_pixels = unpatchify(mask_patches, self.patch_size, self.grid)
        return recon, mask_pixels
