"""This process's memory, and the machine's, as the kernel reports them."""
from __future__ import annotations

import resource
import sys


def proc_field_bytes(path: str, key: str) -> int | None:
    """A "Key:   N kB" line of a /proc file, in bytes; None where there is none (not Linux)."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def resident_bytes() -> int:
    """Resident memory now."""
    return proc_field_bytes("/proc/self/status", "VmRSS") or peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far: its own high-water mark (VmHWM). Not ru_maxrss,
    which Linux carries across execve, so a process started by a large parent (pytest after writing a
    3B checkpoint, a bench that converted a 1B one) would report the parent's size."""
    peak = proc_field_bytes("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # macOS reports bytes, Linux KiB


def available_bytes() -> int | None:
    """What the machine can still give without swapping (MemAvailable); None where unknown."""
    return proc_field_bytes("/proc/meminfo", "MemAvailable")
