"""`stride bench time-to-walk`: train the biped until its return reaches a threshold.

The stop rule uses the training episodes (the mean return of the episodes that finished in the
last `window` iterations), so it costs nothing while training; once it fires, the latest
checkpoint is evaluated on seeded episodes with the deterministic policy, and a video written.
Reports wall-clock time to the threshold, env steps, and the evaluation.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from actors.trajectory import EpisodeStats
from learner import config as C
from learner.evaluate import evaluate
from learner.trainer import Trainer

log = logging.getLogger("stride")


@dataclass
class TimeToWalk:
    threshold: float
    reached: bool
    wall_seconds: float  # from the call (Ray and actor start-up included) to the crossing iteration, or the stop
    env_steps: int
    train_return: float  # windowed training return when it stopped
    eval_return: float
    eval_return_std: float
    eval_length: float
    eval_forward_distance_m: float | None
    eval_ended_by: dict[str, int]
    video: str | None


class _StopAtReturn:
    def __init__(self, trainer: Trainer, threshold: float, window: int) -> None:
        self.trainer, self.threshold = trainer, threshold
        self.recent: deque[tuple[float, int]] = deque(maxlen=window)  # (sum of returns, episodes)
        self.start = time.perf_counter()
        self.hit: tuple[float, int, float] | None = None
        self.last = (0.0, 0, float("nan"))

    def on_iteration(self, rec: dict[str, Any], episodes: EpisodeStats) -> None:
        self.recent.append((float(episodes.returns.sum()), len(episodes.returns)))
        n = sum(k for _, k in self.recent)
        mean = sum(s for s, _ in self.recent) / n if n else float("nan")
        self.last = (time.perf_counter() - self.start, rec["env_steps"], mean)
        if self.hit is None and len(self.recent) == self.recent.maxlen and n and mean >= self.threshold:
            self.hit = self.last
            log.info("return %.1f >= %.1f after %.0f s, %d env steps", mean, self.threshold, self.last[0],
                     rec["env_steps"])
            self.trainer.request_stop()

    def on_checkpoint(self, path: Path, when: float) -> None:
        pass


def time_to_walk(cfg: C.Config, run_dir: Path, threshold: float, window: int = 5, episodes: int = 10,
                 video: bool = True) -> TimeToWalk:
    trainer = Trainer(cfg, run_dir)
    stop = _StopAtReturn(trainer, threshold, window)
    trainer.observers.append(stop)
    try:
        trainer.run()
    except KeyboardInterrupt:
        if stop.hit is None:
            raise
    wall, steps, ret = stop.hit or stop.last
    video_path = run_dir / "walk.mp4" if video else None
    ev = evaluate(run_dir, episodes, video=video_path)
    result = TimeToWalk(threshold, stop.hit is not None, wall, steps, ret, ev.mean_return, ev.std_return,
                        ev.mean_length, ev.mean_forward_distance, ev.ended_by,
                        str(video_path) if video_path else None)
    (run_dir / "time_to_walk.json").write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result
