"""The training progress display: a live line on a terminal, one plain line per iteration
otherwise (what `stride train` prints)."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from learner.config import NO_STEP_LIMIT


class Progress:
    """A live line on a terminal, one plain line per iteration otherwise."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total, self.stream = total, stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self.start_steps: int | None = None
        self.deadline = float("inf")  # time.monotonic() at which train.max_seconds stops the run

    def show(self, it: int, steps: int, rec: dict[str, Any]) -> None:
        if self.start_steps is None:  # rate and ETA from the end of the first iteration (after start-up)
            self.start_steps = steps
            self.start = time.perf_counter()
        elapsed = time.perf_counter() - self.start
        rate = (steps - self.start_steps) / elapsed if steps > self.start_steps else float(rec["env_steps_per_s"])
        eta = (self.total - steps) / rate if rate > 0 else float("inf")
        eta = min(eta, max(0.0, self.deadline - time.monotonic()))  # whichever limit comes first
        ret = rec.get("episode_return_mean")
        ret_s = "-" if ret is None else f"{ret:.2f}"
        budget = f"{steps:,} steps" if self.total >= NO_STEP_LIMIT else \
            f"{steps:,}/{self.total:,} steps ({100 * steps / self.total:.1f}%)"
        line = f"iter {it} | {budget} | {rate:,.0f} steps/s | return {ret_s} | ETA {_fmt_time(eta)}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")


def _fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
