"""BatchedBipedEnv: N bipeds stepped together, as a Gymnasium VectorEnv.

One compiled model, N MjData, one Python loop over them per control step (each iteration is
three attribute writes/reads and one `mj_step(model, data, 10)` call, so the per-step Python
cost is small next to the 10 physics substeps). Observation, reward and termination are
computed for all robots at once with NumPy, by the same `BipedSim` code the single env uses.

Autoreset is Gymnasium's SAME_STEP mode: when robot i's episode ends, `step` returns the first
observation of its next episode, and the final observation and info sit in
`infos["final_obs"][i]` / `infos["final_info"]` with the masks `infos["_final_obs"][i]`, just as
`SyncVectorEnv(autoreset_mode=SAME_STEP)` lays them out. `terminated` and `truncated` stay
separate. `reset(seed=s)` seeds robot i with s + i, so robot i replays `BipedWalkerEnv` seeded
with s + i exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from actors.envs.biped import action_space, observation_space
from actors.envs.biped_sim import ACT_DIM, BipedParams, BipedSim, validate_actions

REWARD_TERMS = ("forward", "lateral", "height", "survival", "effort")


class BatchedBipedEnv(VectorEnv[np.ndarray, np.ndarray, np.ndarray]):
    """`num_envs` bipeds; keyword arguments are the fields of `BipedParams`."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int, **params: Any) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.num_envs = num_envs
        self.params = BipedParams(**params)
        self.sim = BipedSim(num_envs, self.params)
        self.single_observation_space = observation_space()
        self.single_action_space = action_space()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._rngs = [seeding.np_random()[0] for _ in range(num_envs)]
        self._obs = np.zeros((num_envs, self.single_observation_space.shape[0]), dtype=np.float32)

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None:
            seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"expected {self.num_envs} seeds, got {len(seeds)}")
            self._rngs = [seeding.np_random(s)[0] for s in seeds]
        for i in range(self.num_envs):
            self.sim.reset(i, self._rngs[i])
        self._obs = self.sim.observe()
        return self._obs.copy(), {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        a = validate_actions(actions, (self.num_envs, ACT_DIM))
        t = self.sim.advance(a, self._obs)
        obs, terminated, truncated, diverged = t.obs, t.terminated, t.truncated, t.diverged
        infos: dict[str, Any] = {"reward_terms": t.terms, "ended_by": t.reasons, "physics_diverged": diverged}
        done = terminated | truncated
        if done.any():
            idx = np.flatnonzero(done)
            final_obs = np.zeros_like(obs)
            final_obs[idx] = obs[idx]
            infos["final_obs"] = final_obs
            infos["_final_obs"] = done.copy()
            infos["final_info"] = {
                "ended_by": infos["ended_by"].copy(),
                "physics_diverged": diverged.copy(),
                "reward_terms": {k: v.copy() for k, v in t.terms.items()},
            }
            infos["_final_info"] = done.copy()
            for i in idx:
                self.sim.reset(int(i), self._rngs[i])
            obs[idx] = self.sim.observe(idx)
        self._obs = obs
        return obs.copy(), t.reward, terminated, truncated, infos
