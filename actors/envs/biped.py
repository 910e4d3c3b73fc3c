"""BipedWalkerEnv: the walking robot as a Gymnasium environment (one robot).

Observation (31 float32): see docs/biped.md. Action (6 float in [-1, 1], scaled to +-3 N·m):
[right ankle, right knee, right hip, left ankle, left knee, left hip]. Out-of-range actions are
clipped to [-1, 1] (the clipped value is what is applied, shown in obs[25:31] and penalised);
a wrong shape or a NaN/inf raises ValueError.

Reward, from the state at the end of the step (the same values the returned observation shows):
    r = forward_weight * v_x - lateral_weight * y^2 - height_weight * (z - 0.21)^2
        + survival_bonus - effort_weight * sum(u^2)
with v_x = obs[2], y = obs[0], z - 0.21 = 0.05 * obs[1] and u = obs[25:31]. `info["reward_terms"]`
carries each term; `info["ended_by"]` says why an episode ended.

If the physics diverges (MuJoCo flags a bad state, or a velocity exceeds `max_speed`) the
episode terminates with `info["physics_diverged"] = True`, reward 0 and the last finite
observation, so no NaN ever leaves the env.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from actors.envs.biped_sim import ACT_DIM, OBS_DIM, BipedParams, BipedSim, validate_actions


def observation_space() -> spaces.Box:
    return spaces.Box(-np.inf, np.inf, shape=(OBS_DIM,), dtype=np.float32)


def action_space() -> spaces.Box:
    return spaces.Box(-1.0, 1.0, shape=(ACT_DIM,), dtype=np.float32)


class BipedWalkerEnv(gym.Env[np.ndarray, np.ndarray]):
    """One biped. Keyword arguments are the fields of `BipedParams` plus rendering options."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 40}

    def __init__(
        self,
        render_mode: str | None = None,
        width: int = 480,
        height: int = 360,
        camera: str = "track",
        **params: Any,
    ) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        self.params = BipedParams(**params)
        self.sim = BipedSim(1, self.params)
        self.observation_space = observation_space()
        self.action_space = action_space()
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": round(1.0 / self.control_dt)}
        self._render_size = (height, width)
        self._camera = camera
        self._renderer: Any = None
        self._obs = np.zeros(OBS_DIM, dtype=np.float32)

    @property
    def control_dt(self) -> float:
        """Seconds of simulated time per `step` (Ts = 0.025 s by default)."""
        return float(self.sim.model.opt.timestep * self.params.frame_skip)

    @property
    def model(self):  # noqa: ANN201 - mujoco.MjModel
        return self.sim.model

    @property
    def data(self):  # noqa: ANN201 - mujoco.MjData
        return self.sim.datas[0]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.sim.reset(0, self.np_random)
        self._obs = self.sim.observe()[0]
        return self._obs.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = validate_actions(action, (ACT_DIM,))
        t = self.sim.advance(a[None, :], self._obs[None, :])
        self._obs = t.obs[0]
        info = {
            "physics_diverged": bool(t.diverged[0]),
            "ended_by": str(t.reasons[0]),
            "reward_terms": {k: float(v[0]) for k, v in t.terms.items()},
        }
        return self._obs.copy(), float(t.reward[0]), bool(t.terminated[0]), bool(t.truncated[0]), info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        import mujoco

        if self._renderer is None:
            height, width = self._render_size
            self._renderer = mujoco.Renderer(self.model, height, width)
        self._renderer.update_scene(self.data, camera=self._camera)
        return self._renderer.render().copy()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
