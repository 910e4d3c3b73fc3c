"""`stride bench scale`: throughput against the number of actors, on the current Ray cluster.

Each point is a real, time-bounded training run (the same Trainer as `stride train`); the
first iterations (start-up) are left out. The single-core batched env rate that efficiency is
measured against is taken in the same invocation, by a one-CPU Ray task on the cluster, so the
command works unchanged on a multi-node cluster and under `ray job submit`.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import ray
from ray.cluster_utils import Cluster

from actors.envs import flat_box
from learner import config as C
from learner.trainer import Trainer, start_ray

log = logging.getLogger("stride")
WARMUP_ITERATIONS = 2


@dataclass
class ScalePoint:
    actors: int
    mode: str
    envs_per_actor: int
    fragment_length: int
    env_steps_per_s: float
    learner_samples_per_s: float
    single_core_env_steps_per_s: float
    efficiency: float
    policy_lag_mean: float
    share_sample: float
    share_update: float
    share_gae: float
    share_broadcast: float
    epochs_median: float  # PPO epochs per update before ppo.target_kl stopped it: what the update share buys
    iterations: int


@ray.remote(num_cpus=1)
def _single_core_rate(env_id: str, num_envs: int, seconds: float) -> float:
    from actors.rollout import make_envs

    envs = make_envs(env_id, num_envs)
    envs.reset(seed=0)
    rng = np.random.default_rng(0)
    shape = (num_envs, flat_box(envs.single_action_space, "action space").shape[0])
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        envs.step(rng.uniform(-1, 1, shape).astype(np.float32))
        steps += num_envs
    return steps / (time.perf_counter() - start)


def scale_point(cfg: C.Config, actors: int, seconds: float, base_rate: float) -> ScalePoint:
    run_cfg = copy.deepcopy(cfg)
    run_cfg.rollout.actors = actors
    run_cfg.train.max_seconds = seconds
    run_cfg.train.total_steps = C.NO_STEP_LIMIT
    run_cfg.train.checkpoint_every = 10**9
    run_cfg.train.video = False
    with tempfile.TemporaryDirectory(prefix="stride-bench-") as tmp:
        Trainer(run_cfg, Path(tmp), progress_stream=open(os.devnull, "w")).run()
        recs = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    recs = recs[WARMUP_ITERATIONS:] or recs
    wall = sum(r["time_iteration"] for r in recs)
    steps = sum(r["iteration_steps"] for r in recs)
    rate = steps / wall

    def share(key: str) -> float:
        return sum(r[key] for r in recs) / wall

    return ScalePoint(
        actors=actors, mode=run_cfg.train.mode, envs_per_actor=run_cfg.env.envs_per_actor,
        fragment_length=run_cfg.rollout.fragment_length, env_steps_per_s=rate,
        learner_samples_per_s=float(np.median([r["learner_samples_per_s"] for r in recs])),
        single_core_env_steps_per_s=base_rate, efficiency=rate / (actors * base_rate),
        policy_lag_mean=float(np.mean([r["policy_lag_mean"] for r in recs])),
        share_sample=share("time_sample"), share_update=share("time_update"), share_gae=share("time_gae"),
        share_broadcast=share("time_broadcast"), epochs_median=float(np.median([r["epochs"] for r in recs])),
        iterations=len(recs),
    )


@contextlib.contextmanager
def local_cluster(nodes: int, cpus_per_node: int) -> Iterator[Cluster]:
    """Several Ray nodes on this machine (ray.cluster_utils.Cluster): a head with no CPUs for the
    learner, `nodes` worker nodes for the actors, so every fragment and every weights fetch
    crosses a node boundary (the object manager's transfer, as between machines)."""
    cluster = Cluster(initialize_head=True, connect=True,
                      head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=cpus_per_node)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def bench_scale(cfg: C.Config, actor_counts: list[int], seconds: float, out_dir: Path) -> list[ScalePoint]:
    """Run every point, write scale.csv, scale.png and the config the points trained with
    (config.yaml; each point sets its own rollout.actors) into out_dir, return the points."""
    start_ray(cfg)
    base = ray.get(_single_core_rate.remote(cfg.env.id, cfg.env.envs_per_actor, min(10.0, seconds / 2)))
    log.info("single-core batched env rate (B=%d): %.0f env steps/s", cfg.env.envs_per_actor, base)
    points = []
    for n in actor_counts:
        log.info("scale point: %d actors, %s mode, %.0fs", n, cfg.train.mode, seconds)
        points.append(scale_point(cfg, n, seconds, base))
        log.info("  %.0f env steps/s, efficiency %.2f", points[-1].env_steps_per_s, points[-1].efficiency)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "scale.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(points[0])))
        writer.writeheader()
        writer.writerows(asdict(p) for p in points)
    _plot(points, out_dir / "scale.png")
    C.save(cfg, out_dir / "config.yaml")
    return points


def _plot(points: list[ScalePoint], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [p.actors for p in points]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    axes[0].plot(n, [p.env_steps_per_s for p in points], "o-", label="env steps/s")
    axes[0].plot(n, [p.actors * p.single_core_env_steps_per_s for p in points], "k--", label="N x single core")
    axes[0].set_xlabel("actors")
    axes[0].legend()
    axes[1].plot(n, [p.efficiency for p in points], "o-")
    axes[1].axhline(0.9, color="grey", ls=":")
    axes[1].set_ylim(0, 1.1)
    axes[1].set_xlabel("actors")
    axes[1].set_ylabel("efficiency")
    bottom = np.zeros(len(points))
    for key in ("share_sample", "share_gae", "share_update", "share_broadcast"):
        vals = np.array([getattr(p, key) for p in points])
        axes[2].bar([str(x) for x in n], vals, bottom=bottom, label=key.removeprefix("share_"))
        bottom += vals
    axes[2].set_xlabel("actors")
    axes[2].set_ylabel("share of iteration time")
    axes[2].legend()
    fig.suptitle(f"stride bench scale ({points[0].mode})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
