"""Stride against peers on Walker2d-v5 at the same sample budget, on this machine.

    pip install -e ".[peers]"            # stable-baselines3 and ray[rllib]
    python benchmarks/peers_walker2d.py --budget 100000 [--only stride,sb3,rllib,cleanrl]

Each system trains in its own subprocess, one after the other, on all local cores it chooses
to use. Reported per system:
- env steps/s end to end: env steps divided by the wall time of training, sampling and
  learning together, from the first sample to the last update (imports and set-up, i.e. Ray
  start-up, actor / env-runner creation, env and model construction, excluded for every system);
- the return reached: the mean undiscounted return of the last 20 training episodes that
  finished before the budget ran out (raw env reward, whatever normalisation the system
  trains with).
Peers run with their documented MuJoCo PPO settings (SB3 and the CleanRL-style script:
2048-step rollouts, 10 epochs of 64-sample minibatches, lr 3e-4; RLlib: the same batch,
minibatch, epochs and lr, one env runner); Stride runs configs/walker2d.yaml.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = "Walker2d-v5"


def run_stride(budget: int) -> dict:
    from learner import config as C
    from learner.trainer import Trainer

    run_dir = Path(tempfile.mkdtemp(prefix="stride-peers-"))
    cfg = C.load(ROOT / "configs" / "walker2d.yaml", {"train.total_steps": budget, "train.video": False,
                                                       "train.checkpoint_every": 10**9})
    C.validate(cfg)
    Trainer(cfg, run_dir, progress_stream=open(os.devnull, "w")).run()
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # Training time: every iteration, first fragment to last update (Ray start-up and actor
    # creation excluded, as RLlib's build_algo and the others' env/model construction are).
    seconds = sum(r["time_iteration"] for r in recs)
    returns: list[float] = []
    for r in reversed(recs):  # the last >= 20 episodes, weighted by how many each record holds
        if r["episodes"]:
            returns = [r["episode_return_mean"]] * r["episodes"] + returns
        if len(returns) >= 20:
            break
    return {"steps": recs[-1]["env_steps"], "seconds": seconds, "last_returns": returns[-20:]}


def run_sb3(budget: int) -> dict:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    env = VecNormalize(make_vec_env(ENV, n_envs=1, seed=1))
    model = PPO("MlpPolicy", env, seed=1, device="cpu", verbose=0)
    start = time.perf_counter()
    model.learn(total_timesteps=budget)
    seconds = time.perf_counter() - start
    return {"steps": int(model.num_timesteps), "seconds": seconds,
            "last_returns": [float(e["r"]) for e in list(model.ep_info_buffer)[-20:]]}


def run_rllib(budget: int) -> dict:
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig

    ray.init(include_dashboard=False, logging_level="ERROR")
    config = (
        PPOConfig()
        .environment(ENV)
        .env_runners(num_env_runners=1, num_envs_per_env_runner=1)
        .training(train_batch_size_per_learner=2048, minibatch_size=64, num_epochs=10, lr=3e-4, gamma=0.99,
                  lambda_=0.95, clip_param=0.2, vf_clip_param=10.0)
        .debugging(seed=1)
    )
    algo = config.build_algo()
    start = time.perf_counter()
    steps, ret = 0, float("nan")
    while steps < budget:
        result = algo.train()
        steps = int(result["num_env_steps_sampled_lifetime"])
        ret = float(result["env_runners"].get("episode_return_mean", float("nan")))
    seconds = time.perf_counter() - start
    algo.stop()
    ray.shutdown()
    return {"steps": steps, "seconds": seconds, "last_returns": [ret]}


def run_cleanrl(budget: int) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))
    from cleanrl_style_ppo import train

    return train(ENV, budget)


RUNNERS = {"stride": run_stride, "sb3": run_sb3, "rllib": run_rllib, "cleanrl": run_cleanrl}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=100_000)
    parser.add_argument("--only", default="stride,sb3,rllib,cleanrl")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:  # child process
        print("RESULT " + json.dumps(RUNNERS[args.run](args.budget)))
        return
    rows = []
    for name in args.only.split(","):
        proc = subprocess.run([sys.executable, __file__, "--run", name, "--budget", str(args.budget)],
                              capture_output=True, text=True, cwd=ROOT)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(line[len("RESULT "):])
        rets = r["last_returns"]
        rows.append((name, r["steps"], r["seconds"], r["steps"] / r["seconds"],
                     sum(rets) / len(rets) if rets else float("nan")))
    print(f"{ENV}, budget {args.budget:,} env steps; {platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    print(f"{'system':<8} {'env steps':>10} {'seconds':>8} {'env steps/s':>12} {'return (last 20 ep)':>20}")
    for name, steps, secs, rate, ret in rows:
        print(f"{name:<8} {steps:>10,} {secs:>8.1f} {rate:>12,.0f} {ret:>20.1f}")
    peers = [r for r in rows if r[0] != "stride"]
    stride = next((r for r in rows if r[0] == "stride"), None)
    if stride and peers:
        fastest = max(peers, key=lambda r: r[3])
        print(f"stride / fastest peer ({fastest[0]}): {stride[3] / fastest[3]:.1f}x env steps/s")


if __name__ == "__main__":
    main()
