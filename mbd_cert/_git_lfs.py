"""Recognise Git LFS pointer files, which a checkout leaves in place of large files.

A repository that tracks models with Git LFS contains small text pointers until
``git lfs pull`` fetches the files, and a CI checkout without LFS keeps the pointers.
Reading one as a model or a certificate would otherwise fail with an error about a
header length or JSON syntax that does not name the cause.

Stability: internal.
"""

from __future__ import annotations

# The Git LFS specification (docs/spec.md in the git-lfs repository) makes "version"
# the first key of every pointer, and its v1 URL starts with https://git-lfs.
POINTER_PREFIX = b"version https://git-lfs"

FETCH_HINT = ("fetch the real file first: run 'git lfs pull', or in GitHub Actions give "
              "actions/checkout the input 'lfs: true'")


def is_pointer(prefix: bytes) -> bool:
    """Return whether a file that starts with ``prefix`` is a Git LFS pointer."""
    return prefix.startswith(POINTER_PREFIX)
