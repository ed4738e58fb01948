"""Progress that suits where it goes: a redrawn bar on a terminal, a few plain lines in a file or pipe.

A bar redraws itself with carriage returns, which fill a log file with thousands of fragments;
when standard error is not a terminal, :func:`track` writes one line at every tenth of the work
instead, and pre-training (:class:`SparseProgressCallback`) one at every tenth of its steps.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm
from transformers import TrainerCallback

Item = TypeVar("Item")
LINES = 10  # plain progress lines per long step


def interactive() -> bool:
    """Whether standard error is a terminal, where a progress bar can redraw itself."""
    return sys.stderr.isatty()


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def track(items: Iterable[Item], *, description: str, total: int | None = None, unit: str = "batch",
          enabled: bool = True) -> Iterable[Item]:
    """``items``, with a progress bar on a terminal, else with a line at every tenth of ``total``
    (default ``len(items)``); nothing when not ``enabled``."""
    if not enabled:
        return items
    total = len(items) if total is None else total
    if interactive():
        return tqdm(items, total=total, desc=description, unit=unit, leave=False)
    return _plain_lines(items, description, total)


def _plain_lines(items: Iterable[Item], description: str, total: int) -> Iterator[Item]:
    started = time.perf_counter()
    next_line = 1
    for done, item in enumerate(items, 1):
        yield item
        if total and done * LINES >= next_line * total:
            say(f"{description}: {100 * done // total}% ({done}/{total}, {time.perf_counter() - started:.0f} s)")
            next_line = done * LINES // total + 1


class SparseProgressCallback(TrainerCallback):
    """Trainer progress as plain lines: at every tenth of the steps (with the latest training
    loss) and after each evaluation. For output that is not a terminal, in place of the bar."""

    def __init__(self, description: str = "pretrain"):
        self.description = description
        self.started = time.perf_counter()
        self.next_line = 1

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()
        self.next_line = state.global_step * LINES // max(state.max_steps, 1) + 1

    def on_step_end(self, args, state, control, **kwargs):
        total = max(state.max_steps, 1)
        if not state.is_world_process_zero or state.global_step * LINES < self.next_line * total:
            return
        self.next_line = state.global_step * LINES // total + 1
        losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
        loss = f", loss {losses[-1]:.4f}" if losses else ""
        say(f"{self.description}: step {state.global_step}/{total} ({100 * state.global_step // total}%){loss}, "
            f"{time.perf_counter() - self.started:.0f} s")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.is_world_process_zero and metrics and "eval_loss" in metrics:
            accuracy = metrics.get("eval_masked_accuracy")
            say(f"{self.description}: epoch {state.epoch or 0:.2f}, val loss {metrics['eval_loss']:.4f}"
                + (f", val masked accuracy {accuracy:.4f}" if accuracy is not None else ""))
