"""Disk problems a user can fix become one line; other OS errors pass through."""

from __future__ import annotations

import errno

import pytest

from gradaccum.errors import UserError
from gradaccum.memory.disk_errors import guarded


def _raise(code: int):
    def action():
        raise OSError(code, "boom")

    return action


@pytest.mark.parametrize(
    ("code", "why"),
    [(errno.ENOSPC, "the disk is full"), (errno.EROFS, "the folder is not writable")],
)
def test_fixable_disk_problems_are_one_line(code, why):
    with pytest.raises(UserError, match=f"cannot write x: {why} \\(boom\\); free space"):
        guarded(_raise(code), "write x")


def test_other_errors_and_results_pass_through():
    with pytest.raises(OSError) as info:
        guarded(_raise(errno.EIO), "write x")
    assert not isinstance(info.value, UserError)
    assert guarded(lambda: 7, "write x") == 7
