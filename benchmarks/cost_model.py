"""The numbers behind docs/scaling.md's model of Stride at 1,000 actors.

    python benchmarks/cost_model.py [--learner-batch 32768] [--repeats 5] [--set ppo.target_kl=0 ...]

Measures, on this machine (median of --repeats):
  1. bytes per env step of a biped fragment (B=16, T=128), as arrays and as Ray serialises it;
  2. bytes of one weights version (the default 128x128 policy + value net + normaliser);
  3. cross-node transfer into the driver: fragments produced on another Ray node of a local
     two-node cluster (ray.cluster_utils.Cluster) fetched with ray.get, MB/s and fragments/s;
  4. the learner's time per sample (GAE + the default PPO epochs x minibatches, learner/config.py)
     on the CPU, and on CUDA when present;
  5. one actor's env steps/s with the policy in the loop (collect(), one core).
Then prints the demand at N actors against the capacity of one learner process.
"""

from __future__ import annotations

import argparse
import pickle
import platform
import statistics
import time

import ray
import torch
from ray.cluster_utils import Cluster

from actors.envs import BIPED_ID
from actors.rollout import Sampler, make_envs
from actors.trajectory import Trajectory
from learner import config as C
from learner.learner import Learner

B, T = 16, 128


def biped_fragment(seed: int = 0) -> tuple[Trajectory, float]:
    """A real fragment from the default (untrained) policy, and the steps/s it was made at."""
    cfg = C.load(None)
    learner = Learner(cfg, 31, 6, "cpu")
    s = Sampler(make_envs(BIPED_ID, B), 0, seed)
    s.set_weights(learner.weights())
    s.collect(T)  # warm-up
    t0 = time.perf_counter()
    frag = s.collect(T)
    return frag, T * B / (time.perf_counter() - t0)


@ray.remote(num_cpus=1)
def remote_fragment(seed: int) -> Trajectory:
    return biped_fragment(seed)[0]


def learner_seconds_per_sample(device: str, batch: int, repeats: int, overrides: dict[str, str]) -> float:
    cfg = C.load(None, overrides)
    learner = Learner(cfg, 31, 6, device)
    frag, _ = biped_fragment()
    frags = [frag] * (batch // (T * B))
    learner.update(frags, 0)  # warm-up (CUDA context, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        learner.update(frags, 0)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / (len(frags) * T * B)


def cross_node_fetch(fragments: int, repeats: int) -> tuple[float, float]:
    """(MB/s, fragments/s) for ray.get in the driver of fragments made on another node."""
    cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        rates = []
        nbytes = 0
        for r in range(repeats):
            refs = [remote_fragment.remote(1000 * r + i) for i in range(fragments)]
            ray.wait(refs, num_returns=len(refs), fetch_local=False)  # made, but still on the other node
            t0 = time.perf_counter()
            got = ray.get(refs)
            dt = time.perf_counter() - t0
            nbytes = sum(len(pickle.dumps(f, protocol=5)) for f in got)
            rates.append((nbytes / dt / 1e6, len(got) / dt))
        return statistics.median(x for x, _ in rates), statistics.median(y for _, y in rates)
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--learner-batch", type=int, default=32768)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--fragments", type=int, default=24, help="fragments per cross-node fetch")
    ap.add_argument("--actors", type=int, default=1000, help="N for the model")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="config override for the learner timing, e.g. ppo.target_kl=0 (every epoch runs)")
    args = ap.parse_args()
    overrides = dict(o.split("=", 1) for o in args.overrides)

    frag, actor_rate = biped_fragment()
    arrays = sum(getattr(frag, k).nbytes for k in ("obs", "actions", "logp", "rewards", "terminated", "truncated",
                                                     "final_obs"))
    per_step = arrays / frag.num_steps
    wire = len(pickle.dumps(frag, protocol=5)) / frag.num_steps
    weights = Learner(C.load(None), 31, 6, "cpu").weights().nbytes
    mb_s, frags_s = cross_node_fetch(args.fragments, args.repeats)
    cpu = learner_seconds_per_sample("cpu", args.learner_batch, args.repeats, overrides)
    gpu = (learner_seconds_per_sample("cuda", args.learner_batch, args.repeats, overrides)
           if torch.cuda.is_available() else None)

    print(f"machine: {platform.node()}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, ray {ray.__version__}, cuda {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "")
          + (f", overrides {overrides}" if overrides else ""))
    print(f"{'quantity':<52} {'value':>14}")
    print(f"{'fragment bytes per env step (arrays)':<52} {per_step:>14.0f}")
    print(f"{'fragment bytes per env step (serialised)':<52} {wire:>14.0f}")
    print(f"{'weights bytes per version':<52} {weights:>14,}")
    print(f"{'one actor, env steps/s (policy in the loop)':<52} {actor_rate:>14,.0f}")
    print(f"{'cross-node fetch into the driver, MB/s':<52} {mb_s:>14,.0f}")
    print(f"{'cross-node fetch into the driver, fragments/s':<52} {frags_s:>14,.0f}")
    print(f"{'learner CPU time per sample (us), batch ' + str(args.learner_batch):<52} {cpu * 1e6:>14.2f}")
    if gpu is not None:
        print(f"{'learner GPU time per sample (us), batch ' + str(args.learner_batch):<52} {gpu * 1e6:>14.3f}")

    n = args.actors
    steps = n * actor_rate
    print(f"\nmodel at {n} actors x {B} envs (each {actor_rate:,.0f} env steps/s): {steps / 1e6:.1f} M env steps/s")
    print(f"{'resource':<44} {'demand':>14} {'one-process capacity':>22} {'ratio':>8}")
    rows = [("trajectories into the learner (MB/s)", steps * wire / 1e6, mb_s),
            ("fragments into the driver (/s)", steps / (T * B), frags_s),
            ("learner CPU (cores busy)", steps * cpu, 1.0)]
    if gpu is not None:
        rows.append(("learner GPU (GPUs busy)", steps * gpu, 1.0))
    versions = 1.0 / (n * T * B * (gpu or cpu))  # sync: one version per update of all N fragments
    rows.append(("weights out of the head, per actor (MB/s)", versions * weights * n / 1e6, mb_s))
    for name, demand, cap in rows:
        print(f"{name:<44} {demand:>14,.1f} {cap:>22,.1f} {demand / cap:>8.1f}")


if __name__ == "__main__":
    main()
