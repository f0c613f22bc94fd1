"""Level 2 keeps few float64 copies of the eligible parameters at once.

The tests count live objects, not resident memory, so they depend on neither timing nor
the allocator. At the entry and exit of the functions where level 2 forms or drops
parameter-sized float64 tensors, a snapshot walks the locals of every running frame
and the dicts, lists, tuples and dataclasses they refer to. It adds up the float64
tensor storages and numpy buffers whose size is that of a marker tensor: an eligible
tensor whose entry count no other tensor of the model has. Those bytes over the
markers' float64 size give the number of copies.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from level_factories import bundle_parts, honest_bundle, run_verify  # noqa: E402

from mbd_cert import (  # noqa: E402
    _fisher_linear,
    _level2_recomputation,
    _recompute,
    verify_recompute,
)

# Copies of the marker tensors that level 2 may hold at the entry and exit of each
# hooked function, with the count before intermediate results were released as soon
# as they were used. The walk does not enter torch modules, so a model's own tensors
# count only where a dict refers to them.
LIMITS = {
    # The diff, and the float64 model's values in the masked update.
    "build_model": 1, "masked_update": 2, "residual_checks": 2,
    # The diff, the gradient sums, the self-check's autograd gradient and the
    # unweighted sum (6 before: all autograd gradients, and the unweighted sum beside
    # the two weighted sums).
    "linear_moments": 4, "_owner_sums": 4, "_agrees": 4, "gradient_and_fisher": 4,
    # The scores replace the gradient and the Fisher, and the flat |score| the scores
    # (4 before: the diff, the gradient, the Fisher and the scores).
    "saliency_scores": 3, "rank_top_k": 2, "tie_band": 1,
    # In the masked update's steps: the diff, the starting values, the preconditioner,
    # the moving values and their gradient (7 before: also the Fisher and the unused
    # mean gradient).
    "grad": 5,
}
# With the probe set taken in several chunks, the closed form also keeps the running
# totals of the chunks before (10 before: each chunk's sums were kept beside the totals
# until all tensors of the chunk were done).
CHUNKED_LIMITS = {**LIMITS, "linear_moments": 6, "_owner_sums": 6, "_agrees": 6}
# Bytes per closed-form chunk that split the tiny bundle's probe set into 7 chunks.
SMALL_CHUNK_BYTES = 1 << 20

# Functions at whose entry and exit a snapshot is taken: the steps that form or drop
# parameter-sized float64 tensors.
HOOKS = [
    (_fisher_linear, "_agrees"),
    (_fisher_linear, "_owner_sums"),
    (_fisher_linear, "linear_moments"),
    (_recompute, "gradient_and_fisher"),
    (_recompute, "saliency_scores"),
    (_recompute, "rank_top_k"),
    (_recompute, "tie_band"),
    (_recompute, "masked_update"),
    (_level2_recomputation, "build_model"),
    (verify_recompute, "residual_checks"),
    (torch.autograd, "grad"),
]


def _buffers(value: Any) -> Iterator[tuple[int, int]]:
    """Yield (address, bytes) of the float64 memory behind a tensor or numpy array."""
    # type(), not isinstance(): some module attributes warn when their class is read.
    kind = type(value)
    if issubclass(kind, torch.Tensor) and value.dtype == torch.float64 \
            and value.device.type == "cpu":
        storage = value.untyped_storage()
        yield storage.data_ptr(), storage.nbytes()
    elif issubclass(kind, np.ndarray) and value.dtype == np.float64:
        root = value
        while type(root.base) is np.ndarray:
            root = root.base
        yield root.__array_interface__["data"][0], root.nbytes


def _children(value: Any) -> list[Any]:
    kind = type(value)
    if kind is dict:
        return list(value.values())
    if kind in (list, tuple):
        return list(value)
    if dataclasses.is_dataclass(kind):
        return [getattr(value, field.name) for field in dataclasses.fields(value)]
    return []


def _live_float64(sizes: set[int]) -> int:
    """Return the bytes of live float64 buffers whose size in bytes is in ``sizes``.

    Level 2 keeps its tensors in local variables, in dicts, lists and tuples, and in
    dataclasses, so a walk from the locals of every running frame through those
    containers finds them.
    """
    found: dict[int, int] = {}
    seen: set[int] = set()
    pending = []
    frame = sys._getframe(1)
    while frame is not None:
        pending += [(value, 3) for value in frame.f_locals.values()]
        frame = frame.f_back
    while pending:
        value, depth = pending.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        for address, size in _buffers(value):
            if size in sizes:
                found[address] = size
        if depth:
            pending += [(child, depth - 1) for child in _children(value)]
    return sum(found.values())


def _snapshot_hooks(monkeypatch: pytest.MonkeyPatch, record: Callable[[str], None]) -> None:
    for module, name in HOOKS:
        original = getattr(module, name)

        def hooked(*args: Any, __original: Any = original, __name: str = name,
                   **kwargs: Any) -> Any:
            record(__name)
            result = __original(*args, **kwargs)
            record(__name)
            return result

        monkeypatch.setattr(module, name, functools.wraps(original)(hooked))


@pytest.mark.parametrize(("chunk_bytes", "limits"),
                         [(None, LIMITS), (SMALL_CHUNK_BYTES, CHUNKED_LIMITS)],
                         ids=["one-chunk", "seven-chunks"])
def test_level2_peak_float64_copies(monkeypatch, chunk_bytes, limits):
    """Scale: level 2 releases parameter-sized float64 results once they are used."""
    if chunk_bytes is not None:
        monkeypatch.setattr(_recompute, "CHUNK_BYTES", chunk_bytes)
    _, out, key = honest_bundle()
    _, bundle, pre = bundle_parts(out)
    eligible = set(bundle.eligible)
    counts: dict[int, list[str]] = {}
    for name, value in pre.items():
        counts.setdefault(int(value.size), []).append(name)
    markers = [names[0] for names in counts.values() if len(names) == 1 and names[0] in eligible]
    assert markers, "no eligible tensor has an entry count of its own"
    sizes = {8 * int(pre[name].size) for name in markers}
    unit = sum(sizes)
    del bundle, pre
    gc.collect()
    baseline = _live_float64(sizes)
    peaks: dict[str, float] = {}

    def record(hook: str) -> None:
        copies = (_live_float64(sizes) - baseline) / unit
        peaks[hook] = max(peaks.get(hook, 0.0), copies)

    _snapshot_hooks(monkeypatch, record)
    report = run_verify(out, key, 2)

    assert report.verified
    assert sorted(peaks) == sorted(limits)
    for hook, limit in limits.items():
        assert peaks[hook] <= limit, f"{peaks[hook]:.2f} copies at {hook}: {peaks}"


def test_level2_drops_released_model_after_rebuild(monkeypatch):
    """Scale: the saliency step runs without the released model's tensors in memory."""
    _, out, key = honest_bundle()
    seen: list[int] = []
    original = verify_recompute._check_saliency

    def hooked(doc: Any, bundle: Any, pre: Any) -> Any:
        seen.append(len(bundle.post))
        return original(doc, bundle, pre)

    monkeypatch.setattr(verify_recompute, "_check_saliency", hooked)
    report = run_verify(out, key, 2)

    assert report.verified
    assert seen == [0]


def test_saliency_model_freed_before_ranking(monkeypatch):
    """Scale: the float64 model of the saliency step is freed once its scores exist."""
    _, out, key = honest_bundle()
    built: list[weakref.ref[Any]] = []
    alive_at_ranking: list[bool] = []
    build_model, rank_top_k = _level2_recomputation.build_model, _recompute.rank_top_k

    def build(*args: Any, **kwargs: Any) -> Any:
        model = build_model(*args, **kwargs)
        built.append(weakref.ref(model))
        return model

    def rank(*args: Any, **kwargs: Any) -> Any:
        alive_at_ranking.append(built[0]() is not None)
        return rank_top_k(*args, **kwargs)

    monkeypatch.setattr(_level2_recomputation, "build_model", build)
    monkeypatch.setattr(_recompute, "rank_top_k", rank)
    report = run_verify(out, key, 2)

    assert report.verified
    assert alive_at_ranking == [False]
