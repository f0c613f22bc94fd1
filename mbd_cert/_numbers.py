"""The text form of sigma, epsilon, delta and the other privacy numbers.

The commands that describe a certificate (the ``inspect``, ``verify`` and
``verify-repo`` tables, check details, ``issue``'s summary, messages about a
certificate, the HTML tables of ``report``) write these numbers with
:func:`exact_number`. A number then reads the same in every command, and as it is in
``cert.json``.

Stability: internal; the rule is documented in docs/user-guide.md.
"""

from __future__ import annotations


def exact_number(value: float) -> str:
    """Return ``value`` with the fewest significant digits that read back as the same double.

    This is Python's ``repr`` of the float, which ``json`` also writes, so the digits
    are those that ``issue`` writes in ``cert.json``: ``0.007461263270081258``,
    ``1e-05``. A whole number drops its ``.0`` (``1``, not ``1.0``).
    """
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text
