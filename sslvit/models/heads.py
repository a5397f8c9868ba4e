"""Projection, prediction and DINO heads that sit on top of an encoder during pretraining.

Heads use BatchNorm as the papers do. In training a BatchNorm layer needs more than one sample
per batch: the training loop drops the incomplete last batch, and pretraining rejects batches
of one. Heads are never exported; evaluation uses the encoder alone, in eval mode.
"""

import torch
import torch.nn.functional as F
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

    def forward_pre_norm(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output and the last linear layer's output before the last norm normalises it.

        A last BatchNorm gives every dimension unit variance over the batch, so its output keeps
        the look of a healthy spread even when the network collapses; the collapse monitor
        watches the tensor before it. Without a last norm both tensors are the output.
        """
        modules = list(self)
        if isinstance(modules[-1], nn.BatchNorm1d):
            for module in modules[:-1]:
                x = module(x)
            return modules[-1](x), x
        x = super().forward(x)
        return x, x


class DINOHead(nn.Module):
    """MLP (GELU) to a bottleneck, L2 normalisation, then a weight-normalised linear layer to
    `out_dim` prototypes whose norm is fixed to 1 with `norm_last_layer`.

    `batch_norm` puts a BatchNorm after each hidden layer (the official code's
    `use_bn_in_head`, off for ViTs in the paper); inputs may have any leading dimensions (iBOT's
    patch tokens `[B, N, D]`), which the BatchNorm pools together.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        layers: int = 3,
        norm_last_layer: bool = True,
        batch_norm: bool = False,
    ):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (layers - 1) + [bottleneck_dim]
        modules: list[nn.Module] = []
        for i in range(layers):
            modules.append(nn.Linear(dims[i], dims[i + 1]))
            if i < layers - 1:
                if batch_norm:
                    modules.append(nn.BatchNorm1d(dims[i + 1]))
                modules.append(nn.GELU())
        self.mlp = nn.Sequential(*modules)
        self.batch_norm = batch_norm
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # weight normalisation written out: direction `last_v`, scale `last_g` (frozen at 1)
        self.last_v = nn.Parameter(torch.empty(out_dim, bottleneck_dim))
        nn.init.trunc_normal_(self.last_v, std=0.02)
        self.last_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not norm_last_layer)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor, select: torch.Tensor | None = None) -> torch.Tensor:
        """Logits `[..., out_dim]` for `x` `[..., in_dim]`; with a boolean `select` shaped like
        `x`'s leading dimensions, only the selected rows' logits `[M, out_dim]` (row-major
        order), computed only for them (iBOT's student needs its masked patches only). With
        BatchNorm the MLP still sees every row, so the statistics do not change."""
        lead = x.shape[:-1]
        x = x.flatten(0, -2)
        rows = None if select is None else select.flatten().bool()
        if rows is not None and not self.batch_norm:
            x, rows = x[rows], None
        x = F.normalize(self.mlp(x), dim=-1)
        if rows is not None:
            x = x[rows]
        weight = self.last_g * F.normalize(self.last_v, dim=1)
        logits = x @ weight.T
        return logits if select is not None else logits.view(*lead, -1)
