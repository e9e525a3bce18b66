"""How much memory this machine lets one thing take: one statement for the readers (an array
read whole) and the model files (a network a model.json declares)."""

from __future__ import annotations

import os


def memory_budget() -> int:
    """Bytes one array read into memory (or one network trained) may take: half the machine's
    physical memory."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a small machine
        return 4 * 2**30
