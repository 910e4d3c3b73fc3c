"""lr_schedule 'plateau': lower the learning rate when the training return stops rising.

Pure bookkeeping, no torch: the learner hands over each update's finished episodes and asks how
many times the rate has been lowered. The test compares two adjacent windows of env steps, each
`window` long: the mean return of the training episodes that finished in batches starting in the
latest window against that of the window before. When the latest one is not ahead by at least
`min_gain` x |the earlier mean|, the rate is multiplied by lr_step_factor and the comparison starts
over (it needs two fresh windows, so drops are at least 2 x window apart), up to `max_drops`
times.

Why two windows of means rather than the best value so far (as supervised learning's
ReduceLROnPlateau does): a stalled biped's training return does not stop rising, it creeps (about
+1 per million env steps at 60-90), so "no new best" would never fire. A relative gain per window
tells the stalled runs from most climbing ones on the curves recorded so far, not all: with 2 M
windows and 3%, it fires at 10.6 and 12.9 M env steps on the two stalled runs whose metrics this
was taken from, and on the five runs that reached 216 (read off their 5-minute marks, so roughly)
at 21-26 M env steps or not at all; with 5% it would have fired on four of those five at 11-17 M
(docs/benchmarks.md, session 41).

Episodes are binned by the env steps at the start of the batch they finished in, so a decision
depends only on the counters and returns the learner saw, never on wall time: a sync run stays
reproducible, and the state (`state_dict`) resumes to the same decisions.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Drop:
    """One lowering of the rate, for the log: the two windows' means and where it happened."""

    env_steps: int  # at the end of the batch that completed the comparison
    earlier_mean: float
    latest_mean: float
    drops: int  # how many times the rate has been lowered, this one included


class ReturnPlateau:
    """Counts the rate's drops from the training return; `drops` is what the learner reads."""

    def __init__(self, window: int, min_gain: float, max_drops: int) -> None:
        self.window, self.min_gain, self.max_drops = window, min_gain, max_drops
        self.drops = 0
        self.since = 0  # env steps at the start of the first batch held: both windows are full from since + 2 x window
        # (env steps at the batch's start, sum of its finished episodes' returns, their number)
        self.batches: deque[tuple[int, float, int]] = deque()

    def observe(self, env_steps: int, steps: int, returns: np.ndarray) -> Drop | None:
        """One update's batch: it started at `env_steps`, held `steps` env steps, and the episodes
        that finished in it returned `returns` [E]. Returns the drop this batch caused, if any."""
        if self.drops >= self.max_drops:  # done: keep nothing more
            return None
        if not self.batches:  # the data starts here: at 0, after a drop, or at a resume from an older checkpoint
            self.since = env_steps
        self.batches.append((env_steps, float(np.sum(returns)), len(returns)))
        now = env_steps + steps
        if now - self.since < 2 * self.window:
            return None
        while self.batches and self.batches[0][0] < now - 2 * self.window:
            self.batches.popleft()
        earlier = [(s, n) for start, s, n in self.batches if start < now - self.window]
        latest = [(s, n) for start, s, n in self.batches if start >= now - self.window]
        n_earlier, n_latest = sum(n for _, n in earlier), sum(n for _, n in latest)
        if n_earlier == 0 or n_latest == 0:  # no episode ended in a window: nothing to compare yet
            return None
        earlier_mean = sum(s for s, _ in earlier) / n_earlier
        latest_mean = sum(s for s, _ in latest) / n_latest
        if latest_mean >= earlier_mean + self.min_gain * abs(earlier_mean):
            return None
        self.drops += 1
        self.batches.clear()
        return Drop(now, earlier_mean, latest_mean, self.drops)

    def state_dict(self) -> dict[str, Any]:
        return {"drops": self.drops, "since": self.since, "batches": [list(b) for b in self.batches]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.drops, self.since = int(state["drops"]), int(state["since"])
        self.batches = deque((int(e), float(s), int(n)) for e, s, n in state["batches"])
