"""Verification results: one record per check, and the report as JSON and JUnit XML.

The JSON report is a versioned contract (``report_version``); fields are only ever
added. Stability: public.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from xml.etree import ElementTree

from mbd_cert._terminal import clean_xml_tree, json_output
from mbd_cert._tool_version import verifier_record
from mbd_cert.errors import VerificationFailed

logger = logging.getLogger(__name__)

REPORT_VERSION = "1.1"

PASS = "pass"
FAIL = "fail"
SKIPPED = "skipped"
INCONCLUSIVE = "inconclusive"


@dataclass
class CheckResult:
    """Outcome of one check.

    Attributes:
        name: Stable check name, such as ``model-digest``.
        status: ``pass``, ``fail``, ``inconclusive`` or ``skipped``.
        detail: One sentence for people: what was compared, or why it was skipped.
        code: The error code of a failed check (``E_...``), else None.
        requirement: The SPEC.md requirement the check enforces.
        value: The measured value, when there is one.
        threshold: The bound the value was held against, when there is one.
        n: Sample size behind a statistical value.
    """

    name: str
    status: str
    detail: str
    code: str | None = None
    requirement: str | None = None
    value: Any = None
    threshold: Any = None
    n: int | None = None


@dataclass
class VerificationReport:
    """All checks of one verification run, in the order they ran."""

    certificate_id: str | None
    level: int
    checks: list[CheckResult] = field(default_factory=list)
    allow_inconclusive: bool = False
    # The earlier certificates of the chain, oldest first, as the accounting check
    # read them; verify-repo looks for their pre-deletion models too (R-REPO-9). Not
    # part of the JSON report.
    earlier_links: list[dict[str, Any]] = field(default_factory=list, repr=False,
                                                compare=False)

    @property
    def verified(self) -> bool:
        """True when no check failed and none was inconclusive under a fail-closed policy."""
        for check in self.checks:
            if check.status == FAIL:
                return False
            if check.status == INCONCLUSIVE and not self.allow_inconclusive:
                return False
        return True

    def run(
        self,
        name: str,
        requirement: str,
        check: Callable[[], CheckResult | str],
    ) -> bool:
        """Run ``check`` and record its result; return True when it passed.

        A check returns a detail string (or a full :class:`CheckResult`) when it passes
        and raises :class:`VerificationFailed` when the claim is false. Input errors
        propagate: they end the run with exit code 2.
        """
        try:
            outcome = check()
        except VerificationFailed as failure:
            self.record(
                CheckResult(name, FAIL, str(failure), code=failure.code, requirement=requirement)
            )
            return False
        if isinstance(outcome, CheckResult):
            self.record(outcome)
            return outcome.status == PASS
        self.record(CheckResult(name, PASS, outcome, requirement=requirement))
        return True

    def skip(self, name: str, requirement: str, reason: str) -> None:
        """Record a check that did not run, with the reason."""
        self.record(CheckResult(name, SKIPPED, reason, requirement=requirement))

    def record(self, check: CheckResult) -> None:
        """Append a finished check and log it, so ``-v`` shows progress as checks end."""
        self.checks.append(check)
        logger.info("%s: %s (%s)", check.name, check.status, check.requirement or "-")

    def to_json(self) -> dict[str, Any]:
        """Return the machine-readable report."""
        return {
            "report_version": REPORT_VERSION,
            "verifier": verifier_record(),
            "certificate_id": self.certificate_id,
            "level": self.level,
            "verified": self.verified,
            "checks": [asdict(check) for check in self.checks],
        }


def stage_counter(progress: Callable[[str, int, int], None] | None, stage: str,
                  total: int) -> Callable[[], None]:
    """Return a function that reports one more finished step of ``stage`` out of ``total``.

    ``progress`` is the ``VerifyOptions.progress`` callback, ``progress(stage, done,
    total)``; with None the returned function does nothing.
    """
    done = 0
    if progress is not None:
        progress(stage, 0, total)

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(stage, min(done, total), total)

    return step


def error_report(code: str, message: str, hint: str = "") -> dict[str, Any]:
    """Return the JSON report for a run that stopped on unusable input or a bug."""
    return {
        "report_version": REPORT_VERSION,
        "verifier": verifier_record(),
        "certificate_id": None,
        "verified": False,
        "error": {"code": code, "message": message, "hint": hint},
        "checks": [],
    }


def _version_text() -> str:
    record = verifier_record()
    commit = record["commit"]
    return str(record["version"]) + (f" ({commit})" if commit else "")


def to_junit(report: VerificationReport, suite: str = "mbd-cert.verify") -> bytes:
    """Render the report as JUnit XML: one test suite named ``suite``, one test case per check.

    The suite's ``certificate_id`` property is the report's certificate id, when it is
    known (SPEC.md, R-REP-2).
    """
    failures = sum(1 for c in report.checks if c.status == FAIL)
    inconclusive = sum(1 for c in report.checks if c.status == INCONCLUSIVE)
    skipped = sum(1 for c in report.checks if c.status == SKIPPED)
    root = ElementTree.Element(
        "testsuite",
        name=suite,
        tests=str(len(report.checks)),
        failures=str(failures + (0 if report.allow_inconclusive else inconclusive)),
        errors="0",
        skipped=str(skipped),
    )
    # Schemas of the format, such as Maven Surefire's test-report XSD (3.5.5), put
    # properties first in a test suite.
    properties = ElementTree.SubElement(root, "properties")
    if report.certificate_id is not None:
        ElementTree.SubElement(properties, "property", name="certificate_id",
                               value=str(report.certificate_id))
    ElementTree.SubElement(properties, "property", name="mbd_cert_version",
                           value=_version_text())
    for check in report.checks:
        case = ElementTree.SubElement(root, "testcase", classname=suite, name=check.name)
        if check.status == FAIL or (check.status == INCONCLUSIVE and not report.allow_inconclusive):
            # The JUnit schemas (Jenkins junit-4.xsd) give failure and error elements
            # optional type and message attributes. CI test summaries show the message
            # alone, so it gives the code and the start of the detail.
            kind = check.code or check.status
            node = ElementTree.SubElement(case, "failure", message=_summary(kind, check.detail),
                                          type=kind)
            node.text = check.detail
        elif check.status == SKIPPED:
            ElementTree.SubElement(case, "skipped", message=check.detail)
        # Every case carries the detail text, so a passing check shows what it compared.
        system_out = ElementTree.SubElement(case, "system-out")
        system_out.text = json_output(
            {"value": check.value, "threshold": check.threshold, "n": check.n,
             "detail": check.detail},
            indent=None,
        )
    # Check names and details quote tensor names and other strings from the files, which
    # may hold control characters that XML 1.0 cannot encode, even as references.
    clean_xml_tree(root)
    data: bytes = ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
    return data


# Characters of a detail that a JUnit message attribute repeats; the element's text
# contains all of it.
_SUMMARY_CHARS = 200


def _summary(code: str, detail: str) -> str:
    """Return ``CODE: detail`` for a JUnit message attribute, the detail cut to one line."""
    line = detail.splitlines()[0] if detail else ""
    if len(line) > _SUMMARY_CHARS:
        line = line[:_SUMMARY_CHARS - 3] + "..."
    return f"{code}: {line}" if line else code


def error_junit(code: str, message: str, hint: str = "", suite: str = "mbd-cert.verify") -> bytes:
    """Render a run that stopped before its checks as JUnit XML, like :func:`error_report`.

    The one test suite, named ``suite``, contains one test case ``verify``. Its ``error``
    element has the code as its type attribute, the code and the start of the message
    as its message attribute, and the message and hint as its text.
    """
    root = ElementTree.Element("testsuite", name=suite, tests="1", failures="0", errors="1",
                               skipped="0")
    case = ElementTree.SubElement(root, "testcase", classname=suite, name="verify")
    node = ElementTree.SubElement(case, "error", message=_summary(code, message), type=code)
    node.text = message + (f"\nhint: {hint}" if hint else "")
    # The suite name is a path from the command line and the message quotes input files.
    clean_xml_tree(root)
    data: bytes = ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
    return data
