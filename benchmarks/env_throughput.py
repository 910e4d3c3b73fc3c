"""Biped env throughput on one core, against the physics ceiling.

    python benchmarks/env_throughput.py [--steps 2000] [--repeats 5]

The ceiling is the raw `mj_step` rate of the model in control steps/s (physics steps/s / 10),
measured on the states the env really visits: a random policy drives the batched env, the full
physics state and control before each control step are recorded, and `mujoco.rollout` replays
each (state, control) for 10 substeps in C, with no Python per step. Every row is the median of
`--repeats` runs in this process, pinned to one core. The last table is the return of a
zero-torque and a uniform-random policy over 10 seeded episodes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import mujoco
import numpy as np
from mujoco import rollout

from actors.envs.batched import BatchedBipedEnv
from actors.envs.biped import BipedWalkerEnv

STATE_SPEC = mujoco.mjtState.mjSTATE_FULLPHYSICS


def record_states(steps: int, num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """States [K, nstate] and controls [K, nu] seen by a random policy in the batched env."""
    env = BatchedBipedEnv(num)
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    m = env.sim.model
    size = mujoco.mj_stateSize(m, STATE_SPEC)
    states, controls = [], []
    for _ in range(steps):
        actions = rng.uniform(-1, 1, (num, 6))
        for d in env.sim.datas:
            s = np.empty(size)
            mujoco.mj_getState(m, d, s, STATE_SPEC)
            states.append(s)
        ctrl = np.zeros((num, m.nu))
        ctrl[:, env.sim._act_ids] = actions
        controls.extend(ctrl)
        env.step(actions)
    return np.array(states), np.array(controls)


def ceiling_rate(states: np.ndarray, controls: np.ndarray, frame_skip: int) -> float:
    """Control steps/s of pure physics: `frame_skip` mj_steps from each recorded state, in C."""
    m = BatchedBipedEnv(1).sim.model
    d = mujoco.MjData(m)
    control = np.repeat(controls[:, None, :], frame_skip, axis=1)
    start = time.perf_counter()
    rollout.rollout(m, d, states, control, nstep=frame_skip)
    return len(states) / (time.perf_counter() - start)


def single_rate(steps: int, seed: int) -> float:
    env = BipedWalkerEnv()
    env.reset(seed=seed)
    actions = np.random.default_rng(seed).uniform(-1, 1, (steps, 6))
    start = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def batched_rate(num: int, steps: int, seed: int) -> float:
    env = BatchedBipedEnv(num)
    env.reset(seed=seed)
    iters = max(1, steps // num)
    actions = np.random.default_rng(seed).uniform(-1, 1, (iters, num, 6))
    start = time.perf_counter()
    for a in actions:
        env.step(a)
    return iters * num / (time.perf_counter() - start)


def episode_returns(policy: str, episodes: int = 10) -> tuple[float, float, float]:
    """Mean and std of the return, and mean length, over `episodes` seeded episodes."""
    env = BipedWalkerEnv()
    rng = np.random.default_rng(0)
    returns, lengths = [], []
    for ep in range(episodes):
        env.reset(seed=ep)
        total, steps, done = 0.0, 0, False
        while not done:
            a = np.zeros(6) if policy == "zero" else rng.uniform(-1, 1, 6)
            _, r, terminated, truncated, _ = env.step(a)
            total += r
            steps += 1
            done = terminated or truncated
        returns.append(total)
        lengths.append(steps)
    return float(np.mean(returns)), float(np.std(returns)), float(np.mean(lengths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4000, help="control steps per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-sizes", default="1,4,16,64,256")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    frame_skip = BatchedBipedEnv(1).params.frame_skip
    states, controls = record_states(max(1, args.steps // 16), 16, seed=123)
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    names = ["mj_step ceiling (rollout, C)", "single env"] + [f"batched env, B={b}" for b in sizes]
    rates: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    # The machine is noisy: each repeat measures the ceiling and every row back to back, and
    # the ratio is taken within the repeat before the median is.
    for rep in range(args.repeats):
        row = [ceiling_rate(states, controls, frame_skip), single_rate(args.steps, rep)]
        row += [batched_rate(b, max(args.steps, 4 * b), rep) for b in sizes]
        for name, rate in zip(names, row, strict=True):
            rates[name].append(rate)
            ratios[name].append(rate / row[0])

    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"mujoco {mujoco.__version__}, 1 core, median of {args.repeats} interleaved repeats")
    print(f"{'what':<30} {'control steps/s':>16} {'of ceiling':>11}")
    for name in names:
        print(f"{name:<30} {statistics.median(rates[name]):>16,.0f} {statistics.median(ratios[name]):>10.0%}")
    print()
    print(f"{'policy (10 seeded episodes)':<30} {'mean return':>12} {'std':>8} {'mean length':>12}")
    for policy in ("zero", "random"):
        mean, std, length = episode_returns(policy)
        print(f"{policy + ' torque' if policy == 'zero' else policy:<30} {mean:>12.2f} {std:>8.2f} {length:>12.1f}")


if __name__ == "__main__":
    main()
