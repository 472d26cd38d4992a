"""Let an engine process reuse the memory it frees instead of returning it to the OS each time.

glibc serves every allocation above its mmap threshold (at most 32 MiB, adjusted as it goes) with
fresh pages from the OS and unmaps them on free, and trims the heap's free top above 2x that. A
forward pass frees and re-allocates the same large tensors layer after layer, so each one is
paid again in page faults: the kernel maps and zeroes every 4 KiB page. With both thresholds at
1 GiB, on the 2-core CI machine: a v2-base 64^3 forward went from 73k page faults to
none and was 5-7% faster, a v2-tiny 64^3 training step 13-16% faster, and segmenting the lung CT
8% faster at the same peak memory. The price: freed memory stays with the process until it
exits (1.3 GiB resident after a v2-base 64^3 forward instead of 1.0), and where large arrays of
many sizes come and go the peak grows: the 44-class 512x512x300 case (bench_segment_engines.py)
took 26.0 s and 1643 MiB at peak, against 28.7 s and 1452 MiB by default (128 MiB thresholds:
28.5 s, 1483 MiB; 256 MiB: 27.9 s, 1593 MiB). Resident memory settles
after the first forwards and training steps (Testing/test_process_memory.py; the demo's stayed
flat at 0.65 GiB), but glibc before 2.38 cannot give a freed block back to an aligned request of
exactly its size, so a loop that allocated nothing but one large size could grow. Transparent
huge pages (torch's THP_MEM_ALLOC_ENABLE) were tried instead: fewer faults, slower training steps.

Only the engine's own processes (the `mednextv2` command, which the Slicer modules run) do this:
importing the library leaves the host application's allocator as it is.
"""
from __future__ import annotations

import ctypes
import sys

# Blocks up to this size come from the heap and, once freed, stay there for the next tensor.
# 1 GiB covers every tensor of a 128^3 v2-base tile; larger arrays (whole multi-class volumes)
# still get their own mapping and go back to the OS when freed.
KEEP_BYTES = 1 << 30
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to KEEP_BYTES; False (and no change) elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES))
