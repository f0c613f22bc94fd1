"""The ``mbd-cert`` command line: parse, call the library, render, map exit codes.

Exit codes (all commands): 0 every check passed; 1 a check failed or the issuer
refused; 2 unusable input; 3 internal error (a bug; ``-v`` shows the traceback).
stdout carries the result only; logs and progress go to stderr.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from mbd_cert import __version__, errors

F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger("mbd_cert")


def _configure_logging(verbose: int) -> None:
    level_name = os.environ.get("MBD_CERT_LOGLEVEL", "")
    level = logging.WARNING
    if level_name:
        level = getattr(logging, level_name.upper(), logging.WARNING)
    if verbose == 1:
        level = logging.INFO
    elif verbose >= 2:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("mbd_cert")
    root.handlers[:] = [handler]
    root.setLevel(level)


def guarded(json_flag: str | None = None) -> Callable[[F], F]:
    """Map library errors to exit codes and messages; never let a traceback through.

    With ``json_flag`` set and that option given, errors are also written to stdout
    as a JSON error report, so machines always receive one document.
    """

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            as_json = bool(json_flag and kwargs.get(json_flag))
            try:
                return function(*args, **kwargs)
            except errors.MbdCertError as error:
                _emit_error(error.code, error.message, error.hint, as_json)
                sys.exit(error.exit_code)
            except KeyboardInterrupt:
                click.echo("interrupted; no output was written", err=True)
                sys.exit(130)
            except click.exceptions.Exit:
                raise
            except click.ClickException:
                raise
            except Exception as exc:  # a bug: exit 3, never 1
                ctx = click.get_current_context(silent=True)
                verbose = bool(ctx and ctx.find_root().params.get("verbose"))
                if verbose:
                    traceback.print_exc()
                _emit_error(
                    "E_INTERNAL",
                    f"internal error: {type(exc).__name__}: {exc}",
                    "this is a bug in mbd-cert; rerun with -v and report the traceback",
                    as_json,
                )
                sys.exit(3)

        return wrapper  # type: ignore[return-value]

    return decorate


def _emit_error(code: str, message: str, hint: str, as_json: bool) -> None:
    from mbd_cert.report import error_report

    if as_json:
        click.echo(json.dumps(error_report(code, message, hint), indent=2))
    text = f"error [{code}]: {message}"
    if hint:
        text += f"\n  hint: {hint}"
    click.echo(text, err=True)


class _Group(click.Group):
    """Click group whose usage errors exit 2 with a message and no traceback."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102
        kwargs.setdefault("standalone_mode", True)
        return super().main(*args, **kwargs)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="mbd-cert")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Issue and verify Modality Deletion Certificates."""
    _configure_logging(verbose)


def _register_commands() -> None:
    from mbd_cert import _cli_commands

    _cli_commands.register(main, guarded)
    try:
        from trainer import cli as trainer_cli
    except ImportError as exc:  # the trainer needs the torch extra
        missing = str(exc)

        @main.command("train", context_settings={"ignore_unknown_options": True})
        @click.argument("args", nargs=-1, type=click.UNPROCESSED)
        def train_unavailable(args: tuple[str, ...]) -> None:
            """Train the bundled MBD model (needs the torch extra)."""
            click.echo(f"error [E_INPUT]: the trainer is not available: {missing}", err=True)
            click.echo("  hint: pip install 'mbd-cert[torch]'", err=True)
            sys.exit(2)

        return
    trainer_cli.register(main, guarded)


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
