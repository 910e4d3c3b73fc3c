"""Promise 2: with several Ray nodes on one machine (ray.cluster_utils.Cluster), removing a worker
node mid-run leaves training going on the remaining nodes, and the lost node's actor is used
again once a node is added back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster
from ray.exceptions import RayActorError

from learner import config as C
from learner.actor_pool import ActorPool
from learner.learner import Learner
from learner.trainer import Counters, Trainer
from services.bench import local_cluster
from tests.chaos.helpers import TrainerThread, records, small_config, wait_for


def _node_of(worker) -> str | None:
    try:
        return ray.get(worker.node_id.remote(), timeout=30)
    except (RayActorError, ray.exceptions.GetTimeoutError):
        return None


def test_losing_a_node_and_getting_it_back(tmp_path: Path) -> None:
    # The head runs only the learner (0 CPUs): every actor lives on a worker node, so an actor
    # whose node is removed can only come back on a node added later.
    # The driver connects before the worker nodes exist, so it attaches to the head's raylet.
    cluster = Cluster(initialize_head=True, connect=True,
                      head_node_args={"num_cpus": 0, "include_dashboard": False})
    thread: TrainerThread | None = None
    try:
        nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        cfg = small_config(**{"train.total_steps": 10_000 * 2 * 4 * 32, "train.checkpoint_every": 1000})
        trainer = Trainer(cfg, tmp_path)
        thread = TrainerThread(trainer)
        thread.start()
        wait_for("3 updates", lambda: len(records(tmp_path)) >= 3, alive=thread)
        placement = {i: _node_of(w) for i, w in enumerate(trainer.workers)}
        assert len(set(placement.values())) == 2, placement  # one actor per worker node
        victim = 1
        doomed = next(n for n in nodes if n.node_id == placement[victim])
        removed_at = len(records(tmp_path))
        t0 = time.monotonic()
        cluster.remove_node(doomed)
        # Training goes on with the other node's actor alone.
        wait_for("5 one-actor updates", lambda: sum(
            r["fragment_workers"] == [0] for r in records(tmp_path)[removed_at:]) >= 5, alive=thread)
        detected_s = time.monotonic() - t0
        alone = records(tmp_path)[-1]
        assert alone["actors_alive"] == 1 and alone["actor_failures"] >= 1
        # A node comes back: the lost actor is restarted there and trains again.
        fresh = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        back_at = len(records(tmp_path))
        wait_for("the lost actor's fragments again",
                 lambda: any(victim in r["fragment_workers"] for r in records(tmp_path)[back_at:]), alive=thread)
        assert _node_of(trainer.workers[victim]) == fresh.node_id
        thread.stop()
        recs = records(tmp_path)
        assert recs[-1]["actors_alive"] == 2
        for r in recs:  # sync mode: only the current weights, before, during and after the loss
            assert r["fragment_versions"] == [r["policy_version"]] * r["fragments"]
        ids = [i for r in recs for i in r["fragment_ids"]]
        assert len(ids) == len(set(ids))
        print(f"node loss detected and worked around within {detected_s:.1f}s; "
              f"{recs[-1]['lost_fragments']} fragments lost")
    finally:
        if thread is not None and thread.is_alive():
            thread.stop()  # before Ray goes: a running trainer would start a new one
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.parametrize("relays", [False, True], ids=["direct", "relayed"])
def test_fragments_on_a_node_that_dies_before_they_are_fetched_are_counted_lost(relays: bool) -> None:
    # Made, still on their node (the driver waited without fetching, as with node relays), and
    # then the node goes: Ray cannot rebuild an actor call's result, and the pool counts both
    # fragments as lost instead of raising, whether it fetches them directly or through a relay.
    with local_cluster(nodes=1, cpus_per_node=2) as cluster:
        (node,) = cluster.worker_nodes
        # Fragments of ~0.5 MB: Ray keeps results under 100 kB with their owner (the driver),
        # larger ones in the object store of the node that made them, where a node loss takes them.
        cfg = C.load(None, {"env.id": "Pendulum-v1", "env.envs_per_actor": 8, "rollout.fragment_length": 4096,
                            "rollout.node_relays": relays})
        C.validate(cfg)
        counters = Counters()
        pool = ActorPool(cfg, counters, 2, seed=0)
        assert pool.wait_ready(timeout=60) == 2 and set(pool.node_of.values()) == {node.node_id}
        weights = [ray.put(Learner(cfg, 3, 1, "cpu").weights())]
        refs = [pool.submit(i, 0, weights) for i in range(2)]
        ray.wait(refs, num_returns=2, fetch_local=False, timeout=60)
        cluster.remove_node(node)
        assert pool.receive_many([(refs[0], 0), (refs[1], 1)]) == [None, None]
        assert (counters.lost_fragments, counters.actor_failures, counters.relayed_fragments) == (2, 2, 0)
        assert pool.usable == set()  # both wait for a probe: back once a node has room for them
