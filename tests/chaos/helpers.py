"""Shared helpers for the chaos suite: small configs, reading a run's records, a trainer in a thread."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from learner import config as C
from learner.trainer import Trainer


def small_config(**overrides: Any) -> C.Config:
    """Pendulum, 2 actors x 4 envs, 32-step fragments: an update every ~0.2 s on 2 cores."""
    base: dict[str, Any] = {
        "env.id": "Pendulum-v1", "env.envs_per_actor": 4, "rollout.actors": 2, "rollout.fragment_length": 32,
        "ppo.minibatches": 4, "ppo.epochs": 2, "train.total_steps": 3 * 2 * 4 * 32, "train.video": False,
        "train.checkpoint_every": 1, "train.metrics_port": 0,
    }
    base.update(overrides)
    cfg = C.load(None, base)
    C.validate(cfg)
    return cfg


def records(run_dir: Path) -> list[dict[str, Any]]:
    """The run's metrics records so far. Tests poll this while the trainer writes: a record longer
    than what one buffered write puts out can be caught half written, so a last line without its
    newline is not a record yet (it is read whole on a later call)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    whole = path.read_text().split("\n")[:-1]  # the piece after the last newline is unfinished
    return [json.loads(line) for line in whole if line.strip()]


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 120.0,
             alive: threading.Thread | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if alive is not None and not alive.is_alive():
            raise AssertionError(f"the trainer stopped while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


class TrainerThread(threading.Thread):
    """`Trainer.run()` in a thread; `stop()` asks it to finish like SIGTERM would."""

    started: list[TrainerThread] = []  # every one started, for `stop_leftovers`

    def __init__(self, trainer: Trainer) -> None:
        super().__init__(daemon=True)
        self.trainer = trainer
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None

    def start(self) -> None:
        TrainerThread.started.append(self)
        super().start()

    @classmethod
    def stop_leftovers(cls, timeout: float = 120.0) -> list[TrainerThread]:
        """Stops the trainers a test left running (it failed before its own `stop()`); returns
        those that would not stop. A trainer left running would go on calling Ray after the
        module's fixture has shut it down, or while the next module starts its own cluster."""
        leftovers, cls.started = [t for t in cls.started if t.is_alive()], []
        for t in leftovers:
            t.trainer.request_stop()
        for t in leftovers:
            t.join(timeout)
        return [t for t in leftovers if t.is_alive()]

    def run(self) -> None:
        try:
            self.result = self.trainer.run()
        except BaseException as exc:  # noqa: BLE001  (handed to the test)
            self.error = exc

    def stop(self, timeout: float = 120.0) -> None:
        self.trainer.request_stop()
        self.join(timeout)
        assert not self.is_alive(), "the trainer did not stop"
