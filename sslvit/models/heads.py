"""Projection and prediction heads that sit on top of an encoder during pretraining.

Heads use BatchNorm as the papers do. In training a BatchNorm layer needs more than one sample
per batch: the training loop drops the incomplete last batch, and pretraining rejects batches
of one. Heads are never exported; evaluation uses the encoder alone, in eval mode.
"""

from torch import nn

LAST_NORMS = ("none", "bn", "bn_no_affine")


class MLPHead(nn.Sequential):
    """Linear layers with BatchNorm and ReLU between them.

    Layout for `layers=3`: Linear-BN-ReLU, Linear-BN-ReLU, Linear[-last norm]. Hidden linear
    layers have no bias when a BatchNorm follows them (the bias would be cancelled).

    Args:
        in_dim: Input width (the encoder's embedding width).
        hidden_dim: Width of the hidden layers.
        out_dim: Output width.
        layers: Number of linear layers, at least 1.
        last_norm: "none", "bn" or "bn_no_affine": the norm after the last linear layer
            (SimSiam's and MoCo v3's projectors end with a BatchNorm without affine terms).
    """

    def __init__(
        self, in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, last_norm: str = "none"
    ):
        if layers < 1:
            raise ValueError(f"an MLP head needs at least 1 layer, got {layers}")
        if last_norm not in LAST_NORMS:
            raise ValueError(f"last_norm {last_norm!r}: choose one of {', '.join(LAST_NORMS)}")
        modules: list[nn.Module] = []
        width = in_dim
        for _ in range(layers - 1):
            modules += [
                nn.Linear(width, hidden_dim, bias=False),
                nn.BatchNorm1d(hidden_dim),
                nn.ReLU(inplace=True),
            ]
            width = hidden_dim
        modules.append(nn.Linear(width, out_dim, bias=last_norm == "none"))
        if last_norm != "none":
            modules.append(nn.BatchNorm1d(out_dim, affine=last_norm == "bn"))
        super().__init__(*modules)
        self.out_dim = out_dim
