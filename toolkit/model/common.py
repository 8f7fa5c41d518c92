"""Building blocks shared by several EfficientSAM3 modules."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """Linear layers with ReLU between them; optional residual, output norm and sigmoid.

    One class serves the SAM3 detector MLPs (residual / out_norm) and the SAM mask decoder's
    hypernetwork and IoU heads (sigmoid_output); the state-dict names are `layers.N.*` and
    `out_norm.*` as in the checkpoint.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int,
                 residual: bool = False, out_norm: nn.Module | None = None,
                 sigmoid_output: bool = False):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        if residual and input_dim != output_dim:
            raise ValueError("a residual MLP needs input_dim == output_dim")
        self.residual = residual
        self.out_norm = out_norm if out_norm is not None else nn.Identity()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            y = layer(y) if i == last else F.relu(layer(y))
        if self.residual:
            y = y + x
        y = self.out_norm(y)
        return torch.sigmoid(y) if self.sigmoid_output else y


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel dimension of an NCHW tensor."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]
