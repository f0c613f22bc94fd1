"""CLI tests of chains, budgets, sealed bundles, reference-retrain and ``mbd-cert report``.

They build on the session's honest deletion of ``audio`` (conftest.py) and continue its
chain with a deletion of ``vision`` sealed to an auditor key.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest
from cli_support import (
    TINY_ISSUE_OPTIONS,
    HonestRun,
    assert_check_failed,
    assert_clean,
    assert_input_error,
    resign,
    run_cli,
    verify,
    write_json,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECOND = ("--modality", "vision", "--epsilon", "1", "--steps", "2", "--proxy-sample", "8")


@pytest.fixture(scope="module")
def auditor(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    prefix = tmp_path_factory.mktemp("auditor") / "auditor"
    assert run_cli(["keygen", "--kind", "x25519", "--out", prefix]).exit_code == 0
    return prefix.with_suffix(".key"), prefix.with_suffix(".pub")


@pytest.fixture(scope="module")
def second(honest_run: HonestRun, auditor: tuple[Path, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The second deletion of the chain: vision, from the honest audio deletion."""
    out = tmp_path_factory.mktemp("chain") / "second"
    outcome = run_cli(["issue", "--checkpoint", honest_run.out_dir, *SECOND,
                       "--key", honest_run.private_key, "--out", out,
                       "--auditor-key", auditor[1]])
    assert outcome.exit_code == 0, outcome.stderr
    assert "deletion 2 of this model" in outcome.stdout
    return out


def test_second_deletion_continues_chain(second: Path, honest_run: HonestRun) -> None:
    doc = json.loads((second / "cert.json").read_text())
    first = honest_run.load_cert()
    account = doc["accounting"]
    assert account["sequence_number"] == 2
    assert account["chain"][0]["path"] == "chain-00001.json"
    assert (second / "chain-00001.json").is_file()
    assert doc["subject_model"]["pre_deletion"]["manifest_digest"] == \
        first["subject_model"]["post_deletion"]["manifest_digest"]
    assert doc["subject_model"]["architecture"]["config"]["deleted_modalities"] == \
        ["audio", "vision"]
    assert account["cumulative_epsilon"] == pytest.approx(1.465170, abs=1e-6)
    assert account["naive_epsilon"] == 2.0
    assert account["cumulative_epsilon"] < account["rdp_epsilon"] < account["naive_epsilon"]
    quality = doc["saliency"]["proxy_quality"]
    assert quality["sample_size"] == 8
    assert 0.0 <= quality["share_within_tolerance"] <= 1.0


def test_chain_verifies_beside_certificate(second: Path, honest_run: HonestRun) -> None:
    outcome = verify(second / "cert.json", second / "model.safetensors", honest_run.public_key)
    assert outcome.exit_code == 0, outcome.stdout
    assert "over 2 deletion(s)" in outcome.check_detail("accounting")


def test_missing_link_fails(second: Path, honest_run: HonestRun, tmp_path: Path) -> None:
    shutil.copy(second / "cert.json", tmp_path / "cert.json")
    outcome = verify(tmp_path / "cert.json", second / "model.safetensors",
                     honest_run.public_key)
    assert_check_failed(outcome, "accounting", "E_CHAIN_LINK_MISSING")
    # The same certificate passes with --chain naming the directory of the links.
    outcome = verify(tmp_path / "cert.json", second / "model.safetensors",
                     honest_run.public_key, "--chain", second)
    assert outcome.exit_code == 0


def test_understated_budget_fails(second: Path, honest_run: HonestRun, tmp_path: Path) -> None:
    doc = json.loads((second / "cert.json").read_text())
    doc["accounting"]["cumulative_epsilon"] = 1.0  # the epsilon of one deletion only
    cert = write_json(tmp_path / "cert.json", resign(doc, honest_run.private_key))
    outcome = verify(cert, second / "model.safetensors", honest_run.public_key,
                     "--chain", second)
    assert_check_failed(outcome, "accounting", "E_CALIBRATION_INVALID")


def test_budget_refusal_writes_nothing(second: Path, honest_run: HonestRun,
                                       tmp_path: Path) -> None:
    """R-CHAIN-5: a deletion over the budget writes nothing and names both numbers."""
    out = tmp_path / "third"
    outcome = run_cli(["issue", "--checkpoint", second, "--modality", "text", "--epsilon", "1",
                       "--max-epsilon", "1.5", "--key", honest_run.private_key, "--out", out])
    assert_clean(outcome)
    assert outcome.exit_code == 1
    assert "[E_BUDGET_EXCEEDED]" in outcome.stderr
    assert re.search(r"1\.834965\d* at delta 1e-05, above the budget --max-epsilon 1\.5",
                     outcome.stderr)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sealed_bundle_opens_with_auditor_key(second: Path, honest_run: HonestRun,
                                              auditor: tuple[Path, Path]) -> None:
    doc = json.loads((second / "cert.json").read_text())
    sealed = doc["audit_bundle"]["sealed"]
    assert sealed["path"] == "audit-bundle.sealed"
    assert set(sealed) == {"path", "format", "algorithm", "recipient_key_id", "file_digest"}
    outcome = verify(second / "cert.json", second / "model.safetensors", honest_run.public_key,
                     "--auditor-private-key", auditor[0])
    assert outcome.exit_code == 0, outcome.stdout
    assert "opened audit-bundle.sealed" in outcome.check_detail("sealed-bundle")
    assert "digests match" in outcome.check_detail("bundle-digest")


def test_sealed_bundle_wrong_key_exits_2(second: Path, honest_run: HonestRun,
                                         tmp_path: Path) -> None:
    prefix = tmp_path / "other"
    assert run_cli(["keygen", "--kind", "x25519", "--out", prefix]).exit_code == 0
    outcome = verify(second / "cert.json", second / "model.safetensors", honest_run.public_key,
                     "--auditor-private-key", prefix.with_suffix(".key"))
    assert_input_error(outcome, "E_SEALED_KEY_MISMATCH")


def test_tampered_sealed_bundle_fails(second: Path, honest_run: HonestRun,
                                      auditor: tuple[Path, Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(second, copy)
    data = bytearray((copy / "audit-bundle.sealed").read_bytes())
    data[-1] ^= 0x01
    (copy / "audit-bundle.sealed").write_bytes(bytes(data))
    outcome = verify(copy / "cert.json", copy / "model.safetensors", honest_run.public_key,
                     "--auditor-private-key", auditor[0])
    assert_check_failed(outcome, "sealed-bundle", "E_DIGEST_MISMATCH")


def test_reference_retrain_and_policy(honest_run: HonestRun, tmp_path: Path) -> None:
    out = tmp_path / "rr"
    outcome = run_cli(["issue", "--checkpoint", honest_run.checkpoint, *TINY_ISSUE_OPTIONS,
                       "--sensitivity-method", "reference-retrain", "--reference-runs", "2",
                       "--proxy-sample", "0", "--key", honest_run.private_key, "--out", out])
    assert outcome.exit_code == 0, outcome.stderr
    doc = json.loads((out / "cert.json").read_text())
    evidence = doc["privacy"]["sensitivity_evidence"]
    assert evidence["runs"] == 2
    assert "proxy_quality" not in doc["saliency"]
    required = verify(out / "cert.json", out / "model.safetensors", honest_run.public_key,
                      "--require-sensitivity-method", "reference-retrain")
    assert required.exit_code == 0, required.stdout
    other = verify(out / "cert.json", out / "model.safetensors", honest_run.public_key,
                   "--require-sensitivity-method", "clip-bound")
    assert_check_failed(other, "policy", "E_POLICY_VIOLATION")
    doc["privacy"]["sensitivity"] = evidence["max_distance"] * 0.5
    cert = write_json(tmp_path / "cert.json", resign(doc, honest_run.private_key))
    understated = verify(cert, out / "model.safetensors", honest_run.public_key)
    assert_check_failed(understated, "calibration", "E_CALIBRATION_INVALID")


def test_report_writes_figures_and_html(second: Path, honest_run: HonestRun,
                                        tmp_path: Path) -> None:
    verified = verify(second / "cert.json", second / "model.safetensors", honest_run.public_key)
    report_json = write_json(tmp_path / "verify.json", verified.report)
    out = tmp_path / "report"
    outcome = run_cli(["report", "--out", out, honest_run.cert, second / "cert.json",
                       "--verify-report", report_json])
    assert outcome.exit_code == 0, outcome.stderr
    names = ["privacy_utility.png", "chain_budget.png", "proxy_scatter.png", "verification.png"]
    for name in names:
        assert (out / name).read_bytes().startswith(PNG_MAGIC), name
    page = (out / "index.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 4
    assert all(base64.b64decode(image).startswith(PNG_MAGIC) for image in images)
    assert "src=\"http" not in page and "<script" not in page
    # The tight cumulative epsilon after two deletions, with every digit.
    assert "<td>1.4651699603" in page


def test_report_on_malformed_verify_report(honest_run: HonestRun, tmp_path: Path) -> None:
    bad = write_json(tmp_path / "bad.json", {"not": "a report"})
    outcome = run_cli(["report", "--out", tmp_path / "r", honest_run.cert,
                       "--verify-report", bad])
    assert_clean(outcome)
    assert outcome.exit_code == 2
    assert "[E_DATA_MALFORMED]" in outcome.stderr


@pytest.mark.parametrize(
    ("document", "field"),
    [({"checks": "all passed"}, "the report"),
     ({"checks": [{"status": "pass"}]}, "checks[0].name"),
     ({"checks": [{"name": ["a"], "status": "pass"}]}, "checks[0].name"),
     ({"checks": [{"name": "schema", "status": "$x^$"}]}, "checks[0].status"),
     ({"checks": [], "verified": "yes"}, "verified"),
     # A report that verify cannot write: the page would show VERIFIED for it.
     ({"checks": [{"name": "signature", "status": "fail"}], "verified": True},
      "checks[0] (signature) failed"),
     ({"checks": [], "verified": True}, "no check"),
     ({"checks": [{"name": "schema", "status": "pass"}], "verified": True,
       "error": {"code": "E_INTERNAL", "message": "", "hint": ""}}, "error")],
    ids=["checks-string", "no-name", "name-list", "bad-status", "verified-string",
         "verified-with-failure", "verified-without-checks", "verified-with-error"],
)
def test_report_rejects_malformed_verify_report(honest_run: HonestRun, tmp_path: Path,
                                                document: dict, field: str) -> None:
    report_json = write_json(tmp_path / "verify.json", document)
    outcome = run_cli(["report", "--out", tmp_path / "report", honest_run.cert,
                       "--verify-report", report_json])
    assert_clean(outcome)
    assert outcome.exit_code == 2
    assert "[E_DATA_MALFORMED]" in outcome.stderr
    assert field in outcome.stderr


def test_report_draws_dollar_signs_literally(honest_run: HonestRun, tmp_path: Path) -> None:
    # '$...$' would be parsed as matplotlib mathtext, and a broken formula raises.
    document = {"verified": False, "checks": [{"name": "$\\foo{$", "status": "pass"}]}
    report_json = write_json(tmp_path / "verify.json", document)
    outcome = run_cli(["report", "--out", tmp_path / "report", honest_run.cert,
                       "--verify-report", report_json])
    assert outcome.exit_code == 0, outcome.stderr
    assert (tmp_path / "report" / "verification.png").exists()


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [("update", "norm_before_clip", "0.0064"),
     ("proxy_quality", "seed", [1]),
     ("utility_after", "deleted_audio", 5),
     ("utility_before", "all", [1])],
    ids=["norm-string", "seed-list", "view-number", "view-list"],
)
def test_schema_types_members_readers_use(honest_run: HonestRun, tmp_path: Path,
                                          section: str, field: str, value: object) -> None:
    # Optional members that level 2 or the report read must have a declared type, or a
    # schema-valid certificate crashes the reader (exit 3).
    doc = honest_run.load_cert()
    target = {"update": doc["update"],
              "proxy_quality": doc["saliency"].setdefault("proxy_quality", {}),
              "utility_after": doc["metrics"]["utility"].setdefault("after", {}),
              "utility_before": doc["metrics"]["utility"].setdefault("before", {})}[section]
    target[field] = value
    cert = write_json(tmp_path / "cert.json", resign(doc, honest_run.private_key))
    outcome = run_cli(["report", "--out", tmp_path / "report", cert])
    assert_clean(outcome)
    assert outcome.exit_code == 2
    assert "[E_CERT_MALFORMED]" in outcome.stderr


def test_report_subnormal_proxy_values(honest_run: HonestRun, tmp_path: Path) -> None:
    doc = honest_run.load_cert()
    quality = doc["saliency"].get("proxy_quality")
    if not quality or not quality.get("samples"):
        pytest.skip("the tiny certificate has no proxy samples")
    for sample in quality["samples"]:
        sample["true"] = sample["proxy"] = 5e-324
    cert = write_json(tmp_path / "cert.json", resign(doc, honest_run.private_key))
    outcome = run_cli(["report", "--out", tmp_path / "report", cert])
    assert outcome.exit_code == 0, outcome.stderr


def test_report_refuses_nonempty_out(honest_run: HonestRun, tmp_path: Path) -> None:
    out = tmp_path / "report"
    out.mkdir()
    (out / "privacy_utility.png").write_bytes(b"earlier run")
    outcome = run_cli(["report", "--out", out, honest_run.cert])
    assert_clean(outcome)
    assert outcome.exit_code == 2
    assert "[E_OUTPUT_EXISTS]" in outcome.stderr
    assert "--force" in outcome.stderr
    assert sorted(p.name for p in out.iterdir()) == ["privacy_utility.png"]
    assert (out / "privacy_utility.png").read_bytes() == b"earlier run"


def test_report_force_leaves_no_stale_figure(honest_run: HonestRun, tmp_path: Path) -> None:
    document = {"verified": True, "checks": [{"name": "signature", "status": "pass"}]}
    report_json = write_json(tmp_path / "verify.json", document)
    out = tmp_path / "report"
    first = run_cli(["report", "--out", out, honest_run.cert, "--verify-report", report_json])
    assert first.exit_code == 0, first.stderr
    assert (out / "verification.png").exists()
    (out / "notes.txt").write_text("not a report file")

    # Without --verify-report there is no verification figure to draw.
    again = run_cli(["report", "--out", out, "--force", honest_run.cert])
    assert again.exit_code == 0, again.stderr
    assert "verification.png" not in again.stdout
    assert not (out / "verification.png").exists()
    assert not (out / "notes.txt").exists()
    assert (out / "index.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "verify.json"]


def test_report_out_that_is_a_file(honest_run: HonestRun, tmp_path: Path) -> None:
    out = tmp_path / "report"
    out.write_text("a file")
    outcome = run_cli(["report", "--out", out, "--force", honest_run.cert])
    assert_clean(outcome)
    assert outcome.exit_code == 2
    assert "[E_PARAMETER_INVALID]" in outcome.stderr
    assert out.read_text() == "a file"


def test_level_3_on_chain_probes_own_modality(second: Path, honest_run: HonestRun) -> None:
    # docs/verification-levels.md ("Chains of deletions") and SPEC.md section 8.2 state
    # this split: the probes of the second certificate alter vision only, and the
    # earlier audio deletion is covered by level 1's zero-encoder check.
    outcome = verify(second / "cert.json", second / "model.safetensors", honest_run.public_key,
                     "--level", "3", "--bundle", second, "--allow-inconclusive")
    assert outcome.report is not None, outcome.stderr
    probe = outcome.check_detail("functional-probe")
    assert "when vision is zeroed" in probe
    assert "audio" not in probe
    assert "(audio, vision) are all zero" in outcome.check_detail("deleted-tensors-zero")
    root = Path(__file__).resolve().parents[2]
    guide = root.joinpath("docs", "verification-levels.md").read_text()
    section = guide[guide.index("### Chains of deletions"):]
    assert "deleted-tensors-zero" in section.split("\n## ")[0]
    spec = root.joinpath("SPEC.md").read_text()
    level3 = spec[spec.index("### 8.2 Level 3"):spec.index("## 9.")]
    assert "covered at level 1 by R-DEL-1" in level3


def test_report_labels_same_directory_reports(second: Path, honest_run: HonestRun,
                                              tmp_path: Path) -> None:
    # Both reports used to get the directory's name as their label, so the table and
    # the figure showed two columns with the same name.
    reports = tmp_path / "reports"
    reports.mkdir()
    first = verify(honest_run.cert, honest_run.model, honest_run.public_key)
    later = verify(second / "cert.json", second / "model.safetensors", honest_run.public_key)
    first_json = write_json(reports / "first.json", first.report)
    second_json = write_json(reports / "second.json", later.report)
    out = tmp_path / "report"
    outcome = run_cli(["report", "--out", out, second / "cert.json",
                       "--verify-report", first_json, "--verify-report", second_json])
    assert outcome.exit_code == 0, outcome.stderr
    labels = re.findall(r"<tr><td>([^<]*)</td><td>[0-9a-f-]{36}</td>",
                        (out / "index.html").read_text())
    assert labels == [str(first_json), str(second_json)]


def test_report_labels_by_directory(second: Path, honest_run: HonestRun,
                                    tmp_path: Path) -> None:
    # The documented layout, RELEASE/verify.json, keeps the release name as the label.
    verified = verify(second / "cert.json", second / "model.safetensors", honest_run.public_key)
    (tmp_path / "chain2").mkdir()
    report_json = write_json(tmp_path / "chain2" / "verify.json", verified.report)
    out = tmp_path / "report"
    outcome = run_cli(["report", "--out", out, second / "cert.json",
                       "--verify-report", report_json])
    assert outcome.exit_code == 0, outcome.stderr
    assert "<tr><td>chain2</td>" in (out / "index.html").read_text()


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_report_chain_not_a_directory(second: Path, tmp_path: Path, kind: str) -> None:
    # verify exits 2 for a --chain that does not exist. report exited 1 with
    # E_CHAIN_LINK_MISSING, as if the certificate's chain were incomplete.
    chain = tmp_path / "no-such-dir"
    if kind == "file":
        chain.write_text("not a directory")
    outcome = run_cli(["report", "--out", tmp_path / "report", second / "cert.json",
                       "--chain", chain])
    assert_clean(outcome)
    assert outcome.exit_code == 2
    code = "E_FILE_MISSING" if kind == "missing" else "E_PARAMETER_INVALID"
    assert f"[{code}]" in outcome.stderr
    assert "no-such-dir" in outcome.stderr
    assert not (tmp_path / "report").exists()


def test_report_modality_tie_follows_order(honest_run: HonestRun, tmp_path: Path) -> None:
    # On a tie between first deletions, the default modality was the first of a set,
    # which the string hash seed of each run decides.
    vision = tmp_path / "vision"
    issued = run_cli(["issue", "--checkpoint", honest_run.checkpoint, "--modality", "vision",
                      "--epsilon", "1", "--steps", "2", "--key", honest_run.private_key,
                      "--out", vision])
    assert issued.exit_code == 0, issued.stderr
    for order, expected in (((honest_run.cert, vision / "cert.json"), "audio"),
                            ((vision / "cert.json", honest_run.cert), "vision")):
        out = tmp_path / f"report-{expected}"
        outcome = run_cli(["report", "--out", out, *order])
        assert outcome.exit_code == 0, outcome.stderr
        page = (out / "index.html").read_text()
        assert f"Privacy-utility trade-off: deleting {expected}</h2>" in page


def test_report_names_drawn_chain(second: Path, honest_run: HonestRun, tmp_path: Path) -> None:
    out = tmp_path / "report"
    outcome = run_cli(["report", "--out", out, honest_run.cert, second / "cert.json"])
    assert outcome.exit_code == 0, outcome.stderr
    newest = json.loads((second / "cert.json").read_text())["certificate_id"]
    page = (out / "index.html").read_text()
    assert f"The chain of certificate {newest} ({second / 'cert.json'})" in page


def test_report_rejects_unknown_modality(honest_run: HonestRun, tmp_path: Path) -> None:
    out = tmp_path / "report"
    outcome = run_cli(["report", "--out", out, honest_run.cert, "--modality", "audi"])
    assert_clean(outcome)
    assert outcome.exit_code == 2, outcome.stderr
    assert ("error [E_PARAMETER_INVALID]: --modality 'audi' is not a modality of the "
            "certificates' models, which have text, audio, vision") in outcome.stderr
    assert "pass one that the certificates delete (audio)" in outcome.stderr
    assert not out.exists()
    # A modality of the model that no certificate deletes draws an empty sweep.
    text_only = run_cli(["report", "--out", out, honest_run.cert, "--modality", "text"])
    assert text_only.exit_code == 0, text_only.stderr
    assert "no first-deletion certificate of text" in (out / "index.html").read_text()


def test_chain_figure_labels_naive_delta(second: Path, honest_run: HonestRun, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # The naive sum was labelled "at delta = 1e-05" with the other two lines, but it
    # holds only at the summed delta, 2e-05 after two deletions.
    from mbd_cert import report_figures

    labels: dict[str, list[str]] = {}
    real_png = report_figures._png

    def record(figure):
        for ax in figure.axes:
            legend = ax.get_legend()
            texts = [text.get_text() for text in legend.get_texts()] if legend else []
            labels[ax.get_ylabel()] = texts
        return real_png(figure)

    monkeypatch.setattr(report_figures, "_png", record)
    out = tmp_path / "report"
    outcome = run_cli(["report", "--out", out, honest_run.cert, second / "cert.json"])
    assert outcome.exit_code == 0, outcome.stderr
    assert labels["cumulative epsilon"] == [
        "naive sum (basic composition), at delta = k x 1e-05",
        "RDP, at delta = 1e-05", "mu-GDP (tight, certified), at delta = 1e-05"]
    page = (out / "index.html").read_text()
    assert "<th>naive sum</th><th>delta of the naive sum</th></tr>" in page
    assert "<td>2</td><td>2e-05</td></tr>" in page


def test_report_names_acc2_convention(honest_run: HonestRun, tmp_path: Path) -> None:
    out = tmp_path / "report"
    outcome = run_cli(["report", "--out", out, honest_run.cert])
    assert outcome.exit_code == 0, outcome.stderr
    page = (out / "index.html").read_text()
    assert "<th>Acc2 (negative vs non-negative)</th>" in page
    assert "Acc2 (negative vs non-negative) is acc2_non_negative of the certificates" in page
    assert "also carry acc2_positive" in page


def test_report_rejects_two_models(second: Path, honest_run: HonestRun,
                                                   tmp_path: Path) -> None:
    # A deletion from another trained model (another seed, another corpus) would be
    # drawn on the same axes as if it were a point of this model's sweep.
    doc = honest_run.load_cert()
    doc["subject_model"]["pre_deletion"]["file_digest"] = "sha256:" + "0" * 64
    (tmp_path / "other").mkdir()
    other = write_json(tmp_path / "other" / "cert.json",
                       resign(doc, honest_run.private_key))
    out = tmp_path / "report"
    outcome = run_cli(["report", "--out", out, honest_run.cert, second / "cert.json", other])
    assert_clean(outcome)
    assert outcome.exit_code == 2, outcome.stderr
    assert "error [E_PARAMETER_INVALID]" in outcome.stderr
    assert f"{honest_run.cert} and {other} delete from different trained models" in \
        outcome.stderr
    assert "make one report per model" in outcome.stderr
    assert not out.exists()


def test_report_other_chain_beside_certificate(
        second: Path, honest_run: HonestRun, tmp_path: Path) -> None:
    # --chain names the directory of the chain figure's certificate. The one-model check
    # looked up every later deletion's links there, so a later deletion of another chain
    # of the same model exited 1 with E_CHAIN_LINK_MISSING.
    first = tmp_path / "first"
    outcome = run_cli(["issue", "--checkpoint", honest_run.checkpoint, "--modality", "vision",
                       "--epsilon", "2", "--steps", "2", "--key", honest_run.private_key,
                       "--out", first])
    assert outcome.exit_code == 0, outcome.stderr
    later = tmp_path / "later"
    outcome = run_cli(["issue", "--checkpoint", first, "--modality", "audio", "--epsilon", "1",
                       "--steps", "2", "--proxy-sample", "8", "--key", honest_run.private_key,
                       "--out", later])
    assert outcome.exit_code == 0, outcome.stderr
    outcome = run_cli(["report", "--out", tmp_path / "report", second / "cert.json",
                       later / "cert.json", "--chain", second])
    assert_clean(outcome)
    assert outcome.exit_code == 0, outcome.stderr
    assert "WARNING" not in outcome.stderr
    # Links that are only in the --chain directory are still found there.
    chain = tmp_path / "chain"
    shutil.copytree(second, chain)
    shutil.copy(first / "cert.json", chain / "first.json")
    (tmp_path / "alone").mkdir()
    shutil.copy(later / "cert.json", tmp_path / "alone" / "cert.json")
    outcome = run_cli(["report", "--out", tmp_path / "report2", chain / "cert.json",
                       tmp_path / "alone" / "cert.json", "--chain", chain])
    assert outcome.exit_code == 0, outcome.stderr


def test_chain_table_shows_certified_epsilon(honest_run: HonestRun, tmp_path: Path) -> None:
    # The chain figure's "certified" series showed the recomputed epsilon, which for a
    # first deletion can sit a unit in the last place below the stated one.
    doc = honest_run.load_cert()
    doc["accounting"]["cumulative_epsilon"] = 1.25
    cert = write_json(tmp_path / "cert.json", resign(doc, honest_run.private_key))
    out = tmp_path / "report"
    outcome = run_cli(["report", "--out", out, cert])
    assert outcome.exit_code == 0, outcome.stderr
    page = (out / "index.html").read_text()
    assert re.search(r"<tr><td>1</td><td>audio</td><td>[^<]+</td><td>1\.25</td>", page)


def test_report_names_certificates_not_drawn(second: Path, honest_run: HonestRun,
                                             tmp_path: Path) -> None:
    out = tmp_path / "report"
    outcome = run_cli(["report", "--out", out, honest_run.cert, second / "cert.json"])
    assert outcome.exit_code == 0, outcome.stderr
    page = (out / "index.html").read_text()
    second_id = json.loads((second / "cert.json").read_text())["certificate_id"]
    assert f"not drawn (1): {second_id} (deletes vision; choose it with --modality)" in page
    out = tmp_path / "vision"
    outcome = run_cli(["report", "--out", out, "--modality", "vision", honest_run.cert,
                       second / "cert.json"])
    assert outcome.exit_code == 0, outcome.stderr
    page = (out / "index.html").read_text()
    assert "not drawn (2): " in page
    assert f"{second_id} (deletion 2 of a chain; the figure compares first deletions)" in page


def test_report_names_duplicate_proxy_samples(honest_run: HonestRun, tmp_path: Path) -> None:
    # A second issue from the same checkpoint, modality and seed samples the same entries.
    again = tmp_path / "again"
    assert run_cli(["issue", "--checkpoint", honest_run.checkpoint, *TINY_ISSUE_OPTIONS,
                    "--key", honest_run.private_key, "--out", again]).exit_code == 0
    out = tmp_path / "report"
    outcome = run_cli(["report", "--out", out, honest_run.cert, again / "cert.json"])
    assert outcome.exit_code == 0, outcome.stderr
    page = (out / "index.html").read_text()
    again_id = json.loads((again / "cert.json").read_text())["certificate_id"]
    assert "not listed (1), because an earlier certificate of the same model" in page
    assert again_id in page.split("not listed (1)")[1]


@pytest.mark.parametrize("change", ["acc2-overflow", "mae-span", "epsilon-subnormal",
                                    "cumulative-overflow", "tolerance-overflow"])
def test_report_extreme_claimed_numbers(honest_run: HonestRun, tmp_path: Path,
                                        change: str) -> None:
    # The schema admits any number in these fields. matplotlib cannot lay out an axis
    # whose span overflows a double or whose values are subnormal, and its error ended
    # report with exit code 3.
    doc = honest_run.load_cert()
    utility = doc["metrics"]["utility"]
    if change == "acc2-overflow":
        utility["after"]["deleted_audio"]["acc2_non_negative"] = 1.7e308
    elif change == "mae-span":
        utility["after"]["deleted_audio"]["mae"] = 1e308
        utility["before"]["missing_audio"]["mae"] = -1e308
    elif change == "epsilon-subnormal":
        doc["privacy"]["epsilon"] = 5e-324
    elif change == "tolerance-overflow":
        quality = doc["saliency"].get("proxy_quality")
        if not quality or not quality.get("samples"):
            pytest.skip("the tiny certificate has no proxy samples")
        quality["relative_tolerance"] = 1.7e308
    else:
        doc["accounting"]["cumulative_epsilon"] = 1.7e308
    cert = write_json(tmp_path / "cert.json", resign(doc, honest_run.private_key))
    out = tmp_path / "report"
    outcome = run_cli(["report", "--out", out, cert])
    assert_clean(outcome)
    assert outcome.exit_code == 0, outcome.stderr
    page = (out / "index.html").read_text()
    assert "outside the range the figures draw" in page
    if change == "mae-span":
        # The table shows the stated number in its shortest form, not 309 digits.
        assert "<td>1e+308</td>" in page
