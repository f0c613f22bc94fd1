"""JUnit output of a verification report: one test case per check, well-formed XML."""

from __future__ import annotations

import json
from xml.etree import ElementTree

from mbd_cert.report import CheckResult, VerificationReport, to_junit

# Details quote names from the input files, which may hold markup, control characters
# and unpaired surrogates.
HOSTILE = "tensor a</system-out><x>&amp;\x01\x1b[31m\ud800 é"


def _cases(report: VerificationReport) -> dict[str, ElementTree.Element]:
    suite = ElementTree.fromstring(to_junit(report, suite="cert.json"))
    return {case.get("name", ""): case for case in suite.findall("testcase")}


def test_passing_case_carries_detail() -> None:
    report = VerificationReport("id", 1, [
        CheckResult("calibration", "pass", "sigma 0.5 >= required 0.4", value=0.5,
                    threshold=0.4),
    ])
    case = _cases(report)["calibration"]
    assert case.find("failure") is None
    output = json.loads(case.find("system-out").text)
    assert output == {"value": 0.5, "threshold": 0.4, "n": None,
                      "detail": "sigma 0.5 >= required 0.4"}


def test_hostile_detail_stays_well_formed() -> None:
    report = VerificationReport("id", 1, [
        CheckResult("model-tensors", "pass", HOSTILE),
        CheckResult("deleted-tensors-zero", "fail", HOSTILE, code="E_DELETION_INCOMPLETE"),
        CheckResult("policy", "skipped", HOSTILE),
    ])
    cases = _cases(report)
    assert list(cases) == ["model-tensors", "deleted-tensors-zero", "policy"]
    for case in cases.values():
        text = case.find("system-out").text
        text.encode("utf-8")  # strict: raises on a lone surrogate
        detail = json.loads(text)["detail"]
        # Markup and control characters survive as JSON escapes; the unpaired
        # surrogate, which strict JSON parsers reject, is written as the text \ud800.
        assert detail == HOSTILE.replace("\ud800", "\\ud800")


def test_failure_type_is_the_code() -> None:
    # The JUnit schemas define type next to message on failure and error elements.
    report = VerificationReport("id", 1, [
        CheckResult("model-digest", "fail", "digest differs", code="E_DIGEST_MISMATCH"),
        CheckResult("residual-normality", "inconclusive", "too few entries"),
    ])
    cases = _cases(report)
    failure = cases["model-digest"].find("failure")
    assert failure.get("type") == "E_DIGEST_MISMATCH"
    # CI summaries show only the message attribute, so it names what failed.
    assert failure.get("message") == "E_DIGEST_MISMATCH: digest differs"
    long = VerificationReport("id", 1, [
        CheckResult("model-digest", "fail", "x" * 500 + "\nsecond line", code="E_X")])
    message = _cases(long)["model-digest"].find("failure").get("message")
    assert message == "E_X: " + "x" * 197 + "..."
    assert cases["residual-normality"].find("failure").get("type") == "inconclusive"
