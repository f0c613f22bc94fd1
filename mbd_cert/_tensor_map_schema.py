"""Schema validation of a certificate's per-tensor maps at the cost of a plain loop.

``subject_model.pre_deletion.tensors`` and ``subject_model.post_deletion.tensors``
hold one entry per tensor of the model, up to 100,000 each. jsonschema resolves three
``$ref`` and creates a child validator for every value of every entry: on the
certificate of a model with 90,000 tensors that was about two thirds of a 22 s level-1
run (docs/benchmarks.md, "Certificates of models with many tensors"). Here the entries
are checked by :func:`entry_is_valid`, which applies the same rules in plain Python, and
only the first failing entry goes to jsonschema, so every error message is still its own.

The fast path applies only where the bundled schema has exactly the subschema
implemented here (:data:`MAP_SCHEMA`) and nothing else that could reach into the map
(:func:`fast_paths`). An edited schema therefore falls back to jsonschema for the
whole certificate instead of drifting from it.

Stability: internal.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jsonschema.exceptions
from jsonschema import FormatChecker

from mbd_cert._ecma_schema import Validator, ecma_pattern

# Paths of the per-tensor maps in a certificate.
MAP_PATHS: tuple[tuple[str, ...], ...] = (
    ("subject_model", "pre_deletion", "tensors"),
    ("subject_model", "post_deletion", "tensors"),
)

_MAX_TENSORS = 100_000
_MAX_RANK = 16
_MAX_COUNT = 9_007_199_254_740_991  # 2**53 - 1, the largest integer a JSON reader keeps exact
_DTYPE_PATTERN = "^[A-Z0-9_]{2,16}$"  # F8_E4M3FNUZ has 11 characters
_DIGEST_PATTERN = "^sha256:[0-9a-f]{64}$"

# The map's subschema with its $refs resolved: what entry_is_valid implements.
MAP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "maxProperties": _MAX_TENSORS,
    "additionalProperties": {
        "type": "object",
        "required": ["dtype", "shape", "digest"],
        "additionalProperties": False,
        "properties": {
            "dtype": {"type": "string", "pattern": _DTYPE_PATTERN},
            "shape": {
                "type": "array",
                "maxItems": _MAX_RANK,
                "items": {"type": "integer", "minimum": 0, "maximum": _MAX_COUNT},
            },
            "digest": {"type": "string", "pattern": _DIGEST_PATTERN},
        },
    },
}

# Compiled as mbd_cert.schema applies "pattern": "$" matches only at the very end, so a
# value followed by "\n" does not conform.
_DTYPE = ecma_pattern(_DTYPE_PATTERN)
_DIGEST = ecma_pattern(_DIGEST_PATTERN)

# Keywords of an enclosing object schema that cannot apply a subschema to the value of
# a member listed under "properties".
_INERT_KEYWORDS = frozenset(
    {"type", "required", "properties", "additionalProperties", "title", "description",
     "minProperties", "maxProperties", "$comment", "$defs", "$id", "$schema"}
)


def _is_integer(value: Any) -> bool:
    # jsonschema's "integer": an int that is not a bool, or a float with no fraction.
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def entry_is_valid(entry: Any) -> bool:
    """Return whether one tensor entry conforms to ``MAP_SCHEMA["additionalProperties"]``."""
    if not isinstance(entry, dict):
        return False
    if len(entry) != 3 or "dtype" not in entry or "shape" not in entry or "digest" not in entry:
        return False
    dtype, shape, digest = entry["dtype"], entry["shape"], entry["digest"]
    if not isinstance(dtype, str) or _DTYPE.search(dtype) is None:
        return False
    if not isinstance(digest, str) or _DIGEST.search(digest) is None:
        return False
    if not isinstance(shape, list) or len(shape) > _MAX_RANK:
        return False
    return all(_is_integer(n) and 0 <= n <= _MAX_COUNT for n in shape)


def _target(schema: dict[str, Any], node: Any) -> Any:
    """Return the schema ``node`` stands for: the target of a lone local ``$ref``, or itself."""
    for _ in range(16):  # a longer chain of references is treated as a cycle
        if not (isinstance(node, dict) and set(node) == {"$ref"}):
            return node
        reference = node["$ref"]
        prefix = "#/$defs/"
        definitions = schema.get("$defs", {})
        if not isinstance(reference, str) or not reference.startswith(prefix) \
                or reference[len(prefix):] not in definitions:
            raise ValueError(f"unsupported $ref {reference!r}")
        node = definitions[reference[len(prefix):]]
    raise ValueError("$ref chain longer than 16")


def _resolve(schema: dict[str, Any], node: Any) -> Any:
    """Return ``node`` with every local ``$ref`` inside it replaced by its target."""
    node = _target(schema, node)
    if isinstance(node, list):
        return [_resolve(schema, item) for item in node]
    if isinstance(node, dict):
        return {key: _resolve(schema, value) for key, value in node.items()}
    return node


def fast_paths(schema: dict[str, Any]) -> tuple[tuple[str, ...], ...]:
    """Return :data:`MAP_PATHS` when ``schema`` allows the fast path at each, else ``()``.

    Each object schema on the way from the root to a map must use only keywords that
    cannot apply another subschema to the map, and the map's own subschema must equal
    :data:`MAP_SCHEMA` once its $refs are resolved.
    """
    try:
        for path in MAP_PATHS:
            node = schema
            for key in path:
                node = _target(schema, node)
                if not isinstance(node, dict) or not set(node) <= _INERT_KEYWORDS:
                    return ()
                node = node.get("properties", {}).get(key)
            if _resolve(schema, node) != MAP_SCHEMA:
                return ()
    except (ValueError, RecursionError):
        return ()
    return MAP_PATHS


def split_maps(
    instance: dict[str, Any], paths: tuple[tuple[str, ...], ...]
) -> tuple[dict[str, Any], list[tuple[tuple[str, ...], dict[str, Any]]]]:
    """Return a copy of ``instance`` with the maps at ``paths`` emptied, and the maps.

    Only the containers on the way to a map are copied. A path that does not lead to an
    object through objects is left alone, for jsonschema to report.
    """
    reduced = dict(instance)
    maps = []
    for path in paths:
        parent = reduced
        for key in path[:-1]:
            child = parent.get(key)
            if not isinstance(child, dict):
                break
            parent[key] = dict(child)
            parent = parent[key]
        else:
            tensors = parent.get(path[-1])
            if isinstance(tensors, dict) and tensors:
                maps.append((path, tensors))
                parent[path[-1]] = {}
    return reduced, maps


def map_errors(
    path: tuple[str, ...], tensors: Mapping[str, Any], format_checker: FormatChecker
) -> Iterator[jsonschema.exceptions.ValidationError]:
    """Yield jsonschema's errors for the map at ``path``, in a form that names the full path.

    The count is checked on the whole map, and the entries on the first failing entry
    in key order, which is the first in path order among the map's entry errors.
    """
    validator = Validator(MAP_SCHEMA, format_checker=format_checker)
    if len(tensors) > _MAX_TENSORS:
        count_only = Validator({"maxProperties": _MAX_TENSORS})
        yield from _prefixed(path, count_only.iter_errors(tensors))
    failing = [name for name, entry in tensors.items() if not entry_is_valid(entry)]
    if failing:
        first = min(failing)
        yield from _prefixed(path, validator.iter_errors({first: tensors[first]}))


def _prefixed(
    path: tuple[str, ...], errors: Iterator[jsonschema.exceptions.ValidationError]
) -> Iterator[jsonschema.exceptions.ValidationError]:
    for error in errors:
        error.path.extendleft(reversed(path))
        yield error
