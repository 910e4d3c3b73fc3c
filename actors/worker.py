"""RolloutWorker: the thin Ray actor around a `Sampler`. All logic lives in rollout.py."""

from __future__ import annotations

import os
import warnings
from typing import Any

import ray

from actors.rollout import Sampler, make_envs
from actors.trajectory import Trajectory


class RolloutWorker:
    """Holds B envs and the latest policy; `sample` returns one fragment of T steps.

    Weights arrive as `(version, [ref])`: the reference is wrapped in a list so Ray does not
    fetch it eagerly, and the worker only calls `ray.get` when the version is new to it. Every
    worker receives the same reference, so a version is serialised once (one `ray.put`).
    """

    def __init__(self, worker_id: int, env_id: str, num_envs: int, seed: int, env_kwargs: dict[str, Any]) -> None:
        # One thread per actor: the actors are the parallelism.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        with warnings.catch_warnings():  # Ray's property warns about an API it uses itself
            warnings.simplefilter("ignore", DeprecationWarning)
            reconstructed = ray.get_runtime_context().was_current_actor_reconstructed
        if reconstructed:
            # Ray re-runs __init__ with the same arguments: without fresh entropy a restarted
            # actor would replay its first episodes (and a fault it died of, over and over).
            seed = (seed * 1_000_003 + int.from_bytes(os.urandom(4), "little")) % 2**31
        self.sampler = Sampler(make_envs(env_id, num_envs, env_kwargs), worker_id, seed)
        self.version = -1

    def sample(self, version: int, weights_ref: list[ray.ObjectRef], num_steps: int) -> Trajectory:
        if version != self.version:
            self.sampler.set_weights(ray.get(weights_ref[0]))
            self.version = version
        return self.sampler.collect(num_steps)

    def pid(self) -> int:
        return os.getpid()

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


def remote_worker_class(max_restarts: int = -1) -> Any:
    """The Ray actor class: one CPU each, spread over the cluster's nodes, restarted by Ray when
    its process dies. Tasks are not retried, so a fragment lost with a dead process is lost (and
    counted), never duplicated."""
    return ray.remote(num_cpus=1, max_restarts=max_restarts, max_task_retries=0,
                      scheduling_strategy="SPREAD")(RolloutWorker)
