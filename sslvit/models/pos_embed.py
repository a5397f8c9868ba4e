"""Fixed 2-D sine-cosine position embeddings.

The table follows "Attention Is All You Need" (Vaswani et al., 2017) applied separately to the
row and the column index, as used by MAE (He et al., 2022): half of the channels encode the
row, half the column, and inside each half the first quarter of the channels is sin, the second
cos, at frequencies 1 / 10000^(2i/(d/2)).
"""

import torch


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Sine-cosine embedding of 1-D positions.

    Args:
        embed_dim: Output width, even.
        positions: Positions, shape `[M]`.

    Returns:
        Float64 tensor `[M, embed_dim]`: sin in the first half, cos in the second.
    """
    if embed_dim % 2:
        raise ValueError(f"sine-cosine embedding needs an even width, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.double()[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(embed_dim: int, grid_h: int, grid_w: int, n_prefix: int = 1) -> torch.Tensor:
    """The 2-D table for a `grid_h x grid_w` patch grid, with zero rows for prefix tokens.

    Args:
        embed_dim: Token width, divisible by 4.
        grid_h: Patch rows.
        grid_w: Patch columns.
        n_prefix: Leading tokens without a position (the class token), given zeros.

    Returns:
        Float32 tensor `[1, n_prefix + grid_h * grid_w, embed_dim]`, patches in row-major order.
    """
    if embed_dim % 4:
        raise ValueError(f"2-D sine-cosine embedding needs a width divisible by 4, got {embed_dim}")
    rows, cols = torch.meshgrid(
        torch.arange(grid_h, dtype=torch.float64),
        torch.arange(grid_w, dtype=torch.float64),
        indexing="ij",
    )
    table = torch.cat(
        [sincos_1d(embed_dim // 2, rows.flatten()), sincos_1d(embed_dim // 2, cols.flatten())],
        dim=1,
    )
    table = torch.cat([torch.zeros(n_prefix, embed_dim, dtype=torch.float64), table], dim=0)
    return table.float().unsqueeze(0)
