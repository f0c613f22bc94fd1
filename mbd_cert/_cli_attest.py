"""Command attest of the ``mbd-cert`` CLI: a certificate as an in-toto Statement.

The Statement names the released model as its subject, so supply-chain tools that read
in-toto attestations can carry the certificate next to the model.

Stability: internal; the command line is documented in docs/user-guide.md.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import click

from mbd_cert import errors
from mbd_cert._cli_commands import GuardFactory


def register(main: click.Group, guarded: GuardFactory) -> None:
    """Add the attest command to the ``main`` group."""

    @main.command()
    @click.argument("cert", type=click.Path(path_type=Path))
    @click.option("--out", "out_path", type=click.Path(path_type=Path), required=True,
                  help="File to write the in-toto Statement (JSON) to.")
    @click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
                  help="Released model file; attest hashes it for the subject digest, which "
                       "must match the certificate's. Required unless "
                       "--accept-claimed-digest is given.")
    @click.option("--accept-claimed-digest", is_flag=True,
                  help="Without --model: put the certificate's "
                       "subject_model.post_deletion.file_digest in the subject unchecked "
                       "(verify checks it only with --check-file-digest).")
    @click.option("--subject-name", default=None,
                  help="Subject name in the Statement [default: the --model file name, "
                       "else model.safetensors].")
    @click.option("--force", is_flag=True, help="Overwrite an existing output file.")
    @guarded()
    def attest(cert: Path, out_path: Path, model_path: Path | None,
               accept_claimed_digest: bool, subject_name: str | None, force: bool) -> None:
        """Export CERT as an in-toto Statement v1 whose subject is the released model.

        The subject digest is the SHA-256 of the --model file. The certificate is not
        verified: run 'mbd-cert verify' for that. The Statement is not signed either:
        wrap it in a signed envelope (DSSE, for example with in-toto or cosign tools)
        before others rely on it.
        """
        from mbd_cert import _paths, _safetensors
        from mbd_cert._terminal import terminal_text
        from mbd_cert.attestation import (
            DEFAULT_SUBJECT_NAME,
            check_subject_name,
            dump_statement,
            statement_for_certificate,
        )
        from mbd_cert.certificate import load_certificate

        # R-ATT-1: a signed certificate can name any file digest, and verify checks it
        # only with --check-file-digest, so the subject must come from a hashed file
        # unless the caller accepts the claim.
        if model_path is None and not accept_claimed_digest:
            raise errors.InputError(
                "missing option --model: attest hashes the released model file to write "
                "the Statement's subject digest, and checks that digest against the "
                "certificate's subject_model.post_deletion.file_digest",
                hint=f"pass the model the certificate was issued for, as in 'mbd-cert attest "
                f"{shlex.quote(str(cert))} --model "
                f"{shlex.quote(str(cert.parent / 'model.safetensors'))} --out "
                f"{shlex.quote(str(out_path))}'; or "
                "pass --accept-claimed-digest to copy the certificate's digest into the "
                "subject unchecked",
                code="E_USAGE",
            )

        name = subject_name or (model_path.name if model_path else DEFAULT_SUBJECT_NAME)
        # Checked before any file is read. The default name is the --model file's, which
        # may not be valid UTF-8 and then cannot be written into the JSON Statement.
        if subject_name is None:
            check_subject_name(name, hint="the subject name defaults to the --model file "
                               "name; pass another with --subject-name, such as "
                               "--subject-name model.safetensors")
        else:
            check_subject_name(name)

        # Even with --force, the Statement must not replace the certificate or model.
        _paths.check_not_input(out_path, "--out",
                               [cert] if model_path is None else [cert, model_path])
        # Checked here to name the option. The atomic write below still rejects a file
        # that appears in the meantime.
        if out_path.is_dir():
            raise errors.InputError(
                f"--out names a directory: {out_path}",
                hint=f"pass a file path for the Statement, such as {out_path / 'statement.json'}",
                code="E_PARAMETER_INVALID")
        if not force and os.path.lexists(out_path):
            raise errors.InputError(f"output file exists: {out_path}",
                                    hint="choose another --out, or pass --force to replace it",
                                    code="E_FILE_EXISTS")
        doc = load_certificate(cert)
        if model_path is not None:
            expected = doc["subject_model"]["post_deletion"]["file_digest"]
            actual = _safetensors.file_digest(model_path)
            if actual != expected:
                # A file that is no safetensors file at all (a certificate passed as the
                # model, say) is unusable input, exit 2, not a false claim.
                _safetensors.read_header(model_path)
                raise errors.DigestMismatch(
                    f"subject_model.post_deletion.file_digest: expected {expected}, "
                    f"got {actual} for {model_path}",
                    hint="pass the model the certificate was issued for",
                )
        statement = statement_for_certificate(doc, subject_name=name)
        _paths.atomic_write_bytes(out_path, dump_statement(statement), overwrite=force,
                                  shared=True)
        click.echo(f"wrote {terminal_text(out_path)} (subject {name}, sha256:"
                   f"{statement['subject'][0]['digest']['sha256']})")
        # The statement repeats the certificate's claims; nothing here checked them.
        click.echo("note: the certificate was not verified; run 'mbd-cert verify' before "
                   "publishing the statement", err=True)
        if model_path is None:
            click.echo("note: the subject digest is the certificate's claimed "
                       "post_deletion.file_digest; no model file was hashed", err=True)
