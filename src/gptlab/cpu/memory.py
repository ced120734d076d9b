"""Process-wide memory settings that make CPU training and generation faster.

A gpt2-small training step on CPU allocates about 650 MB of fresh buffers (activations, the
head's vocabulary-sized buffers, gradients). glibc serves large buffers with mmap and returns
them on free, so each step the kernel faults them in and zero-fills them again: about 165,000
page faults and a CPU-second of system time per step on a 2-core machine. Generation streams
every weight once per token, through 4 KB pages that each cost a TLB miss. Two settings, made
by `tune_process_memory()`, which the gptlab CLI calls before a verb imports torch (importing
gptlab itself changes nothing; library users call it themselves, before importing torch):

- malloc keeps freed memory for reuse (no mmap, no trimming), so a step reuses the last
  step's pages: training about 1.15x faster (benchmarks/speed.py);
- tensors of 2 MB and more live on transparent huge pages (PyTorch's THP_MEM_ALLOC_ENABLE,
  read at torch's first allocation, so the call must come before torch allocates), which made
  KV-cache generation about 1.1x faster.

The cost: the process's resident memory stays at its peak instead of shrinking after a job,
and that peak can carry a transient: allocating and freeing one 64 MB tensor in a loop, the
new buffer sometimes lands above the freed one for up to 8 rounds (+512 MB) before malloc
settles on reusing it (seen in 4 of 10 probe runs; tests/test_memory.py). The cause is
glibc's memalign (torch aligns every CPU tensor): before glibc 2.38 it could not merge the
remainders it split off (glibc bug 30723), so memalign in a loop spreads out until freed
neighbours coalesce. posix_memalign called directly (through ctypes, without torch) with
these two settings shows the same (glibc 2.36 here).
Both settings apply to the whole process (including other models run beside gptlab's) and
only on Linux with glibc. Set GPTLAB_MEMORY_TUNING=0 to leave the process as it was.
"""

from __future__ import annotations

import ctypes
import os
import platform

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def tune_process_memory() -> bool:
    """Apply both settings unless GPTLAB_MEMORY_TUNING=0; returns whether malloc was tuned."""
    if os.environ.get("GPTLAB_MEMORY_TUNING", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
