"""Sampling efficiency: env steps/s of N rollout actors, against N x one core's batched env rate.

    python benchmarks/sampling_efficiency.py [--actors 1,2] [--envs-per-actor 16] [--seconds 20]

For each N the script starts a local Ray with N CPUs, N real `RolloutWorker` actors running the
default policy network (a freshly initialised one: the cost per step does not depend on the
weights), broadcasts weights once per round with `ray.put`, and gathers fragments the way the
trainer does, in both modes:
  sync:  every round, all actors sample one fragment with the newest weights; wait for all.
  async: every actor always has a fragment in flight; a new weights version is published after
         every N fragments (as the trainer does with fragments_per_update = N).
No PPO update runs (that is the learner's cost, reported separately in docs/benchmarks.md),
so this measures the actor side and the plumbing. The denominator is the batched env's rate
on one core with the same B and a random policy (no network), measured in the same run.
Efficiency = steps/s / (N x that rate). Medians of --repeats.
A third row per N, "bare", is the control: N plain processes (no Ray, random policy) stepping
the env at once, against the same denominator: the most any plumbing could reach here.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import time
from typing import Any

import numpy as np
import ray

from actors.envs import BIPED_ID
from actors.envs.batched import BatchedBipedEnv
from actors.policy import ActorCritic
from actors.worker import remote_worker_class


def random_policy_rate(env: BatchedBipedEnv, seconds: float) -> float:
    """Env steps/s of `env` stepped with uniform random actions for `seconds`."""
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        env.step(rng.uniform(-1, 1, (env.num_envs, 6)))
        steps += env.num_envs
    return steps / (time.perf_counter() - start)


def single_core_rate(num_envs: int, seconds: float) -> float:
    pid = os.getpid()
    before = os.sched_getaffinity(pid)
    os.sched_setaffinity(pid, {sorted(before)[0]})
    try:
        return random_policy_rate(BatchedBipedEnv(num_envs), seconds)
    finally:
        os.sched_setaffinity(pid, before)


def _bare_process(num_envs: int, seconds: float, start: Any, out: Any) -> None:
    env = BatchedBipedEnv(num_envs)
    start.wait()  # all processes step at the same time
    out.put(random_policy_rate(env, seconds))


def bare_processes_rate(n: int, num_envs: int, seconds: float) -> float:
    """The hardware's own scaling: n plain processes (no Ray, no policy network, not pinned)
    stepping the batched env at once; their summed env steps/s."""
    ctx = mp.get_context("spawn")  # not fork: this process runs Ray
    start, out = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_bare_process, args=(num_envs, seconds, start, out)) for _ in range(n)]
    for proc in procs:
        proc.start()
    rates = [out.get(timeout=seconds + 120) for _ in procs]
    for proc in procs:
        proc.join()
    return float(sum(rates))


def system_rate(n: int, num_envs: int, fragment: int, seconds: float, mode: str) -> float:
    cls = remote_worker_class()
    workers = [cls.remote(i, BIPED_ID, num_envs, 0, {}) for i in range(n)]
    model = ActorCritic(31, 6)
    version = 0
    ref = [ray.put(model.weights(version))]
    ray.get([w.sample.remote(version, ref, 1) for w in workers])  # warm up: envs built, weights in
    steps, start = 0, time.perf_counter()
    if mode == "sync":
        while time.perf_counter() - start < seconds:
            version += 1
            ref = [ray.put(model.weights(version))]
            frags = ray.get([w.sample.remote(version, ref, fragment) for w in workers])
            steps += sum(f.num_steps for f in frags)
    else:
        inflight = {w.sample.remote(version, ref, fragment): i for i, w in enumerate(workers)}
        received = 0
        while time.perf_counter() - start < seconds:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for obj in ready:
                i = inflight.pop(obj)
                steps += ray.get(obj).num_steps
                received += 1
                if received % n == 0:
                    version += 1
                    ref = [ray.put(model.weights(version))]
                inflight[workers[i].sample.remote(version, ref, fragment)] = i
        ray.get(list(inflight))
    rate = steps / (time.perf_counter() - start)
    for w in workers:
        ray.kill(w)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actors", default=",".join(str(n) for n in range(1, (os.cpu_count() or 1) + 1)))
    parser.add_argument("--envs-per-actor", type=int, default=16)
    parser.add_argument("--fragment-length", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    counts = [int(x) for x in args.actors.split(",")]
    rows = []
    for n in counts:
        ray.init(num_cpus=n, include_dashboard=False, logging_level="ERROR")
        for _ in range(args.repeats):
            base = single_core_rate(args.envs_per_actor, min(5.0, args.seconds / 3))
            for mode in ("sync", "async"):
                rate = system_rate(n, args.envs_per_actor, args.fragment_length, args.seconds, mode)
                rows.append((n, mode, base, rate, rate / (n * base)))
            bare = bare_processes_rate(n, args.envs_per_actor, args.seconds)
            rows.append((n, "bare", base, bare, bare / (n * base)))
        ray.shutdown()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"ray {ray.__version__}; B={args.envs_per_actor}, T={args.fragment_length}, "
          f"{args.seconds:.0f}s per point, median of {args.repeats}")
    print("(bare: N plain processes with a random policy, no Ray: what the machine itself scales to)")
    print(f"{'actors':>6} {'mode':>6} {'1-core batched env/s':>21} {'system env steps/s':>19} {'efficiency':>11}")
    for n in counts:
        for mode in ("sync", "async", "bare"):
            sel = [r for r in rows if r[0] == n and r[1] == mode]
            base, rate, eff = (statistics.median(r[k] for r in sel) for k in (2, 3, 4))
            print(f"{n:>6} {mode:>6} {base:>21,.0f} {rate:>19,.0f} {eff:>10.2f}")


if __name__ == "__main__":
    main()
