"""`stride/Chaos-v0`: any Gymnasium env with faults injected at random, for fault-tolerance tests.

    gym.make("stride/Chaos-v0", env_id="Pendulum-v1", crash_prob=1e-3, stall_prob=1e-4, stall_seconds=60)

Each `step` independently, with the given probabilities:
- *crash*: raises `InjectedCrash` (what a simulator segfault-turned-exception or a bug looks like
  to the rollout loop), leaving the inner env untouched;
- *stall*: sleeps `stall_seconds` before stepping (a hung simulator, a deadlocked renderer);
- *nan*: returns the inner step's observation and reward with NaN written into them (the inner
  env's state stays finite, as when a sensor, not the physics, goes bad).

And with `break_after` = N > 0, the env *breaks for good* after its N-th step: every later step
raises `InjectedCrash`, after a reset too, until the process that made the env restarts (a
simulator that lost its licence server or its GPU context). The rollout loop gives up on such a
fragment (more than 100 env errors in it), and the trainer restarts the actor.

The fault draws use their own generator, seeded from `fault_seed` and the reset seed, so a
seeded run injects the same faults each time. With every probability 0 it is the inner env.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np


class InjectedCrash(RuntimeError):
    """The fault `crash_prob` injects."""


class ChaosEnv(gym.Wrapper):
    def __init__(self, env_id: str = "Pendulum-v1", crash_prob: float = 0.0, stall_prob: float = 0.0,
                 stall_seconds: float = 3600.0, nan_prob: float = 0.0, fault_seed: int = 0,
                 break_after: int = 0, **env_kwargs: Any) -> None:
        for name, p in (("crash_prob", crash_prob), ("stall_prob", stall_prob), ("nan_prob", nan_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if stall_seconds < 0:
            raise ValueError(f"stall_seconds must be >= 0, got {stall_seconds}")
        if break_after < 0:
            raise ValueError(f"break_after must be >= 0 (0: never), got {break_after}")
        super().__init__(gym.make(env_id, **env_kwargs))
        self.crash_prob, self.stall_prob, self.nan_prob = crash_prob, stall_prob, nan_prob
        self.stall_seconds = stall_seconds
        self.fault_seed = fault_seed
        self.faults_rng = np.random.default_rng(fault_seed)
        self.injected = {"crash": 0, "stall": 0, "nan": 0, "broken": 0}
        self.break_after, self.steps = break_after, 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if seed is not None:
            self.faults_rng = np.random.default_rng([self.fault_seed, seed])
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        if self.break_after and self.steps >= self.break_after:
            self.injected["broken"] += 1
            raise InjectedCrash(f"injected broken env (stride/Chaos-v0): it broke after {self.break_after} steps")
        self.steps += 1
        u = self.faults_rng.random(3)
        if u[0] < self.crash_prob:
            self.injected["crash"] += 1
            raise InjectedCrash("injected env crash (stride/Chaos-v0)")
        if u[1] < self.stall_prob:
            self.injected["stall"] += 1
            time.sleep(self.stall_seconds)
        obs, reward, terminated, truncated, info = self.env.step(action)
        if u[2] < self.nan_prob:
            self.injected["nan"] += 1
            obs = np.array(obs, dtype=np.float64, copy=True)
            obs[0] = np.nan
            reward = float("nan")
        return obs, reward, terminated, truncated, info
