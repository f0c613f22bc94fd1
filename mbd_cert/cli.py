"""The ``mbd-cert`` command line: parse, call the library, render, map exit codes.

Exit codes (all commands): 0 every check passed; 1 a check failed or the issuer
refused; 2 unusable input; 3 internal error (a bug; ``-v`` shows the traceback);
130 interrupted by Ctrl-C (SIGINT) or SIGTERM.
stdout carries the result only; logs and progress go to stderr.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from typing import Any, NoReturn, TypeVar

import click

from mbd_cert import __version__, errors
from mbd_cert._interrupts import CODE_INTERRUPTED, EXIT_INTERRUPTED, interruption
from mbd_cert._terminal import json_output, terminal_lines, terminal_text

F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger("mbd_cert")

NOT_FINISHED = "the command did not finish"
# Set when the command line's command has returned or raised, with the exit status it
# chose. From then on SIGINT or SIGTERM ends the interpreter's shutdown at once with
# that status (:func:`_end_with_status`).
_command_finished = False
_finished_status = 0


def exit_interrupted(outcome: str = NOT_FINISHED) -> NoReturn:
    """Print the one interrupt message, ``interrupted; OUTCOME``, and exit 130."""
    click.echo(f"interrupted; {outcome}", err=True)
    sys.exit(EXIT_INTERRUPTED)


def _terminate_as_interrupt(signum: int, frame: Any) -> None:
    """Handle SIGTERM as the current SIGINT handler would handle Ctrl-C.

    CI systems and ``timeout`` stop a job with SIGTERM, whose default action ends the
    process at once: no cleanup, no message, status 143. Routed through the SIGINT
    handler, it gets Ctrl-C's outcome: temporary files removed, the output left as it
    was or completed, one "interrupted" line and exit 130.
    """
    if _command_finished:
        _end_with_status(signum, frame)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        # SIG_DFL, a handler installed outside Python, or SIG_IGN inherited from a
        # shell that starts background jobs with Ctrl-C ignored: SIGTERM still stops
        # the command, with Ctrl-C's cleanup.
        raise KeyboardInterrupt


def _end_with_status(signum: int, frame: Any) -> None:
    """End the process now with the finished command's exit status.

    The command has written its outputs and printed its result. What is left is
    interpreter shutdown (0.6 s after 'issue' on 2 CPU cores, measured), which can hang
    on a stuck library thread. A signal there keeps the command's outcome, because
    status 130 or 143 would report a failure that did not happen. Ignoring the signal
    would leave a hang that only SIGKILL ends.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(_finished_status)


def _exit_status(done: SystemExit) -> int:
    """Return the process status that ``done`` gives, as ``sys.exit`` maps its argument."""
    if done.code is None:
        return 0
    return done.code if isinstance(done.code, int) else 1


class _EscapingFormatter(logging.Formatter):
    """Log formatter that escapes control characters in the message (SPEC.md, R-SEC-5).

    Log messages name files and tensors from the inputs. Tracebacks (``-v``) are
    formatted apart from the message and keep their line breaks, with each line
    escaped, because an exception message can quote the same names.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: D102, N802
        record.message = terminal_text(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: D102, N802
        return terminal_lines(super().formatException(ei))


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
    # The module name helps only a reader of the code, so it appears with -v or -vv.
    layout = "%(levelname)s %(name)s: %(message)s" if level < logging.WARNING else \
        "%(levelname)s: %(message)s"
    handler.setFormatter(_EscapingFormatter(layout))
    # The bundled trainer logs under "trainer" (train and evaluate run it), with paths
    # and file errors that need the same escaping and the same -v control.
    for name in ("mbd_cert", "trainer"):
        package = logging.getLogger(name)
        package.handlers[:] = [handler]
        package.setLevel(level)


# Builds a command's JSON document for an error: (command arguments, error code,
# message, hint, exit code) -> document.
ErrorDocument = Callable[[Mapping[str, Any], str, str, str, int], dict[str, Any]]


def guarded(json_flag: str | None = None, *,
            interrupted: str | Callable[[Mapping[str, Any]], str] = NOT_FINISHED,
            error_document: ErrorDocument | None = None) -> Callable[[F], F]:
    """Map library errors to exit codes and messages; never let a traceback through.

    With ``json_flag`` set and that option given, errors are also written to stdout
    as a JSON document, so machines always receive one: the verification error report
    (:func:`mbd_cert.report.error_report`), or what ``error_document`` builds for a
    command whose report has another shape. Ctrl-C writes that document too, with
    the error ``E_INTERRUPTED`` and the text of the
    :class:`~mbd_cert._interrupts.Interrupted` that the command raised, unless the
    command had already written its own document. ``interrupted`` completes the message
    ``interrupted; ...`` printed on Ctrl-C, or returns that text when called with the
    command's keyword arguments, so that it can name the output directory. It must be
    true at any point where the command can be interrupted.
    """

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            as_json = bool(json_flag and kwargs.get(json_flag))

            def write_document(code: str, message: str, hint: str, exit_code: int) -> None:
                # One document only: a command that already wrote its own keeps it.
                if as_json and not _document_written():
                    _write_error_document(code, message, hint, _error_document(
                        error_document, kwargs, code, message, hint, exit_code))

            def emit(code: str, message: str, hint: str, exit_code: int) -> None:
                write_document(code, message, hint, exit_code)
                _emit_error(code, message, hint, as_json=False)

            try:
                return function(*args, **kwargs)
            except errors.MbdCertError as error:
                if error.code == _CODE_PLUGIN_FAILED and error.__cause__ is not None \
                        and _verbose():
                    # The plugin's own traceback is what its authors need.
                    click.echo(terminal_lines(traceback.format_exc().rstrip("\n")), err=True)
                emit(error.code, error.message, error.hint, error.exit_code)
                sys.exit(error.exit_code)
            except KeyboardInterrupt as interrupt:
                # The document records the interruption, and stderr gets the one
                # "interrupted; ..." line instead of an error line.
                stopped = interruption(interrupt)
                write_document(CODE_INTERRUPTED, stopped.message, stopped.hint,
                               EXIT_INTERRUPTED)
                exit_interrupted(interrupted(kwargs) if callable(interrupted) else interrupted)
            except click.exceptions.Exit:
                raise
            except click.ClickException:
                raise
            except Exception as exc:  # a bug: exit 3, never 1
                if _verbose():
                    click.echo(terminal_lines(traceback.format_exc().rstrip("\n")), err=True)
                emit("E_INTERNAL", f"internal error: {type(exc).__name__}: {exc}",
                     "this is a bug in mbd-cert; rerun with -v and report the traceback", 3)
                sys.exit(3)

        # The command group's usage errors (before the command runs) use it too.
        wrapper.error_document = error_document  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


# mbd_cert.arch's code for a failing plugin, written out so that the CLI does not
# import the architecture registry (and numpy) to start.
_CODE_PLUGIN_FAILED = "E_ARCHITECTURE_LOAD_FAILED"


def _verbose() -> bool:
    """Return whether the command line gave -v."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("verbose"))


def _error_document(build: ErrorDocument | None, arguments: Mapping[str, Any], code: str,
                    message: str, hint: str, exit_code: int) -> dict[str, Any] | None:
    """Return the command's own JSON error document, or None for the default report."""
    if build is None:
        return None
    try:
        return build(arguments, code, message, hint, exit_code)
    except Exception:  # noqa: BLE001 - the error being reported matters more
        logger.debug("building the JSON error document failed", exc_info=True)
        return None


def _document_written() -> bool:
    """Return whether the running command has written its ``--json`` document."""
    from mbd_cert._cli_commands import DOCUMENT_WRITTEN

    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(DOCUMENT_WRITTEN))


def _write_error_document(code: str, message: str, hint: str,
                          document: dict[str, Any] | None) -> None:
    """Write ``document``, or by default the verification error report, to stdout."""
    from mbd_cert.report import error_report

    if document is None:
        document = error_report(code, message, hint)
    click.echo(json_output(document))


def _emit_error(code: str, message: str, hint: str, as_json: bool,
                document: dict[str, Any] | None = None) -> None:
    if as_json:
        _write_error_document(code, message, hint, document)
    # Messages quote names and values from the input files (SPEC.md, R-SEC-5).
    text = f"error [{code}]: {terminal_text(message)}"
    if hint:
        text += f"\n  hint: {terminal_text(hint)}"
    click.echo(text, err=True)


class _Group(click.Group):
    """Click group whose usage errors exit 2 with a message and no traceback.

    With ``--json`` among the arguments, a usage error also writes the JSON error
    report (code ``E_USAGE``) to stdout, so machines always receive one document.
    """

    def main(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:  # noqa: D102
        kwargs.setdefault("standalone_mode", True)
        as_program = args is None and kwargs["standalone_mode"]
        argv = list(sys.argv[1:] if args is None else args)
        options = argv[: argv.index("--")] if "--" in argv else argv
        self._json_requested = "--json" in options
        global _command_finished, _finished_status
        if as_program and threading.current_thread() is threading.main_thread():
            _command_finished = False
            # A parent that ignores SIGTERM for this process keeps it ignored.
            if signal.getsignal(signal.SIGTERM) is not signal.SIG_IGN:
                signal.signal(signal.SIGTERM, _terminate_as_interrupt)
        status: int | None = None
        try:
            return super().main(argv, *rest, **kwargs)
        except SystemExit as done:
            status = _exit_status(done)
            raise
        finally:
            if as_program and threading.current_thread() is threading.main_thread():
                # Any other exception reaches Python's handler, which exits 1.
                _finished_status = 1 if status is None else status
                # The handler first: a Ctrl-C between the two lines then still ends the
                # process with the status instead of raising in this finally block.
                signal.signal(signal.SIGINT, _end_with_status)
                _command_finished = True

    # The trainer's commands import torch; loading them only when asked for keeps
    # every other command (level-1 verify above all) quick to start.
    _TRAINER_COMMANDS = ("train", "evaluate")

    def list_commands(self, ctx: click.Context) -> list[str]:  # noqa: D102
        return sorted(set(super().list_commands(ctx)) | set(self._TRAINER_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:  # noqa: D102
        if cmd_name in self._TRAINER_COMMANDS and cmd_name not in self.commands:
            try:
                _register_trainer(self)
            except KeyboardInterrupt:
                # Ctrl-C while torch is imported, before the command has parsed its
                # options, so its --out is untouched and cannot be named yet.
                exit_interrupted(f"the {cmd_name} command stopped while loading and wrote "
                                 "nothing")
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:  # noqa: D102
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            # A Ctrl-C outside a command's guard, such as while click parses the
            # options. Click itself would print "Aborted!" and exit 1.
            exit_interrupted()
        except click.UsageError as error:
            name = ctx.invoked_subcommand or ""
            command = self.commands.get(name)
            # Not where --json takes a file name (evaluate): that caller expects nothing
            # on stdout. An unknown command gets the default report.
            report_flag = command is None or any(
                isinstance(p, click.Option) and p.is_flag and "--json" in p.opts
                for p in command.params)
            if getattr(self, "_json_requested", False) and report_flag:
                from mbd_cert.report import error_report

                build = getattr(getattr(command, "callback", None), "error_document", None)
                hint = _usage_hint(error, name)
                document = _error_document(build, {}, "E_USAGE", error.format_message(), hint,
                                           error.exit_code)
                if document is None:
                    document = error_report("E_USAGE", error.format_message(), hint)
                click.echo(json_output(document))
            if _misplaced_verbose(error):
                # Click's text names the option but not where it belongs.
                raise click.UsageError(f"{error.format_message()}\n{_usage_hint(error, name)}",
                                       ctx=error.ctx) from None
            raise


def _misplaced_verbose(error: click.UsageError) -> bool:
    """Return whether ``error`` is -v or --verbose given after the command name."""
    option = getattr(error, "option_name", "") or ""
    return isinstance(error, click.NoSuchOption) and option in ("-v", "--verbose")


def _usage_hint(error: click.UsageError, command: str) -> str:
    """Return the hint for the JSON document of a usage error: how to fix the call."""
    if _misplaced_verbose(error):
        option = getattr(error, "option_name", "")
        return f"global options go before the command: mbd-cert {option} {command} ..."
    if not command:
        return "run 'mbd-cert --help' for the commands"
    return f"run 'mbd-cert {command} --help' for its arguments and options"


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="mbd-cert")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Issue and verify Modality Deletion Certificates."""
    _configure_logging(verbose)


def _register_commands() -> None:
    from mbd_cert import (
        _cli_attest,
        _cli_ci,
        _cli_commands,
        _cli_inspect,
        _cli_issue,
        _cli_report,
    )

    _cli_commands.register(main, guarded)
    _cli_issue.register(main, guarded)
    _cli_inspect.register(main, guarded)
    _cli_ci.register(main, guarded)
    _cli_attest.register(main, guarded)
    _cli_report.register(main, guarded)


def _register_trainer(group: click.Group) -> None:
    # torch (2.13) imports numpy from C++ code that clears any exception of that
    # import, KeyboardInterrupt included. A Ctrl-C there left a half-initialised numpy,
    # and the command then failed with an internal error (exit 3). Imported here
    # first, an interrupted numpy import raises KeyboardInterrupt as usual.
    import numpy  # noqa: F401

    try:
        from trainer import cli as trainer_cli
    except ImportError as exc:  # the trainer needs the torch extra
        missing = str(exc)

        def unavailable(name: str) -> click.Command:
            @click.command(name, context_settings={"ignore_unknown_options": True})
            @click.argument("args", nargs=-1, type=click.UNPROCESSED)
            def command(args: tuple[str, ...]) -> None:
                """Needs the torch extra of mbd-cert (mbd-cert[torch])."""
                click.echo(f"error [E_INPUT]: the trainer is not available: {missing}", err=True)
                click.echo(f"  hint: {errors.TORCH_EXTRA_HINT}", err=True)
                sys.exit(2)

            return command

        for name in _Group._TRAINER_COMMANDS:
            group.add_command(unavailable(name))
        return
    trainer_cli.register(group, guarded)


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
