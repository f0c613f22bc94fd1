"""Compute the utility metrics of an issue on the held-out evaluation set.

The certificate's ``metrics.utility`` compares the model before the deletion, with all
modalities and with the deleted one missing, against the released model. Both models
run in float32, as they are released. The issuer hands over its float64 models once it
no longer needs them. Casting one and loading the tensors again costs a fraction of a
new build, and a build holds the GIL that the issuer's two threads share.

Stability: internal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from mbd_cert._torch_model import build_model, predict, probe_batch
from mbd_cert.arch import load_state_dict_strict
from mbd_cert.arch._mbd_model import MBDModel
from mbd_cert.checkpoint import ProbeSet
from mbd_cert.metrics import regression_metrics


def utility_before_deletion(
    architecture: Any,
    config: Mapping[str, Any],
    pre_tensors: Mapping[str, np.ndarray],
    evaluation: ProbeSet | None,
    modality: str,
    reuse: torch.nn.Module | None = None,
) -> dict[str, Any] | None:
    """Return the pre-deletion metrics, with all modalities and without ``modality``.

    ``reuse`` is a model of the architecture, built from ``config``, that nothing else
    uses any more. It is cast to float32 and loaded with ``pre_tensors`` in place of a
    new build, unless a floating-point tensor is not float32.
    """
    if evaluation is None:
        return None
    pre, batch, label = _evaluation_model(architecture, config, pre_tensors, evaluation,
                                          reuse)
    # forward_parts bypasses hooks on the model itself, which a call would run.
    if type(pre) is MBDModel and not pre._forward_hooks and not pre._forward_pre_hooks:
        both = _with_and_without(pre, batch, modality)
    else:
        present = batch["present"].clone()
        present[:, evaluation.modalities.index(modality)] = False
        both = predict(pre, batch), predict(pre, {**batch, "present": present})
    return {
        "all": regression_metrics(both[0], label),
        f"missing_{modality}": regression_metrics(both[1], label),
    }


def _with_and_without(model: MBDModel, batch: Mapping[str, Any],
                      modality: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the predictions with all modalities and with ``modality`` missing.

    The encoders read only their inputs, so one encoder pass serves both: a sample
    without ``modality`` has the state that ``state_with_reconstruction`` gives. The
    values equal two calls of :func:`predict` bit for bit.
    """
    with torch.no_grad():
        parts = model.forward_parts(batch["inputs"], batch["present"])
        state = model.state_with_reconstruction(parts["state"], modality)
        missing, _ = model.predict_from_parts(parts["shared"], parts["private"], state)
    return (parts["prediction"].to(torch.float64).numpy(),
            missing.to(torch.float64).numpy())


def utility_after_deletion(
    architecture: Any,
    post_config: Mapping[str, Any],
    post_tensors: Mapping[str, np.ndarray],
    evaluation: ProbeSet | None,
    modality: str,
    reuse: torch.nn.Module | None = None,
) -> dict[str, Any] | None:
    """Return the released model's metrics with ``modality`` deleted.

    ``reuse`` is as for :func:`utility_before_deletion`, built from ``post_config``.
    """
    if evaluation is None:
        return None
    post, batch, label = _evaluation_model(architecture, post_config, post_tensors, evaluation,
                                           reuse)
    return {f"deleted_{modality}": regression_metrics(predict(post, batch), label)}


def _evaluation_model(
    architecture: Any, config: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
    evaluation: ProbeSet, reuse: torch.nn.Module | None,
) -> tuple[torch.nn.Module, dict[str, Any], np.ndarray]:
    """Return the float32 model, as it is released, with the evaluation batch and labels."""
    if reuse is None or not _float32_or_integer(tensors):
        model = build_model(architecture, config, tensors, dtype=torch.float32)
    else:
        # Every parameter and buffer is loaded again, so nothing the issuer did to the
        # model (the update's steps, the proxy check's zeroed entries) remains.
        model = reuse.to(torch.float32)
        load_state_dict_strict(model, tensors)
        model.eval()
    return (model, probe_batch(evaluation, dtype=torch.float32),
            evaluation.label.astype(np.float64))


def _float32_or_integer(tensors: Mapping[str, np.ndarray]) -> bool:
    """Tell whether each tensor has the dtype of its place in the reused float32 model.

    A fresh build loads float16 or float64 weights in their own dtype before the cast,
    but the strict load into the cast model rejects them.
    """
    return all(np.asarray(array).dtype == np.float32 or np.asarray(array).dtype.kind in "iub"
               for array in tensors.values())


def utility_member(evaluation: ProbeSet | None, before: dict[str, Any] | None,
                   after: dict[str, Any] | None) -> dict[str, Any]:
    """Return the certificate's ``metrics.utility`` member."""
    if evaluation is None or before is None or after is None:
        return {"split": "none", "note": "no evaluation set was given"}
    return {"split": "eval", "n": evaluation.size, "before": before, "after": after}
