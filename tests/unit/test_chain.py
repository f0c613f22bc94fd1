"""Tests for mbd_cert.chain: walking a chain of certificates and recomputing its budget.

The certificates are built in memory (no model): schema-valid, signed, and linked the
way ``mbd-cert issue`` links them. Each tamper test changes one thing and re-signs, so
the failure comes from the chain rule under test and not from the signature.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mbd_cert import accounting, certificate, chain, signing
from mbd_cert.errors import (
    CalibrationInvalid,
    IssuanceError,
    LimitExceeded,
    MalformedCertificate,
    UntrustedKey,
)
from mbd_cert.issue import IssueOptions, calibrated_sigma, chain_account
from mbd_cert.mechanism import analytic_gaussian_epsilon, analytic_gaussian_sigma
from mbd_cert.schema import validate_certificate

# Analytic sigma for epsilon 1, delta 1e-5, sensitivity 1: 3.7306316350 (3.730632 when
# rounded to six decimals). The reference epsilons 1.465170 and 2.154677 are for this
# value; the rounded sigma gives 2.1546764, one unit lower in the sixth decimal.
SIGMA = analytic_gaussian_sigma(1.0, 1e-5, 1.0)


def model_commitment(label: int) -> dict[str, Any]:
    digest = f"sha256:{label:064x}"
    return {"file_digest": digest, "manifest_digest": digest, "tensors": {}}


def chain_doc(
    key: Ed25519PrivateKey,
    sequence_number: int,
    previous: dict[str, Any] | None,
    earlier: list[dict[str, Any]],
    *,
    sigma: float = SIGMA,
    sensitivity: float = 1.0,
    delta: float = 1e-5,
    pre: int | None = None,
    **accounting_changes: Any,
) -> dict[str, Any]:
    """Return a signed certificate that extends ``earlier`` (oldest first)."""
    entries = [
        accounting.ChainEntry(d["privacy"]["epsilon"], d["privacy"]["delta"],
                              d["privacy"]["sigma"], d["privacy"]["sensitivity"])
        for d in earlier
    ]
    # The link's own epsilon: 1 where sigma covers it, else what sigma gives, so that
    # every link passes its calibration check (R-CHAIN-8).
    epsilon = max(1.0, analytic_gaussian_epsilon(delta, sigma, sensitivity))
    entries.append(accounting.ChainEntry(epsilon, delta, sigma, sensitivity))
    account = accounting.account_chain(entries, delta)
    doc: dict[str, Any] = {
        "format_version": "1.0",
        "certificate_id": str(uuid.uuid4()),
        "issued_at": "2026-01-01T00:00:00Z",
        "issuer": {"key_id": signing.key_id(key.public_key())},
        "subject_model": {
            "architecture": {"name": "mbd-sentiment", "version": "1", "config": {}},
            "pre_deletion": model_commitment(sequence_number - 1 if pre is None else pre),
            "post_deletion": model_commitment(sequence_number),
        },
        "deletion": {"modality": "audio", "removed_tensors": ["encoders.audio.weight"]},
        "saliency": {
            "method": "swiftprune-fisher-diagonal", "objective": "forget-prediction-gap",
            "top_k_fraction": 0.02, "eligible_groups": ["fusion"], "eligible_count": 100,
            "mask_size": 2, "mask_digest": "sha256:" + "a" * 64, "seed": 0,
            "tie_break": "score-descending-then-index", "score_dtype": "float64",
            "score_tolerance": 1e-6,
        },
        "update": {
            "rule": "masked-preconditioned-gd", "objective": "retain-task-l1-deleted",
            "steps": 1, "learning_rate": 1e-3, "damping": 1e-3, "clip_norm": 0.5,
        },
        "privacy": {
            "mechanism": "analytic-gaussian", "epsilon": epsilon, "delta": delta,
            "sensitivity": sensitivity, "sensitivity_method": "declared", "sigma": sigma,
            "noise_dimension": 2,
        },
        "accounting": {
            "method": "mu-gdp",
            "sequence_number": sequence_number,
            "previous_certificate": (
                certificate.certificate_digest(previous) if previous is not None else None
            ),
            "mu": account.mu,
            "cumulative_epsilon": account.epsilon,
            "delta": delta,
            "naive_epsilon": account.naive_epsilon,
            "rdp_epsilon": account.rdp_epsilon,
        },
        "audit_bundle": {
            "confidential": True,
            "diff": {"path": "diff.safetensors", "file_digest": "sha256:" + "b" * 64,
                     "manifest_digest": "sha256:" + "c" * 64},
            "probe": {"path": "probe.safetensors", "file_digest": "sha256:" + "d" * 64,
                      "manifest_digest": "sha256:" + "e" * 64},
        },
        "metrics": {"utility": {}},
        "environment": {"mbd_cert_version": "test", "torch_version": "none",
                        "device": "cpu", "dtype": "float64"},
    }
    doc["accounting"].update(accounting_changes)
    return certificate.sign_certificate(doc, key)


def build_chain(key: Ed25519PrivateKey, length: int, **changes: Any) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for number in range(1, length + 1):
        docs.append(chain_doc(key, number, docs[-1] if docs else None, list(docs), **changes))
    return docs


def write(directory: Path, docs: list[dict[str, Any]]) -> None:
    directory.mkdir(exist_ok=True)
    for doc in docs:
        name = f"link-{doc['accounting']['sequence_number']}-{doc['certificate_id'][:4]}.json"
        (directory / name).write_bytes(certificate.dump_certificate(doc))


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_factory_docs_are_schema_valid(key: Ed25519PrivateKey) -> None:
    for doc in build_chain(key, 3):
        validate_certificate(json.loads(certificate.dump_certificate(doc)))


def test_walk_returns_links_oldest_first(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    docs = build_chain(key, 3)
    write(tmp_path, docs[:-1])
    links = chain.walk_chain(docs[-1], tmp_path)
    assert [link.sequence_number for link in links] == [1, 2, 3]
    assert [link.doc["certificate_id"] for link in links] == [d["certificate_id"] for d in docs]
    assert links[-1].source == "<current>"


def test_first_certificate_needs_no_directory(key: Ed25519PrivateKey) -> None:
    (doc,) = build_chain(key, 1)
    assert [link.sequence_number for link in chain.walk_chain(doc, None)] == [1]


def test_missing_link_fails(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    docs = build_chain(key, 3)
    write(tmp_path, docs[1:2])  # link 1 is absent
    with pytest.raises(chain.ChainLinkMissing) as caught:
        chain.walk_chain(docs[-1], tmp_path)
    assert caught.value.code == "E_CHAIN_LINK_MISSING"
    assert certificate.certificate_digest(docs[0]) in caught.value.message


def test_missing_link_hint_names_directory(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    # verify-repo shows this hint too, and it has no --chain option. So the hint names
    # the certificate's directory and the commands that take --chain.
    docs = build_chain(key, 2)
    with pytest.raises(chain.ChainLinkMissing) as caught:
        chain.walk_chain(docs[-1], tmp_path)
    hint = caught.value.hint
    assert "'verify --chain DIR'" not in hint
    assert "certificate's directory" in hint
    assert "only place verify-repo reads them" in hint
    assert "--chain DIR (verify, report)" in hint


def test_reordered_link_fails(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    # Certificate 3 names certificate 1 as its previous one: a link is skipped.
    docs = build_chain(key, 2)
    skipping = chain_doc(key, 3, docs[0], docs, pre=1)
    write(tmp_path, docs)
    with pytest.raises(chain.ChainBroken, match="sequence_number is 1, expected 2"):
        chain.walk_chain(skipping, tmp_path)


def test_duplicated_link_fails(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    docs = build_chain(key, 2)
    # The same deletion certified again as number 3, with its original certificate id.
    twin = dict(chain_doc(key, 3, docs[1], docs))
    twin["certificate_id"] = docs[1]["certificate_id"]
    twin = certificate.sign_certificate(twin, key)
    write(tmp_path, docs)
    with pytest.raises(chain.ChainBroken, match="appears at sequence numbers 2 and 3"):
        chain.walk_chain(twin, tmp_path)


def test_model_discontinuity_fails(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    docs = build_chain(key, 1)
    other_model = chain_doc(key, 2, docs[0], docs, pre=77)
    write(tmp_path, docs)
    with pytest.raises(chain.ChainBroken, match="starts from a model whose manifest_digest"):
        chain.walk_chain(other_model, tmp_path)


def test_first_link_with_previous_fails(key: Ed25519PrivateKey) -> None:
    docs = build_chain(key, 1)
    bad = chain_doc(key, 1, docs[0], [])
    with pytest.raises(chain.ChainBroken, match="sequence_number 1 but names"):
        chain.walk_chain(bad, None)


def test_later_link_without_previous_fails(key: Ed25519PrivateKey) -> None:
    bad = chain_doc(key, 2, None, [])
    with pytest.raises(chain.ChainBroken, match="previous_certificate is null"):
        chain.walk_chain(bad, None)


def test_named_paths_are_used_first(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    docs = build_chain(key, 2)
    listing = chain.write_chain_copies(chain.walk_chain(docs[0], None), tmp_path)
    assert listing[0]["path"] == "chain-00001.json"
    named = chain_doc(key, 2, docs[0], docs[:1], chain=listing)
    assert [link.source for link in chain.walk_chain(named, tmp_path)][0].endswith(
        "chain-00001.json"
    )


def test_listing_that_disagrees_fails(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    docs = build_chain(key, 2)
    write(tmp_path, docs[:1])
    wrong = [{"sequence_number": 1, "certificate_digest": "sha256:" + "0" * 64,
              "path": "chain-00001.json"}]
    bad = chain_doc(key, 2, docs[0], docs[:1], chain=wrong)
    with pytest.raises(chain.ChainBroken, match="accounting.chain lists"):
        chain.walk_chain(bad, tmp_path)


def test_empty_listing_of_later_link_fails(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    # R-CHAIN-4: a present listing names exactly the links found, and [] names none.
    docs = build_chain(key, 2)
    write(tmp_path, docs[:1])
    bad = chain_doc(key, 2, docs[0], docs[:1], chain=[])
    with pytest.raises(chain.ChainBroken, match="accounting.chain lists 0 links"):
        chain.walk_chain(bad, tmp_path)
    first = chain_doc(key, 1, None, [], chain=[])
    assert len(chain.walk_chain(first, None)) == 1


def test_listing_with_unsafe_path_is_malformed(key: Ed25519PrivateKey) -> None:
    docs = build_chain(key, 1)
    bad = chain_doc(key, 2, docs[0], docs, chain=[
        {"sequence_number": 1, "certificate_digest": certificate.certificate_digest(docs[0]),
         "path": "../chain-00001.json"}])
    with pytest.raises(MalformedCertificate):
        validate_certificate(json.loads(certificate.dump_certificate(bad)))


def test_chain_longer_than_cap_rejected(key: Ed25519PrivateKey) -> None:
    bad = chain_doc(key, chain.MAX_CHAIN_LENGTH + 1, None, [])
    bad["accounting"]["previous_certificate"] = "sha256:" + "1" * 64
    with pytest.raises(LimitExceeded, match="chain length cap of 1000"):
        chain.walk_chain(bad, None)


def test_unrelated_json_in_directory_is_skipped(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    docs = build_chain(key, 2)
    write(tmp_path, docs[:1])
    (tmp_path / "report.json").write_text('{"checks": []}')
    assert len(chain.walk_chain(docs[-1], tmp_path)) == 2


def test_four_deletions_reference_epsilon(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    docs = build_chain(key, 4)
    write(tmp_path, docs[:-1])
    links, account = chain.check_chain_accounting(docs[-1], tmp_path, [key.public_key()])
    assert len(links) == 4
    assert account.epsilon == pytest.approx(2.154677, abs=5e-7)
    assert account.naive_epsilon == 4.0
    assert account.epsilon < account.rdp_epsilon < account.naive_epsilon


def test_understated_earlier_link_fails(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    first = build_chain(key, 1)
    second = chain_doc(key, 2, first[0], first, cumulative_epsilon=1.2)
    third = chain_doc(key, 3, second, [first[0], second])
    write(tmp_path, [first[0], second])
    with pytest.raises(CalibrationInvalid, match="certificate 2 .* less than the recomputed"):
        chain.check_chain_accounting(third, tmp_path, [key.public_key()])


@pytest.mark.parametrize("field", ["naive_epsilon", "rdp_epsilon"])
def test_understated_reading_bound_fails(key: Ed25519PrivateKey, tmp_path: Path,
                                         field: str) -> None:
    first = build_chain(key, 1)
    honest = chain_doc(key, 2, first[0], first)
    stated = honest["accounting"][field]
    low = chain_doc(key, 2, first[0], first, **{field: stated * (1 - 1e-6)})
    write(tmp_path, first)
    with pytest.raises(CalibrationInvalid, match=f"accounting.{field} is .* less than"):
        chain.check_chain_accounting(low, tmp_path, [key.public_key()])
    # An overstatement, or a value within the tolerance, passes.
    for value in (stated * 2, stated * (1 - 1e-12)):
        doc = chain_doc(key, 2, first[0], first, **{field: value})
        chain.check_chain_accounting(doc, tmp_path, [key.public_key()])


def test_reading_bounds_may_be_absent(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    first = build_chain(key, 1)
    doc = chain_doc(key, 2, first[0], first)
    del doc["accounting"]["naive_epsilon"], doc["accounting"]["rdp_epsilon"]
    doc = certificate.sign_certificate(
        {k: v for k, v in doc.items() if k != "signature"}, key)
    write(tmp_path, first)
    chain.check_chain_accounting(doc, tmp_path, [key.public_key()])


def test_wrong_mu_fails(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    first = build_chain(key, 1)
    bad = chain_doc(key, 2, first[0], first, mu=0.2680)
    write(tmp_path, first)
    with pytest.raises(CalibrationInvalid, match="accounting.mu is 0.268"):
        chain.check_chain_accounting(bad, tmp_path, [key.public_key()])


def test_earlier_link_needs_trusted_key(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    stranger = Ed25519PrivateKey.generate()
    first = build_chain(stranger, 1)
    second = chain_doc(key, 2, first[0], first)
    write(tmp_path, first)
    with pytest.raises(UntrustedKey):
        chain.check_chain_accounting(second, tmp_path, [key.public_key()])


# (epsilon, sensitivity): the first four convert back below epsilon, the last two
# (the issuer's default clip bound) a few units in the last place above it.
FIRST_DELETIONS = [(1.0, 1.0), (0.3, 1.0), (2.5, 1.0), (8.0, 1.0), (0.9, 0.002), (0.1, 0.002)]


@pytest.mark.parametrize(("epsilon", "sensitivity"), FIRST_DELETIONS)
def test_first_deletion_states_its_calibrated_epsilon(epsilon: float,
                                                      sensitivity: float) -> None:
    options = IssueOptions(modality="audio", epsilon=epsilon, delta=1e-5, max_epsilon=epsilon)
    sigma = calibrated_sigma([], options, sensitivity)
    analytic = analytic_gaussian_sigma(epsilon, 1e-5, sensitivity)
    assert analytic <= sigma <= analytic * (1 + 1e-12)
    converted = accounting.account_chain(
        [accounting.ChainEntry(epsilon, 1e-5, sigma, sensitivity)], 1e-5).epsilon
    assert converted <= epsilon
    # --max-epsilon equal to the requested epsilon admits the deletion.
    account = chain_account([], options, sigma, sensitivity)
    assert account.epsilon == epsilon


def test_default_clip_bound_needs_raised_sigma() -> None:
    # Without the raise, the conversion of the analytic sigma lands above epsilon.
    analytic = analytic_gaussian_sigma(0.9, 1e-5, 0.002)
    converted = accounting.account_chain(
        [accounting.ChainEntry(0.9, 1e-5, analytic, 0.002)], 1e-5).epsilon
    assert converted > 0.9


def test_later_deletion_keeps_the_converted_epsilon(key: Ed25519PrivateKey) -> None:
    links = chain.walk_chain(build_chain(key, 1)[0], None)
    options = IssueOptions(modality="vision", epsilon=1.0, delta=1e-5)
    account = chain_account(links, options, SIGMA, 1.0)
    entries = [accounting.ChainEntry(1.0, 1e-5, SIGMA, 1.0)] * 2
    assert account.epsilon == accounting.account_chain(entries, 1e-5).epsilon


def test_issuer_budget_refusal_shows_both_numbers(key: Ed25519PrivateKey) -> None:
    """R-CHAIN-5: a deletion over --max-epsilon is E_BUDGET_EXCEEDED, naming both numbers."""
    links = chain.walk_chain(build_chain(key, 1)[0], None)
    options = IssueOptions(modality="vision", epsilon=1.0, delta=1e-5, max_epsilon=1.4)
    with pytest.raises(IssuanceError) as caught:
        chain_account(links, options, SIGMA, 1.0)
    assert caught.value.code == "E_BUDGET_EXCEEDED"
    within = IssueOptions(modality="vision", epsilon=1.0, delta=1e-5, max_epsilon=1.5)
    epsilon = chain_account(links, within, SIGMA, 1.0).epsilon
    assert epsilon == pytest.approx(1.465170, abs=1e-6)
    # Every digit of the epsilon, as the certificate would hold it.
    assert f"cumulative epsilon to {epsilon!r} at delta 1e-05" in caught.value.message
    assert "--max-epsilon 1.4" in caught.value.message


def test_budget_checked_before_reading_checkpoint(key: Ed25519PrivateKey,
                                                  tmp_path: Path) -> None:
    """R-CHAIN-5: a deletion over --max-epsilon is refused before the model is read."""
    from mbd_cert.issue import issue

    # The checkpoint directory is empty: reading its config or model would fail with
    # another error, so E_BUDGET_EXCEEDED shows that the budget came first.
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    out = tmp_path / "out"
    options = IssueOptions(modality="audio", epsilon=1.0, delta=1e-5, max_epsilon=0.5)
    with pytest.raises(IssuanceError) as caught:
        issue(checkpoint, out, options, key)
    assert caught.value.code == "E_BUDGET_EXCEEDED"
    assert not out.exists()


def test_chain_continues_only_from_released_model(key: Ed25519PrivateKey,
                                                  tmp_path: Path) -> None:
    """R-CHAIN-7: the checkpoint's model must be the one the previous certificate released."""
    import numpy as np
    from safetensors.numpy import save_file

    from mbd_cert import _safetensors
    from mbd_cert.issue import previous_chain

    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    model = checkpoint / "model.safetensors"
    save_file({"head.weight": np.ones(3, dtype=np.float32)}, str(model))
    digests = _safetensors.digest_file(model)
    released = {"file_digest": digests.file_digest, "manifest_digest": digests.manifest_digest,
                "tensors": {}}
    doc = chain_doc(key, 1, None, [])
    doc["subject_model"]["post_deletion"] = released
    doc = _resigned(key, doc)
    (checkpoint / "cert.json").write_bytes(certificate.dump_certificate(doc))
    options = IssueOptions(modality="vision", epsilon=1.0, delta=1e-5)
    assert [link.sequence_number for link in previous_chain(checkpoint, options)] == [1]

    save_file({"head.weight": np.zeros(3, dtype=np.float32)}, str(model))
    with pytest.raises(IssuanceError) as caught:
        previous_chain(checkpoint, options)
    assert caught.value.code == "E_CHAIN_BROKEN"
    assert digests.manifest_digest in caught.value.message


def _resigned(key: Ed25519PrivateKey, doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    edited = json.loads(json.dumps(doc))
    edited.pop("signature", None)
    for path, value in changes.items():
        section, field = path.split("__")
        edited[section][field] = value
    return certificate.sign_certificate(edited, key)


@pytest.mark.parametrize(
    ("changes", "match"),
    [({"update__clip_norm": 5.0, "privacy__sensitivity_method": "clip-bound"},
      "below the clip bound"),
     ({"privacy__noise_dimension": 1}, "noise must cover every masked entry")],
    ids=["sensitivity-below-clip-bound", "noise-dimension"],
)
def test_miscalibrated_earlier_link_fails(key: Ed25519PrivateKey, tmp_path: Path,
                                          changes: dict[str, Any], match: str) -> None:
    # R-CHAIN-8: an earlier link's sensitivity and sigma enter the cumulative budget,
    # so a link that fails its own calibration check fails the chain.
    first = _resigned(key, build_chain(key, 1)[0], **changes)
    second = chain_doc(key, 2, first, [first])
    write(tmp_path, [first])
    with pytest.raises(CalibrationInvalid, match=f"earlier certificate 1 .*{match}"):
        chain.check_chain_accounting(second, tmp_path, [key.public_key()])


def test_low_sigma_earlier_link_fails(key: Ed25519PrivateKey,
                                                     tmp_path: Path) -> None:
    first = [_resigned(key, build_chain(key, 1)[0], privacy__sigma=SIGMA / 2)]
    second = chain_doc(key, 2, first[0], first)
    write(tmp_path, first)
    with pytest.raises(CalibrationInvalid, match="earlier certificate 1 .*sigma >= 3.73063"):
        chain.check_chain_accounting(second, tmp_path, [key.public_key()])


def _with_deleted(key: Ed25519PrivateKey, doc: dict[str, Any],
                  deleted: list[str]) -> dict[str, Any]:
    changed = json.loads(json.dumps(doc))
    changed["subject_model"]["architecture"]["config"] = {"deleted_modalities": deleted}
    # The modality this link deletes: the one its list adds to the list before it.
    changed["deletion"]["modality"] = deleted[-1]
    changed["deletion"]["removed_tensors"] = [f"encoders.{deleted[-1]}.weight"]
    del changed["signature"]
    return certificate.sign_certificate(changed, key)


def _chain_with_deleted(key: Ed25519PrivateKey,
                        lists: list[list[str]]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for number, deleted in enumerate(lists, start=1):
        doc = chain_doc(key, number, docs[-1] if docs else None, list(docs))
        docs.append(_with_deleted(key, doc, deleted))
    return docs


def test_deleted_modalities_growing_accepted(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    docs = _chain_with_deleted(key, [["audio"], ["audio", "vision"]])
    write(tmp_path, docs[:1])
    assert [link.sequence_number for link in chain.walk_chain(docs[-1], tmp_path)] == [1, 2]


def test_first_link_with_two_deleted_fails(key: Ed25519PrivateKey) -> None:
    # A released model copied into a fresh checkpoint and deleted again: the new
    # certificate claims to be deletion 1 and would restart the budget.
    (doc,) = _chain_with_deleted(key, [["audio", "vision"]])
    with pytest.raises(chain.ChainBroken, match="earlier deletion is\\s+missing") as caught:
        chain.walk_chain(doc, None)
    assert caught.value.code == "E_CHAIN_BROKEN"


def test_link_dropping_deleted_modality_fails(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    docs = _chain_with_deleted(key, [["audio"], ["vision"]])
    write(tmp_path, docs[:1])
    with pytest.raises(chain.ChainBroken, match="no longer lists \\['audio'\\]"):
        chain.walk_chain(docs[-1], tmp_path)


def test_link_deleting_deleted_modality_fails(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    """R-CHAIN-9: link 2 claims audio again, so nothing certifies the vision deletion."""
    docs = _chain_with_deleted(key, [["audio"], ["vision", "audio"]])
    write(tmp_path, docs[:1])
    with pytest.raises(chain.ChainBroken, match="deletes 'audio', which certificate 1") as caught:
        chain.walk_chain(docs[-1], tmp_path)
    assert caught.value.code == "E_CHAIN_BROKEN"


def _count_parses(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    parses: Counter[str] = Counter()
    real = certificate.load_certificate

    def counted(path: Path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        parses[Path(path).name] += 1
        return real(path, *args, **kwargs)

    monkeypatch.setattr(certificate, "load_certificate", counted)
    return parses


def test_file_cache_parses_each_file_once(key: Ed25519PrivateKey, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    docs = build_chain(key, 2)
    write(tmp_path, docs[:1])
    (tmp_path / "report.json").write_text('{"checks": []}')
    (link_name,) = [path.name for path in tmp_path.glob("link-*.json")]
    parses = _count_parses(monkeypatch)
    cache = chain.ChainFileCache()
    for _ in range(3):
        assert len(chain.walk_chain(docs[-1], tmp_path, file_cache=cache)) == 2
    # The cache keeps digests, not certificates: the link found is parsed once per
    # walk, and the other file only by the first scan.
    assert parses == {"report.json": 1, link_name: 3}
    assert len(cache) == 2


def test_file_cache_without_cache_rescans(key: Ed25519PrivateKey, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    docs = build_chain(key, 2)
    write(tmp_path, docs[:1])
    (tmp_path / "report.json").write_text('{"checks": []}')
    parses = _count_parses(monkeypatch)
    for _ in range(3):
        chain.walk_chain(docs[-1], tmp_path)
    assert parses["report.json"] == 3


def test_file_cache_rereads_rewritten_link(key: Ed25519PrivateKey, tmp_path: Path) -> None:
    docs = build_chain(key, 2)
    write(tmp_path, docs[:1])
    (link_path,) = tmp_path.glob("link-*.json")
    cache = chain.ChainFileCache()
    assert len(chain.walk_chain(docs[-1], tmp_path, file_cache=cache)) == 2
    # Another first certificate under the same name: the cached digest is stale.
    link_path.write_bytes(certificate.dump_certificate(build_chain(key, 1)[0]))
    with pytest.raises(chain.ChainLinkMissing):
        chain.walk_chain(docs[-1], tmp_path, file_cache=cache)


def _misnamed_link(key: Ed25519PrivateKey, directory: Path) -> tuple[dict[str, Any], Path]:
    """Return a second certificate whose listed chain-00001.json contains another one."""
    docs = build_chain(key, 2)
    listing = chain.write_chain_copies(chain.walk_chain(docs[0], None), directory)
    named = chain_doc(key, 2, docs[0], docs[:1], chain=listing)
    wrong = directory / listing[0]["path"]
    (directory / "first-release.json").write_bytes(wrong.read_bytes())
    wrong.write_bytes(certificate.dump_certificate(named))
    return named, wrong


def test_misnamed_link_warns_file_used(key: Ed25519PrivateKey, tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    # The warning names the listed file and both digests, the scan and what it found,
    # and the fix; "FILE does not have the digest D; scanning" gave none of these.
    named, wrong = _misnamed_link(key, tmp_path)
    with caplog.at_level("WARNING", logger="mbd_cert"):
        links = chain.walk_chain(named, tmp_path)
    assert links[0].source == str(tmp_path / "first-release.json")
    (message,) = [record.getMessage() for record in caplog.records]
    expected = certificate.certificate_digest(links[0].doc)
    assert message.startswith(f"accounting.chain names {wrong} as earlier certificate 1 "
                              f"({expected}), but that file contains another certificate "
                              f"({certificate.certificate_digest(named)}, sequence number 2).")
    assert (f"A search of the 2 *.json files in {tmp_path} found certificate 1 in "
            f"{tmp_path / 'first-release.json'}, which is used.") in message
    assert (f"If {tmp_path} is the chain directory of this certificate, replace {wrong} "
            f"with a copy of {tmp_path / 'first-release.json'} to skip the search.") in message


def test_misnamed_link_warns_none_found(key: Ed25519PrivateKey, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    named, wrong = _misnamed_link(key, tmp_path)
    (tmp_path / "first-release.json").unlink()
    with caplog.at_level("WARNING", logger="mbd_cert"), pytest.raises(chain.ChainLinkMissing):
        chain.walk_chain(named, tmp_path)
    (message,) = [record.getMessage() for record in caplog.records]
    assert (f"A search of the 1 *.json files in {tmp_path} did not find certificate 1 "
            f"either. Check that {tmp_path} is the chain directory of this certificate "
            f"(verify --chain DIR; verify-repo reads the certificate's own directory); "
            f"if it is, replace {wrong} with the copy of certificate 1 "
            "that 'mbd-cert issue' wrote under that name.") in message
