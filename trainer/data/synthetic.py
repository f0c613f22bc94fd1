"""The bundled synthetic corpus: three modalities generated from a seed with known truth.

Tests use it to assert what a model can and cannot know before and after a modality is
deleted, so every signal in it has a known source. Generation uses only
``numpy.random.Generator`` objects derived from the seed, never global state. The same
seed and options give identical arrays under the same numpy version. Across versions
they may differ, because numpy does not promise stable ``Generator`` streams, and
another BLAS may round the linear algebra differently.

Generative process, with the defaults of :class:`SyntheticConfig`:

1. Shared latent per sample ``u = (z, c1, c2, c3) ~ N(0, I_4)``. ``z`` is the sentiment
   and ``c1..c3`` are content factors that every modality expresses but that do not
   affect the label. Label ``y = clip(label_scale * z, -3, 3)``, ``label_scale = 1.5``.
2. Per modality m (text d=32, audio d=16, vision d=16; all with T=8 steps) a fixed
   random map ``A_m`` (d_m x 4, Gaussian entries with variance 1/4). Its sentiment
   column is scaled by ``sentiment_gain[m]`` (text 0.5, audio 0.6, vision 0.35). Text has
   twice the feature size, so it is still the strongest sentiment source and vision the
   weakest.
3. Temporal structure: each sample has an intensity envelope over its T steps,
   ``e_t = 0.5 + exp(-(t - peak)^2 / (2 * (T/4)^2))`` with ``peak ~ U(0, T-1)``, shared
   by the three modalities (one utterance). Step t of modality m carries
   ``e_t * A_m u``. Frame noise is AR(1) over time with coefficient
   ``noise_ar = 0.6`` and stationary standard deviation ``noise_scale[m]``
   (text 0.8, audio 1.0, vision 1.0).
4. Speakers: ``n_speakers = 40`` speakers, each sample drawn uniformly from the pool
   (the pool is shared by all splits). Speaker s adds a fixed offset
   ``o_{s,m} ~ N(0, speaker_scale^2 I)``, ``speaker_scale = 0.5``, to every step of
   modality m: a speaker-level factor private to each modality and independent of z.
5. Modality-private attributes: ``audio_private`` and ``vision_private``, each
   Bernoulli(0.5) per sample and independent of everything else. Modality m adds
   ``attribute_gain * (2a - 1) * w_m`` (``attribute_gain = 1.0``) to every step, where
   ``w_m`` is a unit direction orthogonal to the columns of ``A_m``. No other modality
   depends on the attribute. It is drawn per sample rather than per speaker: a speaker
   attribute would leak into text and vision through the speaker offsets, so that
   text and vision features would predict it too.
6. Sample-specific noise: a vector ``eta_{i,m} ~ N(0, memorisable_scale^2 I)``,
   ``memorisable_scale = 0.7``, fixed over the T steps of sample i. It is unrelated to
   the label, so a model that fits the training labels beyond what z explains memorises
   it. The resulting loss gap between training and held-out samples is the membership
   signal.
7. Missing modalities: each modality of each sample is absent with probability
   ``missing_rate = 0.2``, independently; a sample that loses all three keeps one,
   chosen uniformly. Absent features are zeros and ``present`` is False.

Default sizes: 1,200 train, 300 valid and 300 test samples; the arrays take about
4 MB and generate in well under a second. The model parameters (maps, directions,
speaker offsets) come from one child seed and each split from its own, so changing a
split's size leaves the other splits unchanged.

Stability: the generative process is part of the test fixtures. Changing it changes
every result measured on the default corpus, so do it only with a new ``version`` in
``info``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mbd_cert.errors import InputError

from . import Corpus, Split
from ._common import DEFAULT_MODALITIES, LABEL_BOUND, check_count

GENERATOR_VERSION = "1"

# Number of latent factors: sentiment z plus three label-free content factors.
_LATENT_DIM = 4

# Max number of feature values (all splits and modalities together), and of speaker
# offset values. 2**25 float64 values take 256 MiB, and generation keeps a few arrays of
# that size at once. The default corpus has 921,600 feature values, so ``n_train`` may
# grow about 35-fold. ``mbd-cert evaluate`` takes these options from ``training.json``,
# where a crafted ``n_train`` of 10**9 would otherwise request about 30 GiB from numpy.
MAX_VALUES = 2**25


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and signal strengths of the synthetic corpus (module docstring, steps 1-7)."""

    n_train: int = 1200
    n_valid: int = 300
    n_test: int = 300
    seq_len: int = 8
    input_dims: dict[str, int] = field(
        default_factory=lambda: {"text": 32, "audio": 16, "vision": 16}
    )
    sentiment_gain: dict[str, float] = field(
        default_factory=lambda: {"text": 0.5, "audio": 0.6, "vision": 0.35}
    )
    noise_scale: dict[str, float] = field(
        default_factory=lambda: {"text": 0.8, "audio": 1.0, "vision": 1.0}
    )
    noise_ar: float = 0.6
    label_scale: float = 1.5
    n_speakers: int = 40
    speaker_scale: float = 0.5
    attribute_gain: float = 1.0
    memorisable_scale: float = 0.7
    missing_rate: float = 0.2

    def validated(self) -> SyntheticConfig:
        """Return self after checking every field.

        Raises:
            InputError: A size is not a positive integer, the corpus would have more
                than :data:`MAX_VALUES` feature values or speaker offset values, a rate or scale
                is not a number in range, or a per-modality table is not a dict naming
                exactly text, audio and vision.
        """
        sizes = {name: check_count(name, getattr(self, name), 1, MAX_VALUES)
                 for name in ("n_train", "n_valid", "n_test", "seq_len", "n_speakers")}
        for table_name in ("input_dims", "sentiment_gain", "noise_scale"):
            table = getattr(self, table_name)
            if not isinstance(table, dict) or sorted(table) != sorted(DEFAULT_MODALITIES):
                raise _invalid(table_name, f"an object with keys {sorted(DEFAULT_MODALITIES)}",
                               sorted(table) if isinstance(table, dict) else table)
        width = 0
        for modality, dim in self.input_dims.items():
            # The attribute direction must be orthogonal to the latent map's columns.
            width += check_count(f"input_dims[{modality!r}]", dim, _LATENT_DIM + 1, MAX_VALUES)
        samples = sizes["n_train"] + sizes["n_valid"] + sizes["n_test"]
        totals = {
            "(n_train + n_valid + n_test) * seq_len * sum(input_dims)":
                samples * sizes["seq_len"] * width,
            "n_speakers * sum(input_dims)": sizes["n_speakers"] * width,
        }
        for formula, total in totals.items():
            if total > MAX_VALUES:
                raise _invalid(formula, f"at most {MAX_VALUES}", total)
        scales = {
            "label_scale": self.label_scale,
            "speaker_scale": self.speaker_scale,
            "attribute_gain": self.attribute_gain,
            "memorisable_scale": self.memorisable_scale,
            **{f"sentiment_gain[{m!r}]": v for m, v in self.sentiment_gain.items()},
            **{f"noise_scale[{m!r}]": v for m, v in self.noise_scale.items()},
        }
        for name, value in scales.items():
            if not _is_finite_number(value) or value < 0:
                raise _invalid(name, "a finite number >= 0", value)
        for name in ("noise_ar", "missing_rate"):
            value = getattr(self, name)
            if not _is_finite_number(value) or not 0.0 <= value < 1.0:
                raise _invalid(name, "a number in [0, 1)", value)
        return self


def _is_finite_number(value: object) -> bool:
    """Return whether ``value`` is a real number, not a bool, with a finite float value."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _invalid(name: str, expected: str, value: object) -> InputError:
    return InputError(
        f"synthetic option {name} must be {expected}, got {value!r}",
        hint="fix the option passed to load_corpus('synthetic', ...)",
        code="E_PARAMETER_INVALID",
    )


@dataclass(frozen=True)
class _ModalityParameters:
    latent_map: np.ndarray  # [d, 4]; column 0 carries z
    attribute_direction: np.ndarray | None  # [d] unit vector, None for text
    speaker_offsets: np.ndarray  # [n_speakers, d]


def load(root: Path | None, seed: int, **options: object) -> Corpus:
    """Generate the synthetic corpus (the ``root`` argument is ignored).

    Args:
        root: Unused; present so every registered loader has the same signature.
        seed: Seed of the whole corpus.
        **options: Fields of :class:`SyntheticConfig`.

    Returns:
        The corpus, with attributes ``audio_private`` and ``vision_private``.

    Raises:
        InputError: An option is unknown or out of range.
    """
    known = {f.name for f in dataclasses.fields(SyntheticConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(
            f"unknown synthetic option(s) {unknown}; accepted: {sorted(known)}",
            hint="check the option name",
            code="E_PARAMETER_INVALID",
        )
    config = SyntheticConfig(**options).validated()  # type: ignore[arg-type]
    return generate(config, seed)


def generate(config: SyntheticConfig, seed: int) -> Corpus:
    """Generate the corpus described in the module docstring.

    Args:
        config: A validated configuration.
        seed: Non-negative seed.

    Returns:
        The synthetic corpus.
    """
    parameter_seed, *split_seeds = np.random.SeedSequence(seed).spawn(4)
    parameters = _draw_parameters(config, np.random.default_rng(parameter_seed))
    sizes = {"train": config.n_train, "valid": config.n_valid, "test": config.n_test}
    splits = {
        name: _draw_split(config, parameters, name, sizes[name], np.random.default_rng(s))
        for name, s in zip(sizes, split_seeds, strict=True)
    }
    return Corpus(
        name="synthetic",
        modalities=list(DEFAULT_MODALITIES),
        input_dims=dict(config.input_dims),
        seq_len={m: config.seq_len for m in DEFAULT_MODALITIES},
        splits=splits,
        info={
            "generator": f"trainer.data.synthetic version {GENERATOR_VERSION}",
            "seed": seed,
            "config": dataclasses.asdict(config),
            "label_transform": "label = clip(label_scale * z, -3, 3), z ~ N(0, 1)",
            "attributes": {
                "audio_private": "Bernoulli(0.5), carried only by the audio features",
                "vision_private": "Bernoulli(0.5), carried only by the vision features",
            },
            "split": "generated independently per split from child seeds of the seed",
        },
    )


def _draw_parameters(
    config: SyntheticConfig, rng: np.random.Generator
) -> dict[str, _ModalityParameters]:
    parameters = {}
    for modality in DEFAULT_MODALITIES:
        dim = config.input_dims[modality]
        latent_map = rng.normal(0.0, 1.0 / np.sqrt(_LATENT_DIM), size=(dim, _LATENT_DIM))
        latent_map[:, 0] *= config.sentiment_gain[modality]
        direction = None
        if modality != "text":
            # Project a random vector off the latent map's column space, so the attribute
            # moves the features along a direction that carries no z and no content.
            basis, _ = np.linalg.qr(latent_map)
            raw = rng.normal(size=dim)
            raw -= basis @ (basis.T @ raw)
            direction = raw / np.linalg.norm(raw)
        offsets = rng.normal(0.0, config.speaker_scale, size=(config.n_speakers, dim))
        parameters[modality] = _ModalityParameters(latent_map, direction, offsets)
    return parameters


def _draw_split(
    config: SyntheticConfig,
    parameters: dict[str, _ModalityParameters],
    split_name: str,
    n: int,
    rng: np.random.Generator,
) -> Split:
    steps = config.seq_len

    # Steps 1, 3, 4 and 5: latent factors, envelope over time, speakers, attributes.
    latent = rng.normal(size=(n, _LATENT_DIM))
    labels = np.clip(config.label_scale * latent[:, 0], -LABEL_BOUND, LABEL_BOUND)
    peaks = rng.uniform(0.0, steps - 1, size=(n, 1))
    width = max(steps / 4.0, 0.5)
    time = np.arange(steps)[None, :]
    envelope = 0.5 + np.exp(-((time - peaks) ** 2) / (2.0 * width**2))  # [n, T]
    speakers = rng.integers(0, config.n_speakers, size=n)
    attributes = {
        "audio_private": rng.integers(0, 2, size=n).astype(np.int64),
        "vision_private": rng.integers(0, 2, size=n).astype(np.int64),
    }

    features = {}
    for modality in DEFAULT_MODALITIES:
        modality_parameters = parameters[modality]
        dim = config.input_dims[modality]
        signal = envelope[:, :, None] * (latent @ modality_parameters.latent_map.T)[:, None, :]
        values = signal + modality_parameters.speaker_offsets[speakers][:, None, :]
        if modality_parameters.attribute_direction is not None:
            sign = 2.0 * attributes[f"{modality}_private"] - 1.0
            values = (
                values
                + config.attribute_gain
                * sign[:, None, None]
                * modality_parameters.attribute_direction[None, None, :]
            )
        # Step 6: the memorisable per-sample vector, constant over time.
        values = values + rng.normal(0.0, config.memorisable_scale, size=(n, 1, dim))
        values = values + _ar1_noise(
            rng, n, steps, dim, config.noise_ar, config.noise_scale[modality]
        )
        features[modality] = values.astype(np.float32)

    # Step 7: missing modalities, at least one kept per sample.
    present = rng.random(size=(n, len(DEFAULT_MODALITIES))) >= config.missing_rate
    empty = np.flatnonzero(~present.any(axis=1))
    present[empty, rng.integers(0, len(DEFAULT_MODALITIES), size=empty.size)] = True
    for column, modality in enumerate(DEFAULT_MODALITIES):
        features[modality][~present[:, column]] = 0.0

    return Split(
        features=features,
        present=present,
        labels=labels.astype(np.float32),
        attributes=attributes,
        ids=[f"synthetic-{split_name}-{i:05d}" for i in range(n)],
    )


def _ar1_noise(
    rng: np.random.Generator, n: int, steps: int, dim: int, ar: float, scale: float
) -> np.ndarray:
    """Return AR(1) noise ``[n, steps, dim]`` with stationary standard deviation ``scale``."""
    innovations = rng.normal(0.0, scale * np.sqrt(1.0 - ar**2), size=(n, steps, dim))
    noise = np.empty_like(innovations)
    # Start from the stationary distribution so every step has the same variance.
    noise[:, 0] = rng.normal(0.0, scale, size=(n, dim))
    for t in range(1, steps):
        noise[:, t] = ar * noise[:, t - 1] + innovations[:, t]
    return noise
