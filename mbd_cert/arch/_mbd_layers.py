"""Per-modality layers of the "mbd-sentiment" model (encoder and generator).

The attribute names here are parts of the tensor names of format 1
(``encoders.<m>.proj.weight``, ``generators.<m>.net.0.weight``), so renaming one breaks
every certificate.

Stability: internal; the tensor names are fixed by format 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as functional
from torch import nn


class Encoder(nn.Module):
    """Map a modality's sequence [n, T, d] to its shared [n, k] and private [n, q] parts."""

    def __init__(self, input_dim: int, hidden_dim: int, shared_dim: int, private_dim: int,
                 dropout: float) -> None:
        super().__init__()
        # NOTE: with input_dim == 1 LayerNorm maps every step to its bias, so a
        # one-feature modality carries no information. Real features have d >= 35.
        self.norm = nn.LayerNorm(input_dim)
        self.proj = nn.Linear(input_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.shared = nn.Linear(hidden_dim, shared_dim)
        self.private = nn.Linear(hidden_dim, private_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: [n, T, d]. A step whose features are all zero is padding (the data
        # contract pads with zeros) and is left out of the mean.
        valid = (x != 0).any(dim=-1).to(x.dtype)  # [n, T]
        hidden = self.dropout(functional.gelu(self.proj(self.norm(x))))  # [n, T, h]
        count = valid.sum(dim=1, keepdim=True).clamp_min(1.0)  # [n, 1]
        pooled = (hidden * valid.unsqueeze(-1)).sum(dim=1) / count  # [n, h]
        return self.shared(pooled), self.private(pooled)


class Generator(nn.Module):
    """Reconstruct a modality's shared part [n, k] from the other modalities' parts."""

    def __init__(self, input_dim: int, hidden_dim: int, shared_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, shared_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.net(x)
        return result
