"""Parse human sizes such as ``1GB``, ``512MiB`` or ``800M`` into bytes."""

from __future__ import annotations

import re

from gradaccum.errors import UserError

_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)


def parse_bytes(text: str) -> int:
    """Bytes for a size string; units are binary (1GB = 1 GiB), the common reading of RAM."""
    match = _PATTERN.match(text)
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"cannot read the size {text!r}: write it like 1GB, 800MB or 2.5GiB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
