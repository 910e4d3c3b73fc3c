"""Several Ray nodes on one machine (ray.cluster_utils.Cluster): actors spread over the nodes,
trajectories and weights cross node boundaries, and the run completes."""

from __future__ import annotations

import json
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from learner import config as C
from learner.trainer import Trainer


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
