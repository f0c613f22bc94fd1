"""Adversarial regression tests for level 2 and its closed-form Fisher fast path.

Each forgery starts from the tiny honest deletion of ``level_factories`` and is signed
again with the issuer's key, so only level 2 can catch it. The tests under "defects"
each reproduce a forgery that once crashed level 2 or passed it; they pin the fixed
behaviour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from level_factories import (  # noqa: E402
    bundle_parts,
    copy_bundle,
    honest_bundle,
    load_doc,
    read,
    resign,
    run_verify,
    status_of,
    write_tensors,
)

from mbd_cert import _recompute  # noqa: E402
from mbd_cert._torch_model import build_model, probe_batch  # noqa: E402
from mbd_cert.diff import array_manifest_digest  # noqa: E402
from mbd_cert.errors import InputError, MbdCertError  # noqa: E402
from mbd_cert.verify_recompute import _digest  # noqa: E402


@pytest.fixture(scope="module")
def honest():
    return honest_bundle()


def _parts(out: Path):
    return bundle_parts(out)


def _forget_moments(bundle, pre, names, *, closed_form):
    model = build_model(bundle.architecture, bundle.config_pre, pre)
    model.requires_grad_(False)
    column = bundle.probe.modalities.index(bundle.modality)
    weights = bundle.probe.present[:, column].astype(np.float64)

    def forget(m, sub):
        return bundle.architecture.forget_objective(m, sub, bundle.modality)

    return _recompute.gradient_and_fisher(model, names, forget, probe_batch(bundle.probe),
                                          weights, closed_form=closed_form)


def _ranking(doc, bundle, pre):
    gradient, fisher = _forget_moments(bundle, pre, bundle.eligible, closed_form=True)
    model = build_model(bundle.architecture, bundle.config_pre, pre)
    scores = _recompute.saliency_scores(model, gradient, fisher)
    return _recompute.rank_top_k(scores, doc["saliency"]["top_k_fraction"])


def _write_masks(out: Path, bundle, ranking, selected, doc) -> None:
    """Replace the mask tensors by ``selected`` (flat, ranking order) and commit them."""
    diff = read(out, "diff.safetensors")
    masks, start = {}, 0
    for name in ranking.names:
        shape = bundle.post[name].shape
        size = int(np.prod(shape))
        masks[name] = selected[start:start + size].reshape(shape).copy()
        diff["mask." + name] = masks[name]
        start += size
    write_tensors(out / "diff.safetensors", diff)
    doc["saliency"]["mask_digest"] = array_manifest_digest(masks)


def _verify_or_error(out: Path, key):
    """Return the level-2 report, or the MbdCertError it raised (anything else propagates)."""
    try:
        return run_verify(out, key, 2)
    except MbdCertError as error:
        return error


# --- behaviour that is already right -------------------------------------------------


@pytest.mark.parametrize("groups", [None, ["property_embedding"], ["encoders.text"], ["head"]])
def test_closed_form_matches_vmap_honest(honest, groups):
    _, out, _ = honest
    doc, bundle, pre = _parts(out)
    names = bundle.eligible if groups is None else sorted(
        n for n in bundle.post if any(n == g or n.startswith(g + ".") for g in groups))
    closed = _forget_moments(bundle, pre, names, closed_form=True)
    exact = _forget_moments(bundle, pre, names, closed_form=False)
    for name in names:
        for fast, slow in zip(closed, exact, strict=True):
            np.testing.assert_allclose(fast[name].numpy(), slow[name].numpy(),
                                       rtol=1e-9, atol=1e-300)


def test_swap_at_the_cut_fails_saliency(honest, tmp_path):
    """R-L2-4: a swap across the cut, outside the tie band, fails."""
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    doc, bundle, pre = _parts(out)
    ranking = _ranking(doc, bundle, pre)
    k = int(ranking.selected.sum())
    order = np.argsort(-ranking.magnitude, kind="stable")
    selected = ranking.selected.copy()
    selected[order[k - 1]], selected[order[k]] = False, True
    _write_masks(out, bundle, ranking, selected, doc)
    resign(out, key, doc)
    statuses = status_of(run_verify(out, key, 2))
    assert statuses["mask-commitment"] == "pass"
    assert statuses["saliency-mask"] == "fail"


def test_mask_wrong_dtype_input_error(honest, tmp_path):
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    diff = read(out, "diff.safetensors")
    name = next(k for k in diff if k.startswith("mask."))
    diff[name] = diff[name].astype(np.uint8)
    write_tensors(out / "diff.safetensors", diff)
    resign(out, key)
    with pytest.raises(InputError) as caught:
        run_verify(out, key, 2)
    assert caught.value.code == "E_DIFF_DTYPE"
    assert name in str(caught.value)


# --- defects ---------------------------------------------------------------------------


@pytest.mark.parametrize("groups", [["nothing.here"], ["encoders.audio"]])
def test_unmatched_groups_not_internal_error(honest, tmp_path, groups):
    """R-L2-2: eligible groups that match no mask tensor are E_MASK_MISMATCH."""
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    doc = load_doc(out)
    doc["saliency"]["eligible_groups"] = groups
    resign(out, key, doc)
    # Formerly rank_top_k raised ValueError (exit 3).
    report = run_verify(out, key, 2)
    assert not report.verified
    failed = {c.name: c for c in report.checks if c.status == "fail"}
    assert failed["mask-commitment"].code == "E_MASK_MISMATCH"
    assert "eligible" in failed["mask-commitment"].detail
    assert status_of(report)["saliency-mask"] == "skipped"


@pytest.mark.parametrize("change", ["drop-one-mask", "groups-head"])
def test_mask_names_mismatch_not_internal_error(honest, tmp_path, change):
    """R-L2-2: mask tensors other than the eligible tensors are E_MASK_MISMATCH."""
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    doc = load_doc(out)
    if change == "drop-one-mask":
        diff = read(out, "diff.safetensors")
        del diff[sorted(k for k in diff if k.startswith("mask."))[-1]]
        write_tensors(out / "diff.safetensors", diff)
    else:
        doc["saliency"]["eligible_groups"] = ["head"]
    resign(out, key, doc)
    # Formerly saliency-mask indexed the masks by eligible name: KeyError, exit 3.
    report = run_verify(out, key, 2)
    assert not report.verified
    assert status_of(report)["mask-commitment"] == "fail"
    assert status_of(report)["saliency-mask"] == "skipped"
    detail = next(c.detail for c in report.checks if c.name == "mask-commitment")
    assert "no mask for" in detail


@pytest.mark.parametrize("tolerance", [1e300])
def test_huge_tolerance_rejects_least_salient(honest, tmp_path, tolerance):
    """R-SAL-3, R-L2-4: a huge stated score_tolerance does not widen the band past its cap."""
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    doc, bundle, pre = _parts(out)
    ranking = _ranking(doc, bundle, pre)
    k = int(ranking.selected.sum())
    selected = np.zeros_like(ranking.selected)
    selected[np.argsort(ranking.magnitude, kind="stable")[:k]] = True
    _write_masks(out, bundle, ranking, selected, doc)
    doc["saliency"]["score_tolerance"] = tolerance
    resign(out, key, doc)
    statuses = status_of(run_verify(out, key, 2))
    assert statuses["mask-commitment"] == "pass"
    assert statuses["saliency-mask"] == "fail"


@pytest.mark.parametrize(("gap", "status"), [(5e-5, "pass"), (1e-3, "fail")])
def test_tie_band_capped_whatever_stated(honest, tmp_path, monkeypatch, gap, status):
    """R-SAL-3: a swap is accepted only within 1e-4 of the cut, though 1e-2 is stated.

    The recomputed scores are replaced: 2 on the committed mask, 0.5 elsewhere, and
    one committed entry at 1 loses its place to an entry outside at 1 + gap. So the
    masks differ by one boundary swap, at relative distance gap from the cut.
    """
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    doc = load_doc(out)
    doc["saliency"]["score_tolerance"] = 1e-2
    resign(out, key, doc)
    diff = read(out, "diff.safetensors")
    real = _recompute.saliency_scores

    def crafted(*args, **kwargs):
        scores = real(*args, **kwargs)
        names = sorted(scores)
        committed = np.concatenate([diff["mask." + n].reshape(-1) for n in names])
        flat = np.where(committed, 2.0, 0.5)
        flat[np.flatnonzero(committed)[0]] = 1.0
        flat[np.flatnonzero(~committed)[0]] = 1.0 + gap
        start = 0
        for name in names:
            scores[name] = flat[start:start + scores[name].size].reshape(scores[name].shape)
            start += scores[name].size
        return scores

    monkeypatch.setattr(_recompute, "saliency_scores", crafted)
    check = next(c for c in run_verify(out, key, 2).checks if c.name == "saliency-mask")
    assert check.status == status, check.detail
    assert "relative tolerance 0.0001" in check.detail
    if status == "pass":
        assert check.value == 1
        assert "1 boundary swaps inside the tie band" in check.detail
        assert "capped from the stated 0.01" in check.detail
    else:
        assert check.code == "E_MASK_MISMATCH"
        # The entry from outside the mask is the cut, so only the committed entry lies
        # outside the band.
        assert check.value == 1


def test_nan_scores_fail_saliency(honest, tmp_path):
    """R-L2-1: a rebuilt model with NaN weights is E_MODEL_NONFINITE."""
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    doc = load_doc(out)
    removed = sorted(doc["deletion"]["removed_tensors"])
    name = next(n for n in removed if n.endswith("shared.weight"))
    diff = read(out, "diff.safetensors")
    diff["diff." + name] = diff["diff." + name].copy()
    # The released entry is 0, so the rebuilt pre-deletion entry is +inf.
    diff["diff." + name].flat[0] = -np.inf
    write_tensors(out / "diff.safetensors", diff)
    resign(out, key, doc)
    doc, bundle, pre = _parts(out)
    committed = doc["subject_model"]["pre_deletion"]["tensors"]
    committed[name]["digest"] = _digest(pre[name])
    ranking = _ranking(doc, bundle, pre)
    assert np.isnan(ranking.magnitude).all()
    _write_masks(out, bundle, ranking, ranking.selected, doc)
    resign(out, key, doc)
    # Formerly the NaN scores ranked by flat index and this mask passed. A rebuilt
    # model with infinite values now fails pre-rebuild, and the checks that need it are
    # skipped.
    report = run_verify(out, key, 2)
    assert not report.verified
    failed = {c.name: c.code for c in report.checks if c.status == "fail"}
    assert failed["pre-rebuild"] == "E_MODEL_NONFINITE"
    assert status_of(report)["saliency-mask"] == "skipped"


def test_nonfinite_diff_names_tensor(honest, tmp_path):
    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    doc = load_doc(out)
    diff = read(out, "diff.safetensors")
    name = sorted(k.removeprefix("mask.") for k in diff
                  if k.startswith("mask.") and diff[k].any())[0]
    index = tuple(np.argwhere(diff["mask." + name])[0])
    diff["diff." + name] = diff["diff." + name].copy()
    diff["diff." + name][index] = np.nan
    write_tensors(out / "diff.safetensors", diff)
    resign(out, key, doc)
    doc, _, pre = _parts(out)
    doc["subject_model"]["pre_deletion"]["tensors"][name]["digest"] = _digest(pre[name])
    resign(out, key, doc)
    result = _verify_or_error(out, key)
    if isinstance(result, MbdCertError):
        assert result.exit_code == 2
        assert name in str(result)
        assert result.hint
    else:
        assert not result.verified


class _Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)


def _toy_batch(x):
    rows = x.shape[0]
    return {"inputs": {"x": x}, "present": torch.ones(rows, 1, dtype=torch.bool),
            "label": torch.zeros(rows, dtype=torch.float64)}


@pytest.mark.parametrize("case", ["saturated", "small-dy"])
def test_closed_form_fisher_extreme_activations(case):
    model = _Toy().double()
    with torch.no_grad():
        model.lin.weight.copy_(torch.tensor([[0.5, 0.25]]))
    if case == "saturated":
        def objective(m, batch):
            return torch.tanh(m.lin(batch["inputs"]["x"]).squeeze(-1))
    else:
        def objective(m, batch):
            return 1e-10 * m.lin(batch["inputs"]["x"]).squeeze(-1)
    x = torch.tensor([[1e160, 1.0], [1.0, 2.0]], dtype=torch.float64)
    weights = np.ones(2)
    _, closed = _recompute.gradient_and_fisher(model, ["lin.weight"], objective, _toy_batch(x),
                                               weights, closed_form=True)
    _, exact = _recompute.gradient_and_fisher(model, ["lin.weight"], objective, _toy_batch(x),
                                              weights, closed_form=False)
    assert torch.isfinite(exact["lin.weight"]).all()
    torch.testing.assert_close(closed["lin.weight"], exact["lin.weight"], rtol=1e-9, atol=0.0)


def test_closed_form_matches_vmap_extreme_model(honest):
    _, out, _ = honest
    doc, bundle, pre = _parts(out)
    pre = {n: v.copy() for n, v in pre.items()}
    big = np.float32(3e38)
    prefix = "encoders." + bundle.modality
    pre[prefix + ".norm.weight"][:] = 0
    pre[prefix + ".norm.bias"][:] = big
    for layer in ("proj", "shared", "private"):
        pre[f"{prefix}.{layer}.weight"][:] = big
    modalities = bundle.config_pre["modalities"]
    shared = bundle.config_pre["shared_dim"]
    others = [m for m in modalities if m != "text"]
    column = others.index(bundle.modality) * shared
    pre["generators.text.net.0.weight"][:, column:column + shared] = big
    names = [n for n in bundle.eligible if n.startswith("fusion.")]
    _, closed = _forget_moments(bundle, pre, names, closed_form=True)
    _, exact = _forget_moments(bundle, pre, names, closed_form=False)
    for name in names:
        assert torch.isfinite(exact[name]).all(), name
        assert torch.isfinite(closed[name]).all(), name


def test_nonfinite_scores_fail_saliency(honest, tmp_path, monkeypatch):
    """R-SAL-4: a non-finite recomputed score fails the mask check with E_SCORES_NONFINITE."""
    # A finite model whose scores still overflow (weights near the float64 limit) is
    # hard to build in float32, so one recomputed score is replaced by NaN.
    _, source, key = honest
    real = _recompute.saliency_scores

    def with_nan(*args, **kwargs):
        scores = real(*args, **kwargs)
        first = sorted(scores)[0]
        scores[first] = scores[first].copy()
        scores[first].flat[0] = np.nan
        return scores

    monkeypatch.setattr(_recompute, "saliency_scores", with_nan)
    report = run_verify(source, key, 2)
    failed = {c.name: c.code for c in report.checks if c.status == "fail"}
    assert failed == {"saliency-mask": "E_SCORES_NONFINITE"}


def test_update_steps_over_the_cap_are_refused(honest, tmp_path):
    """R-LIM-6: level 2 refuses a certificate of more than 1,000 update steps before replaying."""
    from mbd_cert._work_limits import MAX_UPDATE_STEPS

    _, source, key = honest
    out = copy_bundle(source, tmp_path / "forged")
    doc = load_doc(out)
    doc["update"]["steps"] = MAX_UPDATE_STEPS + 1
    resign(out, key, doc)
    with pytest.raises(InputError) as caught:
        run_verify(out, key, 2)
    assert caught.value.code == "E_LIMIT_EXCEEDED"
    assert "update.steps" in str(caught.value)


def test_sample_steps_cap():
    from mbd_cert._work_limits import MAX_UPDATE_SAMPLE_STEPS, check_update_work

    check_update_work(20, MAX_UPDATE_SAMPLE_STEPS // 20, source="test")
    with pytest.raises(InputError) as caught:
        check_update_work(20, MAX_UPDATE_SAMPLE_STEPS // 20 + 1, source="test")
    assert caught.value.code == "E_LIMIT_EXCEEDED"


def test_mixed_paths_issue_and_verify_agree(honest, tmp_path):
    # Eligible groups with Linear tensors (batched paths) and others (an encoder's
    # LayerNorm and the property embedding, on the vmap paths): the issuer and level 2
    # mix their two paths differently, and must still agree on the mask and update.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mbd_cert.issue import IssueOptions, issue

    checkpoint, _, _ = honest
    key = Ed25519PrivateKey.generate()
    options = IssueOptions(modality="audio", epsilon=4.0, delta=1e-5, top_k_fraction=0.3,
                           noise_seed=0, force=True,
                           eligible_groups=["fusion", "encoders.text", "property_embedding"])
    issue(checkpoint, tmp_path / "mixed", options, key)
    report = run_verify(tmp_path / "mixed", key, 2)
    statuses = status_of(report)
    assert statuses["saliency-mask"] == "pass"
    assert statuses["update-clip"] == "pass"
    assert report.verified, [(c.name, c.status, c.detail) for c in report.checks]


def test_wide_layers_over_tiny_inputs_refused():
    # A config of one-feature inputs, the longest sequences and the widest layers has
    # 2e6 parameters, an 8 MB model file. Yet one sample's forward pass computes about
    # 6e11 values, about 5 TB in float64, from 12 MB of probe inputs (R-LIM-7).
    from mbd_cert._work_limits import MAX_ACTIVATION_ENTRIES, check_activation_work
    from mbd_cert.arch import _mbd_config

    modalities = ["text", "audio", "vision"]
    config = _mbd_config.validate_config({
        "modalities": modalities, "input_dims": dict.fromkeys(modalities, 1),
        "seq_len": dict.fromkeys(modalities, _mbd_config.MAX_SEQ_LEN),
        "hidden_dim": _mbd_config.MAX_LAYER_WIDTH, "shared_dim": 1, "private_dim": 1,
        "fusion_hidden": 1})
    assert _mbd_config.parameter_count(config) < 3 * 10**6
    per_sample = _mbd_config.activation_entries(config)
    assert per_sample > MAX_ACTIVATION_ENTRIES
    with pytest.raises(InputError) as caught:
        check_activation_work(per_sample, 1, source="certificate")
    assert caught.value.code == "E_LIMIT_EXCEEDED"
    assert "probe samples" in caught.value.message


def test_default_synthetic_config_far_below_activation_cap():
    # The bundled corpus at the trainer's defaults: 400 probe samples.
    from mbd_cert._work_limits import MAX_ACTIVATION_ENTRIES
    from mbd_cert.arch import _mbd_config
    from trainer.data import load_corpus

    corpus = load_corpus("synthetic", seed=0, n_train=10, n_valid=10, n_test=10)
    config = _mbd_config.validate_config({"input_dims": dict(corpus.input_dims),
                                          "seq_len": dict(corpus.seq_len)})
    assert 400 * _mbd_config.activation_entries(config) < MAX_ACTIVATION_ENTRIES / 100


def test_activation_cap_checked_before_level2(honest, monkeypatch):
    from mbd_cert import _work_limits
    from mbd_cert.arch import _mbd_config

    _, source, key = honest
    doc = load_doc(source)
    config = _mbd_config.validate_config(doc["subject_model"]["architecture"]["config"])
    samples = read(source, "probe.safetensors")["label"].shape[0]
    needed = samples * _mbd_config.activation_entries(config)
    monkeypatch.setattr(_work_limits, "MAX_ACTIVATION_ENTRIES", needed - 1)
    monkeypatch.setattr(_recompute, "gradient_and_fisher", None)  # never reached
    with pytest.raises(InputError) as caught:
        run_verify(source, key, 2)
    assert caught.value.code == "E_LIMIT_EXCEEDED"
    monkeypatch.undo()
    monkeypatch.setattr(_work_limits, "MAX_ACTIVATION_ENTRIES", needed)
    assert run_verify(source, key, 2).verified


class _AllocatedValues:
    """Dispatch mode that counts the entries of every tensor an operation allocates.

    Views and in-place results share an input's storage and are not counted.
    """

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                from torch.utils._pytree import tree_flatten

                out = func(*args, **(kwargs or {}))
                inputs = {t.untyped_storage().data_ptr()
                          for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
                for value in tree_flatten(out)[0]:
                    if isinstance(value, torch.Tensor) \
                            and value.untyped_storage().data_ptr() not in inputs:
                        counter.entries += value.numel()
                return out

        self.entries = 0
        self.mode = Mode()


def _sized_config(modalities: int, steps: int, width: int, hidden: int, shared: int,
                  private: int, fusion: int) -> tuple[list[str], dict]:
    """Return modality names and a validated built-in config of the given sizes."""
    from mbd_cert.arch import _mbd_config

    names = [f"m{i}" for i in range(modalities)]
    config = _mbd_config.validate_config({
        "modalities": names, "input_dims": dict.fromkeys(names, width),
        "seq_len": dict.fromkeys(names, steps), "hidden_dim": hidden, "shared_dim": shared,
        "private_dim": private, "fusion_hidden": fusion})
    return names, config


@pytest.mark.parametrize(("modalities", "steps", "width", "hidden", "shared", "private",
                          "fusion"), [
    (1, 7, 9, 16, 8, 4, 12),
    (2, 1, 1, 1, 1, 4, 1),
    (3, 5, 1, 64, 1, 1, 1),
    (5, 1, 9, 1, 8, 1, 12),
    (3, 8, 32, 64, 32, 16, 64),
], ids=["one-modality", "tiny", "wide-hidden", "many-modalities", "default-widths"])
def test_activation_entries_bound_the_forward_pass(modalities, steps, width, hidden, shared,
                                                   private, fusion):
    # R-LIM-7 caps probe samples times this count, which the architecture states as an
    # upper estimate: every value a forward pass allocates, the inputs included.
    from mbd_cert.arch import _mbd_config
    from mbd_cert.arch.mbd import MBDModel

    names, config = _sized_config(modalities, steps, width, hidden, shared, private, fusion)
    model = MBDModel(config, seed=0).to(torch.float64).eval()
    samples = 3
    inputs = {name: torch.randn(samples, steps, width, dtype=torch.float64) for name in names}
    present = torch.ones(samples, modalities, dtype=torch.bool)
    present[0, 0] = False
    counter = _AllocatedValues()
    with torch.no_grad(), counter.mode:
        model(inputs, present)
    computed = counter.entries + sum(value.numel() for value in inputs.values())
    assert computed <= samples * _mbd_config.activation_entries(config)


def test_vmap_chunk_bounded_by_gradient_bytes(monkeypatch):
    # A certificate can name wide tensors that only the vmap path computes (a Linear
    # over sequence inputs, such as encoders.text.proj). The issuer keeps about 256 MiB
    # of per-sample gradients at a time. Level 2 with 64 samples per call needed 1.6 GB
    # for a 1M-entry tensor (a 4 MB model file), so it must chunk by bytes too.
    from mbd_cert import _determinism

    model = _Toy().double()
    entries = sum(p.numel() for p in model.parameters())
    per_call = 3
    monkeypatch.setattr(_recompute, "CHUNK_BYTES", per_call * 8 * entries, raising=False)
    rows_seen = []
    original = _determinism.run_vmapped

    def recording(function, selected, inputs, present, label):
        rows_seen.append(int(present.shape[0]))
        return original(function, selected, inputs, present, label)

    monkeypatch.setattr(_recompute, "run_vmapped", recording)

    def objective(m, batch):
        return m.lin(batch["inputs"]["x"]).squeeze(-1) ** 2

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(10, 2, dtype=torch.float64, generator=generator)
    names = ["lin.weight", "lin.bias"]
    first, second = _recompute.gradient_and_fisher(model, names, objective, _toy_batch(x),
                                                   np.ones(10))
    assert rows_seen == [3, 3, 3, 1]
    monkeypatch.undo()
    whole_first, whole_second = _recompute.gradient_and_fisher(model, names, objective,
                                                               _toy_batch(x), np.ones(10))
    for name in names:
        torch.testing.assert_close(first[name], whole_first[name], rtol=1e-12, atol=0.0)
        torch.testing.assert_close(second[name], whole_second[name], rtol=1e-12, atol=0.0)


def test_wide_sequence_replay_refused():
    # 4096 input features and hidden units over 152 steps: a 67 MB model and 50 MB of
    # probe inputs for 20 samples. 1,000 steps pass the sample-step and activation caps,
    # yet one update replay costs about 5e13 operations (a measured 74 ms per
    # sample-step, about 25 minutes), and 64 reference-retrain runs 68 times that.
    from mbd_cert._work_limits import (
        check_activation_work,
        check_evidence_work,
        check_operation_work,
        check_update_work,
    )
    from mbd_cert.arch import _mbd_config

    config = _mbd_config.validate_config({
        "modalities": ["text", "audio"], "input_dims": {"text": 4096, "audio": 1},
        "seq_len": {"text": 152, "audio": 1}, "hidden_dim": 4096})
    check_update_work(1_000, 20, source="certificate")
    check_evidence_work(64, 1_000, 20, source="certificate")
    check_activation_work(_mbd_config.activation_entries(config), 20, source="certificate")
    with pytest.raises(InputError) as caught:
        check_operation_work(_mbd_config.forward_operations(config), 1_000, 20,
                             source="certificate")
    assert caught.value.code == "E_LIMIT_EXCEEDED"


def test_default_synthetic_config_far_below_operation_cap():
    # The bundled corpus at the sample-step cap, 1,000 steps over 2,000 samples, uses
    # about an eighth of the cap.
    from mbd_cert._work_limits import MAX_REPLAY_OPERATIONS, REPLAY_EXTRA_PASSES
    from mbd_cert.arch import _mbd_config
    from trainer.data import load_corpus

    corpus = load_corpus("synthetic", seed=0, n_train=10, n_valid=10, n_test=10)
    config = _mbd_config.validate_config({"input_dims": dict(corpus.input_dims),
                                          "seq_len": dict(corpus.seq_len)})
    per_sample = _mbd_config.forward_operations(config)
    assert (1_000 + REPLAY_EXTRA_PASSES) * 2_000 * per_sample < MAX_REPLAY_OPERATIONS / 5


def test_operation_cap_checked_before_level2(honest, monkeypatch):
    from mbd_cert import _work_limits
    from mbd_cert.arch import _mbd_config

    _, source, key = honest
    doc = load_doc(source)
    config = _mbd_config.validate_config(doc["subject_model"]["architecture"]["config"])
    samples = read(source, "probe.safetensors")["label"].shape[0]
    passes = doc["update"]["steps"] + _work_limits.REPLAY_EXTRA_PASSES
    needed = passes * samples * _mbd_config.forward_operations(config)
    monkeypatch.setattr(_work_limits, "MAX_REPLAY_OPERATIONS", needed - 1)
    monkeypatch.setattr(_recompute, "gradient_and_fisher", None)  # never reached
    with pytest.raises(InputError) as caught:
        run_verify(source, key, 2)
    assert caught.value.code == "E_LIMIT_EXCEEDED"
    assert "operations" in caught.value.message
    monkeypatch.undo()
    monkeypatch.setattr(_work_limits, "MAX_REPLAY_OPERATIONS", needed)
    assert run_verify(source, key, 2).verified


@pytest.mark.parametrize(("modalities", "steps", "width", "hidden", "shared", "private",
                          "fusion"), [
    (2, 7, 9, 16, 8, 4, 12),
    (2, 1, 1, 1, 1, 4, 1),
    (3, 5, 1, 64, 1, 1, 1),
    (5, 1, 9, 1, 8, 1, 12),
    (3, 8, 32, 64, 32, 16, 64),
    (2, 3, 64, 64, 1, 1, 256),
], ids=["two-modalities", "tiny", "wide-hidden", "many-modalities", "default-widths",
        "wide-fusion"])
def test_forward_operations_bound_both_objectives(modalities, steps, width, hidden, shared,
                                                  private, fusion):
    # R-LIM-8 caps passes times probe samples times this count, which the architecture
    # states as an upper estimate for either objective: multiply-adds count one.
    from torch.utils.flop_counter import FlopCounterMode

    from mbd_cert.arch import _mbd_config
    from mbd_cert.arch.mbd import MBDModel, forget_objective, retain_objective

    names, config = _sized_config(modalities, steps, width, hidden, shared, private, fusion)
    samples = 3
    batch = {"inputs": {name: torch.randn(samples, steps, width, dtype=torch.float64)
                        for name in names},
             "present": torch.ones(samples, modalities, dtype=torch.bool),
             "label": torch.zeros(samples, dtype=torch.float64)}
    bound = samples * _mbd_config.forward_operations(config)
    pre = MBDModel(config, seed=0).to(torch.float64).eval()
    post = MBDModel({**config, "deleted_modalities": [names[1]]}, seed=0).to(torch.float64)
    for model, objective in ((pre, forget_objective), (post.eval(), retain_objective)):
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            objective(model, batch, names[1])
        # The counter reports 2 floating-point operations per multiply-add.
        assert counter.get_total_flops() // 2 <= bound, objective.__name__


def test_closed_form_chunked_by_feature_bytes(monkeypatch):
    # The closed form keeps each covered Linear's inputs and output gradients, and
    # their pairwise products, for every sample it takes at once. Over the whole probe
    # set, a 4096-wide fusion grew level 2 by 6.4 GB where R-LIM-7 counted 0.95 GB,
    # while the issuer computed the same sums in 256 MiB chunks.
    from mbd_cert import _fisher_linear

    model = _Toy().double()
    features = model.lin.in_features + model.lin.out_features
    per_call = 3
    monkeypatch.setattr(_recompute, "CHUNK_BYTES",
                        per_call * features * _recompute.CLOSED_FORM_BYTES_PER_FEATURE,
                        raising=False)
    rows_seen = []
    original = _fisher_linear.linear_moments

    def recording(model, names, forward, weights):
        rows_seen.append(int(weights.shape[0]))
        return original(model, names, forward, weights)

    monkeypatch.setattr(_fisher_linear, "linear_moments", recording)

    def objective(m, batch):
        return m.lin(batch["inputs"]["x"]).squeeze(-1) ** 2

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(10, 2, dtype=torch.float64, generator=generator)
    names = ["lin.weight", "lin.bias"]
    first, second = _recompute.gradient_and_fisher(model, names, objective, _toy_batch(x),
                                                   np.ones(10), closed_form=True)
    assert rows_seen == [3, 3, 3, 1]
    monkeypatch.undo()
    exact_first, exact_second = _recompute.gradient_and_fisher(model, names, objective,
                                                               _toy_batch(x), np.ones(10))
    for name in names:
        torch.testing.assert_close(first[name], exact_first[name], rtol=1e-12, atol=0.0)
        torch.testing.assert_close(second[name], exact_second[name], rtol=1e-12, atol=0.0)


def test_closed_form_chunk_rejection_covers_all(monkeypatch):
    # A tensor that one chunk's closed form rejects (here an input beyond 1e75 in the
    # first sample) takes the exact vmap path over every sample, not over that chunk.
    model = _Toy().double()
    with torch.no_grad():
        model.lin.weight.copy_(torch.tensor([[0.5, 0.25]]))
    monkeypatch.setattr(_recompute, "CHUNK_BYTES", 1, raising=False)

    def objective(m, batch):
        return torch.tanh(m.lin(batch["inputs"]["x"]).squeeze(-1))

    x = torch.tensor([[1e160, 1.0], [1.0, 2.0], [0.5, -1.0]], dtype=torch.float64)
    _, chunked = _recompute.gradient_and_fisher(model, ["lin.weight"], objective,
                                                _toy_batch(x), np.ones(3), closed_form=True)
    _, exact = _recompute.gradient_and_fisher(model, ["lin.weight"], objective,
                                              _toy_batch(x), np.ones(3), closed_form=False)
    torch.testing.assert_close(chunked["lin.weight"], exact["lin.weight"], rtol=1e-12,
                               atol=0.0)
