"""How many CPU threads a step computes with.

Given ``--threads N``, a step uses N threads. Without it, a quiet machine keeps torch's default
(one thread per core); on a machine where other processes already keep at least half the cores
busy, the step takes the cores they leave and says so once on stderr, since more threads than
free cores make tensor work slower, not faster.
"""

from __future__ import annotations

import os
import sys
import time

_told = False  # the busy-machine message is printed once per process
_last_reading = (time.monotonic(), time.process_time())  # when this process last looked, and its CPU time then


def busy_default(load: float, cores: int) -> int | None:
    """Threads for a machine with ``load`` (1-minute load average) on ``cores`` cores; None when it is quiet."""
    if load < cores / 2:
        return None
    return max(1, cores - round(load))


def machine_load() -> tuple[float, int]:
    """The 1-minute load average of the other processes, and the core count (load 0 where the
    system does not report one).

    The load average counts this process too: a step that follows a busy step of the same
    process (the demo's second pre-training, say) would see its own work. The cores this process
    kept busy since it last looked are taken off.
    """
    global _last_reading
    cores = os.cpu_count() or 1
    now, cpu = time.monotonic(), time.process_time()
    then, cpu_then = _last_reading
    _last_reading = (now, cpu)
    own = (cpu - cpu_then) / (now - then) if now > then else 0.0
    try:
        return max(0.0, os.getloadavg()[0] - own), cores
    except (AttributeError, OSError):
        return 0.0, cores


def resolve_threads(threads: int | None) -> int | None:
    """``threads`` when given; else the busy-machine default, announced once on stderr, or None (the library default)."""
    global _told
    if threads is not None:
        return threads
    load, cores = machine_load()
    chosen = busy_default(load, cores)
    if chosen is not None and not _told:
        print(f"machine busy: load {load:.1f} on {cores} cores; using {chosen} thread{'s' * (chosen > 1)}; "
              "--threads to change", file=sys.stderr)
        _told = True
    return chosen


def use_threads(threads: int | None) -> int:
    """Set torch's intra-op threads to :func:`resolve_threads` of ``threads``; return the number in use."""
    import torch

    chosen = resolve_threads(threads)
    if chosen is not None:
        torch.set_num_threads(chosen)
    return torch.get_num_threads()
