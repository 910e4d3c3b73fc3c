"""Evaluate a run's policy, plot its learning curve, and record a video of it."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import actors.envs  # noqa: F401  (registers the biped)
from actors.envs import is_biped
from actors.envs.biped_sim import END_TILT, tilt_direction
from actors.policy import NumpyPolicy
from actors.rollout import action_clipper
from actors.trajectory import Weights
from learner import checkpoint

log = logging.getLogger("stride")


@dataclass(frozen=True)
class EvalResult:
    mean_return: float
    std_return: float
    mean_length: float
    mean_forward_distance: float | None  # biped only: torso x travelled (m)
    ended_by: dict[str, int]  # how the episodes ended: info["ended_by"] where the env says, else
    # "terminated" / "time_limit"; the biped's reasons are fell, lateral, tilt, physics_diverged
    tilted: dict[str, int]  # biped only: which way the "tilt" episodes went over (forward,
    # backward, sideways, turned: biped_sim.tilt_direction); {} for other envs
    episodes: int
    checkpoint: str
    env_steps: int
    returns: list[float]  # each episode's, in seed order (seed, seed + 1, ...): pairs two policies by seed


def load_policy(run_dir: Path) -> tuple[NumpyPolicy, dict[str, Any], Path]:
    path, state = checkpoint.require_latest(run_dir)
    weights = Weights(int(state["learner"]["version"]), {k: v.numpy() for k, v in state["model"].items()})
    return NumpyPolicy(weights), state, path


def evaluate(run_dir: Path, episodes: int = 10, seed: int = 10_000, video: Path | None = None,
             deterministic: bool = True) -> EvalResult:
    """Mean return of the run's latest checkpoint over `episodes` seeded episodes."""
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    policy, state, path = load_policy(run_dir)
    cfg = state["config"]["env"]
    env = gym.make(cfg["id"], **cfg["kwargs"])
    rng = np.random.default_rng(seed)
    clip = action_clipper(env.action_space)

    def act(obs: np.ndarray) -> np.ndarray:
        o = np.asarray(obs, dtype=np.float32)[None]
        return (policy.mean(o) if deterministic else policy.act(o, rng)[0])[0]

    returns: list[float] = []
    lengths, distances = [], []
    ended_by: dict[str, int] = {}
    tilted: dict[str, int] = {}
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        x0 = _torso_x(env)
        total, steps, done = 0.0, 0, False
        while not done:
            # The env gets what training gave it: the action clipped to its box (write_video clips too).
            obs, r, terminated, truncated, info = env.step(clip(act(obs)))
            total += float(r)
            steps += 1
            done = terminated or truncated
        reason = str(info.get("ended_by") or ("terminated" if terminated else "time_limit"))
        ended_by[reason] = ended_by.get(reason, 0) + 1
        if reason == END_TILT and _is_biped(env):
            way = tilt_direction(obs)
            tilted[way] = tilted.get(way, 0) + 1
        returns.append(total)
        lengths.append(steps)
        x1 = _torso_x(env)
        if x0 is not None and x1 is not None:
            distances.append(x1 - x0)
    env.close()
    if video is not None:
        write_video(cfg["id"], cfg["kwargs"], act, video, seed=seed)
    return EvalResult(
        float(np.mean(returns)), float(np.std(returns)), float(np.mean(lengths)),
        float(np.mean(distances)) if distances else None, dict(sorted(ended_by.items())), dict(sorted(tilted.items())),
        episodes, path.name,
        int(state["counters"]["env_steps"]), returns,
    )


def _is_biped(env: gym.Env) -> bool:
    return env.spec is not None and is_biped(env.spec.id)


def _torso_x(env: gym.Env) -> float | None:
    """The biped's torso x (m), None for any other env."""
    from actors.envs.biped import BipedWalkerEnv

    inner = env.unwrapped
    return float(inner.data.qpos[0]) if isinstance(inner, BipedWalkerEnv) else None


def write_video(env_id: str, env_kwargs: dict[str, Any], act: Any, path: Path, seed: int = 0) -> dict[str, float]:
    from actors.envs.video import record_episode

    env = gym.make(env_id, render_mode="rgb_array", **env_kwargs)
    clip = action_clipper(env.action_space)
    try:
        return record_episode(env, lambda o: clip(act(o)), path, seed=seed)
    finally:
        env.close()


def final_video(run_dir: Path, path: Path) -> str:
    """Write the trained policy's video; returns a one-line outcome (never raises)."""
    try:
        policy, state, _ = load_policy(run_dir)
        cfg = state["config"]["env"]
        stats = write_video(cfg["id"], cfg["kwargs"], lambda o: policy.mean(np.asarray(o, np.float32)[None])[0], path)
        return f"video {path} (return {stats['return']:.1f}, {int(stats['length'])} steps)"
    except Exception as exc:  # rendering is optional: no GL, no ffmpeg, ...
        return f"no video: {type(exc).__name__}: {exc}"


def plot_curve(run_dir: Path) -> Path | None:
    """Plot mean episode return and env steps/s against env steps into curve.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    pts = [(r["env_steps"], r["episode_return_mean"]) for r in recs if r.get("episode_return_mean") is not None]
    if not pts:
        return None
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax1.plot(*zip(*pts, strict=True))
    ax1.set_ylabel("mean episode return")
    ax1.grid(alpha=0.3)
    ax2.plot([r["env_steps"] for r in recs], [r["env_steps_per_s"] for r in recs])
    ax2.set_ylabel("env steps/s")
    ax2.set_xlabel("env steps")
    ax2.grid(alpha=0.3)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = run_dir / "curve.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
