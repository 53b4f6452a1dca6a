"""Durable file writes: every byte reaches the disk before a checkpoint is published."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FileRecord:
    """What the manifest stores about one file."""

    sha256: str
    size: int


def write_durably(path: Path, chunks: Iterable[bytes | memoryview]) -> FileRecord:
    """Create `path` from `chunks`, fsync it, and return its sha256 and size.

    Hashing while writing avoids reading a multi-gigabyte file back just to fill the manifest.
    """
    digest = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            digest.update(view)
            size += len(view)
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return FileRecord(digest.hexdigest(), size)


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (``os.pwrite`` may write less than asked)."""
    view = memoryview(data)
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def fsync_dir(path: Path) -> None:
    """Persist a folder's entries (new files, renames) so they survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link ``source`` as ``target``; copy it where links are not possible (another
    file system, a folder that forbids them)."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copyfile(source, target)


def hash_file(path: Path) -> FileRecord:
    """Read `path` once and return its sha256 and size."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256")
        return FileRecord(digest.hexdigest(), f.tell())


DISK_FIXES = {
    errno.ENOSPC: "free space or choose another --out",
    errno.EDQUOT: "free space or choose another --out",
    errno.EACCES: "fix the folder's permissions or choose another --out",
    errno.EPERM: "fix the folder's permissions or choose another --out",
    errno.EROFS: "choose a writable --out",
}


def write_error(what: str, exc: OSError) -> str:
    """One line for a failed write: ``cannot write WHAT: reason; fix``."""
    reason = exc.strerror or str(exc)
    fix = DISK_FIXES.get(exc.errno, "check that folder or choose another --out")
    return f"cannot write {what}: {reason}; {fix}"
