"""Grouped patch embedding for images with many bands: one token per spatial patch and band group.

The plain ViT patch embedding projects all C bands of a patch into one token, so a 200-band
patch becomes one vector and the encoder cannot attend across parts of the spectrum. Here the
bands are split into K contiguous groups; each group has its own linear projection of its
`p x p x g` values (a grouped convolution), and every spatial patch gives K tokens. A learned
group embedding, added to the spatial position embedding, tells the encoder which group a token
came from. This is the group-channel tokenisation of SatMAE (Cong et al., "SatMAE: Pre-training
Transformers for Temporal and Multi-Spectral Satellite Imagery", NeurIPS 2022,
https://arxiv.org/abs/2207.08051), with the group code added rather than concatenated.

The sequence has K x N tokens (N spatial patches), so memory grows with the number of groups,
not with the number of bands: a token per band would make 200 x N tokens of a 200-band image.

Token order is group-major: token `k * N + i` is group k at spatial patch i (row-major), so
`[B, K * N, D]` views as `[B, K, N, D]`. MAE masks these tokens one by one.

Bands are split as evenly as possible: group k holds bands `floor(k C / K)` to
`floor((k + 1) C / K) - 1`. Groups one band short repeat their last band, so every group's
projection has the same `g = ceil(C / K)` inputs.

timm builds the encoder with `embed_layer=grouped_embed_layer(K)`; the state dict keeps timm's
key names plus `patch_embed.group_embed`, so timm loads it whenever this module is importable.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

# BEiT/MAE-style init scale of learned tokens.
_TOKEN_INIT_STD = 0.02


def band_ranges(in_chans: int, n_groups: int) -> list[tuple[int, int]]:
    """`(start, stop)` of each group's bands, contiguous and as even as possible."""
    if not 1 <= n_groups <= in_chans:
        raise ValueError(f"band_groups {n_groups}: must be between 1 and the {in_chans} bands")
    edges = [k * in_chans // n_groups for k in range(n_groups + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


class GroupedPatchEmbed(nn.Module):
    """Patch embedding with one token per (band group, spatial patch); timm's `embed_layer` API.

    Args:
        img_size: Input side, or (height, width).
        patch_size: Patch side p.
        in_chans: Bands C.
        embed_dim: Token width D.
        band_groups: Number of groups K, 1..C.
        bias: Whether the projections have a bias.
        device, dtype: Where and how to create the parameters (timm passes them).

    Attributes:
        grid_size: Spatial patch grid (rows, columns).
        num_patches: Tokens per image, K x rows x columns (timm sizes `pos_embed` from it).
        group_size: Inputs per group g = ceil(C / K).
        proj: `Conv2d(K g, K D, p, stride p, groups=K)`: group k's weights see only its bands.
        group_embed: `[1, K, D]`, learned.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        band_groups: int = 1,
        bias: bool = True,
        dynamic_img_pad: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if dynamic_img_pad:
            raise ValueError("the grouped patch embedding does not pad images")
        self.img_size, self.patch_size = _pair(img_size), _pair(patch_size)
        self.grid_size = tuple(s // p for s, p in zip(self.img_size, self.patch_size, strict=True))
        self.n_groups = band_groups
        self.in_chans = in_chans
        self.ranges = band_ranges(in_chans, band_groups)
        self.group_size = max(stop - start for start, stop in self.ranges)
        self.num_patches = band_groups * self.grid_size[0] * self.grid_size[1]
        g = self.group_size
        index = [min(start + j, stop - 1) for start, stop in self.ranges for j in range(g)]
        self.register_buffer("band_index", torch.tensor(index), persistent=False)
        # where each band's first copy sits among the K * g gathered inputs
        first = [
            k * g + j for k, (start, stop) in enumerate(self.ranges) for j in range(stop - start)
        ]
        self.register_buffer("band_first", torch.tensor(first), persistent=False)
        self.proj = nn.Conv2d(
            band_groups * self.group_size,
            band_groups * embed_dim,
            kernel_size=self.patch_size,
            stride=self.patch_size,
            groups=band_groups,
            bias=bias,
            device=device,
            dtype=dtype,
        )
        self.group_embed = nn.Parameter(
            torch.zeros(1, band_groups, embed_dim, device=device, dtype=dtype)
        )
        nn.init.normal_(self.group_embed, std=_TOKEN_INIT_STD)
        self.norm = nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images `[B, C, H, W]` (H, W the encoder's size) to tokens `[B, K * N, D]`."""
        b, c, h, w = images.shape
        if (h, w) != self.img_size or c != self.in_chans:
            raise ValueError(
                f"grouped patch embedding built for {self.in_chans} x {self.img_size[0]} x "
                f"{self.img_size[1]}, got {c} x {h} x {w}"
            )
        x = self.proj(images[:, self.band_index])  # [B, K*D, rows, cols]
        x = x.reshape(b, self.n_groups, -1, x.shape[-2] * x.shape[-1]).transpose(2, 3)
        x = x + self.group_embed.unsqueeze(2)  # [B, K, N, D]
        return x.flatten(1, 2)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """Each token's pixels, in token order: `[B, C, H, W]` -> `[B, K * N, p * p * g]`.

        Inside a token the values run over rows, then columns, then the group's bands (as
        `sslvit.methods.mae.patchify` does for whole patches).
        """
        b = images.shape[0]
        (p, q), (rows, cols) = self.patch_size, self.grid_size
        x = images[:, self.band_index].reshape(b, self.n_groups, self.group_size, rows, p, cols, q)
        x = torch.einsum("bkgrpcq->bkrcpqg", x)
        return x.reshape(b, self.num_patches, p * q * self.group_size)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """Inverse of `patchify`: `[B, K * N, p * p * g]` -> `[B, C, H, W]`.

        A band repeated to fill a short group takes its first copy's values.
        """
        b = tokens.shape[0]
        (p, q), (rows, cols) = self.patch_size, self.grid_size
        x = tokens.reshape(b, self.n_groups, rows, cols, p, q, self.group_size)
        x = torch.einsum("bkrcpqg->bkgrpcq", x).reshape(b, -1, rows * p, cols * q)
        return x[:, self.band_first]

    def position_table(self, spatial: torch.Tensor) -> torch.Tensor:
        """A spatial table `[1, n_prefix + N, D]` repeated per group: `[1, n_prefix + K N, D]`."""
        n_prefix = spatial.shape[1] - self.grid_size[0] * self.grid_size[1]
        patches = spatial[:, n_prefix:].repeat(1, self.n_groups, 1)
        return torch.cat([spatial[:, :n_prefix], patches], dim=1)


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def grouped_embed_layer(band_groups: int):
    """The `embed_layer` argument of `timm.create_model` for K = `band_groups` groups."""
    return functools.partial(GroupedPatchEmbed, band_groups=band_groups)


def band_groups_of(encoder: nn.Module) -> GroupedPatchEmbed | None:
    """The encoder's grouped patch embedding, or None for the plain one."""
    embed = getattr(encoder, "patch_embed", None)
    return embed if isinstance(embed, GroupedPatchEmbed) else None
