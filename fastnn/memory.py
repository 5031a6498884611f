"""How much memory there is, so that a size a user asks for is refused before it is allocated.

A flag such as ``--hidden 10000000`` or a checkpoint declaring such a layer
would otherwise run into a MemoryError (or the kernel's OOM killer) halfway;
``too_large(nbytes)`` says so up front, with both sizes in the message.
"""

from __future__ import annotations

import os


def available_bytes() -> int | None:
    """Memory this process can still get: MemAvailable, capped by a cgroup v2 limit.
    None when the system does not say (then nothing is refused)."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:  # a container's limit, which MemAvailable does not see
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return min(found)


def gib(nbytes: int) -> str:
    """A size for people: '58.4 GiB', '312 MiB', '9,216 bytes'."""
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.1f} GiB"
    if nbytes >= 2**20:
        return f"{nbytes / 2**20:.0f} MiB"
    return f"{nbytes:,} bytes"


def too_large(nbytes: int, what: str) -> str | None:
    """None if ``nbytes`` fits in the memory available, else a sentence saying that
    ``what`` ("training a 784-10000000-10 net") needs more than there is."""
    available = available_bytes()
    if available is None or nbytes <= available:
        return None
    return (f"{what} needs about {gib(nbytes)} of memory, more than the {gib(available)} "
            "available")
