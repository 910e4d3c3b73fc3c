"""Custom envs registered on import, as a user's package would: trained as
`tests.custom_env:CustomPendulum-v0`, which makes every process (driver and actors) import this
module first; `ActionEcho-v0` shows a test which actions an env was handed."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

ID = "CustomPendulum-v0"

if ID not in gym.registry:
    gym.register(ID, entry_point="gymnasium.envs.classic_control.pendulum:PendulumEnv", max_episode_steps=200)


class ActionEcho(gym.Env):
    """Pays the first action component it is handed, exactly as handed: a rollout test reads the
    rewards to see which actions the env received. Action box [-1, 1]; three-zero observations;
    episodes end at the time limit only."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,))
    action_space = gym.spaces.Box(-1.0, 1.0, (1,))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        return np.zeros(3, dtype=np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        return np.zeros(3, dtype=np.float32), float(np.asarray(action)[0]), False, False, {}


ECHO_ID = "ActionEcho-v0"
if ECHO_ID not in gym.registry:
    gym.register(ECHO_ID, entry_point=ActionEcho, max_episode_steps=50)
