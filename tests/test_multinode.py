"""Several Ray nodes on one machine (ray.cluster_utils.Cluster): actors spread over the nodes,
trajectories and weights cross node boundaries, and the run completes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import ray
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.packing import unpack
from actors.relay import remote_relay_class
from learner import config as C
from learner.trainer import Trainer
from services.bench import local_cluster
from tests.test_packing import assert_same


def test_training_spans_several_nodes(tmp_path: Path) -> None:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING")
        assert len([n for n in ray.nodes() if n["Alive"]]) == 3
        cfg = C.load(None, {"env.id": "Pendulum-v1", "env.envs_per_actor": 4, "rollout.actors": 3,
                            "rollout.fragment_length": 32, "ppo.minibatches": 4, "ppo.epochs": 1,
                            "train.total_steps": 6 * 3 * 4 * 32, "train.video": False, "train.checkpoint_every": 100})
        C.validate(cfg)
        trainer = Trainer(cfg, tmp_path)
        nodes: dict[int, str] = {}

        class NodeProbe:  # asks each actor where it runs, once training is under way
            def on_iteration(self, record, episodes) -> None:
                if not nodes:
                    nodes.update(enumerate(ray.get([w.node_id.remote() for w in trainer.workers])))

            def on_checkpoint(self, path, when) -> None:
                pass

        trainer.observers.append(NodeProbe())
        trainer.run()
        assert len(set(nodes.values())) == 3, nodes  # one actor per node
        recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        assert recs[-1]["env_steps"] == cfg.train.total_steps
        for r in recs:  # every node's actor sampled with the weights the learner had just broadcast
            assert sorted(r["fragment_workers"]) == [0, 1, 2]
            assert r["fragment_versions"] == [r["policy_version"]] * 3
    finally:
        ray.shutdown()
        cluster.shutdown()


def _fragment(seed: int, bad: bool = False):
    from tests.test_packing import fragment

    frag = fragment(seed, 8, 2, 1)
    if bad:
        frag.rewards[0, 0] = np.nan
    return frag


@ray.remote(num_cpus=1, max_restarts=0)
class FragmentMaker:
    """Stands in for a rollout actor: returns made-up fragments, or dies making one."""

    def make(self, seed: int, bad: bool = False):
        return _fragment(seed, bad)

    def die(self):
        os._exit(1)


def test_a_node_relay_packs_its_nodes_fragments_and_sorts_out_failures() -> None:
    # local_cluster: the driver attaches to the CPU-less head before the worker node exists.
    with local_cluster(nodes=1, cpus_per_node=2) as cluster:
        (node,) = cluster.worker_nodes
        here = NodeAffinitySchedulingStrategy(node_id=node.node_id, soft=False)
        maker = FragmentMaker.options(scheduling_strategy=here).remote()
        doomed = FragmentMaker.options(scheduling_strategy=here).remote()
        refs = [maker.make.remote(0), doomed.die.remote(), maker.make.remote(1, bad=True), maker.make.remote(2)]
        ray.wait(refs, num_returns=len(refs), timeout=60)
        relay = remote_relay_class().options(scheduling_strategy=here).remote()
        assert ray.get(relay.node_id.remote()) == node.node_id != ray.get_runtime_context().get_node_id()
        result = ray.get(relay.pack.remote(refs), timeout=60)
        assert result.used == (0, 3) and result.lost == (1,)
        assert [(k, env_errors) for k, _, env_errors in result.rejected] == [(2, 1)]
        assert "NaN" in result.rejected[0][1]
        for got, seed in zip(unpack(result.packed), (0, 2), strict=True):
            assert_same(got, _fragment(seed))


def test_training_with_node_relays_survives_a_relay_dying(tmp_path: Path) -> None:
    # The driver on a CPU-less head, two actors on each of two nodes: every fragment crosses a
    # node boundary and each node's two come as one packed object.
    with local_cluster(nodes=2, cpus_per_node=2):
        cfg = C.load(None, {"env.id": "Pendulum-v1", "env.envs_per_actor": 4, "rollout.actors": 4,
                            "rollout.fragment_length": 32, "rollout.node_relays": True, "ppo.minibatches": 4,
                            "ppo.epochs": 1, "train.total_steps": 8 * 4 * 4 * 32, "train.video": False,
                            "train.checkpoint_every": 100})
        C.validate(cfg)
        trainer = Trainer(cfg, tmp_path)
        killed: list[int] = []

        class RelayKiller:  # after the third update, kills one relay for good
            def on_iteration(self, record, episodes) -> None:
                if record["iteration"] == 3:
                    relays = trainer.pool.relays
                    assert len(relays) == 2
                    ray.kill(next(iter(relays.values())), no_restart=True)
                    killed.append(record["relayed_fragments"])

            def on_checkpoint(self, path, when) -> None:
                pass

        trainer.observers.append(RelayKiller())
        trainer.run()
        recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
        assert recs[-1]["env_steps"] == cfg.train.total_steps
        for r in recs:  # nothing lost to the relays, nor to the dead one
            assert sorted(r["fragment_workers"]) == [0, 1, 2, 3]
            assert r["fragment_versions"] == [r["policy_version"]] * 4
        assert recs[-1]["lost_fragments"] == 0 and recs[-1]["rejected_fragments"] == 0
        assert killed == [12]  # 3 rounds x 4 fragments, all relayed
        # The round after the kill fetched that node's two directly; the other rounds relayed all 4.
        assert recs[-1]["relayed_fragments"] == 4 * len(recs) - 2
