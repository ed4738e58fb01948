"""The targets of the benchmarks: each is printed beside its measurement, and a missed one fails the run."""

from __future__ import annotations

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
