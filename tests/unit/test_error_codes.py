"""Every error code the code can raise is listed in SPEC.md, section 9."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from mbd_cert import errors

REPO = Path(__file__).resolve().parents[2]
CODE = re.compile(r"\"(E_[A-Z0-9_]+)\"")


def _spec_codes() -> set[str]:
    return set(re.findall(r"`(E_[A-Z0-9_]+)`", (REPO / "SPEC.md").read_text()))


def _source_codes() -> dict[str, str]:
    found = {}
    for folder in ("mbd_cert", "trainer"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for code in CODE.findall(path.read_text()):
                found.setdefault(code, str(path.relative_to(REPO)))
    return found


def test_error_class_codes_are_documented():
    spec = _spec_codes()
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.MbdCertError) and cls is not errors.MbdCertError:
            assert cls.code in spec, f"{cls.__name__}.code {cls.code} is missing from SPEC.md"


def test_codes_in_source_are_documented():
    spec = _spec_codes()
    missing = {code: where for code, where in _source_codes().items() if code not in spec}
    assert not missing, f"codes used in the source but not listed in SPEC.md: {missing}"
