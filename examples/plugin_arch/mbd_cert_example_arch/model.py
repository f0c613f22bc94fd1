"""The torch model and the forget and retain objectives of "late-fusion-linear".

Each modality's input [n, T, d] is averaged over time and mapped by a linear encoder
to an embedding. A modality that is absent, forced to reconstruction or deleted gets
its generator's reconstruction, computed from the mean of the other modalities' real
embeddings (zero where none is observed). Each slot gets a scalar score from its head,
and the prediction is ``output_scale * tanh(fusion(scores))``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mbd_cert.errors import InputError


class LateFusionModel(nn.Module):
    """Late fusion of per-modality scores, with per-modality linear encoders."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        self.modalities: list[str] = list(config["modalities"])
        self.deleted = frozenset(config["deleted_modalities"])
        self.output_scale = float(config["output_scale"])
        width = int(config["embed_dim"])
        self.encoders = nn.ModuleDict(
            {m: nn.Linear(int(config["input_dims"][m]), width) for m in self.modalities})
        self.generators = nn.ModuleDict({m: nn.Linear(width, width) for m in self.modalities})
        self.heads = nn.ModuleDict({m: nn.Linear(width, 1) for m in self.modalities})
        self.fusion = nn.Linear(len(self.modalities), 1)

    def forward(self, inputs: Mapping[str, torch.Tensor], present: torch.Tensor,
                force_reconstruct: frozenset[str] = frozenset()) -> torch.Tensor:
        """Return predictions [n] in [-output_scale, output_scale]."""
        present = present.to(torch.bool)
        observed = {}
        real = {}
        for index, modality in enumerate(self.modalities):
            column = present[:, index]
            if modality in self.deleted:
                # The deleted encoder is never run: its input is ignored.
                column = torch.zeros_like(column)
            else:
                real[modality] = self.encoders[modality](inputs[modality].mean(dim=1))
            observed[modality] = column

        scores = []
        for modality in self.modalities:
            others = [m for m in self.modalities if m != modality and m in real]
            weights = [observed[m].to(real[m].dtype).unsqueeze(1) for m in others]
            dtype = self.fusion.weight.dtype
            total = sum((real[m] * w for m, w in zip(others, weights, strict=True)),
                        torch.zeros(present.shape[0], self.generators[modality].in_features,
                                    dtype=dtype, device=present.device))
            count = sum(weights, torch.zeros(present.shape[0], 1, dtype=dtype,
                                             device=present.device))
            reconstructed = self.generators[modality](total / count.clamp(min=1.0))
            use_real = observed[modality] & (modality not in force_reconstruct)
            slot = reconstructed
            if modality in real:
                slot = torch.where(use_real.unsqueeze(1), real[modality], reconstructed)
            scores.append(self.heads[modality](slot))
        raw = self.fusion(torch.cat(scores, dim=1)).squeeze(1)
        return self.output_scale * torch.tanh(raw)


def _as_model(module: nn.Module, modality: str) -> LateFusionModel:
    if not isinstance(module, LateFusionModel):
        raise InputError(f"the late-fusion-linear objectives need a LateFusionModel, "
                         f"got {type(module).__name__}")
    if modality not in module.modalities:
        raise InputError(f"modality {modality!r} is not one of {module.modalities}")
    return module


def forget_objective(module: nn.Module, batch: Mapping[str, Any], modality: str) -> torch.Tensor:
    """Return (f(x) - f(x with the modality reconstructed))^2 per sample, 0 where absent."""
    model = _as_model(module, modality)
    index = model.modalities.index(modality)
    prediction = model(batch["inputs"], batch["present"])
    forced = model(batch["inputs"], batch["present"], frozenset({modality}))
    squared = (prediction - forced) ** 2
    return torch.where(batch["present"][:, index].to(torch.bool), squared,
                       torch.zeros_like(squared))


def retain_objective(module: nn.Module, batch: Mapping[str, Any], modality: str) -> torch.Tensor:
    """Return |f(x) - y| per sample of the model with ``modality`` deleted."""
    model = _as_model(module, modality)
    if modality not in model.deleted:
        raise InputError(f"modality {modality!r} is not deleted in this model",
                         hint="build the model with the modality in deleted_modalities")
    prediction = model(batch["inputs"], batch["present"])
    return (prediction - batch["label"].to(prediction.dtype)).abs()
