"""CPU thread count for command-line jobs: no more intra-op threads than there are idle cores.

PyTorch's intra-op pool uses every core. When another busy process shares the machine, one of our
threads is often descheduled, and every parallel region (hundreds per training step of a small
model) waits at its barrier for that thread's next time slice: measured on 2 cores, the README's
main job took 3.0x its time beside one busy process with 2 threads, 1.35x with 1 thread
(flushing subnormal floats changed nothing there; ``benchmarks/cpu_contention.py`` measures it).
So the CLI samples the machine's load for a moment before a CPU job and uses only the idle cores.
``OMP_NUM_THREADS`` (or ``AGAINZOO_THREADS``) set by the user always wins.
"""

from __future__ import annotations

import os
import time

import torch

from .errors import ConfigError


def _busy_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all cores from /proc/stat, or None where there is none."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(window_s: float = 0.25) -> float | None:
    """How many cores other processes keep busy, sampled over ``window_s`` (None: unknown)."""
    a = _busy_jiffies()
    if a is None:
        return None
    time.sleep(window_s)
    b = _busy_jiffies()
    if b is None or b[1] == a[1]:
        return None
    return (os.cpu_count() or 1) * (b[0] - a[0]) / (b[1] - a[1])


def idle_threads(cores: int | None = None, busy: float | None = None) -> int:
    """Intra-op threads that fit the idle cores: ``cores - round(busy)``, at least 1."""
    cores = cores or torch.get_num_threads()
    if busy is None:
        return cores
    return max(1, min(cores, (os.cpu_count() or cores) - round(busy)))


def configure_threads() -> str | None:
    """Set torch's intra-op threads to the idle cores unless the user chose; returns a note when it
    lowered them."""
    chosen = os.environ.get("AGAINZOO_THREADS") or os.environ.get("OMP_NUM_THREADS")
    if chosen:
        if os.environ.get("AGAINZOO_THREADS"):
            if not chosen.isdigit() or int(chosen) < 1:
                raise ConfigError(f"AGAINZOO_THREADS must be a positive integer, got {chosen!r}")
            torch.set_num_threads(int(chosen))
        return None
    before = torch.get_num_threads()
    busy = busy_cores()
    n = idle_threads(before, busy)
    if n < before:
        torch.set_num_threads(n)
        return (f"using {n} of {before} CPU threads: other processes keep ~{busy:.1f} cores busy "
                f"(set OMP_NUM_THREADS to choose)")
    return None
