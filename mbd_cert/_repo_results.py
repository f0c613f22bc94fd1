"""Results of ``mbd-cert verify-repo``: the per-certificate record, the table and JUnit.

Stability: internal; the JSON and JUnit layouts are documented in docs/user-guide.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

from mbd_cert._numbers import exact_number
from mbd_cert.errors import POLICY_VIOLATION_HINT


@dataclass
class RepoResult:
    """Outcome of verifying one certificate of the repository.

    Attributes:
        certificate: Path relative to the repository root, with ``/`` separators.
        model: The paired model path, relative to the root.
        exit_code: 0 verified, 1 a check failed, 2 unusable input, 3 internal error.
        report: The verification report; None when verification stopped early.
        error: ``{"code", "message", "hint"}`` when verification stopped early.
        warnings: Problems that do not affect the exit code, such as confidential
            issuer files published beside the certificate.
        certificate_doc: The parsed certificate, for the repository-wide checks that
            follow verification; None when it could not be parsed.
        confidential_files: The confidential issuer files found beside the certificate
            (R-REPO-5), relative to the root; its warning already names them.
    """

    certificate: str
    model: str
    exit_code: int
    report: Any = None
    error: dict[str, str] | None = None
    warnings: list[str] = field(default_factory=list)
    certificate_doc: dict[str, Any] | None = field(default=None, repr=False)
    confidential_files: list[str] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        """Return the machine-readable record of this certificate."""
        return {
            "certificate": self.certificate,
            "model": self.model,
            "exit_code": self.exit_code,
            "verified": self.exit_code == 0,
            "error": self.error,
            "warnings": list(self.warnings),
            "report": None if self.report is None else self.report.to_json(),
        }


def junit_for(results: Sequence[RepoResult]) -> bytes:
    """Render the results as JUnit XML: one test suite per certificate."""
    from mbd_cert._terminal import clean_xml_tree
    from mbd_cert.report import error_junit, to_junit

    root = ElementTree.Element("testsuites", name="mbd-cert.verify-repo")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for result in results:
        # to_junit and error_junit build the suite of one certificate; it is re-parsed
        # to nest it here.
        if result.report is not None:
            suite = ElementTree.fromstring(to_junit(result.report, suite=result.certificate))
        else:
            assert result.error is not None
            suite = ElementTree.fromstring(error_junit(
                result.error["code"], result.error["message"], result.error["hint"] or "",
                suite=result.certificate))
        suite.set("file", result.certificate)
        if result.warnings:
            # JUnit has no warning status; CI systems show a suite's system-err text.
            ElementTree.SubElement(suite, "system-err").text = "\n".join(
                f"warning: {warning}" for warning in result.warnings)
        for key in totals:
            totals[key] += int(suite.get(key, "0"))
        root.append(suite)
    for key, value in totals.items():
        root.set(key, str(value))
    # Certificate paths and error messages may contain characters XML 1.0 cannot encode.
    clean_xml_tree(root)
    return bytes(ElementTree.tostring(root, encoding="utf-8", xml_declaration=True))


# Characters of a failed check's detail that the table shows. A longer detail is
# printed in full under the table; --json and --junit carry it too.
DETAIL_WIDTH = 160

# Start of the policy check's detail when it lists several violations, as
# "3 policy violations: (1) ...; (2) ...; (3) ...".
_VIOLATION_LIST = re.compile(r"(\d+) policy violations: (?=\(1\) )")


def render_table(results: Sequence[RepoResult], exit_code: int, level: int,
                 has_policy: bool, run_result: RepoResult | None = None) -> None:
    """Print the certificates as a table, its notes, and the summary line.

    ``run_result`` contains the checks of the repository as a whole (strict mode's
    ``uncertified-model``): a row of its own, and named in the summary, so that the
    line never reads as a clean run beside a failing exit code.
    """
    from rich.console import Console
    from rich.table import Table

    from mbd_cert._terminal import rich_text

    console = Console(soft_wrap=False, width=120)
    table = Table(title="mbd-cert verify-repo")
    table.add_column("certificate", overflow="fold")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    # Numbered notes under the table, as lines: each distinct shortened detail and each
    # distinct warning, once. A forked chain names every certificate of its tree, and
    # the same text would fill each of their rows.
    notes: list[list[str]] = []

    def note(lines: list[str]) -> str:
        if lines not in notes:
            notes.append(lines)
        return f"[{notes.index(lines) + 1}]"

    for result in results:
        if result.error is not None:
            status, detail = f"error {result.error['code']}", result.error["message"]
            if result.error.get("hint"):
                detail += f" (hint: {result.error['hint']})"
        elif result.exit_code == 0:
            status, detail = "verified", _budget(result.report.checks) + check_counts(
                result.report.checks)
        else:
            status, detail = "NOT VERIFIED", _failure_detail(result, note)
        if result.warnings:
            # Only on a verified row: after NOT VERIFIED or an error it would read as if
            # the failure were only a warning. The detail names the note either way.
            if result.exit_code == 0:
                status += " (warning)"
            numbers = [note([f"warning: {warning}"]) for warning in result.warnings]
            detail = "; ".join([detail, f"warning {', '.join(numbers)} below"])
        # Paths, messages and check names come from the repository under test: escaped,
        # and never read as rich markup (SPEC.md, R-SEC-5).
        table.add_row(rich_text(result.certificate), rich_text(status), rich_text(detail))
    if run_result is not None and run_result.exit_code != 0:
        table.add_row(rich_text(f"({run_result.certificate}: the repository)"),
                      rich_text("FAILED"), rich_text(_failure_detail(run_result, note)))
    console.print(table)
    _print_notes(console, notes)
    verified = sum(1 for r in results if r.exit_code == 0)
    # Without a policy file the run is level 1 without limits; a misnamed file would
    # otherwise lower the checks without a word.
    policy = "" if has_policy else (", no policy file found (.mbd-cert.toml or "
                                    "mbd-cert-policy.toml)")
    failed_run = [] if run_result is None else [
        check.name for check in run_result.report.checks if check.status == "fail"]
    repository = (f", repository check {', '.join(failed_run)} failed" if failed_run
                  else "")
    # One line whatever its width: CI scripts and readers look for it as the last line.
    console.print(rich_text(f"{verified} of {len(results)} certificates verified at level "
                            f"{level}{policy}{repository} (exit {exit_code})"),
                  soft_wrap=True)


def _failure_detail(result: RepoResult, note: Callable[[list[str]], str]) -> str:
    """Return the table's detail of a certificate that is not verified.

    Each check that did not pass gets its code and its detail, shortened to
    :data:`DETAIL_WIDTH` characters. ``note`` takes the full text of a shortened
    detail, as lines, and returns the number under which it is printed below the table.
    Certificates with the same detail (the certificates of a forked chain) share it.
    """
    parts = [check_counts(result.report.checks)]
    for check in result.report.checks:
        if check.status not in ("fail", "inconclusive"):
            continue
        outcome = check.code or check.status
        part = f"{check.name}: {outcome} ({_shortened(check.detail)})"
        if _shortened(check.detail) != check.detail:
            lines = _detail_lines(check.detail)
            lines[0] = f"{check.name} [{outcome}]: {lines[0]}"
            part += f", in full as {note(lines)} below"
        parts.append(part)
    return "; ".join(parts)


def _print_notes(console: Any, notes: Sequence[list[str]]) -> None:
    """Print the numbered notes under the table, later lines of a note indented."""
    for number, lines in enumerate(notes, start=1):
        _print_wrapped(console, f"[{number}] {lines[0]}", "", "    ")
        for line in lines[1:]:
            _print_wrapped(console, line, "    ", "        ")


def _print_wrapped(console: Any, text: str, first_indent: str, indent: str) -> None:
    """Print ``text`` escaped and wrapped, every line but the first indented.

    A note quotes certificates and file names, which can pad text to the console width
    so that a wrapped line of its own reads like the summary line (SPEC.md, R-SEC-5).
    The lines are cut here by terminal columns, as rich counts them (two for a wide
    character), so that none is wider than the console and the terminal does not wrap
    it again at column 0. ``soft_wrap`` keeps rich from cutting them a second time.
    """
    from rich.text import Text

    from mbd_cert._terminal import rich_text

    width = max(console.width - len(indent), 1)
    for number, piece in enumerate(rich_text(text).wrap(console, width, overflow="fold")):
        piece.rstrip()
        if not piece.plain:
            continue
        console.print(Text(first_indent if number == 0 else indent) + piece, soft_wrap=True)


def check_counts(checks: Sequence[Any]) -> str:
    """Count the checks by status, as in ``9 checks: 7 passed, 0 failed, 2 skipped``.

    Inconclusive checks are added to the text only when there are any.
    """
    statuses = [check.status for check in checks]
    noun = "check" if len(statuses) == 1 else "checks"
    text = (f"{len(statuses)} {noun}: {statuses.count('pass')} passed, "
            f"{statuses.count('fail')} failed, {statuses.count('skipped')} skipped")
    inconclusive = statuses.count("inconclusive")
    return text + (f", {inconclusive} inconclusive" if inconclusive else "")


def _budget(checks: Sequence[Any]) -> str:
    """Return "epsilon E at delta D over N deletion(s); " from a passed accounting check."""
    for check in checks:
        if check.name == "accounting" and check.status == "pass" and \
                check.threshold is not None:
            # NOTE: the check result has no field for the delta, so it is read from the
            # detail text that verify._check_accounting writes; a test pins that wording.
            delta = check.detail.partition(" at delta ")[2].partition(" ")[0]
            return (f"epsilon {exact_number(check.threshold)} at delta {delta} over "
                    f"{check.n} deletion(s); ")
    return ""


def _detail_lines(detail: str) -> list[str]:
    """Split a detail into lines for the notes under the table: one per policy violation.

    Any other detail stays one line, and so does a list whose numbering breaks off. The
    policy check's hint, which ends its detail in brackets, gets a line of its own.
    """
    hint = f" ({POLICY_VIOLATION_HINT})"
    if detail.endswith(hint):
        return [*_detail_lines(detail.removesuffix(hint)), f"hint: {POLICY_VIOLATION_HINT}"]
    match = _VIOLATION_LIST.match(detail)
    if match is None:
        return [detail]
    lines = [match.group(0).rstrip()]
    rest = detail[match.end():]
    for number in range(2, int(match.group(1)) + 1):
        cut = rest.find(f"; ({number}) ")
        if cut < 0:
            break
        lines.append(rest[:cut])
        rest = rest[cut + 2:]
    lines.append(rest)
    return lines


def _shortened(text: str, limit: int = DETAIL_WIDTH) -> str:
    """Return ``text`` cut to at most ``limit`` characters, at a space where there is one."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 3]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut) + "..."
