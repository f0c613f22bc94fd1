"""Command ``mbd-cert report``: PNG figures and a self-contained HTML page.

Stability: internal; the command line is documented in docs/user-guide.md and
docs/privacy-utility.md.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import click

from mbd_cert import _paths, errors
from mbd_cert._cli_commands import GuardFactory
from mbd_cert._interrupts import command_window, output_left_text
from mbd_cert._issue_outputs import check_output_dir, create_staging, set_modes, swap_in

logger = logging.getLogger(__name__)

# A verification report is one small JSON document; this cap only stops a wrong file.
MAX_VERIFY_REPORT_BYTES = 16 * 1024 * 1024


def register(main: click.Group, guarded: GuardFactory) -> None:
    """Add the ``report`` command to the ``main`` group."""

    @main.command()
    @click.argument("certs", nargs=-1, required=True, type=click.Path(path_type=Path))
    @click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
                  help="Directory for the PNG figures and index.html (created if missing; "
                  "must be empty unless --force is given).")
    @click.option("--force", is_flag=True,
                  help="Replace a non-empty output directory, with every file in it.")
    @click.option("--chain", "chain_dir", type=click.Path(path_type=Path), default=None,
                  help="Directory of the earlier certificates of the chain figure's "
                       "certificate [default: the directory of that certificate].")
    @click.option("--modality", default=None,
                  help="Modality of the privacy-utility sweep, one that the models of "
                       "CERTS have [default: the modality most of the first-deletion "
                       "certificates delete; on a tie, the one of the earliest of them in "
                       "CERTS].")
    @click.option("--verify-report", "verify_reports", multiple=True,
                  type=click.Path(path_type=Path),
                  help="A JSON report of 'mbd-cert verify --json' (repeatable). The page "
                       "names it by its directory, or by its path when two reports share "
                       "a directory.")
    @click.option("--title", default="Modality deletion report", show_default=True,
                  help="Title of the HTML page.")
    # True until the report is in place; from then on Ctrl-C is held (mbd_cert._interrupts).
    @guarded(interrupted=output_left_text)
    def report(certs: tuple[Path, ...], out_dir: Path, force: bool, chain_dir: Path | None,
               modality: str | None, verify_reports: tuple[Path, ...], title: str) -> None:
        """Draw figures from CERTS: privacy-utility, chain budget, proxy quality, checks.

        CERTS must come from one trained model. The chain figure uses the certificate
        with the highest sequence number. The figures show what the certificates claim;
        run 'mbd-cert verify' to check them. Needs matplotlib, which the report extra
        installs (mbd-cert[report]).
        """
        _paths.reject_output_over_inputs(out_dir, [
            *(("CERT", path) for path in certs), ("--chain", chain_dir),
            *(("--verify-report", path) for path in verify_reports),
        ])
        check_output_dir(out_dir, force=force)
        try:
            from mbd_cert import report_figures
        except ImportError as exc:
            raise errors.InputError(
                f"'mbd-cert report' needs matplotlib, which is not installed ({exc})",
                hint="install mbd-cert with its report extra: 'mbd-cert[report]' where you "
                "install it from a package or git URL, or pip install -e '.[report]' in a "
                "checkout",
                code="E_INPUT",
            ) from exc
        from mbd_cert import _json
        from mbd_cert.certificate import load_certificate
        from mbd_cert.chain import walk_chain

        if chain_dir is not None and not chain_dir.is_dir():
            # A mistyped --chain is unusable input (exit 2), as in verify, and not a
            # missing link of the chain (exit 1).
            problem = "not found" if not chain_dir.exists() else "not a directory"
            raise errors.InputError(
                f"chain directory {str(chain_dir)!r}: {problem}",
                hint="pass the directory that holds the chain-NNNNN.json copies (the issue "
                "output directory)",
                code="E_FILE_MISSING" if problem == "not found" else "E_PARAMETER_INVALID",
            )
        docs = [load_certificate(path) for path in certs]
        newest_index = max(range(len(docs)),
                           key=lambda i: docs[i]["accounting"]["sequence_number"])
        newest = docs[newest_index]
        links = walk_chain(newest, chain_dir or certs[newest_index].parent)
        _check_one_model(docs, certs, newest_index, links, chain_dir)
        if modality is not None:
            _check_modality(modality, docs)
        else:
            firsts = [d["deletion"]["modality"] for d in docs
                      if d["accounting"]["sequence_number"] == 1]
            # max() over the list and not a set, so that on a tie the earliest CERT
            # decides and the string hash seed of the run does not.
            modality = max(firsts, key=firsts.count) if firsts else newest["deletion"][
                "modality"]
        loaded = []
        for path in verify_reports:
            document = _json.load_json_strict(
                _json.read_bytes_capped(path, what="verification report",
                                        max_bytes=MAX_VERIFY_REPORT_BYTES),
                what=str(path), max_bytes=MAX_VERIFY_REPORT_BYTES)
            _check_verify_report(document, path)
            loaded.append((path, document))
        labelled = list(zip(_report_labels([path for path, _ in loaded]),
                            [document for _, document in loaded], strict=True))

        sections = [
            ("privacy_utility.png", report_figures.privacy_utility(docs, modality)),
            ("chain_budget.png", report_figures.chain_budget(links, certs[newest_index])),
            ("proxy_scatter.png", report_figures.proxy_scatter(docs)),
            ("verification.png", report_figures.verification_results(labelled)),
        ]
        page = report_figures.render_html(title, [section for _, section in sections])
        with command_window() as window:
            written = _write_report(out_dir, sections, page, force=force)
            logger.info("wrote %s", ", ".join(written))
            click.echo(f"wrote {out_dir / 'index.html'} and {len(written)} figures: "
                       + ", ".join(written))
        if window.interrupted:
            click.echo(f"Ctrl-C or SIGTERM arrived after the report was moved into {out_dir}; "
                       "the report is complete", err=True)
        summary = {"figures": written, "html": str(out_dir / "index.html")}
        logger.debug("%s", json.dumps(summary))


def _write_report(out_dir: Path, sections: list[tuple[str, Any]], page: str, *,
                  force: bool) -> list[str]:
    """Write the figures and index.html to ``out_dir``; return the figure file names.

    The files are built in a staging directory that then replaces ``out_dir`` as a
    whole, so no figure of an earlier run stays behind, and a failed run leaves
    ``out_dir`` as it was.

    Raises:
        InputError: A file cannot be written (``E_FILE_UNWRITABLE``), or ``out_dir``
            became non-empty meanwhile and ``force`` is False (``E_OUTPUT_EXISTS``).
    """
    from mbd_cert import report_figures

    staging = create_staging(out_dir)
    try:
        written = [name for name, section in sections
                   if report_figures.write_png(section, staging / name)]
        _paths.atomic_write_bytes(staging / "index.html", page.encode("utf-8"), shared=True)
        set_modes(staging)
        swap_in(staging, out_dir, force=force, command="report")
    except OSError as exc:
        raise errors.InputError(
            f"failed to write the report into {out_dir}: {exc.strerror or exc}",
            hint="free disk space or pass another --out directory",
            code="E_FILE_UNWRITABLE",
        ) from exc
    finally:
        # After swap_in the staging path no longer exists, so this removes only the
        # files of a failed run.
        shutil.rmtree(staging, ignore_errors=True)
    return written


def _check_one_model(docs: list[dict[str, Any]], certs: tuple[Path, ...], newest_index: int,
                     newest_links: list[Any], chain_dir: Path | None) -> None:
    """Check that every certificate deletes from the same trained model.

    The figures draw all certificates on one set of axes, with the baselines of one of
    them, so certificates of two models would make a wrong page. The trained model of
    a certificate is the pre-deletion model of its chain's first deletion: its own for
    a first deletion, the first link's for a later one. ``newest_links`` is the chain
    of ``certs[newest_index]``, the chain figure's certificate, which ``--chain``
    names. Another later deletion may belong to another chain, so its links are read
    from its own directory first and from ``chain_dir`` only when they are missing.

    Raises:
        InputError: ``E_PARAMETER_INVALID``, naming two certificates of different models.
        ChainLinkMissing: A later deletion's earlier links are in neither directory.
    """
    from mbd_cert.chain import walk_chain
    from mbd_cert.errors import ChainLinkMissing

    roots: dict[str, Path] = {}
    for index, (doc, path) in enumerate(zip(docs, certs, strict=True)):
        first = doc
        if index == newest_index:
            first = newest_links[0].doc
        elif doc["accounting"]["sequence_number"] > 1:
            try:
                first = walk_chain(doc, path.parent)[0].doc
            except ChainLinkMissing:
                if chain_dir is None:
                    raise
                first = walk_chain(doc, chain_dir)[0].doc
        roots.setdefault(first["subject_model"]["pre_deletion"]["file_digest"], path)
    if len(roots) > 1:
        (digest_a, path_a), (digest_b, path_b) = list(roots.items())[:2]
        raise errors.InputError(
            f"{path_a} and {path_b} delete from different trained models ({digest_a} and "
            f"{digest_b}, the pre-deletion digests of their chains' first deletions), "
            "and one report draws a single model",
            hint="make one report per model: pass the certificates of one trained model, "
            "for example the deletions issued from one checkpoint and their later links",
            code="E_PARAMETER_INVALID",
        )


def _check_modality(modality: str, docs: list[dict[str, Any]]) -> None:
    """Check that ``--modality`` names a modality of the certificates' models.

    A model's modalities are its architecture config's ``modalities`` list, where the
    config has one, and the modality each certificate deletes.

    Raises:
        InputError: ``E_PARAMETER_INVALID``, naming the modalities the models have.
    """
    known: list[str] = []
    deleted: list[str] = []
    for doc in docs:
        config = doc["subject_model"]["architecture"].get("config")
        listed = config.get("modalities") if isinstance(config, dict) else None
        for name in [*(listed if isinstance(listed, list) else []), doc["deletion"]["modality"]]:
            if isinstance(name, str) and name not in known:
                known.append(name)
        if doc["deletion"]["modality"] not in deleted:
            deleted.append(doc["deletion"]["modality"])
    if modality not in known:
        raise errors.InputError(
            f"--modality {modality!r} is not a modality of the certificates' models, which "
            f"have {', '.join(known)}",
            hint=f"pass one that the certificates delete ({', '.join(deleted)}), or leave "
            "--modality out to draw the one most first deletions delete",
            code="E_PARAMETER_INVALID",
        )


# Statuses a check of 'mbd-cert verify --json' can have (SPEC.md, R-REP-1).
_STATUSES = ("pass", "fail", "inconclusive", "skipped")
# A check name is an identifier of the verifier; a longer one is not a real report.
_MAX_CHECK_NAME = 200


def _report_labels(paths: list[Path]) -> list[str]:
    """Return a label per report: its directory name, or its path where that name repeats.

    The documented layout is ``RELEASE/verify.json``, so the directory names the release.
    """
    short = [path.parent.name or path.name for path in paths]
    return [name if short.count(name) == 1 else str(path)
            for name, path in zip(short, paths, strict=True)]


def _check_verify_report(document: object, path: Path) -> None:
    """Check the fields of a verification report that the figures read.

    A report that states ``"verified": true`` must also have checks, no error and no
    failed check, as every report of ``mbd-cert verify --json`` with that verdict has,
    because the page shows VERIFIED for it. The file is not signed, so nothing more
    can be checked.

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
    if document.get("verified") is True:
        # The page shows VERIFIED for the report. verify writes true only for a run
        # that checked something, stopped on no error and failed no check.
        if document.get("error") is not None:
            raise malformed("verified", "false in a report with an error")
        if not document["checks"]:
            raise malformed("verified", "false in a report with no check")
        for index, check in enumerate(document["checks"]):
            if check["status"] == "fail":
                raise malformed("verified", f"false when checks[{index}] "
                                f"({check['name']}) failed")
