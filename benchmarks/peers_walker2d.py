"""Stride against peers on Walker2d-v5 at the same sample budget, on this machine.

    pip install -e ".[peers]"            # stable-baselines3
    python benchmarks/peers_walker2d.py --budget 100000 [--only stride,sb3,cleanrl] [--seeds 1,2,3]

RLlib 2.60 pins gymnasium 1.2.2 (Stride: 1.4.0), so it runs from a virtualenv of its own:
    python3 -m venv .venv-rllib
    .venv-rllib/bin/pip install torch==2.13.0 "ray[rllib]==2.60.0" "gymnasium[mujoco]==1.2.2"
    python benchmarks/peers_walker2d.py --only stride,rllib --rllib-python .venv-rllib/bin/python

Each system trains in its own subprocess, one after the other, on all local cores it chooses
to use. Reported per system:
- env steps/s end to end: env steps divided by the wall time of training, sampling and
  learning together, from the first sample to the last update (imports and set-up, i.e. Ray
  start-up, actor / env-runner creation, env and model construction, excluded for every system);
- the return reached: the mean undiscounted return of the last 20 training episodes that
  finished before the budget ran out (raw env reward, whatever normalisation the system
  trains with);
- the evaluation return: the trained policy's mean undiscounted return over 20 episodes on
  the same seeds (10000-10019) for every system, the mean action (no exploration noise),
  clipped to the action space, on observations normalised with the statistics training ended
  with. The training-episode figure depends on each system's exploration noise (SB3 and the
  CleanRL-style script start at sigma 1) and on how its episodes are sampled (Stride's 16
  parallel envs against one env); this one does not, so it is the like-for-like figure (on
  Walker2d at 100k the training figure put Stride closer to SB3 than this one does:
  docs/benchmarks.md, session 32). RLlib's is not taken ("-").
With --curve-csv, each run's learning curve goes to a CSV too: the same figure (mean of the last
20 training episodes finished so far) every --curve-every env steps, one row per system, seed
and point. RLlib reports only its own windowed mean per iteration, so its points are that mean.
With several --seeds every system runs once per seed (systems interleaved within each seed, so
a slow spell of the machine does not land on one system only); the summary gives the mean and
standard deviation over seeds of both figures.
Peers run with their documented MuJoCo PPO settings (SB3 and the CleanRL-style script:
2048-step rollouts, 10 epochs of 64-sample minibatches, lr 3e-4; RLlib: the same batch,
minibatch, epochs and lr, one env runner); Stride runs configs/walker2d.yaml.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ENV = "Walker2d-v5"
EVAL_EPISODES = 20
EVAL_SEED = 10_000


def eval_return(act: Callable[[np.ndarray], np.ndarray], episodes: int = EVAL_EPISODES,
                seed: int = EVAL_SEED) -> float:
    """Mean undiscounted return of `act` (raw observation -> action) over `episodes` episodes of
    ENV seeded seed, seed + 1, ...; actions are clipped to the action space, as every system's
    training clips them."""
    import gymnasium as gym

    env = gym.make(ENV)
    low, high = env.action_space.low, env.action_space.high
    returns = []
    for ep in range(episodes):
        obs, _ = env.reset(seed=seed + ep)
        total, done = 0.0, False
        while not done:
            obs, r, terminated, truncated, _ = env.step(np.clip(act(np.asarray(obs, dtype=np.float32)), low, high))
            total += float(r)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return statistics.mean(returns)


def run_stride(budget: int, seed: int, config: str) -> dict:
    from learner import config as C
    from learner.trainer import Trainer

    run_dir = Path(tempfile.mkdtemp(prefix="stride-peers-"))
    cfg = C.load(Path(config), {"train.total_steps": budget, "train.video": False,
                                "train.checkpoint_every": 10**9, "train.seed": seed})
    C.validate(cfg)
    Trainer(cfg, run_dir, progress_stream=open(os.devnull, "w")).run()
    from learner.evaluate import load_policy

    policy = load_policy(run_dir)[0]  # the checkpoint written at the end
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # Training time: every iteration, first fragment to last update (Ray start-up and actor
    # creation excluded, as RLlib's build_algo and the others' env/model construction are).
    seconds = sum(r["time_iteration"] for r in recs)
    episodes = [[r["env_steps"], r["episode_return_mean"], r["episodes"]] for r in recs if r["episodes"]]
    returns: list[float] = []
    for r in reversed(recs):  # the last >= 20 episodes, weighted by how many each record holds
        if r["episodes"]:
            returns = [r["episode_return_mean"]] * r["episodes"] + returns
        if len(returns) >= 20:
            break
    return {"steps": recs[-1]["env_steps"], "seconds": seconds, "last_returns": returns[-20:], "episodes": episodes,
            "eval_return": eval_return(lambda o: policy.mean(o[None])[0])}


def run_sb3(budget: int, seed: int, config: str) -> dict:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.vec_env import VecNormalize

    episodes: list[list[float]] = []

    class EpisodeLog(BaseCallback):  # the Monitor wrapper's raw return of every finished episode
        def _on_step(self) -> bool:
            episodes.extend([self.num_timesteps, float(i["episode"]["r"]), 1] for i in self.locals["infos"]
                            if "episode" in i)
            return True

    env = VecNormalize(make_vec_env(ENV, n_envs=1, seed=seed))
    model = PPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0)
    # With no logger of its own, SB3 makes an empty /tmp/SB3-<date> folder every run; it writes nothing we read.
    model.set_logger(Logger(folder=None, output_formats=[]))
    start = time.perf_counter()
    model.learn(total_timesteps=budget, callback=EpisodeLog())
    seconds = time.perf_counter() - start
    return {"steps": int(model.num_timesteps), "seconds": seconds,
            "last_returns": [float(e["r"]) for e in list(model.ep_info_buffer)[-20:]], "episodes": episodes,
            "eval_return": eval_return(lambda o: model.predict(env.normalize_obs(o), deterministic=True)[0])}


def run_rllib(budget: int, seed: int, config: str) -> dict:
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig

    ray.init(include_dashboard=False, logging_level="ERROR")
    config = (
        PPOConfig()
        .environment(ENV)
        .env_runners(num_env_runners=1, num_envs_per_env_runner=1)
        .training(train_batch_size_per_learner=2048, minibatch_size=64, num_epochs=10, lr=3e-4, gamma=0.99,
                  lambda_=0.95, clip_param=0.2, vf_clip_param=10.0)
        .debugging(seed=seed)
    )
    algo = config.build_algo()
    start = time.perf_counter()
    steps, ret = 0, float("nan")
    episodes: list[list[float]] = []
    while steps < budget:
        result = algo.train()
        steps = int(result["num_env_steps_sampled_lifetime"])
        ret = float(result["env_runners"].get("episode_return_mean", float("nan")))
        if ret == ret:  # not NaN: some episode has finished
            episodes.append([steps, ret, 1])
    seconds = time.perf_counter() - start
    algo.stop()
    ray.shutdown()
    return {"steps": steps, "seconds": seconds, "last_returns": [ret], "episodes": episodes}


def run_cleanrl(budget: int, seed: int, config: str) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))
    from cleanrl_style_ppo import train

    result, act = train(ENV, budget, seed)
    return {**result, "eval_return": eval_return(act)}


RUNNERS = {"stride": run_stride, "sb3": run_sb3, "rllib": run_rllib, "cleanrl": run_cleanrl}


def learning_curve(episodes: list[list[float]], every: int, budget: int, window: int = 20) -> list[tuple[int, float]]:
    """The mean return of the last `window` episodes finished by each multiple of `every` env steps.

    episodes: [step, mean_return, count] in order of step: `count` episodes that finished by `step`
    with that mean return (one episode per entry for SB3 and the CleanRL-style script; one entry per
    iteration for Stride, whose records hold a mean and a count). Points before any episode has
    finished are left out.
    """
    points = []
    for step in range(every, budget + 1, every):
        done = [e for e in episodes if e[0] <= step]
        returns: list[float] = []
        for _, mean, count in reversed(done):
            returns = [mean] * int(count) + returns
            if len(returns) >= window:
                break
        if returns:
            points.append((step, statistics.mean(returns[-window:])))
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=100_000)
    parser.add_argument("--only", default="stride,sb3,rllib,cleanrl")
    parser.add_argument("--seeds", default="1", help="comma-separated seeds; every system runs once per seed")
    parser.add_argument("--stride-config", default=str(ROOT / "configs" / "walker2d.yaml"),
                        help="Stride's config file (the peers' settings are fixed)")
    parser.add_argument("--rllib-python", default=sys.executable,
                        help="the interpreter RLlib runs under (a virtualenv of its own: see above)")
    parser.add_argument("--curve-csv", help="also write every run's learning curve to this CSV file")
    parser.add_argument("--curve-every", type=int, default=50_000, help="env steps between learning-curve points")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:  # child process
        print("RESULT " + json.dumps(RUNNERS[args.run](args.budget, args.seed, args.stride_config)))
        return
    names = args.only.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    curve_rows: list[tuple[str, int, int, float]] = []
    print(f"{ENV}, budget {args.budget:,} env steps; {platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    print(f"{'system':<8} {'seed':>5} {'env steps':>10} {'seconds':>8} {'env steps/s':>12} {'return (last 20 ep)':>20} "
          f"{'eval (20 ep)':>13}")
    for seed in seeds:
        for name in names:
            python = args.rllib_python if name == "rllib" else sys.executable
            proc = subprocess.run([python, __file__, "--run", name, "--budget", str(args.budget),
                                   "--seed", str(seed), "--stride-config", args.stride_config],
                                  capture_output=True, text=True, cwd=ROOT)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                print(f"{name} seed {seed}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            r = json.loads(line[len("RESULT "):])
            rets = r["last_returns"]
            row = (name, seed, r["steps"], r["seconds"], r["steps"] / r["seconds"],
                   sum(rets) / len(rets) if rets else float("nan"), r.get("eval_return", float("nan")))
            rows.append(row)
            curve_rows += [(name, seed, step, ret) for step, ret in
                           learning_curve(r.get("episodes", []), args.curve_every, args.budget)]
            print(f"{name:<8} {seed:>5} {row[2]:>10,} {row[3]:>8.1f} {row[4]:>12,.0f} {row[5]:>20.1f} {row[6]:>13.1f}",
                  flush=True)
    if args.curve_csv:
        with open(args.curve_csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["system", "seed", "env_steps", "return_last20"])
            writer.writerows((n, s, st, f"{ret:.1f}") for n, s, st, ret in curve_rows)
        print(f"learning curves: {args.curve_csv}")
    print(f"\nover {len(seeds)} seed(s): mean +- standard deviation")
    print(f"{'system':<8} {'runs':>5} {'env steps/s':>18} {'return (last 20 ep)':>24} {'eval (20 ep)':>18}")
    summary = {}
    for name in names:
        sel = [r for r in rows if r[0] == name]
        if not sel:
            continue
        rate, ret, ev = (_mean_std([r[k] for r in sel]) for k in (4, 5, 6))  # (mean, sample std)
        summary[name] = rate[0]
        print(f"{name:<8} {len(sel):>5} {rate[0]:>10,.0f} +- {rate[1]:>4,.0f} {ret[0]:>14.1f} +- {ret[1]:>6.1f} "
              f"{ev[0]:>8.1f} +- {ev[1]:>6.1f}")
    peers = {k: v for k, v in summary.items() if k != "stride"}
    if "stride" in summary and peers:
        fastest = max(peers, key=peers.__getitem__)
        print(f"stride / fastest peer ({fastest}): {summary['stride'] / peers[fastest]:.1f}x mean env steps/s")


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


if __name__ == "__main__":
    main()
