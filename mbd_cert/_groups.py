"""Tensor groups: which tensor names fall under a name prefix (no torch).

Stability: internal; the matching rule is fixed by SPEC.md, R-SAL-1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def eligible_names(names: Sequence[str], groups: Sequence[str]) -> list[str]:
    """Return the sorted tensor names that fall under one of the ``groups`` prefixes.

    A group ``fusion`` (or ``fusion.``) covers ``fusion`` itself and every name that
    starts with ``fusion.``, never ``fusion2.weight``.
    """
    selected = []
    stripped = [group.rstrip(".") for group in groups]
    for name in names:
        for group in stripped:
            if name == group or name.startswith(group + "."):
                selected.append(name)
                break
    return sorted(selected)


def eligible_tensors(parameter_names: Sequence[str], groups: Sequence[str],
                     removed: Sequence[str]) -> list[str]:
    """Return the sorted eligible tensors of SPEC.md, R-SAL-1.

    They are the parameters under one of the ``groups`` prefixes, less the ``removed``
    encoder tensors. Buffers are never eligible: the score and the update need a
    gradient, and a buffer has none. The issuer and levels 2 and 3 all call this, so
    that they agree on the set.

    Args:
        parameter_names: The names ``named_parameters`` gives for the built model.
        groups: The eligible groups, with or without a trailing ``.``.
        removed: The tensors of the deleted encoder.
    """
    dropped = set(removed)
    return [name for name in eligible_names(parameter_names, groups) if name not in dropped]


def unlisted_zero_encoders(architecture: Any, config: Mapping[str, Any],
                           tensors: Mapping[str, np.ndarray]) -> list[str]:
    """Return the modalities not listed as deleted whose encoder is all zero (R-CHAIN-9).

    An all-zero encoder is what a certified deletion leaves, and no trained encoder is
    all zero. Zero is by value here, so -0.0 counts as zero.
    """
    deleted = set(config.get("deleted_modalities", []))
    zeroed = []
    for modality in config["modalities"]:
        if modality in deleted:
            continue
        names = eligible_names(list(tensors), architecture.encoder_prefixes(config, modality))
        if names and not any(np.any(tensors[name]) for name in names):
            zeroed.append(modality)
    return zeroed
