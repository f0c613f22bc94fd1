"""Forget objective of the MBD model with one late-layer entry zeroed, per copy.

The proxy-quality check (:mod:`mbd_cert.proxy_quality`) evaluates the forget objective
once per sampled mask entry, with that entry set to zero. For an entry of the fusion
network, the head or the last layer of the generator, the encoders' outputs are
unchanged, and zeroing one entry changes one column only:

* ``fusion.0`` entry (i, j): column i of the first pre-activation moves by
  -W0[i, j] x[:, j] (the bias entry: by -b0[i]). After GELU only column i of its
  output differs, so the second linear layer's output moves by that change times
  column i of W3: an outer product instead of a matrix product.
* ``fusion.3`` entry (i, j): column i of the second pre-activation moves, so only one
  input column of the head changes: the raw output moves by w_head[i] times the change
  of GELU in that column.
* ``head`` entry j: the raw output moves by -w_head[j] v[:, j] (the bias: by -b_head).
* ``generators.<m>.net.2`` entry (i, j), m the modality whose forget objective this is:
  output column i of m's generator moves. Where m is observed, the fusion input
  contains the real part, so only the prediction with m reconstructed changes. There
  the first fusion pre-activation moves by that column's change times one column of W0.

Each copy then costs a few vectors of length n (samples) instead of a pass through
the whole model; entries of ``fusion.0`` and of the generator still run the layers
after the changed column over [copies, n, F]. The values equal a full forward pass up
to rounding (the column is moved by the entry's term instead of being summed without
it); the tests hold them to the objective of a zeroed copy.

Stability: internal; :func:`mbd_cert.arch.mbd.zeroed_forget` calls it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional

from mbd_cert.arch import Batch
from mbd_cert.arch._mbd_layers import Generator
from mbd_cert.arch._mbd_model import MBDModel

# The modules whose entries this route covers, by their name in the model.
COVERED = ("fusion.0", "fusion.3", "head")
# Copies per chunk of fusion.0 entries: each copy needs its own [n, F] activation.
_COPIES_PER_CHUNK = 16


def zeroed_values(model: MBDModel, batch: Batch, modality: str,
                  entries: Sequence[tuple[str, int]],
                  encoded: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None,
                  ) -> torch.Tensor:
    """Return per-sample forget values with each entry zeroed in turn.

    The caller puts the model in eval mode, as the forget objective does.

    Args:
        model: The pre-deletion model; it is not changed.
        batch: The probe batch, as the forget objective takes it.
        modality: The modality whose forget objective is evaluated.
        entries: (parameter name, flat index) per copy.
        encoded: The encoders' shared and private parts for ``batch``, when the caller
            has them (:class:`mbd_cert.arch._mbd_gradients.LateLayerGradients`). No
            zeroed entry lies in an encoder, so they are the same for every copy.

    Returns:
        [len(entries) + 1, n] in the model's dtype: row 0 the unchanged model, row
        c + 1 the model with ``entries[c]`` zeroed, or NaN where that entry lies
        outside :data:`COVERED`.
    """
    with torch.no_grad():
        # One encoder pass, two states, as in the forget objective.
        if encoded is None:
            parts = model.forward_parts(batch["inputs"], batch["present"])
            shared, private, state = parts["shared"], parts["private"], parts["state"]
        else:
            shared, private = encoded
            state = model._state(batch["present"], frozenset())
        forced_state = model.state_with_reconstruction(state, modality)
        inputs = [model.fusion_input(shared, private, one)[0] for one in (state, forced_state)]
        base = [_Activations(model, x) for x in inputs]
        rows = torch.zeros((len(entries) + 1, inputs[0].shape[0]), dtype=inputs[0].dtype)
        rows[0] = _forget(model, base[0].raw, base[1].raw)
        generator = f"generators.{modality}.net.2"
        covered = (*COVERED, generator)
        uncovered = [position + 1 for position, (name, _) in enumerate(entries)
                     if name.rpartition(".")[0] not in covered]
        groups: dict[str, list[int]] = {}
        for position, (name, _) in enumerate(entries):
            groups.setdefault(name.rpartition(".")[0], []).append(position)
        if generator in groups:
            hidden = _generator_hidden(model, modality, shared, state)
        for module, positions in groups.items():
            if module not in covered:
                continue
            for start in range(0, len(positions), _COPIES_PER_CHUNK):
                chunk = positions[start:start + _COPIES_PER_CHUNK]
                part = [entries[p] for p in chunk]
                if module == generator:
                    # Where the modality is observed its slot contains the real part,
                    # so only the reconstructed prediction moves. Rows without the
                    # modality count zero in the objective.
                    real = base[0].raw.expand(len(part), -1)
                    changed = [real, _changed_by_generator(model, base[1], hidden, modality,
                                                           part)]
                else:
                    changed = [_changed_raw(model, a, module, part) for a in base]
                rows[[p + 1 for p in chunk]] = _forget(model, changed[0], changed[1])
    present = batch["present"][:, model.modality_index(modality)]
    values = torch.where(present.unsqueeze(0), rows, torch.zeros_like(rows))
    values[uncovered] = math.nan
    return values


def _forget(model: MBDModel, raw: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
    """Return (f(x) - f(x with the modality reconstructed))**2 from the raw head outputs."""
    return (model.output_scale * torch.tanh(raw) - model.output_scale * torch.tanh(forced)) ** 2


def linear_layer(module: nn.Module) -> nn.Linear:
    """Return ``module``, checked to be the ``nn.Linear`` the closed form assumes."""
    if not isinstance(module, nn.Linear):
        raise TypeError(f"expected nn.Linear in the MBD model, found {type(module).__name__}; "
                        "update _mbd_zeroed_forget to the new layout")
    return module


def standard_layers(model: MBDModel) -> bool:
    """Tell whether the late layers are the modules :class:`MBDModel` builds, by exact type.

    The closed forms here and in :mod:`mbd_cert.arch._mbd_gradients` write out the
    forward pass of those modules. A builder that swapped one (a ReLU for a GELU, the
    tanh approximation of GELU, a ``nn.Linear`` subclass with its own ``forward``)
    keeps the tensor names, so only the module types tell the change apart. A hook
    changes the forward or backward pass too without changing a type, so a model with
    one is rejected as well.
    """
    if _has_hooks(model):
        return False
    fusion: tuple[type[nn.Module], ...] = (nn.Linear, nn.GELU, nn.Dropout, nn.Linear, nn.GELU)
    generator: tuple[type[nn.Module], ...] = (nn.Linear, nn.GELU, nn.Linear)
    sequences: list[tuple[nn.Module, tuple[type[nn.Module], ...]]] = [(model.fusion, fusion)]
    for name in model.modalities:
        module = model.generators[name]
        if type(module) is not Generator:
            return False
        sequences.append((module.net, generator))
    for sequence, types in sequences:
        if type(sequence) is not nn.Sequential or len(sequence) != len(types):
            return False
        for layer, kind in zip(sequence, types, strict=True):
            if type(layer) is not kind:
                return False
            # The tanh approximation of GELU has another derivative.
            if kind is nn.GELU and layer.approximate != "none":
                return False
    return type(model.head) is nn.Linear


def _has_hooks(model: MBDModel) -> bool:
    """Tell whether ``model``, one of its modules or parameters, or all modules have a hook.

    The hooks that torch registers for all modules live in private attributes of
    ``torch.nn.modules.module`` (torch 2.x). A name missing there counts as no hook.
    """
    registry = torch.nn.modules.module
    global_hooks = ("_global_forward_hooks", "_global_forward_pre_hooks",
                    "_global_backward_hooks", "_global_backward_pre_hooks")
    if any(getattr(registry, name, None) for name in global_hooks):
        return True
    for module in model.modules():
        if module._forward_hooks or module._forward_pre_hooks or \
                module._backward_hooks or module._backward_pre_hooks:
            return True
    return any(parameter._backward_hooks for parameter in model.parameters())


def fusion_linears(model: MBDModel) -> tuple[nn.Linear, nn.Linear]:
    """Return the two linear layers of the fusion network (indices 0 and 3)."""
    return linear_layer(model.fusion[0]), linear_layer(model.fusion[3])


class _Activations:
    """The fusion network's activations for one fusion input x [n, d]."""

    def __init__(self, model: MBDModel, x: torch.Tensor) -> None:
        first, second = fusion_linears(model)
        self.x = x
        self.h = functional.linear(x, first.weight, first.bias)  # [n, F]
        self.g = functional.gelu(self.h)
        self.u = functional.linear(self.g, second.weight, second.bias)
        self.v = functional.gelu(self.u)
        self.raw = functional.linear(self.v, model.head.weight, model.head.bias).squeeze(-1)


def _generator_hidden(model: MBDModel, modality: str, shared: dict[str, torch.Tensor],
                      state: torch.Tensor) -> torch.Tensor:
    """Return the hidden activations [n, H] of ``modality``'s generator.

    The generator reads the other modalities only, so the value is the same with the
    modality observed and with it reconstructed.
    """
    first = linear_layer(model._generator(modality).net[0])
    inputs = model.generator_input(modality, shared, state)
    return functional.gelu(functional.linear(inputs, first.weight, first.bias))


def _changed_by_generator(model: MBDModel, base: _Activations, hidden: torch.Tensor,
                          modality: str, entries: Sequence[tuple[str, int]]) -> torch.Tensor:
    """Return the raw head output [c, n] with each generator output entry zeroed in turn.

    ``base`` contains the activations with the modality reconstructed. Output column i of
    the generator is column ``slot + i`` of the fusion input, so the first fusion
    pre-activation moves by that column's change times column ``slot + i`` of W0.
    """
    layer = linear_layer(model._generator(modality).net[2])
    first, second = fusion_linears(model)
    index = torch.tensor([flat for _, flat in entries], dtype=torch.long)
    is_bias = torch.tensor([name.endswith(".bias") for name, _ in entries]).unsqueeze(1)
    rows = torch.where(is_bias.squeeze(1), index, index // layer.in_features)
    columns = torch.where(is_bias.squeeze(1), 0, index % layer.in_features)
    change = -torch.where(is_bias, layer.bias[rows].unsqueeze(1),
                          layer.weight[rows, columns].unsqueeze(1) * hidden[:, columns].T)
    width = model.property_embedding.embedding_dim + int(model.config["private_dim"])
    slot = model.modality_index(modality) * width + rows  # fusion input columns [c]
    moved = _moved(base.h, change, first.weight[:, slot].T)
    activated = functional.gelu(functional.linear(functional.gelu(moved), second.weight,
                                                  second.bias))
    return functional.linear(activated, model.head.weight, model.head.bias).squeeze(-1)


def _changed_raw(model: MBDModel, base: _Activations, module: str,
                 entries: Sequence[tuple[str, int]]) -> torch.Tensor:
    """Return the raw head output [c, n] with each entry of ``module`` zeroed in turn."""
    first, second = fusion_linears(model)
    head_weight = model.head.weight[0]  # [F]
    index = torch.tensor([flat for _, flat in entries], dtype=torch.long)
    is_bias = torch.tensor([name.endswith(".bias") for name, _ in entries]).unsqueeze(1)
    if module == "head":
        # A weight entry j removes w_head[j] v[:, j] from the raw output, the bias b_head.
        column = torch.where(is_bias.squeeze(1), 0, index)
        removed = torch.where(is_bias, model.head.bias[0],
                              head_weight[column].unsqueeze(1) * base.v[:, column].T)
        return base.raw - removed
    layer, before, after, output = ((first, base.x, base.h, base.g) if module == "fusion.0"
                                    else (second, base.g, base.u, base.v))
    # Row i of the layer (its output column) and, for a weight entry, column j.
    rows = torch.where(is_bias.squeeze(1), index, index // layer.in_features)
    columns = torch.where(is_bias.squeeze(1), 0, index % layer.in_features)
    shift = -torch.where(is_bias, layer.bias[rows].unsqueeze(1),
                         layer.weight[rows, columns].unsqueeze(1) * before[:, columns].T)
    step = functional.gelu(after[:, rows].T + shift) - output[:, rows].T  # [c, n]
    if module == "fusion.3":
        return base.raw + head_weight[rows].unsqueeze(1) * step
    # u' = u + step (outer) W3[:, i], then the full second GELU and the head.
    moved = _moved(base.u, step, second.weight[:, rows].T)
    return functional.linear(functional.gelu(moved), model.head.weight,
                             model.head.bias).squeeze(-1)


def _moved(activation: torch.Tensor, change: torch.Tensor,
           columns: torch.Tensor) -> torch.Tensor:
    """Return ``activation`` [n, F] moved by ``change`` [c, n] times ``columns`` [c, F].

    Copy k of the result [c, n, F] is activation + outer(change[k], columns[k]). The
    callers pass both factors as transposed views. A broadcast product of those takes
    their permuted memory layout, so the next linear layer would copy the whole result
    first (about 4 of the 22 ms of the CMU-MOSEI proxy check). Row-major factors give a
    row-major result with the same values bit for bit. The GELU after it runs another
    torch code path for that layout, so the objective can differ in the last bit.
    """
    return activation.unsqueeze(0) + change.contiguous().unsqueeze(2) * \
        columns.contiguous().unsqueeze(1)
