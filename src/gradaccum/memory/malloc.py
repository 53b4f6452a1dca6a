"""Make glibc give freed memory back to the OS at once, so the resident set tracks use.

glibc serves allocations below a threshold from its heap and raises that threshold each
time a large block is freed (up to 32 MiB); freed heap space then stays resident behind
live blocks. Training streams many same-sized blocks (layer weights, logits chunks), so
under a memory budget that slack costs hundreds of megabytes. Fixing the threshold makes
every block of 256 KiB or more a private mapping, returned to the OS when freed.
"""

from __future__ import annotations

import ctypes

MMAP_THRESHOLD = 256 * 2**10
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def return_memory_promptly(threshold: int = MMAP_THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds; False where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, threshold)
        )
    except (OSError, AttributeError):
        return False
