"""The rollout loop: step B envs with a policy for T steps and return a `Trajectory`.

Pure Python + NumPy: no Ray, no torch. `RolloutWorker` (worker.py) is a thin Ray shell around
`Sampler`; tests and benchmarks drive a `Sampler` directly, in one process.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

from actors.envs import flat_box, is_biped
from actors.policy import NumpyPolicy
from actors.trajectory import EpisodeStats, Trajectory, Weights, rss_bytes

log = logging.getLogger(__name__)
MAX_ENV_ERRORS_PER_FRAGMENT = 100


def make_envs(env_id: str, num_envs: int, env_kwargs: dict[str, Any] | None = None) -> VectorEnv:
    """B copies of `env_id` as a VectorEnv with same-step autoreset (the biped's batched fast
    path for the biped, Gymnasium's SyncVectorEnv for any other id). The biped's 'module:EnvId'
    form ('actors.envs:stride/BipedWalker-v0') names the same env, so it gets the fast path too."""
    kwargs = dict(env_kwargs or {})
    if is_biped(env_id):
        from actors.envs.batched import BatchedBipedEnv

        return BatchedBipedEnv(num_envs, **kwargs)
    return gym.make_vec(
        env_id,
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        **kwargs,
    )


def action_clipper(space: gym.Space) -> Callable[[np.ndarray], np.ndarray]:
    """What an env is handed for a sampled action: the action clipped to the bounds of a Box
    action space (elementwise, [..., act_dim]); any other space gets the action unchanged.

    The Gaussian's samples leave the box; the trajectory keeps them as sampled (the log-prob is
    theirs), and only the env sees the clipped copy, as SB3, CleanRL and RLlib do. Without it an
    env that does not clamp internally is stepped outside its own spec, and one whose reward
    reads the action it is given (Walker2d's control cost) is charged for torque it never applied.
    """
    if not isinstance(space, gym.spaces.Box):
        return lambda a: a
    low, high = space.low.astype(np.float32), space.high.astype(np.float32)
    return lambda a: np.clip(a, low, high)


def _final_obs(infos: dict[str, Any], ended: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """Final observations [B, obs_dim] of the envs flagged in `ended` [B] (zeros elsewhere, and
    where the env gives none)."""
    out = np.zeros_like(obs)
    if "final_obs" in infos:
        for i in np.flatnonzero(ended):
            out[i] = np.asarray(infos["final_obs"][i], dtype=obs.dtype)
    return out


def _ended_by(infos: dict[str, Any], i: int, terminated: bool) -> str:
    """Why env i's episode ended: the env's own `ended_by` (the biped's fell, tilt, ...) where it
    says, else "terminated" or "time_limit" (the names `stride eval` uses)."""
    final = infos.get("final_info", {})
    reasons = final.get("ended_by") if isinstance(final, dict) else None
    reason = str(reasons[i]) if reasons is not None else ""
    return reason or ("terminated" if terminated else "time_limit")


@dataclass
class Sampler:
    """B envs plus the running state a rollout needs across fragments."""

    envs: VectorEnv
    worker_id: int
    seed: int

    def __post_init__(self) -> None:
        self.num_envs = self.envs.num_envs
        self.clip_action = action_clipper(self.envs.single_action_space)
        self.rng = np.random.default_rng([self.seed, self.worker_id])
        self.policy: NumpyPolicy | None = None
        self.obs = self._reset()
        self.ep_return = np.zeros(self.num_envs)
        self.ep_length = np.zeros(self.num_envs, dtype=np.int64)
        self.fragments = 0  # collected so far: numbers each fragment's id

    def _reset(self) -> np.ndarray:
        # Every (re)start draws fresh per-env seeds, so a restarted worker does not replay.
        seed = int(self.rng.integers(2**31 - 1))
        obs, _ = self.envs.reset(seed=seed)
        return np.asarray(obs, dtype=np.float32)

    def _next_fragment(self) -> int:
        self.fragments += 1
        return self.fragments - 1

    def set_weights(self, weights: Weights) -> None:
        self.policy = NumpyPolicy(weights)

    def collect(self, num_steps: int) -> Trajectory:
        """Step every env `num_steps` times with the current policy; see `collect`."""
        if self.policy is None:
            raise RuntimeError("set_weights() must be called before collect()")
        return collect(self, num_steps)


def collect(s: Sampler, num_steps: int) -> Trajectory:
    """Run `s.policy` in `s.envs` for T = `num_steps` steps and return the fragment.

    Env exceptions are survived: the envs are reset, the error is counted in
    `Trajectory.env_errors`, and the episodes the reset cut short are marked truncated at the
    previous step (bootstrapping from the last real observation), so no transition that did not
    happen enters the fragment. A non-finite observation or reward ends the fragment there
    (the envs are reset), and the fragment keeps it, so the learner refuses the fragment whole.
    """
    assert s.policy is not None
    start = time.perf_counter()
    b, obs_dim = s.obs.shape
    act_dim = flat_box(s.envs.single_action_space, "action space").shape[0]
    obs = np.zeros((num_steps + 1, b, obs_dim), dtype=np.float32)
    actions = np.zeros((num_steps, b, act_dim), dtype=np.float32)
    logp = np.zeros((num_steps, b), dtype=np.float32)
    rewards = np.zeros((num_steps, b), dtype=np.float32)
    terminated = np.zeros((num_steps, b), dtype=bool)
    truncated = np.zeros((num_steps, b), dtype=bool)
    final_obs = np.zeros((num_steps, b, obs_dim), dtype=np.float32)  # dense scratch; rows where truncated ship
    ep_returns: list[float] = []
    ep_lengths: list[int] = []
    ep_ended: list[str] = []
    errors = 0
    t = 0
    while t < num_steps:
        obs[t] = s.obs
        a, lp = s.policy.act(s.obs, s.rng)
        try:
            next_obs, r, term, trunc, infos = s.envs.step(s.clip_action(a))
        except Exception as exc:  # an env blew up: reset, cut the episodes, retry this step
            errors += 1
            log.warning("worker %d: env error at step %d (%s: %s); resetting its envs",
                        s.worker_id, t, type(exc).__name__, exc)
            if errors > MAX_ENV_ERRORS_PER_FRAGMENT:
                raise RuntimeError(f"{errors} env errors in one fragment; giving up") from exc
            if t > 0:
                cut = ~(terminated[t - 1] | truncated[t - 1])
                truncated[t - 1] |= cut
                final_obs[t - 1][cut] = s.obs[cut]
            s.obs = s._reset()
            s.ep_return[:] = 0.0
            s.ep_length[:] = 0
            continue
        actions[t], logp[t] = a, lp
        rewards[t] = r
        terminated[t], truncated[t] = term, trunc
        s.ep_return += r
        s.ep_length += 1
        if trunc.any():
            final_obs[t] = _final_obs(infos, trunc, s.obs)
        done = term | trunc
        if done.any():
            for i in np.flatnonzero(done):
                ep_returns.append(float(s.ep_return[i]))
                ep_lengths.append(int(s.ep_length[i]))
                ep_ended.append(_ended_by(infos, int(i), bool(term[i])))
            s.ep_return[done] = 0.0
            s.ep_length[done] = 0
        s.obs = np.asarray(next_obs, dtype=np.float32)
        t += 1
        if not (np.isfinite(s.obs).all() and np.isfinite(r).all()):
            # The learner rejects (and counts) a fragment holding NaN/inf whole, so the bad
            # observation is kept in it (obs[t]), where the loop would overwrite it with the reset
            # one, and the rest of the fragment is not sampled: it would be thrown away with it.
            # The envs are reset so the policy never acts on a bad observation and the next
            # fragment is clean.
            log.warning("worker %d: non-finite observation or reward at step %d; resetting its envs",
                        s.worker_id, t - 1)
            obs[t] = s.obs
            s.obs = s._reset()
            s.ep_return[:] = 0.0
            s.ep_length[:] = 0
            break
    else:
        obs[num_steps] = s.obs
    return Trajectory(
        obs=obs,
        actions=actions,
        logp=logp,
        rewards=rewards,
        terminated=terminated,
        truncated=truncated,
        final_obs=final_obs[truncated],
        policy_version=s.policy.version,
        worker_id=s.worker_id,
        episodes=EpisodeStats(np.array(ep_returns), np.array(ep_lengths, dtype=np.int64), tuple(ep_ended)),
        env_errors=errors,
        sample_seconds=time.perf_counter() - start,
        rss_bytes=rss_bytes(),
        fragment_id=f"{s.worker_id}-{os.getpid()}-{s._next_fragment()}",
    )
