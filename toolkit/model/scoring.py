"""Query scores: dot product with the pooled prompt (checkpoint ``detector.dot_prod_scoring.``)."""

import math

import torch
from torch import nn

from toolkit.model.common import MLP


class DotProductScoring(nn.Module):
    """Scores every decoder query against the mean of the valid prompt tokens.

    The result is the raw per-layer logit; the detector combines it with the presence logit.
    """

    def __init__(self, d_model: int = 256, mlp_hidden_dim: int = 2048, logit_limit: float = 12.0):
        super().__init__()
        self.prompt_mlp = MLP(
            d_model, mlp_hidden_dim, d_model, 2, residual=True, out_norm=nn.LayerNorm(d_model)
        )
        self.prompt_proj = nn.Linear(d_model, d_model)
        self.hs_proj = nn.Linear(d_model, d_model)
        self.scale = 1.0 / math.sqrt(d_model)
        self.logit_limit = logit_limit

    def forward(self, hs: torch.Tensor, prompt: torch.Tensor, prompt_mask: torch.Tensor) -> torch.Tensor:
        """hs (layers, B, Q, C) batch-first queries, prompt (S, B, C) seq-first,
        prompt_mask (B, S) True = padding. Returns logits (layers, B, Q, 1).
        """
        prompt = self.prompt_mlp(prompt)
        valid = (~prompt_mask).to(prompt.dtype).transpose(0, 1).unsqueeze(-1)  # (S, B, 1)
        pooled = (prompt * valid).sum(dim=0) / valid.sum(dim=0).clamp(min=1.0)  # (B, C)
        pooled = self.prompt_proj(pooled)
        logits = torch.matmul(self.hs_proj(hs), pooled.unsqueeze(-1)) * self.scale
        # Upstream clamps the logits to keep the loss finite; inference keeps the clamp for parity.
        return logits.clamp(min=-self.logit_limit, max=self.logit_limit)
