"""What the benchmarks share: their targets (each is printed beside its measurement, and a missed
one fails the run) and their progress lines."""

from __future__ import annotations

import time

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """One measured figure against its target, e.g. ``Target("small extra cost", "+15.2 %", "<= +25 %", True)``."""

    name: str
    measured: str
    target: str
    met: bool

    def line(self) -> str:
        return f"target {self.name}: {self.measured} (target {self.target}): {'met' if self.met else 'MISSED'}"


def check(targets: Sequence[Target]) -> int:
    """Print every target; the exit status: 0 when all are met, 1 when any is missed."""
    for target in targets:
        print(target.line())
    missed = [target.name for target in targets if not target.met]
    if missed:
        print(f"missed: {', '.join(missed)}")
    return 1 if missed else 0


def log(message: str) -> None:
    """A progress line, stamped with the time of day."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
