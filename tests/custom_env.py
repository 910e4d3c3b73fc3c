"""A custom env registered on import, as a user's package would: trained as
`tests.custom_env:CustomPendulum-v0`, which makes every process (driver and actors) import this
module first."""

from __future__ import annotations

import gymnasium as gym

ID = "CustomPendulum-v0"

if ID not in gym.registry:
    gym.register(ID, entry_point="gymnasium.envs.classic_control.pendulum:PendulumEnv", max_episode_steps=200)
