"""The data types that flow between actors and the learner (plain NumPy, no Ray, no torch)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class EpisodeStats:
    """Episodes that finished inside one fragment."""

    returns: np.ndarray  # [E] float64 undiscounted return of each finished episode
    lengths: np.ndarray  # [E] int64 length in env steps
    # Why each ended: the env's reason (the biped's fell, lateral, tilt, physics_diverged,
    # time_limit), else "terminated" / "time_limit"; () when the sender did not say.
    ended_by: tuple[str, ...] = ()

    def reasons(self) -> tuple[str, ...]:
        """One end reason per episode: `ended_by`, or "unknown" for each where the sender said
        nothing (a remote actor on the proto before `episode_ended_by`)."""
        return self.ended_by if len(self.ended_by) == len(self.returns) else ("unknown",) * len(self.returns)

    @staticmethod
    def empty() -> EpisodeStats:
        return EpisodeStats(np.zeros(0), np.zeros(0, dtype=np.int64), ())


@dataclass(frozen=True)
class Trajectory:
    """One time-major fragment of T steps from B envs of one worker.

    obs[t] is what the policy saw before acting at step t; obs[T] is the observation after the
    last step (the bootstrap point). When an episode ended at step t, obs[t + 1] is already the
    first observation of the next episode. Only a truncated episode needs its last observation
    (to bootstrap from; a termination is not bootstrapped), so `final_obs` holds one row per
    truncated step, in the row-major order of `truncated` (`np.nonzero(truncated)`):
    `dense[truncated] = final_obs` rebuilds the [T, B, obs_dim] form. Truncations are rare (a
    time limit, an env error's cut), so a dense [T, B, obs_dim] array was ~44% of a biped
    fragment's bytes for a few rows.
    """

    obs: np.ndarray  # [T+1, B, obs_dim] float32 raw (un-normalised) observations
    actions: np.ndarray  # [T, B, act_dim] float32 actions as sampled (before env clipping)
    logp: np.ndarray  # [T, B] float32 log-prob of actions under the behaviour policy
    rewards: np.ndarray  # [T, B] float32
    terminated: np.ndarray  # [T, B] bool: true end, no bootstrap
    truncated: np.ndarray  # [T, B] bool: time limit (or a cut): bootstrap from final_obs
    final_obs: np.ndarray  # [K, obs_dim] float32, K = truncated.sum(): the last observation of
    #                        each truncated episode, in the row-major order of `truncated`
    policy_version: int  # weights version that produced every action in this fragment
    worker_id: int
    episodes: EpisodeStats = field(default_factory=EpisodeStats.empty)
    env_errors: int = 0  # env exceptions caught (and envs reset) while collecting
    sample_seconds: float = 0.0  # wall time the worker spent collecting this fragment
    rss_bytes: int = 0  # resident memory of the process that collected it
    fragment_id: str = ""  # unique per fragment: "<worker>-<pid>-<n-th fragment of that process>"

    @property
    def num_steps(self) -> int:
        """Env steps in this fragment (T * B)."""
        return int(self.rewards.shape[0] * self.rewards.shape[1])

    def validate(self) -> None:
        """Raise ValueError when shapes disagree or a float array holds NaN/inf."""
        t, b = self.rewards.shape
        expected = {
            "obs": (t + 1, b), "actions": (t, b), "logp": (t, b), "terminated": (t, b),
            "truncated": (t, b), "final_obs": (int(np.count_nonzero(self.truncated)),),
        }
        for name, lead in expected.items():
            if getattr(self, name).shape[: len(lead)] != lead:
                raise ValueError(f"trajectory.{name} has shape {getattr(self, name).shape}, expected {lead}+")
        if self.final_obs.shape[1:] != self.obs.shape[2:]:
            raise ValueError(f"trajectory.final_obs has shape {self.final_obs.shape}, expected "
                             f"(K, {', '.join(map(str, self.obs.shape[2:]))}) like obs")
        for name in ("obs", "actions", "logp", "rewards", "final_obs"):
            if not np.isfinite(getattr(self, name)).all():
                raise ValueError(f"trajectory.{name} contains NaN or inf")


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@dataclass(frozen=True)
class Weights:
    """A policy version as CPU arrays: network parameters and the observation normaliser."""

    version: int
    state: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.state.values()))
