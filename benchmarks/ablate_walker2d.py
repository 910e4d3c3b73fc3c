"""Ablations of Stride's PPO on Walker2d-v5: its sync mode in one process, variant against variant.

    python benchmarks/ablate_walker2d.py --seeds 1-16 --jobs 2 \\
        --variant base \\
        --variant const_lr ppo.lr_schedule=constant \\
        --variant no_rnorm ppo.reward_norm=false ppo.reward_scale=0.1 \\
        --variant sb3like ppo.lr_schedule=constant \\
                  rollout.actors=1 env.envs_per_actor=1 rollout.fragment_length=2048 obs_norm=per_step

The base is `--config` (configs/walker2d.yaml unless told otherwise), so a variant names only
what it changes from that file; the base itself is the first variant here.

Each run is Stride's sync PPO with its own `Learner` and `Sampler`s in one process (no Ray): the
same fragments, updates and random streams as `stride train` in sync mode for that config and
seed (a seed's run repeats exactly, and matched the Ray path's evaluation return to the digit),
so runs are independent of timing and several can share the machine (`--jobs`, one torch thread
each). A variant is a name and `section.field=value` overrides of the base config, plus one knob
that is not a config field: `obs_norm=per_step` normalises observations the way SB3's
VecNormalize does, with running statistics updated at every env step and applied at collection
time (the learner's own normaliser is then the identity), so the stored observations of a
fragment were normalised with different statistics.

Printed per run: the evaluation return of `peers_walker2d.eval_return` (the policy's mean action
on the 20 seeded episodes every system is scored on) and the policy's mean log sigma at the end;
per variant: the mean and standard deviation over seeds, and the paired difference against the
first variant (the same seeds), with its t statistic.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

OBS_CLIP = 10.0  # as VecNormalize's clip_obs and Stride's own normaliser


class StepNormalizedEnvs:
    """A VectorEnv whose observations (and final observations) come out normalised by running
    statistics updated with every observation it emits, shared by every env it is given with."""

    def __init__(self, envs: Any, stats: Any) -> None:
        self.envs, self.stats = envs, stats
        self.num_envs = envs.num_envs
        self.single_action_space = envs.single_action_space

    def _norm(self, obs: np.ndarray) -> np.ndarray:
        z = (np.asarray(obs, dtype=np.float64) - self.stats.mean) / np.sqrt(self.stats.var + 1e-8)
        return np.clip(z, -OBS_CLIP, OBS_CLIP).astype(np.float32)

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict]:
        obs, info = self.envs.reset(**kwargs)
        self.stats.update(obs)
        return self._norm(obs), info

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, Any, Any, Any, dict]:
        obs, rewards, terminated, truncated, info = self.envs.step(actions)
        self.stats.update(obs)
        if "final_obs" in info:
            finals = np.empty(len(info["final_obs"]), dtype=object)  # one entry per env, None where it ran on
            for i, o in enumerate(info["final_obs"]):
                finals[i] = None if o is None else self._norm(o)
            info = {**info, "final_obs": finals}
        return self._norm(obs), rewards, terminated, truncated, info


def run(config: str, overrides: dict[str, str], obs_norm: str, seed: int, budget: int) -> dict[str, Any]:
    """Train one variant for `budget` env steps in this process; evaluation return and log sigma."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    from peers_walker2d import eval_return

    from actors.policy import NumpyPolicy
    from actors.rollout import Sampler, make_envs
    from learner import config as C
    from learner.learner import Learner
    from learner.normalizer import RunningMeanStd

    torch.set_num_threads(1)
    cfg = C.load(Path(config), {**overrides, "train.total_steps": budget, "train.seed": seed, "train.mode": "sync"})
    C.validate(cfg)
    start = time.perf_counter()
    envs = [make_envs(cfg.env.id, cfg.env.envs_per_actor, cfg.env.kwargs) for _ in range(cfg.rollout.actors)]
    if obs_norm == "per_step":
        stats = RunningMeanStd(envs[0].single_observation_space.shape[0])  # shared by all envs, as one VecNormalize
        envs = [StepNormalizedEnvs(e, stats) for e in envs]
    samplers = [Sampler(e, i, seed) for i, e in enumerate(envs)]
    obs_dim, act_dim = samplers[0].obs.shape[1], envs[0].single_action_space.shape[0]
    learner = Learner(cfg, obs_dim, act_dim, "cpu")
    if obs_norm == "per_step":  # the envs normalise: the learner's normaliser stays mean 0, variance 1
        learner.normalizer.count = 1.0
        learner.normalizer.update = lambda batch: None  # type: ignore[method-assign]
    steps = 0
    while steps < budget:  # sync: every fragment from the current weights, as Trainer._sync_batches
        weights = learner.weights()
        fragments = []
        for s in samplers:
            s.set_weights(weights)
            fragments.append(s.collect(cfg.rollout.fragment_length))
        learner.update(fragments, steps)
        steps += sum(f.num_steps for f in fragments)
    policy = NumpyPolicy(learner.weights())
    # per_step: evaluated on the statistics training ended with, through the envs' own normalisation
    norm = envs[0]._norm if isinstance(envs[0], StepNormalizedEnvs) else (lambda o: o)
    ret = eval_return(lambda o: policy.mean(norm(o[None]))[0])
    return {"eval": ret, "log_std": float(learner.model.log_std.detach().mean()), "steps": steps,
            "seconds": time.perf_counter() - start}


def parse_seeds(text: str) -> list[int]:
    """'1-4,9' -> [1, 2, 3, 4, 9]."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi or lo) + 1))
    return seeds


def parse_variant(words: list[str]) -> tuple[str, dict[str, str], str]:
    """['name', 'a.b=1', 'obs_norm=per_step'] -> (name, config overrides, obs_norm)."""
    name, overrides, obs_norm = words[0], {}, "learner"
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep:
            raise SystemExit(f"variant {name}: expected key=value, got {word!r}")
        if key == "obs_norm":
            if value not in ("learner", "per_step"):
                raise SystemExit(f"variant {name}: obs_norm must be 'learner' or 'per_step', got {value!r}")
            obs_norm = value
        else:
            overrides[key] = value
    return name, overrides, obs_norm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "walker2d.yaml"))
    parser.add_argument("--budget", type=int, default=100_000)
    parser.add_argument("--seeds", default="1-8", help="e.g. 1-16 or 1,2,5")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs at once (one thread each)")
    parser.add_argument("--variant", nargs="+", action="append", metavar="NAME [KEY=VALUE ...]",
                        help="repeatable; the first is the reference the others are paired with")
    args = parser.parse_args()
    variants = [parse_variant(v) for v in (args.variant or [["base"]])]
    seeds = parse_seeds(args.seeds)
    print(f"Walker2d ablation: {args.config}, budget {args.budget:,}, seeds {args.seeds}, sync, one process per run")
    print(f"{'variant':<16} {'seed':>4} {'eval return':>12} {'log sigma':>10} {'seconds':>8}")
    results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name, _, _ in variants}
    with ProcessPoolExecutor(args.jobs) as pool:
        futures = {(name, seed): pool.submit(run, args.config, overrides, obs_norm, seed, args.budget)
                   for name, overrides, obs_norm in variants for seed in seeds}
        for (name, seed), fut in futures.items():
            r = results[name][seed] = fut.result()
            print(f"{name:<16} {seed:>4} {r['eval']:>12.1f} {r['log_std']:>10.3f} {r['seconds']:>8.1f}", flush=True)
    ref = variants[0][0]
    print(f"\nover {len(seeds)} seeds; paired against {ref}")
    print(f"{'variant':<16} {'eval return':>18} {'median':>8} {'log sigma':>10} {'paired diff':>12} {'t':>6} "
          f"{'ahead':>6}")
    for name, _, _ in variants:
        ev = [results[name][s]["eval"] for s in seeds]
        diffs = [results[name][s]["eval"] - results[ref][s]["eval"] for s in seeds]
        sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        t = statistics.mean(diffs) / (sd / math.sqrt(len(diffs))) if sd > 0 else float("nan")
        print(f"{name:<16} {statistics.mean(ev):>9.1f} +- {statistics.stdev(ev) if len(ev) > 1 else 0:>5.1f} "
              f"{statistics.median(ev):>8.1f} {statistics.mean(results[name][s]['log_std'] for s in seeds):>10.3f} "
              f"{statistics.mean(diffs):>+12.1f} {t:>+6.2f} {sum(d > 0 for d in diffs):>3}/{len(diffs)}")


if __name__ == "__main__":
    main()
