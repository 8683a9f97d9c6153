"""CPU facts for command-line jobs: native bf16 arithmetic, and no more intra-op threads than idle cores.

**bf16.** A CPU with AVX512-BF16 or AMX-BF16 instructions multiplies bf16 natively; there the
trainer's ``precision: auto`` trains under bf16 autocast (``benchmarks/train_throughput.py``
measured the step at about 2.5x fp32 on such a 2-core machine); elsewhere bf16 is emulated and
slower than fp32, so ``auto`` stays fp32. ``AGAINZOO_CPU_BF16=0`` (or ``1``) overrides the detection.

**Threads.**
PyTorch's intra-op pool uses every core. When another busy process shares the machine, one of our
threads is often descheduled, and every parallel region (hundreds per training step of a small
model) waits at its barrier for that thread's next time slice: measured on 2 cores, the README's
main job took 3.0x its time beside one busy process with 2 threads, 1.35x with 1 thread
(flushing subnormal floats changed nothing there; ``benchmarks/cpu_contention.py`` measures it).
So the CLI samples the machine's load for a moment before a CPU job and uses only the idle cores.
``OMP_NUM_THREADS`` (or ``AGAINZOO_THREADS``) set by the user always wins.
"""

from __future__ import annotations

import functools
import os
import time

import torch

from .errors import ConfigError


BF16_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_FLAGS = (("amx_int8", "AMX"), ("avx512_vnni", "AVX512-VNNI"), ("avx_vnni", "AVX-VNNI"), ("avx2", "AVX2"))


@functools.lru_cache(maxsize=None)
def native_bf16() -> bool:
    """Whether this CPU has native bf16 instructions (AVX512-BF16 or AMX-BF16, from /proc/cpuinfo);
    ``AGAINZOO_CPU_BF16`` set to 0 or 1 decides instead."""
    chosen = os.environ.get("AGAINZOO_CPU_BF16")
    if chosen is not None:
        if chosen not in ("0", "1"):
            raise ConfigError(f"AGAINZOO_CPU_BF16 must be 0 or 1, got {chosen!r}")
        return chosen == "1"
    return any(flag in _cpuinfo("flags").split() for flag in BF16_FLAGS)


def _cpuinfo(key: str) -> str:
    """The first ``key`` line's value in /proc/cpuinfo ("" where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.split(":", 1)[0].strip() == key), "")
    except OSError:
        return ""


def cpu_name() -> str:
    """The CPU's model name (e.g. "AMD EPYC"), for records of where something ran."""
    import platform

    return _cpuinfo("model name") or platform.processor() or platform.machine()


def int8_instructions() -> str:
    """The best int8 dot-product instructions this CPU has, the first of AMX, AVX512-VNNI, AVX-VNNI
    and AVX2 in its /proc/cpuinfo flags ("" where none): onnxruntime's int8 convolutions are about
    3x its fp32 ones with VNNI and about 1.6x with AVX2 alone (``benchmarks/RESULTS.md``), so a
    record of int8 speed names them."""
    flags = set(_cpuinfo("flags").split())
    return next((name for flag, name in INT8_FLAGS if flag in flags), "")


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
