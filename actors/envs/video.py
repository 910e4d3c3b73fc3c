"""Write a video of one episode of an env under a policy (MP4 via imageio-ffmpeg, or GIF)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
from numpy.typing import ArrayLike

Policy = Callable[[np.ndarray], np.ndarray]


def record_episode(
    env: gym.Env, policy: Policy, path: str | Path, *, seed: int = 0, max_steps: int | None = None
) -> dict[str, float]:
    """Run one seeded episode of `env` (created with render_mode="rgb_array") under `policy`
    and write its frames to `path` (.mp4 or .gif). Returns the episode's return and length."""
    import imageio.v2 as imageio

    if env.render_mode != "rgb_array":
        raise ValueError("record_episode needs an env created with render_mode='rgb_array'")
    path = Path(path)
    if path.suffix not in (".mp4", ".gif"):
        raise ValueError(f"video path must end in .mp4 or .gif, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fps = int(env.metadata.get("render_fps", 30))
    obs, _ = env.reset(seed=seed)
    frames: list[ArrayLike] = [_frame(env)]  # imageio's annotation asks for this element type
    total, steps, done = 0.0, 0, False
    while not done and (max_steps is None or steps < max_steps):
        obs, reward, terminated, truncated, _ = env.step(policy(obs))
        total += float(reward)
        steps += 1
        done = terminated or truncated
        frames.append(_frame(env))
    if path.suffix == ".mp4":
        imageio.mimwrite(path, frames, fps=fps, macro_block_size=1)
    else:
        imageio.mimwrite(path, frames, duration=1.0 / fps, loop=0)
    return {"return": total, "length": float(steps)}


def _frame(env: gym.Env) -> np.ndarray:
    """One rgb_array frame [H, W, 3] uint8 of `env`."""
    frame = env.render()
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"render() returned {type(frame).__name__}, not an rgb_array frame")
    return frame
