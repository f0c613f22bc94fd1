"""The "mbd-sentiment" model: multimodal sentiment regression with any modality missing.

Missing-by-Design (Meng et al., arXiv:2602.16144) splits each modality m into a shared
(sentiment-relevant, modality-invariant) part s_m and a private part p_m. A generator
per modality reconstructs s_m from the observed shared parts of the other modalities.
Each modality slot of the fusion input gets a learned property embedding for its state
(observed, reconstructed or deleted), so the fusion layers can tell the three apart.

Layers (tensor-name prefixes in brackets; n samples, T steps, d input features,
h = hidden_dim, k = shared_dim, q = private_dim, F = fusion_hidden, M modalities):

* ``encoders.<m>``: LayerNorm(d), Linear(d, h) + GELU per step, mean over the
  non-padding steps, then two heads: Linear(h, k) -> s_m and Linear(h, q) -> p_m.
* ``property_embedding``: Embedding(3 M, k), row ``3 * index(m) + state``.
* ``generators.<m>``: Linear((M - 1)(k + 1), h) + GELU, Linear(h, k). Its input contains
  the other modalities' shared parts (zero unless observed) and their 0/1
  availability.
* ``fusion``: Linear(M (k + q), F) + GELU + dropout, Linear(F, F) + GELU, over the
  slots (shared part or reconstruction, plus property embedding) and the private parts
  (zero unless observed).
* ``head``: Linear(F, 1); prediction = output_scale * tanh(head).

The builder, the two objectives and the architecture record that registers them are in
:mod:`mbd_cert.arch.mbd`, which re-exports :class:`MBDModel` and :class:`Parts`.

Stability: the tensor names (the attribute names here) and the forward semantics are
part of certificate format 1, because the verifier recomputes the objectives with them.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypedDict

import torch
from torch import nn

from mbd_cert.arch._mbd_config import (
    NUM_STATES,
    STATE_DELETED,
    STATE_OBSERVED,
    STATE_RECONSTRUCTED,
    validate_config,
)
from mbd_cert.arch._mbd_layers import Encoder, Generator
from mbd_cert.errors import InputError, MalformedData

# Standard deviation of the property-embedding initialisation. The default N(0, 1) of
# nn.Embedding would dwarf the shared parts at the start of training.
_EMBEDDING_INIT_STD = 0.02


class Parts(TypedDict):
    """Outputs of :meth:`MBDModel.forward_parts` for n samples.

    Attributes:
        prediction: [n] sentiment scores in [-output_scale, output_scale].
        shared: Modality -> [n, k] encoder shared part s_m. Deleted modalities have no
            entry. Rows where the modality is not observed hold the encoder's output on
            the (ignored) input and must be masked with ``state``.
        private: Modality -> [n, q] encoder private part p_m, with the same caveats.
        reconstructed: Modality -> [n, k] generator output for every modality.
        state: [n, M] int64, 0 observed, 1 reconstructed, 2 deleted.
    """

    prediction: torch.Tensor
    shared: dict[str, torch.Tensor]
    private: dict[str, torch.Tensor]
    reconstructed: dict[str, torch.Tensor]
    state: torch.Tensor


class MBDModel(nn.Module):
    """The Missing-by-Design sentiment model.

    Args:
        config: Architecture config; validated here, so defaults may be omitted.
        seed: When given, parameters are initialised from the CPU generator seeded with
            ``seed``, without touching the caller's RNG states; None uses the global
            CPU generator as it is.

    Raises:
        InputError: The config is invalid (see :func:`validate_config`).
    """

    def __init__(self, config: Mapping[str, Any], *, seed: int | None = None) -> None:
        super().__init__()
        self.config = validate_config(config)
        self.modalities: tuple[str, ...] = tuple(self.config["modalities"])
        self.deleted: frozenset[str] = frozenset(self.config["deleted_modalities"])
        self.output_scale = float(self.config["output_scale"])
        with _seeded(seed):
            self._build_layers()

    def _build_layers(self) -> None:
        config = self.config
        count = len(self.modalities)
        hidden, shared = config["hidden_dim"], config["shared_dim"]
        private, fusion = config["private_dim"], config["fusion_hidden"]
        self.encoders = nn.ModuleDict({
            m: Encoder(config["input_dims"][m], hidden, shared, private, config["dropout"])
            for m in self.modalities
        })
        self.property_embedding = nn.Embedding(NUM_STATES * count, shared)
        nn.init.normal_(self.property_embedding.weight, std=_EMBEDDING_INIT_STD)
        generator_in = (count - 1) * (shared + 1)
        with warnings.catch_warnings():
            # With one modality a generator has no input features, and torch warns that
            # initialising its empty first weight does nothing. That is intended.
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            self.generators = nn.ModuleDict({
                m: Generator(generator_in, hidden, shared) for m in self.modalities
            })
        self.fusion = nn.Sequential(
            nn.Linear(count * (shared + private), fusion),
            nn.GELU(),
            nn.Dropout(config["dropout"]),
            nn.Linear(fusion, fusion),
            nn.GELU(),
        )
        self.head = nn.Linear(fusion, 1)

    def forward(
        self,
        inputs: Mapping[str, torch.Tensor],
        present: torch.Tensor,
        force_reconstruct: Iterable[str] = frozenset(),
    ) -> torch.Tensor:
        """Predict sentiment scores [n]; see :meth:`forward_parts`."""
        return self.forward_parts(inputs, present, force_reconstruct)["prediction"]

    def forward_parts(
        self,
        inputs: Mapping[str, torch.Tensor],
        present: torch.Tensor,
        force_reconstruct: Iterable[str] = frozenset(),
    ) -> Parts:
        """Run the model and return the prediction with its intermediate parts.

        Per modality m: if m is deleted, its slot is the generator's reconstruction with
        the "deleted" embedding, its private part is zero and its encoder never runs, so
        ``inputs[m]`` may be absent and is ignored. If m is observed and not in
        ``force_reconstruct``, the slot is the real shared part ("observed"). Otherwise
        the slot is the reconstruction ("reconstructed") and the private part is zero.

        Args:
            inputs: Modality -> float tensor [n, seq_len[m], input_dims[m]].
            present: Bool tensor [n, M], True where m was observed.
            force_reconstruct: Modalities to treat as not observed in every sample.

        Returns:
            The prediction and parts (see :class:`Parts`).

        Raises:
            InputError: A modality name in ``force_reconstruct`` is unknown.
            MalformedData: ``present`` or an input has the wrong shape or dtype.
        """
        forced = frozenset(force_reconstruct)
        unknown = sorted(forced - set(self.modalities))
        if unknown:
            raise InputError(
                f"force_reconstruct names unknown modalities {unknown}",
                hint=f"the model's modalities are {list(self.modalities)}",
            )
        rows = self._check_present(present)
        shared: dict[str, torch.Tensor] = {}
        private: dict[str, torch.Tensor] = {}
        for name in self.modalities:
            if name in self.deleted:
                continue
            x = self._checked_input(inputs, name, rows)
            shared[name], private[name] = self._encoder(name)(x)
        state = self._state(present, forced)
        prediction, reconstructed = self.predict_from_parts(shared, private, state)
        return {
            "prediction": prediction,
            "shared": shared,
            "private": private,
            "reconstructed": reconstructed,
            "state": state,
        }

    def predict_from_parts(
        self,
        shared: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor],
        state: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run generators, fusion and head on encoder outputs for a given state.

        Training reuses one encoder pass for several states this way (for example with
        one modality switched to its reconstruction). A modality without an entry in
        ``shared`` (deleted) is never treated as observed, whatever ``state`` contains.

        Args:
            shared: Modality -> [n, k] shared parts, as ``forward_parts`` returns them.
            private: Modality -> [n, q] private parts.
            state: [n, M] int64 state per sample and modality.

        Returns:
            ``(prediction [n], reconstructed {m: [n, k]})``.
        """
        pieces, reconstructed = self.fusion_input(shared, private, state)
        return self.predict_from_fusion_input(pieces), reconstructed

    def predict_from_fusion_input(self, pieces: torch.Tensor) -> torch.Tensor:
        """Run fusion and head on the fusion input [n, M (k + q)]; return predictions [n]."""
        raw = self.head(self.fusion(pieces)).squeeze(-1)
        return self.output_scale * torch.tanh(raw)

    def fusion_input(
        self,
        shared: Mapping[str, torch.Tensor],
        private: Mapping[str, torch.Tensor],
        state: torch.Tensor,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the generators and return the fusion input with the reconstructions.

        Arguments as for :meth:`predict_from_parts`.

        Returns:
            ``(fusion input [n, M (k + q)], reconstructed {m: [n, k]})``.
        """
        dtype = self.head.weight.dtype
        rows = state.shape[0]
        observed, real, availability = self._real_slots(shared, state)
        reconstructed: dict[str, torch.Tensor] = {}
        for i, name in enumerate(self.modalities):
            generator_input = self._generator_input(i, real, availability)
            reconstructed[name] = self._generator(name)(generator_input)

        pieces: list[torch.Tensor] = []
        for i, name in enumerate(self.modalities):
            embedding = self.property_embedding(state[:, i] + NUM_STATES * i)  # [n, k]
            slot = torch.where(observed[i].unsqueeze(1), real[i], reconstructed[name])
            pieces.append(slot + embedding)
            if name in private:
                values = private[name]
                pieces.append(torch.where(observed[i].unsqueeze(1), values,
                                          torch.zeros_like(values)))
            else:
                private_dim = int(self.config["private_dim"])
                pieces.append(torch.zeros(rows, private_dim, dtype=dtype, device=state.device))
        return torch.cat(pieces, dim=1), reconstructed

    def generator_input(self, modality: str, shared: Mapping[str, torch.Tensor],
                        state: torch.Tensor) -> torch.Tensor:
        """Return the input [n, (M - 1)(k + 1)] of ``modality``'s generator.

        Arguments as for :meth:`predict_from_parts`; the value is the one
        :meth:`fusion_input` passes to that generator.
        """
        _, real, availability = self._real_slots(shared, state)
        return self._generator_input(self.modality_index(modality), real, availability)

    def _real_slots(
        self, shared: Mapping[str, torch.Tensor], state: torch.Tensor,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Return per modality the observed rows and the real slot, and availability."""
        dtype = self.head.weight.dtype
        shared_dim = self.property_embedding.embedding_dim
        zeros = torch.zeros(state.shape[0], shared_dim, dtype=dtype, device=state.device)
        observed = [
            (state[:, i] == STATE_OBSERVED) & (m in shared)
            for i, m in enumerate(self.modalities)
        ]
        # torch.where, not multiplication by the mask, so that nothing from an
        # unobserved row (not even a NaN) reaches the generators or the fusion.
        real = [
            torch.where(observed[i].unsqueeze(1), shared[m], zeros) if m in shared else zeros
            for i, m in enumerate(self.modalities)
        ]
        availability = torch.stack(observed, dim=1).to(dtype)  # [n, M]
        return observed, real, availability

    def _generator_input(self, index: int, real: list[torch.Tensor],
                         availability: torch.Tensor) -> torch.Tensor:
        others = [j for j in range(len(self.modalities)) if j != index]
        return torch.cat([real[j] for j in others] + [availability[:, others]], dim=1)

    def state_with_reconstruction(self, state: torch.Tensor, modality: str) -> torch.Tensor:
        """Return a copy of ``state`` with ``modality`` switched from observed to reconstructed."""
        index = self.modality_index(modality)
        result = state.clone()
        column = result[:, index]
        result[:, index] = torch.where(column == STATE_OBSERVED, STATE_RECONSTRUCTED, column)
        return result

    def modality_index(self, modality: str) -> int:
        """Return the column of ``modality`` in ``present`` and ``state``.

        Raises:
            InputError: The model has no such modality.
        """
        if modality not in self.modalities:
            raise InputError(
                f"modality {modality!r} is not one of the model's modalities "
                f"{list(self.modalities)}"
            )
        return self.modalities.index(modality)

    def _state(self, present: torch.Tensor, forced: frozenset[str]) -> torch.Tensor:
        columns = []
        for i, name in enumerate(self.modalities):
            if name in self.deleted:
                column = torch.full_like(present[:, i], STATE_DELETED, dtype=torch.int64)
            elif name in forced:
                column = torch.full_like(present[:, i], STATE_RECONSTRUCTED, dtype=torch.int64)
            else:
                column = torch.where(present[:, i], STATE_OBSERVED, STATE_RECONSTRUCTED)
            columns.append(column.to(torch.int64))
        return torch.stack(columns, dim=1)

    def _check_present(self, present: torch.Tensor) -> int:
        if present.dtype != torch.bool or present.ndim != 2 or \
                present.shape[1] != len(self.modalities):
            raise MalformedData(
                f"present has dtype {present.dtype} and shape {list(present.shape)}, "
                f"expected torch.bool [n, {len(self.modalities)}]"
            )
        return int(present.shape[0])

    def _checked_input(self, inputs: Mapping[str, torch.Tensor], name: str,
                       rows: int) -> torch.Tensor:
        if name not in inputs:
            raise MalformedData(
                f"inputs has no tensor for modality {name!r}",
                hint="pass zeros for samples where the modality is absent",
            )
        x = inputs[name]
        expected = [rows, self.config["seq_len"][name], self.config["input_dims"][name]]
        if list(x.shape) != expected:
            raise MalformedData(
                f"inputs[{name!r}] has shape {list(x.shape)}, expected {expected} "
                f"(samples, config.seq_len, config.input_dims)",
                hint="the probe or evaluation set does not fit this model: use the one "
                "written with the model's checkpoint",
            )
        if x.dtype != self.head.weight.dtype:
            raise MalformedData(
                f"inputs[{name!r}] has dtype {x.dtype}, the model computes in "
                f"{self.head.weight.dtype}"
            )
        return x

    def _encoder(self, name: str) -> Encoder:
        encoder = self.encoders[name]
        assert isinstance(encoder, Encoder)
        return encoder

    def _generator(self, name: str) -> Generator:
        generator = self.generators[name]
        assert isinstance(generator, Generator)
        return generator


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    if seed is None:
        yield
        return
    device = torch.empty(0).device  # where the parameters will be created
    if device.type == "cpu":
        # Seed only the CPU generator. torch.manual_seed would also seed the
        # accelerator generators, which fork_rng(devices=[]) does not restore.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield
        return
    # A default device set with torch.set_default_device: seed and restore its
    # generator too.
    with torch.random.fork_rng(devices=[device], device_type=device.type):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    # The verifier recomputes the objectives, so dropout stays off even if the caller
    # left the model, or any submodule, in training mode. Only the modules found in
    # training mode are switched and restored: the objectives run once per update
    # step, and a recursive model.eval() / model.train() pair cost 0.3 ms a call.
    training = [module for module in model.modules() if module.training]
    for module in training:
        module.training = False
    try:
        yield
    finally:
        for module in training:
            module.training = True


__all__ = ["MBDModel", "Parts", "eval_mode"]
