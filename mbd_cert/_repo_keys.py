"""Trusted issuer keys of a verify-repo run: the --key files and the policy's ``trusted_keys``.

The policy's key paths are resolved against the repository root, or against the policy
file's own directory when the policy lies outside the repository (SPEC.md, section 16).

Stability: internal; :mod:`mbd_cert._cli_ci` and :mod:`mbd_cert._repo_junit` call it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mbd_cert import errors


def key_base(root: Path, policy_file: Path | None) -> tuple[Path, str]:
    """Return the directory that the policy's ``trusted_keys`` paths are relative to.

    The repository root, unless the policy file lies outside the repository: then the
    policy file's own directory. A policy kept out of a pull request (a CI checks out
    the base branch's copy) must not take its keys from the pull request's tree, which
    could replace them (SPEC.md, section 16). Also returns the words that name it.

    Where the directory lies is decided after symbolic links, as the files are read.
    A path that passes through a link in the repository to a folder outside it names
    an outside policy. A root given through a link still contains its policy.
    """
    if policy_file is not None:
        # realpath of the file itself: ".." after a link leaves the link's target, as
        # the open() that read the policy did, where abspath would drop the link.
        real_dir = Path(os.path.realpath(policy_file)).parent
        repository = Path(os.path.realpath(root))
        if repository != real_dir and repository not in real_dir.parents:
            return real_dir, "the policy file's directory"
    return root, "the repository root"


def trusted_keys(root: Path, policy: Any, key_paths: Sequence[Path],
                  policy_file: Path | None = None) -> list[Any]:
    """Load the keys given with --key, then those that the policy's ``trusted_keys`` lists.

    Raises:
        InputError: A key file is missing, unsafe or not a key, or no key is given at all
            (``E_KEY_MISSING``).
    """
    from mbd_cert import _paths, signing

    keys = [signing.load_public_key(path) for path in key_paths]
    base, base_name = key_base(root, policy_file)
    for index, relative in enumerate(policy.trusted_keys):
        field = f"policy trusted_keys[{index}]"
        path = _paths.resolve_artefact(base, relative, field=field)
        try:
            keys.append(signing.load_public_key(path))
        except errors.FileMissing as missing:
            # The path is the policy's, relative to its base, not to the cwd.
            missing.message = (f"{missing.message} ({field} = {relative!r}, resolved "
                               f"against {base_name} {str(base)!r})")
            missing.hint = (f"correct the path in the policy file, relative to {base_name}, "
                            "or put the key file there")
            raise
    if not keys:
        raise errors.InputError(
            "no trusted issuer key was given",
            hint="list key files in the policy's trusted_keys or pass --key",
            code="E_KEY_MISSING",
        )
    return keys
