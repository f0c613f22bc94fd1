"""Escaping of untrusted strings for the terminal and for JUnit XML (SPEC.md, R-SEC-5)."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest
from rich.console import Console
from rich.table import Table

from mbd_cert import cli
from mbd_cert._terminal import clean_xml_tree, json_output, rich_text, terminal_text, xml_text

# Every character class R-SEC-5 names, with the escape printed in its place.
ESCAPES = [
    ("\x1b", "\\x1b"), ("\x07", "\\x07"), ("\x00", "\\x00"), ("\r", "\\r"), ("\n", "\\n"),
    ("\t", "\\t"), ("\x7f", "\\x7f"), ("\x85", "\\x85"), ("\x9b", "\\x9b"),
    ("\u061c", "\\u061c"), ("\u200e", "\\u200e"), ("\u200f", "\\u200f"),
    ("\u202a", "\\u202a"), ("\u202e", "\\u202e"), ("\u2066", "\\u2066"),
    ("\u2069", "\\u2069"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"),
    # Characters that draw nothing: zero-width space and joiner, BOM, word joiner, a
    # Hangul filler, a tag character (hidden ASCII).
    ("\u200b", "\\u200b"), ("\u200d", "\\u200d"), ("\ufeff", "\\ufeff"),
    ("\u2060", "\\u2060"), ("\u00ad", "\\xad"), ("\u3164", "\\u3164"),
    ("\U000e0041", "\\U000e0041"),
    # Variation selectors: "model\ufe0f.safetensors" shows as "model.safetensors".
    ("\ufe0f", "\\ufe0f"), ("\u180b", "\\u180b"), ("\U000e0100", "\\U000e0100"),
    # Lone surrogates; U+DC9B is how surrogateescape decodes the byte 0x9B (8-bit CSI).
    ("\udc9b", "\\x9b"), ("\udcff", "\\xff"), ("\ud800", "\\ud800"), ("\udc00", "\\udc00"),
]
HOSTILE = "\x1b]0;title\x07\x1b[2J\x1b[32mVERIFIED\x1b[0m [bold]x[/bold] [/x] \u202egnp.exe"


@pytest.mark.parametrize(("char", "escape"), ESCAPES)
def test_terminal_text_escapes(char: str, escape: str) -> None:
    assert terminal_text(f"a{char}b") == f"a{escape}b"


def test_terminal_text_keeps_printable_text() -> None:
    text = "vision.proj.weight [0] é 日本 \\x1b ✓"
    assert terminal_text(text) == text


def test_undecodable_file_name_shows_its_bytes() -> None:
    name = b"m\x9b2J\xffdel".decode("utf-8", "surrogateescape")
    escaped = terminal_text(name)
    assert escaped == "m\\x9b2J\\xffdel"
    escaped.encode("utf-8")  # prints on any UTF-8 stream, writing no raw byte


def test_terminal_text_is_idempotent() -> None:
    once = terminal_text(HOSTILE)
    assert terminal_text(once) == once


def _render(cell: object) -> str:
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=200, color_system="standard")
    table = Table()
    table.add_column("value")
    table.add_row(cell)  # type: ignore[arg-type]
    console.print(table)
    return buffer.getvalue()


def test_rich_text_shows_markup_literally() -> None:
    output = _render(rich_text("[bold]x[/bold] [/x] [link=https://example.org]y[/link]"))
    assert "[bold]x[/bold] [/x] [link=https://example.org]y[/link]" in output


def test_rich_text_hostile_cell_has_no_raw_controls() -> None:
    output = _render(rich_text(HOSTILE))
    # The console's own colour codes are ESC [ ... m; the hostile ones must be gone.
    assert "\x1b]0;" not in output
    assert "\x1b[2J" not in output
    assert "\x07" not in output
    assert "\u202e" not in output
    assert "\\x1b[2J" in output


def test_plain_str_cell_is_read_as_markup() -> None:
    # The failure rich_text prevents: a str cell with a stray closing tag.
    from rich.errors import MarkupError

    with pytest.raises(MarkupError):
        _render("[/x]")


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x1b", "\x0b", "\x7f", "\ufffe", "\ud800"])
def test_xml_text_escapes_invalid_chars(char: str) -> None:
    root = ElementTree.Element("case", name=f"n{char}", message=f"m{char}")
    root.text = f"t{char}"
    ElementTree.SubElement(root, "child").tail = f"tail{char}"
    clean_xml_tree(root)
    data = ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)
    parsed = ElementTree.fromstring(data)
    assert parsed.get("name") == "n" + xml_text(char)
    assert parsed.text == "t" + xml_text(char)
    assert xml_text(char).startswith("\\")


def test_xml_text_keeps_tab_and_newline() -> None:
    assert xml_text("a\tb\nc") == "a\tb\nc"


def test_error_message_escaped_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    cli._emit_error("E_DATA_MALFORMED", "tensor '\x1b[2Jx' is bad", "rename \x07it", False)
    captured = capsys.readouterr()
    assert "\x1b" not in captured.err
    assert "\x07" not in captured.err
    assert "tensor '\\x1b[2Jx' is bad" in captured.err
    assert "hint: rename \\x07it" in captured.err


def test_error_message_exact_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    cli._emit_error("E_DATA_MALFORMED", "tensor '\x1b[2Jx' is bad", "", True)
    document = json.loads(capsys.readouterr().out)
    assert document["error"]["message"] == "tensor '\x1b[2Jx' is bad"


def test_log_formatter_escapes_message() -> None:
    record = logging.LogRecord("mbd_cert.x", logging.WARNING, __file__, 1,
                               "skipped %s\nINFO forged line", ("a\x1b[2J.pub",), None)
    text = cli._EscapingFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert "\x1b" not in text
    assert "\n" not in text
    assert text == "WARNING mbd_cert.x: skipped a\\x1b[2J.pub\\nINFO forged line"


def test_log_formatter_escapes_traceback() -> None:
    try:
        raise ValueError("tensor \x1b]0;PWNED\x07 is bad")
    except ValueError:
        record = logging.LogRecord("mbd_cert.x", logging.DEBUG, __file__, 1, "failed", (),
                                   sys.exc_info())
    text = cli._EscapingFormatter("%(message)s").format(record)
    assert "\x1b" not in text
    assert "\\x1b]0;PWNED\\x07" in text
    # The traceback keeps its line structure.
    assert text.count("\n") >= 3


def test_verbose_traceback_is_escaped(monkeypatch, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mbd_cert import verify as verify_module

    def broken(*args, **kwargs):
        raise ValueError("tensor \x1b]0;PWNED\x07 is bad")

    monkeypatch.setattr(verify_module, "verify", broken)
    (tmp_path / "c.json").write_text("{}")
    (tmp_path / "m.safetensors").write_bytes(b"")
    (tmp_path / "k.pub").write_text("00" * 32)
    result = CliRunner().invoke(cli.main, ["-v", "verify", str(tmp_path / "c.json"),
                                           str(tmp_path / "m.safetensors"),
                                           "--key", str(tmp_path / "k.pub")])
    assert result.exit_code == 3
    assert "Traceback" in result.stderr
    assert "\x1b" not in result.stderr
    assert "\\x1b]0;PWNED\\x07" in result.stderr


def test_trainer_logs_go_through_the_escaping_handler() -> None:
    cli._configure_logging(0)
    for name in ("mbd_cert", "trainer"):
        handlers = logging.getLogger(name).handlers
        assert len(handlers) == 1
        assert isinstance(handlers[0].formatter, cli._EscapingFormatter)


@pytest.mark.parametrize(("verbose", "expected"), [
    (0, "WARNING: only 7 masked entries"),
    (1, "WARNING mbd_cert._issue_steps: only 7 masked entries"),
])
def test_log_line_names_module_only_when_verbose(verbose: int, expected: str) -> None:
    loggers = [logging.getLogger(name) for name in ("mbd_cert", "trainer")]
    saved = [(logger.handlers[:], logger.level) for logger in loggers]
    try:
        cli._configure_logging(verbose)
        handler = loggers[0].handlers[0]
        record = logging.LogRecord("mbd_cert._issue_steps", logging.WARNING, __file__, 1,
                                   "only 7 masked entries", None, None)
        assert handler.format(record) == expected
    finally:
        for logger, (handlers, level) in zip(loggers, saved, strict=True):
            logger.handlers[:] = handlers
            logger.setLevel(level)


def test_json_output_replaces_lone_surrogates_only() -> None:
    name = b"m\x9b2J".decode("utf-8", "surrogateescape")
    document = {name: [name, Path(name), "\x1b\u202e", 1, 2.5, None, True], "k": "\ud800"}
    text = json_output(document)
    text.encode("utf-8")  # strict: a lone surrogate would raise here
    assert json.loads(text) == {
        "m\\x9b2J": ["m\\x9b2J", "m\\x9b2J", "\x1b\u202e", 1, 2.5, None, True],
        "k": "\\ud800",
    }
