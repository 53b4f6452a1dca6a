"""The write failures a user can fix (a full disk, a read-only folder) named in words."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import TypeVar

from gradaccum.errors import UserError

T = TypeVar("T")

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


def guarded(action: Callable[[], T], what: str) -> T:
    """``action()``, with a full disk or an unwritable folder turned into one clear line:
    ``cannot WHAT: why (...); free space or choose another shard folder``."""
    try:
        return action()
    except OSError as error:
        why = disk_problem(error)
        if why is None:
            raise
        raise UserError(
            f"cannot {what}: {why} ({error.strerror}); free space or choose another shard folder"
        ) from error
