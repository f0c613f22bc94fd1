"""Stage the output directory of an issue and move it into place when it is complete.

:func:`mbd_cert._issue_steps.run` writes every file into the staging directory of
:func:`create_staging`, then calls :func:`set_modes` and :func:`swap_in`, so that
``--out`` never contains a partial result (SPEC.md section 6.5). ``mbd-cert report``
writes its figures the same way.

Stability: internal.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

from mbd_cert._interrupts import publishing
from mbd_cert.errors import InputError

# The released model, the certificate and the chain copies are public; the audit
# bundle reveals pre-deletion weights and training samples (SPEC.md, section 12).
_PRIVATE_FILES = ("diff.safetensors", "probe.safetensors", "eval.safetensors")


def check_output_dir(out_dir: Path, *, force: bool) -> None:
    """Reject an ``--out`` path that is not a directory, or is not empty without force.

    Raises:
        InputError: ``out_dir`` exists and is not a directory (``E_PARAMETER_INVALID``),
            or is a non-empty directory and ``force`` is False (``E_OUTPUT_EXISTS``).
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output path {out_dir} exists and is not a directory",
                         hint="choose another --out", code="E_PARAMETER_INVALID")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise InputError(f"output directory {out_dir} exists and is not empty",
                         hint="choose another --out or pass --force to replace it",
                         code="E_OUTPUT_EXISTS")


def create_staging(out_dir: Path) -> Path:
    """Create an empty hidden directory next to ``out_dir`` and return its path.

    The parent of ``out_dir`` is created if needed. The staging directory shares that
    parent, so :func:`swap_in` can rename it to ``out_dir``.
    """
    parent = out_dir.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=parent))


def set_modes(staging: Path) -> None:
    """Make public outputs readable under the user's umask and keep the bundle private."""
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o755 & ~umask)
    for path in staging.iterdir():
        private = path.name in _PRIVATE_FILES or path.suffix == ".sealed"
        path.chmod(0o600 if private else 0o644 & ~umask)


def swap_in(staging: Path, out_dir: Path, *, force: bool, command: str = "issue") -> None:
    """Move the finished staging directory to ``out_dir`` (replacing it only with force).

    SIGINT is held from the start of the move (see :mod:`mbd_cert._interrupts`).

    Args:
        staging: The directory from :func:`create_staging`, with every output in it.
        out_dir: The ``--out`` directory.
        force: Replace a non-empty ``out_dir``.
        command: Name of the ``mbd-cert`` command, for the error message.

    Raises:
        InputError: ``out_dir`` is not empty and ``force`` is False, because another
            process wrote there after the command began (``E_OUTPUT_EXISTS``).
    """
    # From here on a Ctrl-C must neither separate the two renames nor report a
    # failure after out_dir contains the new output.
    with publishing():
        if out_dir.exists():
            if not force and any(out_dir.iterdir()):
                raise InputError(
                    f"output directory {out_dir} appeared while '{command}' was running",
                    hint="another process writes there; choose another --out",
                    code="E_OUTPUT_EXISTS",
                )
            backup = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
            out_dir.rename(backup)
            staging.rename(out_dir)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            staging.rename(out_dir)


__all__ = ["check_output_dir", "create_staging", "set_modes", "swap_in"]
