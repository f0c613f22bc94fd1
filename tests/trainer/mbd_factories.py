"""Factories for the model and trainer tests: tiny corpora, configs and batches in memory."""

from __future__ import annotations

import numpy as np
import torch

from trainer.data import Corpus, Split

MODALITIES = ["text", "audio", "vision"]
DIMS = {"text": 6, "audio": 4, "vision": 5}
STEPS = {"text": 4, "audio": 3, "vision": 2}


def tiny_config(**overrides: object) -> dict[str, object]:
    """Return a small valid "mbd-sentiment" config."""
    config: dict[str, object] = {
        "modalities": list(MODALITIES),
        "input_dims": dict(DIMS),
        "seq_len": dict(STEPS),
        "hidden_dim": 8,
        "shared_dim": 4,
        "private_dim": 3,
        "fusion_hidden": 8,
        "dropout": 0.0,
    }
    config.update(overrides)
    return config


def _split(rng: np.random.Generator, rows: int, maps: dict[str, np.ndarray],
           missing_rate: float, prefix: str) -> Split:
    # Sentiment z drives every modality linearly; the label is 1.5 z clipped to [-3, 3].
    z = rng.standard_normal(rows)
    present = rng.random((rows, len(MODALITIES))) >= missing_rate
    nothing = ~present.any(axis=1)
    present[nothing, 0] = True
    features = {}
    for j, name in enumerate(MODALITIES):
        signal = z[:, None, None] * maps[name][None, None, :]
        noise = 0.5 * rng.standard_normal((rows, STEPS[name], DIMS[name]))
        values = (signal + noise).astype(np.float32)
        values[~present[:, j]] = 0.0
        features[name] = values
    return Split(
        features=features,
        present=present,
        labels=np.clip(1.5 * z, -3, 3).astype(np.float32),
        attributes={"audio_private": rng.integers(0, 2, rows).astype(np.int64)},
        ids=[f"{prefix}-{i:04d}" for i in range(rows)],
    )


def build_corpus(seed: int = 0, sizes: tuple[int, int, int] = (240, 60, 60),
                 missing_rate: float = 0.2) -> Corpus:
    """Build a tiny three-modality corpus with a linear sentiment signal."""
    rng = np.random.default_rng(seed)
    maps = {name: rng.standard_normal(DIMS[name]) for name in MODALITIES}
    splits = {
        name: _split(rng, rows, maps, missing_rate, name)
        for name, rows in zip(("train", "valid", "test"), sizes, strict=True)
    }
    return Corpus(
        name="synthetic",
        modalities=list(MODALITIES),
        input_dims=dict(DIMS),
        seq_len=dict(STEPS),
        splits=splits,
        info={"seed": seed, "note": "built in tests/trainer/conftest.py"},
    )


def random_batch(rows: int = 7, seed: int = 0,
                 present: np.ndarray | None = None) -> dict[str, object]:
    """Return a batch dict of random inputs for ``tiny_config()``."""
    generator = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(rows, STEPS[m], DIMS[m], generator=generator) for m in MODALITIES}
    if present is None:
        mask = torch.rand(rows, len(MODALITIES), generator=generator) > 0.3
        mask[:, 0] = True
    else:
        mask = torch.as_tensor(present, dtype=torch.bool)
    for j, name in enumerate(MODALITIES):
        inputs[name][~mask[:, j]] = 0.0
    return {"inputs": inputs, "present": mask,
            "label": torch.randn(rows, generator=generator).clamp(-3, 3)}
