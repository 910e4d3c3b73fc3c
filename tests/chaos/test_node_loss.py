"""Promise 2: with several Ray nodes on one machine (ray.cluster_utils.Cluster), removing a worker
node mid-run leaves training going on the remaining nodes, and the lost node's actor is used
again once a node is added back."""

from __future__ import annotations

import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster
from ray.exceptions import RayActorError

from learner.trainer import Trainer
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
