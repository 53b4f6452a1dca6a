"""The write failures a user can fix (a full disk, a read-only folder) named in words."""

from __future__ import annotations

import errno

_WHY = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk is full",
    errno.EACCES: "the folder is not writable",
    errno.EPERM: "the folder is not writable",
    errno.EROFS: "the folder is not writable",
}


def disk_problem(error: OSError) -> str | None:
    """``"the disk is full"`` or ``"the folder is not writable"``; None for other errors."""
    return _WHY.get(error.errno)  # type: ignore[arg-type]
