r"""Showing strings from untrusted files on a terminal or in an XML report.

Stability: internal. The CLI's human-readable output (tables, error messages, logs)
and the JUnit writers pass every value that came from a file through these functions
(SPEC.md, R-SEC-5). ``--json`` output goes through :func:`json_output`: ``json.dumps``
escapes control characters itself, but would write a lone surrogate as ``\udcNN``.

A tensor name, an issuer name or a file name may carry ESC sequences that retitle,
clear or recolour the terminal, carriage returns that overwrite a line, and Unicode
bidirectional overrides that reorder the displayed text. :func:`terminal_text`
replaces each such character with a visible escape (``\x1b``, ``\u202e``), and
:func:`rich_text` wraps the result so that rich renders it literally instead of
reading ``[bold]`` or ``[/x]`` as console markup.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

if TYPE_CHECKING:
    from rich.text import Text

# Unicode bidirectional formatting characters: the marks ALM, LRM and RLM, the
# embeddings and overrides LRE, RLE, PDF, LRO and RLO, and the isolates LRI, RLI, FSI
# and PDI (Unicode Standard Annex #9, section 2). Line and paragraph separators
# (U+2028, U+2029) go with them because some terminals start a new line on them.
_BIDI_AND_SEPARATORS = (
    [0x061C, 0x200E, 0x200F, 0x2028, 0x2029]
    + list(range(0x202A, 0x202F))
    + list(range(0x2066, 0x206A))
)

# Characters that draw nothing, so two names that differ only by them look the same
# ("model\u200b.safetensors" shows as "model.safetensors"). The list: soft hyphen,
# combining grapheme joiner, the Hangul and Khmer fillers, Mongolian vowel separator,
# zero-width space, non-joiner and joiner, word joiner and invisible operators, the
# deprecated format characters, zero-width no-break space (BOM), interlinear
# annotation marks and the tag characters (which can spell hidden ASCII text). The
# joiners also shape some scripts and emoji, and such a name still reads, with the
# joiner shown as its escape.
# Variation selectors (Mongolian, U+FE00 to U+FE0F, U+E0100 to U+E01EF) draw nothing
# after a character that has no variant, such as the dot of ".safetensors".
_INVISIBLE = (
    [0x00AD, 0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180C, 0x180D, 0x180E,
     0x180F, 0x3164, 0xFEFF, 0xFFA0]
    + list(range(0xFE00, 0xFE10))
    + list(range(0xE0100, 0xE01F0))
    + list(range(0x200B, 0x200E))
    + list(range(0x2060, 0x2065))
    + list(range(0x206A, 0x2070))
    + list(range(0xFFF9, 0xFFFC))
    + list(range(0xE0000, 0xE0080))
)

# C0 controls, DEL and the C1 controls (U+0080 to U+009F, which some terminals read
# as 8-bit escape sequences).
_CONTROLS = list(range(0x00, 0x20)) + list(range(0x7F, 0xA0))


_SHORT_ESCAPES = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}


# Lone surrogates. Python decodes a file name that is not valid UTF-8 with the
# surrogateescape handler: each undecodable byte b becomes U+DC00 + b, and printing it
# writes the raw byte back. A raw byte 0x9B is CSI on a terminal that reads 8-bit
# controls, so these are escaped too, as the byte they stand for.
_SURROGATES = list(range(0xD800, 0xE000))


def _escape(code_point: int) -> str:
    if code_point in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[code_point]
    if 0xDC80 <= code_point <= 0xDCFF:
        return f"\\x{code_point - 0xDC00:02x}"
    if code_point <= 0xFF:
        return f"\\x{code_point:02x}"
    return f"\\u{code_point:04x}" if code_point <= 0xFFFF else f"\\U{code_point:08x}"


_TERMINAL_TABLE = {
    point: _escape(point)
    for point in _CONTROLS + _BIDI_AND_SEPARATORS + _INVISIBLE + _SURROGATES
}

# XML 1.0 (section 2.2, production Char) allows tab, line feed and carriage return
# but no other C0 control, not even as a character reference, nor U+FFFE, U+FFFF or a
# surrogate. A JUnit report keeps tab and line feed, which separate the message from
# its hint.
_XML_TABLE = {
    point: _escape(point)
    for point in _CONTROLS + _BIDI_AND_SEPARATORS + _INVISIBLE + _SURROGATES + [0xFFFE, 0xFFFF]
    if point not in (0x09, 0x0A)
}

# JSON escapes control characters itself, so only surrogates are replaced.
_JSON_TABLE = {point: _escape(point) for point in _SURROGATES}


def terminal_text(value: object) -> str:
    r"""Return ``str(value)`` with control, bidirectional and invisible characters escaped.

    Every C0 and C1 control character (including ESC, CR, LF, TAB and BEL), DEL, the
    Unicode bidirectional formatting characters, U+2028/U+2029 and the characters that
    draw nothing (zero-width space and joiners, BOM, tag characters; ``_INVISIBLE``)
    become visible escapes such as ``\x1b``, ``\u202e`` or ``\U000e0041``. A lone
    surrogate becomes ``\uXXXX``, or ``\xNN`` for the byte NN that the
    surrogateescape error handler stood it for (a file name that is not valid UTF-8).
    Everything else, including non-ASCII letters, is kept. The result is safe to print,
    but not safe from rich markup: see :func:`rich_text`.
    """
    return str(value).translate(_TERMINAL_TABLE)


def terminal_lines(value: object) -> str:
    """Return :func:`terminal_text` of each line of ``str(value)``, keeping the line breaks.

    For multi-line text such as a traceback, whose exception messages may quote names
    from the input files.
    """
    return "\n".join(terminal_text(line) for line in str(value).split("\n"))


def rich_text(value: object, style: str = "") -> Text:
    """Return :func:`terminal_text` of ``value`` as a rich ``Text``, which rich never parses.

    A plain ``str`` cell or ``console.print`` argument is read as console markup, so
    a name such as ``[/x]`` raises ``MarkupError`` and ``[green]`` restyles the
    output. A ``Text`` object is printed as it is.
    """
    from rich.text import Text

    return Text(terminal_text(value), style=style)


def xml_text(value: object) -> str:
    r"""Return ``str(value)`` with every character XML 1.0 cannot hold escaped.

    Tab and line feed are kept. Other control characters, the bidirectional
    formatting and invisible characters, U+FFFE, U+FFFF and lone surrogates become
    escapes such as ``\x1b``, as in :func:`terminal_text`.
    """
    return str(value).translate(_XML_TABLE)


def _json_safe(value: Any) -> Any:
    if isinstance(value, str):
        return value.translate(_JSON_TABLE)
    if isinstance(value, dict):
        return {_json_safe(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value).translate(_JSON_TABLE)


def json_output(document: Any, indent: int | None = 2) -> str:
    r"""Return ``document`` as JSON text whose strings are all valid Unicode.

    A file name that is not valid UTF-8 reaches Python with lone surrogates
    (surrogateescape), which ``json.dumps`` writes as ``\udc9b``. Python reads that
    back, but strict parsers reject it and others replace it with U+FFFD. Each lone
    surrogate becomes the text ``\xNN`` (the byte it stood for) or ``\uXXXX``, as on
    the terminal (SPEC.md, R-SEC-5). Values that are not JSON types (paths, for
    example) are written as ``str(value)``. ``indent`` None writes one line.
    """
    return json.dumps(_json_safe(document), indent=indent)


def clean_xml_tree(root: ElementTree.Element) -> None:
    """Apply :func:`xml_text` to every text, tail and attribute value under ``root``.

    Call it on a tree before ``ElementTree.tostring``, which writes control characters
    as they are and so produces a file no XML parser accepts.
    """
    for element in root.iter():
        if element.text is not None:
            element.text = xml_text(element.text)
        if element.tail is not None:
            element.tail = xml_text(element.tail)
        for name in list(element.attrib):
            element.set(name, xml_text(element.attrib[name]))
