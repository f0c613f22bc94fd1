"""Gradients of the MBD objectives for the late layers, written out without autograd.

The issuer differentiates two objectives. The forget objective gives the saliency
scores (SPEC.md, section 6.2), and the retain objective gives the update's Fisher and
its K steps (section 6.3). Both are differentiated only with respect to the eligible
tensors, by default the fusion network and the deleted modality's generator. Those
layers all come after the encoders, whose outputs depend on no eligible tensor. So one
encoder pass per model serves every evaluation, and the way back from the prediction
to an eligible layer is a short chain:

    prediction <- head <- fusion.3 <- fusion.0 <- slot of modality m
               <- generators.m.net.2 <- generators.m.net.0

For each call of a covered ``nn.Linear`` this module records the layer's input x and
the gradient dy of the per-sample objective with respect to its output. The per-sample
moments follow from those as in :mod:`mbd_cert._linear_per_sample`. The backward steps
use torch's own derivative kernels (``tanh_backward``, ``gelu_backward``), so the
values equal autograd's up to the order of summation. The tests compare them to 1e-12
relative. On the CMU-MOSEI checkpoint they came out equal bit for bit. Where the
forget objective's two terms (one per prediction) nearly cancel, the order matters
more, and the random cases in the tests hold the difference to 1e-10 of the terms'
size instead. On that checkpoint the saliency moments took 15.2 ms with their encoder
pass, against 19.3 ms with autograd through module hooks
(``benchmarks/bench_saliency.py``, docs/benchmarks.md).

Only the issuer uses this module. Level 2 recomputes the scores and the update with
autograd (:mod:`mbd_cert._recompute`), so an error here shows up as a failed
verification, not as a certificate that verifies wrongly.

Stability: internal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional

from mbd_cert import arch as registry
from mbd_cert._linear_per_sample import weight_moments, within_square_range
from mbd_cert.arch import Architecture, Batch
from mbd_cert.arch._mbd_config import STATE_OBSERVED
from mbd_cert.arch._mbd_layers import Encoder, Generator
from mbd_cert.arch._mbd_model import MBDModel, eval_mode
from mbd_cert.arch._mbd_zeroed_forget import (
    fusion_linears,
    linear_layer,
    standard_layers,
    zeroed_values,
)

# The covered layers after the generators. Each generator's two layers are covered too.
FUSION_LAYERS = ("fusion.0", "fusion.3", "head")
# The types of the modules that MBDModel builds. The issuer skips the test runs for
# determinism only on a model of these, because a swapped module may draw noise.
_BUILT_TYPES = (MBDModel, Encoder, Generator, torch.nn.ModuleDict, torch.nn.Sequential,
                torch.nn.Linear, torch.nn.LayerNorm, torch.nn.Dropout, torch.nn.GELU,
                torch.nn.Embedding)
# Samples per pass, so that memory stays bounded for a large probe set. Each pass keeps
# a few [rows, width] activations per covered layer, as the issuer's batched Linear
# route in mbd_cert.saliency does for chunks of the same size.
_ROWS_PER_PASS = 4096


def for_architecture(architecture: Architecture, model: torch.nn.Module, batch: Batch,
                     modality: str, *, forget: bool) -> LateLayerGradients | None:
    """Return the gradients of ``architecture``'s forget or retain objective on ``model``.

    Returns None unless the objective is the built-in one. A plugin may build an
    :class:`MBDModel` and pair it with objectives of its own, and tests replace an
    objective of the built-in record. Also None unless every module of ``model`` has
    a type that :class:`MBDModel` builds, because only then may the caller treat the
    objective as deterministic.
    """
    from mbd_cert.arch import mbd

    if not all(type(module) in _BUILT_TYPES for module in model.modules()):
        return None
    if forget:
        builtin = architecture.forget_objective in (mbd.forget_objective, registry._forget_mbd)
        return LateLayerGradients.forget(model, batch, modality) if builtin else None
    builtin = architecture.retain_objective in (mbd.retain_objective, registry._retain_mbd)
    return LateLayerGradients.retain(model, batch, modality) if builtin else None


@dataclass
class _Call:
    """A call of a covered layer in a pass: its input and its output's gradient."""

    x: torch.Tensor
    dy: torch.Tensor


class LateLayerGradients:
    """Gradients of the forget or retain objective of one :class:`MBDModel`, by hand.

    The encoders run once, in the constructor. Every later call reads the late layers'
    parameters as they are then, so the masked update may change them in place between
    calls. The encoders must not change afterwards. No tensor of the default eligible
    groups is an encoder tensor, and :meth:`covers` rejects names outside the late
    layers.

    Use :meth:`forget` or :meth:`retain` to construct one.
    """

    def __init__(self, model: MBDModel, batch: Batch, modality: str, *, forget: bool) -> None:
        self._model = model
        self._modality = modality
        self._forget = forget
        self._column = model.modality_index(modality)
        with torch.no_grad(), eval_mode(model):
            rows = int(batch["present"].shape[0])
            self._shared: dict[str, torch.Tensor] = {}
            self._private: dict[str, torch.Tensor] = {}
            for name in model.modalities:
                if name not in model.deleted:
                    x = model._checked_input(batch["inputs"], name, rows)
                    self._shared[name], self._private[name] = model._encoder(name)(x)
        state = model._state(batch["present"], frozenset())
        self._states = [state]
        if forget:
            self._states.append(model.state_with_reconstruction(state, modality))
        self._batch = batch
        self._present = batch["present"][:, self._column]
        self._label = batch["label"]
        self._layers = {*FUSION_LAYERS, *(f"generators.{m}.net.{i}"
                                          for m in model.modalities for i in (0, 2))}

    @classmethod
    def forget(cls, model: object, batch: Batch, modality: str) -> LateLayerGradients | None:
        """Return the forget objective's gradients, or None for a model this cannot handle.

        Returns None for anything but an exact :class:`MBDModel` with the late modules
        it builds, because a subclass or a swapped module may change the forward pass.
        Also None for a modality the model lacks or has deleted, and for a model whose
        dtype is not float64.
        """
        if type(model) is not MBDModel or not standard_layers(model) or \
                model.head.weight.dtype != torch.float64 or \
                modality not in model.modalities or modality in model.deleted:
            return None
        return cls(model, batch, modality, forget=True)

    @classmethod
    def retain(cls, model: object, batch: Batch, modality: str) -> LateLayerGradients | None:
        """Return the retain objective's gradients, or None as for :meth:`forget`.

        The model must have ``modality`` deleted, as the retain objective requires.
        """
        if type(model) is not MBDModel or not standard_layers(model) or \
                model.head.weight.dtype != torch.float64 or \
                modality not in model.modalities or modality not in model.deleted:
            return None
        return cls(model, batch, modality, forget=False)

    def covers(self, names: Sequence[str]) -> bool:
        """Tell whether every name is a weight or bias of a covered late layer."""
        return bool(names) and all(
            name.rpartition(".")[0] in self._layers and name.rpartition(".")[2] in
            ("weight", "bias") for name in names)

    def moment_sums(self, names: Sequence[str], weights: torch.Tensor
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None:
        """Return ``sum_i w_i g_i`` and ``sum_i w_i g_i**2`` (float64) per name.

        g_i is the gradient of sample i's objective value. Samples of weight 0 are left
        out. Returns None when a sum is not finite, for example after a square
        overflowed. Also None when an input or output gradient of a weight's layer
        exceeds 1e75 in absolute value. The second sum squares x and dy apart, and such
        a square can overflow or underflow where the product dy x is well within range.
        The caller then takes its generic route, which reports the problem or computes
        the sums another way.
        """
        layers = sorted({name.rpartition(".")[0] for name in names})
        # Zeros first, so that every name has its sums when no weight is non-zero.
        parameters = dict(self._model.named_parameters())
        first = {name: torch.zeros_like(parameters[name], dtype=torch.float64) for name in names}
        second = {name: torch.zeros_like(parameters[name], dtype=torch.float64)
                  for name in names}
        w_all = weights.to(torch.float64)
        for index in _chunks(torch.nonzero(w_all != 0).flatten(), int(w_all.shape[0])):
            calls = self._calls(layers, index, scale=None)
            w = w_all if index is None else w_all.index_select(0, index)
            for name in names:
                layer, _, role = name.rpartition(".")
                dys = [call.dy for call in calls[layer]]
                if role == "weight":
                    xs = [call.x for call in calls[layer]]
                    if not within_square_range([*xs, *dys]):
                        return None
                    sums = weight_moments(dys, xs, w)
                else:
                    per_sample = torch.stack(dys).sum(dim=0)
                    sums = (w @ per_sample, w @ (per_sample * per_sample))
                _add(first, name, sums[0])
                _add(second, name, sums[1])
        return (first, second) if _finite(first) and _finite(second) else None

    def mean_gradient(self, names: Sequence[str], weights: torch.Tensor
                      ) -> dict[str, torch.Tensor] | None:
        """Return the gradient of ``sum_i w_i L_i / sum_i w_i`` per name, in float64.

        This is the loss of the masked update's steps. Returns None as
        :meth:`moment_sums` does.
        """
        layers = sorted({name.rpartition(".")[0] for name in names})
        w_all = weights.to(torch.float64)
        scale_all = w_all / float(w_all.sum())
        gradient: dict[str, torch.Tensor] = {}
        for index in _chunks(torch.arange(int(w_all.shape[0])), int(w_all.shape[0])):
            scale = scale_all if index is None else scale_all.index_select(0, index)
            calls = self._calls(layers, index, scale=scale)
            for name in names:
                layer, _, role = name.rpartition(".")
                if role == "weight":
                    terms = [call.dy.T @ call.x for call in calls[layer]]
                else:
                    terms = [call.dy.sum(dim=0) for call in calls[layer]]
                _add(gradient, name, torch.stack(terms).sum(dim=0))
        return gradient if _finite(gradient) else None

    def zeroed_forget(self, model: torch.nn.Module, rows: Batch,
                      entries: Sequence[tuple[str, int]]) -> torch.Tensor | None:
        """Compute :func:`mbd_cert.arch.mbd.zeroed_forget` from the stored encoder outputs.

        ``model`` must be this object's model. ``rows`` must be the rows of this
        object's batch where the modality is observed, which the proxy-quality check
        evaluates. Returns None otherwise, and the caller computes the values itself.
        """
        if not self._forget or model is not self._model:
            return None
        index = torch.nonzero(self._present).flatten()
        if not _same_rows(rows, self._batch, index):
            return None
        encoded = ({m: t.index_select(0, index) for m, t in self._shared.items()},
                   {m: t.index_select(0, index) for m, t in self._private.items()})
        with eval_mode(self._model):
            return zeroed_values(self._model, rows, self._modality, entries, encoded)

    def _calls(self, layers: Sequence[str], index: torch.Tensor | None,
               scale: torch.Tensor | None) -> dict[str, list[_Call]]:
        """Run the passes on the rows ``index`` and record each covered layer's calls.

        ``scale`` multiplies each sample's objective gradient by the update's weight.
        With None, the calls record the per-sample gradients of the unweighted values.
        """
        model = self._model

        def rows(tensor: torch.Tensor) -> torch.Tensor:
            return tensor if index is None else tensor.index_select(0, index)

        shared = {m: rows(t) for m, t in self._shared.items()}
        private = {m: rows(t) for m, t in self._private.items()}
        states = [rows(state) for state in self._states]
        calls: dict[str, list[_Call]] = {layer: [] for layer in layers}
        with torch.no_grad():
            passes = [_Pass(model, shared, private, state) for state in states]
            if self._forget:
                # L_i = (f - f_forced)**2 where the modality is observed, else 0.
                gap = passes[0].prediction - passes[1].prediction
                gap = torch.where(rows(self._present), gap, torch.zeros_like(gap))
                seeds = [2.0 * gap, -2.0 * gap]
            else:
                # L_i = |f - y|. Autograd's derivative of abs is the sign, 0 at 0.
                label = rows(self._label).to(passes[0].prediction.dtype)
                seeds = [torch.sign(passes[0].prediction - label)]
            if scale is not None:
                seeds = [seed * scale.to(seed.dtype) for seed in seeds]
            for one, seed in zip(passes, seeds, strict=True):
                recorded = one.backward(seed, layers)
                for layer in layers:
                    calls[layer].append(recorded[layer])
        return calls


class _Pass:
    """The late layers' forward pass for one state, kept for its backward pass."""

    def __init__(self, model: MBDModel, shared: Mapping[str, torch.Tensor],
                 private: Mapping[str, torch.Tensor], state: torch.Tensor) -> None:
        self.model = model
        self.state = state
        self.shared = shared
        self.x, _ = model.fusion_input(shared, private, state)
        first, second = fusion_linears(model)
        self.h = functional.linear(self.x, first.weight, first.bias)
        self.g = functional.gelu(self.h)
        self.u = functional.linear(self.g, second.weight, second.bias)
        self.v = functional.gelu(self.u)
        raw = functional.linear(self.v, model.head.weight, model.head.bias).squeeze(-1)
        self.tanh = torch.tanh(raw)
        self.prediction = model.output_scale * self.tanh

    def backward(self, seed: torch.Tensor, layers: Sequence[str]) -> dict[str, _Call]:
        """Return each layer's call, given the objective's gradient ``seed`` [n] per prediction."""
        model = self.model
        first, second = fusion_linears(model)
        draw = torch.ops.aten.tanh_backward(seed * model.output_scale, self.tanh)
        dv = draw.unsqueeze(1) @ model.head.weight
        du = torch.ops.aten.gelu_backward(dv, self.u)
        dg = du @ second.weight
        dh = torch.ops.aten.gelu_backward(dg, self.h)
        recorded = {"head": _Call(self.v, draw.unsqueeze(1)), "fusion.3": _Call(self.g, du),
                    "fusion.0": _Call(self.x, dh)}
        requested = {layer.split(".")[1] for layer in layers if layer.startswith("generators.")}
        if requested:
            dx = dh @ first.weight
            shared_dim = model.property_embedding.embedding_dim
            width = shared_dim + int(model.config["private_dim"])
            for index, name in enumerate(model.modalities):
                if name in requested:
                    # The fusion input is [slot, private part] per modality, in order.
                    dslot = dx[:, index * width:index * width + shared_dim]
                    recorded.update(self._generator(name, index, dslot))
        return {layer: recorded[layer] for layer in layers}

    def _generator(self, name: str, index: int, dslot: torch.Tensor) -> dict[str, _Call]:
        """Record the calls of ``name``'s generator from its slot's gradient [n, k]."""
        model = self.model
        net = model._generator(name).net
        first, last = linear_layer(net[0]), linear_layer(net[2])
        # The slot is the real shared part where the modality is observed and the
        # reconstruction elsewhere (MBDModel.fusion_input). Only the latter rows reach
        # the generator.
        observed = (self.state[:, index] == STATE_OBSERVED) & (name in self.shared)
        drec = torch.where(observed.unsqueeze(1), torch.zeros_like(dslot), dslot)
        inputs = model.generator_input(name, self.shared, self.state)
        pre = functional.linear(inputs, first.weight, first.bias)
        hidden = functional.gelu(pre)
        dpre = torch.ops.aten.gelu_backward(drec @ last.weight, pre)
        return {f"generators.{name}.net.2": _Call(hidden, drec),
                f"generators.{name}.net.0": _Call(inputs, dpre)}


def _chunks(rows: torch.Tensor, count: int) -> list[torch.Tensor | None]:
    """Split the row indices ``rows`` of a batch of ``count`` rows into passes.

    None means every row of the batch in order, which needs no copy.
    """
    if rows.numel() == count and count <= _ROWS_PER_PASS:
        return [None]
    return [rows[start:start + _ROWS_PER_PASS] for start in range(0, int(rows.numel()),
                                                                   _ROWS_PER_PASS)]


def _same_rows(rows: Batch, batch: Batch, index: torch.Tensor) -> bool:
    """Tell whether ``rows`` equals the rows ``index`` of ``batch``, bit for bit."""
    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))

    return set(rows["inputs"]) == set(batch["inputs"]) and same(
        rows["present"], batch["present"].index_select(0, index)) and all(
        same(rows["inputs"][m], batch["inputs"][m].index_select(0, index))
        for m in batch["inputs"])


def _finite(tensors: Mapping[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors.values())


def _add(sums: dict[str, torch.Tensor], name: str, value: torch.Tensor) -> None:
    if name in sums:
        sums[name].add_(value)
    else:
        sums[name] = value.to(torch.float64).clone()
