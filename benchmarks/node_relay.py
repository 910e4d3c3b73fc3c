"""Cross-node fragment ingest with and without node relays (rollout.node_relays).

    python benchmarks/node_relay.py [--fragments 16,32] [--repeats 7] [--phases]

A local cluster (ray.cluster_utils.Cluster): the driver on a CPU-less head, one 1-CPU node
holding a maker actor that returns K real biped fragments (B=16, T=128, untrained policy; copies
of one collected fragment with their own arrays, so every object is distinct). For each K and
repeat the fragments are made and left on their node, then taken into the driver through
`ActorPool.receive_many`, the trainer's own path, with relays off (one fetch per fragment) and
on (the node's relay packs the K into one object), in alternating order. Reported, medians:
fragments/s of wall time, and the driver's CPU time per fragment (time.process_time), the
figure that caps one learner process's ingest when the relays run on other machines' cores.
On one machine every node shares its cores, so the wall figure here includes the relay's work.
--phases also times each step of both paths for the largest K (wall and driver CPU, medians).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from dataclasses import replace

import ray
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.packing import ENV_AXIS_ARRAYS, unpack
from actors.relay import remote_relay_class
from actors.trajectory import Trajectory
from learner import config as C
from learner.actor_pool import ActorPool
from learner.trainer import Counters


@ray.remote(num_cpus=1)
class FragmentMaker:
    def __init__(self) -> None:
        from benchmarks.cost_model import biped_fragment

        self.frag, _ = biped_fragment()

    def make(self, k: int) -> Trajectory:
        arrays = {n: getattr(self.frag, n).copy() for n in (*ENV_AXIS_ARRAYS, "final_obs")}
        return replace(self.frag, **arrays, fragment_id=f"0-0-{k}")


def ingest(pool: ActorPool, maker, k: int, relays: bool) -> tuple[float, float]:
    """(wall s, driver CPU s) to receive k fragments made on the maker's node."""
    refs = [maker.make.remote(j) for j in range(k)]
    ray.wait(refs, num_returns=k, fetch_local=False)  # made, still on their node
    pool.cfg.rollout.node_relays, pool.fetch_local = relays, not relays
    w0, c0 = time.perf_counter(), time.process_time()
    ray.wait(refs, num_returns=k, fetch_local=pool.fetch_local)  # the trainer's wait: direct, it pulls them all
    got = pool.receive_many([(ref, j) for j, ref in enumerate(refs)])
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    if sum(f is not None for f in got) != k:
        raise RuntimeError(f"received {sum(f is not None for f in got)} of {k} fragments")
    return wall, cpu


def phases(maker, node_id: str, k: int, repeats: int) -> list[tuple[str, float, float]]:
    """(step, wall ms, driver CPU ms) for each step of the relay path and of the direct path."""
    relay = remote_relay_class().options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, False)).remote()
    steps: dict[str, list[tuple[float, float]]] = {}
    clock = [0.0, 0.0]

    def lap(name: str, keep: bool) -> None:
        """Time since the previous lap, under `name`."""
        w, c = time.perf_counter(), time.process_time()
        if keep:
            steps.setdefault(name, []).append((1e3 * (w - clock[0]), 1e3 * (c - clock[1])))
        clock[:] = [time.perf_counter(), time.process_time()]

    for r in range(repeats + 1):  # the first round warms the relay up, and is left out
        keep = r > 0
        refs = [maker.make.remote(j) for j in range(k)]
        ray.wait(refs, num_returns=k, fetch_local=False)
        lap("", False)
        call = relay.pack.remote(refs)
        ray.wait([call], fetch_local=False)
        lap("relay: pack on its node", keep)
        ray.wait([call])
        lap("relay: pull the packed object", keep)
        result = ray.get(call)
        lap("relay: ray.get in the driver", keep)
        unpack(result.packed)
        lap("relay: unpack", keep)
        refs = [maker.make.remote(j) for j in range(k)]
        ray.wait(refs, num_returns=k, fetch_local=False)
        lap("", False)
        ray.wait(refs, num_returns=k)
        lap("direct: pull the fragments", keep)
        for ref in refs:
            ray.get(ref).validate()
        lap("direct: ray.get + validate each", keep)
    ray.kill(relay)
    return [(name, statistics.median(w for w, _ in xs), statistics.median(c for _, c in xs))
            for name, xs in steps.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fragments", default="16,32", help="fragments per round (K), comma-separated")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--phases", action="store_true", help="also time each step of both paths")
    args = ap.parse_args()
    counts = [int(x) for x in args.fragments.split(",")]
    cluster = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        node = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        there = NodeAffinitySchedulingStrategy(node.node_id, soft=False)
        maker = FragmentMaker.options(scheduling_strategy=there).remote()
        cfg = C.load(None)
        counters = Counters()
        pool = ActorPool(cfg, counters, 0, 0)  # no actors of its own: only its receive path
        rows = []
        for k in counts:
            pool.node_of = {j: node.node_id for j in range(k)}
            ingest(pool, maker, k, True)  # warm-up: the relay actor starts
            ingest(pool, maker, k, False)
            res: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
            for r in range(args.repeats):
                for relays in ((False, True) if r % 2 == 0 else (True, False)):
                    res[relays].append(ingest(pool, maker, k, relays))
            for relays in (False, True):
                walls, cpus = zip(*res[relays], strict=True)
                rows.append((k, "relay" if relays else "direct", k / statistics.median(walls),
                             1e3 * statistics.median(cpus) / k))
        steps = phases(maker, node.node_id, max(counts), args.repeats) if args.phases else []
        if counters.relayed_fragments != sum(counts) * (args.repeats + 1):
            raise RuntimeError(f"the relay path took {counters.relayed_fragments} fragments; some fell back")
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(f"machine: {platform.node()}, {platform.processor() or platform.machine()}, ray {ray.__version__}, "
          f"{args.repeats} repeats")
    print(f"{'K':>4} {'path':<7} {'wall fragments/s':>17} {'driver CPU ms/fragment':>23}")
    for k, path, rate, cpu_ms in rows:
        print(f"{k:>4} {path:<7} {rate:>17,.0f} {cpu_ms:>23.3f}")
    for k in sorted({r[0] for r in rows}):
        d, r = (next(x for x in rows if x[0] == k and x[1] == p) for p in ("direct", "relay"))
        print(f"K={k}: relay/direct wall rate {r[2] / d[2]:.2f}x, driver CPU per fragment {d[3] / r[3]:.2f}x less")
    if steps:
        print(f"\nsteps for K={max(counts)}: {'wall ms':>10} {'driver CPU ms':>14}")
        for name, wall, cpu in steps:
            print(f"  {name:<34} {wall:>10.1f} {cpu:>14.2f}")


if __name__ == "__main__":
    main()
