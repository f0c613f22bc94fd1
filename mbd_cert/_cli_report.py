"""Command ``mbd-cert report``: PNG figures and a self-contained HTML page.

Stability: internal; the command line is documented in docs/privacy-utility.md.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import click

from mbd_cert import _paths, errors
from mbd_cert._cli_commands import GuardFactory

logger = logging.getLogger(__name__)

# A verification report is one small JSON document; this cap only stops a wrong file.
MAX_VERIFY_REPORT_BYTES = 16 * 1024 * 1024


def register(main: click.Group, guarded: GuardFactory) -> None:
    """Add the ``report`` command to the ``main`` group."""

    @main.command()
    @click.argument("certs", nargs=-1, required=True, type=click.Path(path_type=Path))
    @click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
                  help="Directory for the PNG figures and index.html (created if missing).")
    @click.option("--chain", "chain_dir", type=click.Path(path_type=Path), default=None,
                  help="Directory of the earlier certificates of the chain figure's "
                       "certificate [default: the directory of that certificate].")
    @click.option("--modality", default=None,
                  help="Modality of the privacy-utility sweep [default: the modality most "
                       "of the first-deletion certificates delete].")
    @click.option("--verify-report", "verify_reports", multiple=True,
                  type=click.Path(path_type=Path),
                  help="A JSON report of 'mbd-cert verify --json' (repeatable).")
    @click.option("--title", default="Modality deletion report", show_default=True,
                  help="Title of the HTML page.")
    @guarded()
    def report(certs: tuple[Path, ...], out_dir: Path, chain_dir: Path | None,
               modality: str | None, verify_reports: tuple[Path, ...], title: str) -> None:
        """Draw figures from CERTS: privacy-utility, chain budget, proxy quality, checks.

        The chain figure uses the certificate with the highest sequence number. The
        figures show what the certificates claim; run 'mbd-cert verify' to check them.
        """
        try:
            from mbd_cert import report_figures
        except ImportError as exc:
            raise errors.InputError(
                f"'mbd-cert report' needs matplotlib, which is not installed ({exc})",
                hint="in a checkout of mbd-cert: pip install -e '.[report]'; "
                "from the package index: pip install 'mbd-cert[report]'",
                code="E_INPUT",
            ) from exc
        from mbd_cert import _json
        from mbd_cert.certificate import load_certificate
        from mbd_cert.chain import walk_chain

        docs = [load_certificate(path) for path in certs]
        newest_index = max(range(len(docs)),
                           key=lambda i: docs[i]["accounting"]["sequence_number"])
        newest = docs[newest_index]
        links = walk_chain(newest, chain_dir or certs[newest_index].parent)
        if modality is None:
            firsts = [d["deletion"]["modality"] for d in docs
                      if d["accounting"]["sequence_number"] == 1]
            modality = max(set(firsts), key=firsts.count) if firsts else newest["deletion"][
                "modality"]
        loaded = []
        for path in verify_reports:
            document = _json.load_json_strict(
                _json.read_bytes_capped(path, what="verification report",
                                        max_bytes=MAX_VERIFY_REPORT_BYTES),
                what=str(path), max_bytes=MAX_VERIFY_REPORT_BYTES)
            _check_verify_report(document, path)
            loaded.append((path.parent.name or path.name, document))

        sections = [
            ("privacy_utility.png", report_figures.privacy_utility(docs, modality)),
            ("chain_budget.png", report_figures.chain_budget(links)),
            ("proxy_scatter.png", report_figures.proxy_scatter(docs)),
            ("verification.png", report_figures.verification_results(loaded)),
        ]
        out_dir.mkdir(parents=True, exist_ok=True)
        written = [name for name, section in sections
                   if report_figures.write_png(section, out_dir / name)]
        page = report_figures.render_html(title, [section for _, section in sections])
        _paths.atomic_write_bytes(out_dir / "index.html", page.encode("utf-8"),
                                  overwrite=True, shared=True)
        logger.info("wrote %s", ", ".join(written))
        click.echo(f"wrote {out_dir / 'index.html'} and {len(written)} figures: "
                   + ", ".join(written))
        summary = {"figures": written, "html": str(out_dir / "index.html")}
        logger.debug("%s", json.dumps(summary))


# Statuses a check of 'mbd-cert verify --json' can have (SPEC.md, R-REP-1).
_STATUSES = ("pass", "fail", "inconclusive", "skipped")
# A check name is an identifier of the verifier; a longer one is not a real report.
_MAX_CHECK_NAME = 200


def _check_verify_report(document: object, path: Path) -> None:
    """Check the fields of a verification report that the figures read.

    Raises:
        InputError: ``E_DATA_MALFORMED`` naming the field and what it must be.
    """
    def malformed(field: str, expected: str) -> errors.InputError:
        return errors.InputError(
            f"{path}: {field} must be {expected}",
            hint="pass the JSON written by 'mbd-cert verify --json'", code="E_DATA_MALFORMED")

    if not isinstance(document, dict) or not isinstance(document.get("checks"), list):
        raise malformed("the report", "an object with a 'checks' list")
    for index, check in enumerate(document["checks"]):
        if not isinstance(check, dict):
            raise malformed(f"checks[{index}]", "an object")
        name = check.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= _MAX_CHECK_NAME:
            raise malformed(f"checks[{index}].name",
                            f"a string of 1 to {_MAX_CHECK_NAME} characters")
        if check.get("status") not in _STATUSES:
            raise malformed(f"checks[{index}].status", f"one of {list(_STATUSES)}")
    if not isinstance(document.get("verified", False), bool):
        raise malformed("verified", "true or false")
