"""The policy's ``models`` table: what each published model's certificate must have deleted.

Every check of ``verify-repo`` passes on a genuine release. A pull request can
therefore replace a model and its certificate with an older release of the same
chain, or with one from another branch of deletions whose model still contains an
encoder the replaced release had deleted. A policy kept outside the pull request
pins, per model path, the modalities its certificate's chain must have deleted and,
optionally, the smallest sequence number (SPEC.md, R-REPO-11)::

    [models."models/sentiment/model.safetensors"]
    deleted_modalities = ["audio", "vision"]
    min_sequence_number = 2

The table is parsed as strictly as the rest of the policy (R-POLF-1): a mistake here
would unpin a model without a word.

Stability: internal; the keys are part of policy version 1 (docs/user-guide.md).
"""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath

from mbd_cert.chain import MAX_CHAIN_LENGTH
from mbd_cert.policy import (
    ModelPin,
    _invalid,
    _parse_string_list,
    _shown,
    _type_name,
)

_ENTRY_KEYS = ("deleted_modalities", "min_sequence_number")
# The certificate schema's identifier pattern, which deletion.modality must match: a
# pinned modality outside it could never be deleted.
_MODALITY_PATTERN = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
# verify-repo pairs NAME.cert.json (and cert.json) with NAME.safetensors only.
_MODEL_SUFFIX = ".safetensors"
_EXAMPLE = ('[models."models/sentiment/model.safetensors"] with deleted_modalities = '
            '["audio"] and, optionally, min_sequence_number = 1')


# Maximum length of a key shown in a message, in characters; a longer one is cut.
_MAX_KEY_CHARS = 120


def _toml_key(text: str) -> str:
    """Return ``text`` as a TOML key for messages: bare when it may be, else quoted."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", text):
        return text
    # JSON's escapes (\", \\, \n, \uXXXX) are valid in a TOML basic string.
    quoted = json.dumps(text, ensure_ascii=False)
    if len(quoted) <= _MAX_KEY_CHARS:
        return quoted
    return quoted[:_MAX_KEY_CHARS - 4] + '..."'


def _entry_name(path: str) -> str:
    """Return the TOML key of one entry, as ``models."PATH"``, for messages."""
    return f"models.{_toml_key(path)}"


def _check_path(source: str, path: str) -> None:
    """Reject a model path that no certificate found by verify-repo can pair with."""
    where = _entry_name(path)
    parsed = PurePosixPath(path)
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in path) or "\\" in path:
        problem = "contains a control character or a backslash"
    elif parsed.is_absolute() or ".." in parsed.parts:
        problem = "is absolute or contains '..', so it may lie outside the repository"
    elif str(parsed) != path:
        # Compared as text with the certificate's model path, so one spelling only.
        problem = "is not in normal form (an empty, '.' or trailing '/' component)"
    elif any(part.startswith(".") for part in parsed.parts):
        problem = "has a component starting with '.', and verify-repo skips hidden entries"
    elif not parsed.name.endswith(_MODEL_SUFFIX) or parsed.name == _MODEL_SUFFIX:
        problem = f"does not name a model file NAME{_MODEL_SUFFIX}"
    else:
        return
    raise _invalid(source, where, problem,
                   hint="give the model's path relative to the repository root with '/' "
                   "separators, as verify-repo pairs it with NAME.cert.json or cert.json, "
                   "such as models/sentiment/model.safetensors")


def _parse_modalities(source: str, where: str, entry: dict[str, object]) -> tuple[str, ...]:
    key = f"{where}.deleted_modalities"
    if "deleted_modalities" not in entry:
        raise _invalid(source, key, "is missing",
                       hint="list the modalities the model's certificate must have "
                       "deleted, such as deleted_modalities = [\"audio\"]")
    modalities = _parse_string_list(source, key, entry["deleted_modalities"])
    if not modalities:
        raise _invalid(source, key, "is empty, which would pin nothing",
                       hint="list at least one modality, or remove the model's table")
    for index, modality in enumerate(modalities):
        if not _MODALITY_PATTERN.fullmatch(modality):
            raise _invalid(source, f"{key}[{index}]",
                           f"is not a modality name, got {_shown(modality)}",
                           hint="modality names are lowercase, such as \"audio\" or "
                           "\"vision\", as a certificate's deletion.modality")
    return tuple(modalities)


def _parse_sequence_number(source: str, where: str, value: object) -> int:
    key = f"{where}.min_sequence_number"
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(source, key,
                       f"must be an integer, got {_type_name(value)} {_shown(value)}")
    if not 1 <= value <= MAX_CHAIN_LENGTH:
        raise _invalid(source, key,
                       f"must be in 1..{MAX_CHAIN_LENGTH}, got {_shown(value)}",
                       hint="the sequence number of the pinned release: 1 for a model's "
                       f"first deletion; chains are at most {MAX_CHAIN_LENGTH} long")
    return value


def _parse_entry(source: str, path: str, entry: object) -> ModelPin:
    where = _entry_name(path)
    _check_path(source, path)
    if not isinstance(entry, dict):
        raise _invalid(source, where,
                       f"must be a table, got {_type_name(entry)} {_shown(entry)}",
                       hint=f"write it as {_EXAMPLE}")
    unknown = sorted(str(key) for key in entry if key not in _ENTRY_KEYS)
    if unknown:
        raise _invalid(source, f"{where}.{_toml_key(unknown[0])}",
                       f"is unknown; expected keys: {list(_ENTRY_KEYS)}",
                       hint="check the spelling; an ignored key would silently loosen "
                       "the pin")
    minimum = entry.get("min_sequence_number")
    return ModelPin(
        path=path,
        deleted_modalities=_parse_modalities(source, where, entry),
        min_sequence_number=(None if minimum is None
                             else _parse_sequence_number(source, where, minimum)),
    )


def parse_models(source: str, value: object) -> tuple[ModelPin, ...]:
    """Check the policy's ``models`` table and return one pin per model path.

    Raises:
        InputError: ``E_POLICY_INVALID`` naming the entry and key. The table is not a
            table of tables or is empty, a path is unsafe or names no model file, or a
            key is unknown. Or ``deleted_modalities`` is missing, empty, or repeats or
            misnames a modality, or ``min_sequence_number`` is not an integer in 1..1000.
    """
    if not isinstance(value, dict):
        raise _invalid(source, "models",
                       f"must be a table of model paths, got {_type_name(value)} "
                       f"{_shown(value)}", hint=f"write each entry as {_EXAMPLE}")
    if not value:
        raise _invalid(source, "models", "is empty, which would pin nothing",
                       hint=f"remove the table, or pin a model: {_EXAMPLE}")
    pins: list[ModelPin] = []
    for path, entry in value.items():
        pins.append(_parse_entry(source, str(path), entry))
    return tuple(pins)

