"""Bytes from untrusted files to clean text: binary detection, UTF-8 repair, NUL removal."""

import codecs
from dataclasses import dataclass

_SNIFF_BYTES = 8192
_BINARY_RATIO = 0.3
_CONTROL = frozenset(chr(c) for c in range(32) if chr(c) not in "\t\n\r\f\v\b\x1b") | {"\x7f"}
_REPLACEMENT = "\ufffd"
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


@dataclass(frozen=True)
class Decoded:
    """Clean text plus what was repaired to get it."""

    text: str
    replaced: int
    nuls: int


def looks_binary(raw: bytes) -> bool:
    """True when over 30% of the first 8 KiB is undecodable or control characters."""
    if raw.startswith(_UTF16_BOMS):
        return False
    sample = raw[:_SNIFF_BYTES].decode("utf-8", errors="replace")
    if not sample:
        return False
    bad = sum(1 for ch in sample if ch == _REPLACEMENT or ch in _CONTROL)
    return bad > _BINARY_RATIO * len(sample)


def decode_bytes(raw: bytes) -> Decoded:
    """Decode UTF-8 (or BOM-marked UTF-16) with replacement; drop NULs, a BOM and CRs."""
    if raw.startswith(_UTF16_BOMS):
        text = raw.decode("utf-16", errors="replace")
        replaced = text.count(_REPLACEMENT)
    else:
        text = raw.decode("utf-8", errors="replace")
        replaced = text.count(_REPLACEMENT) - raw.count(_REPLACEMENT.encode())
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    return _without_nuls(text, replaced)


def clean_str(text: str) -> Decoded:
    """Make a str from JSON safe to tokenize: lone surrogates become '?', NULs go."""
    try:
        text.encode("utf-8")
        replaced = 0
    except UnicodeEncodeError:
        replaced = sum(1 for ch in text if "\ud800" <= ch <= "\udfff")
        text = text.encode("utf-8", errors="replace").decode("utf-8")
    return _without_nuls(text, replaced)


def _without_nuls(text: str, replaced: int) -> Decoded:
    nuls = text.count("\x00")
    if nuls:
        text = text.replace("\x00", "")
    return Decoded(text, replaced, nuls)
