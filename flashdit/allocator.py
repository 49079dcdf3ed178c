"""CPU memory for the command-line tools: freed activation buffers are kept and reused, not returned to the kernel.

glibc's ``malloc`` maps every block over 32 MiB afresh with ``mmap`` and unmaps it on ``free``, so each training
step page-faults all of its activation memory back in, 4 KiB at a time, zero-filled. At 64×64 tokens that is most
of a CPU step (docs/benchmarks.md). With ``mmap`` off and trimming off, the heap keeps what a step freed and the
next step reuses it. Ground floor: imports nothing from the package.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ALLOCATOR_ENV = "FLASHDIT_CPU_ALLOCATOR"
ALLOCATORS = ("reuse", "system")
# mallopt(3) parameters
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    # glibc only: musl and other C libraries have no such mallopt parameters
    return libc if hasattr(libc, "gnu_get_libc_version") else None


def configure_cpu_allocator() -> str:
    """Set up the process's CPU allocator for training and sampling; returns what is in effect.

    ``FLASHDIT_CPU_ALLOCATOR=reuse`` (default): glibc's ``malloc`` serves every block from its heap and never gives
    freed memory back (``mallopt(M_MMAP_MAX, 0)``, ``mallopt(M_TRIM_THRESHOLD, -1)``): no page faults on the buffers
    a step reallocates, for a resident size that stays at the run's peak, plus what fragmentation of the heap
    adds. ``system`` leaves the C library's defaults. PyTorch's huge-page allocator
    (``THP_MEM_ALLOC_ENABLE=1``, set by the user) is honoured as is: it aligns each block to 2 MiB, which the heap
    serves very slowly, so the two are not combined. Other C libraries than glibc are left alone. GPU memory is
    not affected.

    Returns:
        ``"reuse"``, ``"system"`` or ``"huge pages"``.
    """
    choice = os.environ.get(ALLOCATOR_ENV, "reuse")
    if choice not in ALLOCATORS:
        raise ValueError(f"{ALLOCATOR_ENV}={choice!r} is not one of {list(ALLOCATORS)}")
    if os.environ.get("THP_MEM_ALLOC_ENABLE") == "1":
        return "huge pages"
    if choice == "system":
        return "system"
    libc = _glibc()
    if libc is None:
        return "system"
    if not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, -1)):
        return "system"
    return "reuse"
