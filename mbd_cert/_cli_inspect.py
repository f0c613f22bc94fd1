"""Command inspect of the ``mbd-cert`` CLI: what a certificate claims, unverified.

Stability: internal; the ``inspect --json`` document is versioned by INSPECT_VERSION.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from mbd_cert._cli_commands import GuardFactory, write_json_document


def register(main: click.Group, guarded: GuardFactory) -> None:
    """Add the inspect command to the ``main`` group."""

    @main.command()
    @click.argument("cert", type=click.Path(path_type=Path))
    @click.option("--json", "as_json", is_flag=True, help="Write the summary as JSON.")
    @guarded(json_flag="as_json", error_document=_error_document)
    def inspect(cert: Path, as_json: bool) -> None:
        """Show what a certificate claims, without verifying it."""
        from mbd_cert.certificate import load_certificate

        summary = _inspect_summary(load_certificate(cert))
        if as_json:
            write_json_document(summary)
            return
        _render_inspect(summary)


# Version of the `inspect --json` document; keys are only ever added.
INSPECT_VERSION = "1.0"


def _error_document(arguments: Mapping[str, Any], code: str, message: str, hint: str,
                    exit_code: int) -> dict[str, Any]:
    """Return the ``inspect --json`` document of a run that wrote no summary.

    A missing or malformed certificate, a usage error or Ctrl-C get it. It has the
    summary's ``inspect_version``, ``certificate_id`` (null) and ``verified`` (false),
    and ``error`` in place of the claims, so a reader tells the two apart by ``error``.
    """
    return {
        "inspect_version": INSPECT_VERSION,
        "certificate_id": None,
        "verified": False,
        "error": {"code": code, "message": message, "hint": hint},
    }


def _inspect_summary(doc: dict[str, Any]) -> dict[str, Any]:
    """Return the claims of a certificate that people check first, as JSON values."""
    from mbd_cert.certificate import certificate_digest

    privacy, account = doc["privacy"], doc["accounting"]
    subject = doc["subject_model"]
    bundle = doc["audit_bundle"]
    return {
        "inspect_version": INSPECT_VERSION,
        "certificate_id": doc["certificate_id"],
        "certificate_digest": certificate_digest(doc),
        "format_version": doc["format_version"],
        "issued_at": doc["issued_at"],
        "issuer_key_id": doc["issuer"]["key_id"],
        "issuer_name": doc["issuer"].get("name"),
        "architecture": {
            "name": subject["architecture"]["name"],
            "version": subject["architecture"]["version"],
        },
        "modality": doc["deletion"]["modality"],
        "deleted_modalities": _deleted_modalities(subject["architecture"]),
        "removed_tensors": len(doc["deletion"]["removed_tensors"]),
        "epsilon": privacy["epsilon"],
        "delta": privacy["delta"],
        "sigma": privacy["sigma"],
        "sensitivity": privacy["sensitivity"],
        "sensitivity_method": privacy["sensitivity_method"],
        "noise_dimension": privacy["noise_dimension"],
        "cumulative_epsilon": account["cumulative_epsilon"],
        "sequence_number": account["sequence_number"],
        "previous_certificate": account["previous_certificate"],
        "chain": {
            "method": account["method"],
            "sequence_number": account["sequence_number"],
            "previous_certificate": account["previous_certificate"],
            "mu": account["mu"],
            "cumulative_epsilon": account["cumulative_epsilon"],
            "delta": account["delta"],
            "naive_epsilon": account.get("naive_epsilon"),
            "rdp_epsilon": account.get("rdp_epsilon"),
        },
        "model_manifest_digest": subject["post_deletion"]["manifest_digest"],
        "model_file_digest": subject["post_deletion"]["file_digest"],
        "pre_deletion_manifest_digest": subject["pre_deletion"]["manifest_digest"],
        "pre_deletion_file_digest": subject["pre_deletion"]["file_digest"],
        "mask_digest": doc["saliency"]["mask_digest"],
        "audit_bundle": {
            role: {"path": bundle[role]["path"], "file_digest": bundle[role]["file_digest"]}
            for role in ("diff", "probe")
        },
        "verified": False,
    }


def _deleted_modalities(architecture: dict[str, Any]) -> list[str] | None:
    """Return every modality the released model has lost, from the certified config.

    The built-in architecture lists them in ``config.deleted_modalities``; a plugin's
    config may have no such key, and then this is None.
    """
    listed = architecture.get("config", {}).get("deleted_modalities")
    if isinstance(listed, list) and all(isinstance(name, str) for name in listed):
        return list(listed)
    return None


def _render_inspect(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from mbd_cert._numbers import exact_number
    from mbd_cert._terminal import rich_text

    chain = summary["chain"]
    previous = chain["previous_certificate"] or "none (first deletion of this model)"
    rows = [
        ("certificate", summary["certificate_id"]),
        ("certificate digest", summary["certificate_digest"]),
        ("format", summary["format_version"]),
        ("issued at", summary["issued_at"]),
        ("issuer key id", summary["issuer_key_id"]),
        ("issuer name", summary["issuer_name"] or "(not given)"),
        (
            "architecture",
            f"{summary['architecture']['name']} version {summary['architecture']['version']}",
        ),
        (
            "deleted modality",
            f"{summary['modality']} ({summary['removed_tensors']} encoder tensors removed)",
        ),
        (
            "modalities the model has lost",
            ", ".join(summary["deleted_modalities"]) if summary["deleted_modalities"]
            else "(the architecture's config does not list them)",
        ),
        (
            "budget",
            f"epsilon {exact_number(summary['epsilon'])}, "
            f"delta {exact_number(summary['delta'])}",
        ),
        (
            "noise",
            f"sigma {exact_number(summary['sigma'])} on {summary['noise_dimension']} "
            f"entries, sensitivity {exact_number(summary['sensitivity'])} "
            f"({summary['sensitivity_method']})",
        ),
        ("chain", f"deletion {chain['sequence_number']} of this model, previous: {previous}"),
        (
            "cumulative epsilon",
            f"{exact_number(chain['cumulative_epsilon'])} at delta "
            f"{exact_number(chain['delta'])} ({chain['method']}, mu {exact_number(chain['mu'])})",
        ),
        ("model file digest", summary["model_file_digest"]),
        ("model manifest digest", summary["model_manifest_digest"]),
        ("pre-deletion file digest", summary["pre_deletion_file_digest"]),
        ("mask digest", summary["mask_digest"]),
    ]
    for role, entry in summary["audit_bundle"].items():
        rows.append((f"audit bundle {role}", f"{entry['path']} {entry['file_digest']}"))
    console = Console(soft_wrap=False, width=120)
    table = Table(
        title="certificate claims (NOT VERIFIED: run 'mbd-cert verify' to check them)",
        show_header=False,
    )
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    # Issuer name, architecture version and paths come from the certificate, which
    # inspect does not verify: show them escaped and never as rich markup (SPEC.md, R-SEC-5).
    for field, value in rows:
        table.add_row(field, rich_text(value))
    console.print(table)
