"""Name the mbd-cert release that wrote a report, so CI can trace a verdict to its code.

Stability: internal; the record's members are part of the JSON reports (SPEC.md, R-REP-5).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
from typing import Any

from mbd_cert import __version__


@functools.cache
def verifier_record() -> dict[str, Any]:
    """Return ``{"name", "version", "commit"}`` of the running mbd-cert.

    ``commit`` is the commit hash pip recorded for an install from a git URL pinned to
    a commit (``direct_url.json``, PEP 610), and None for any other install: an
    editable install or a copy of the source records no commit.
    """
    commit = None
    try:
        text = importlib.metadata.distribution("mbd-cert").read_text("direct_url.json")
        record = json.loads(text) if text else {}
        value = record.get("vcs_info", {}).get("commit_id") if isinstance(record, dict) else None
        commit = value if isinstance(value, str) else None
    except (importlib.metadata.PackageNotFoundError, ValueError, AttributeError):
        commit = None
    return {"name": "mbd-cert", "version": __version__, "commit": commit}
