"""Tensor groups: which tensor names fall under a name prefix (no torch).

Stability: internal; the matching rule is fixed by SPEC.md, R-SAL-1.
"""

from __future__ import annotations

from collections.abc import Sequence


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
