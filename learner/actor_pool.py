"""The rollout actors as the trainer sees them: which are usable, and what went wrong.

An actor is either *usable* (the trainer sends it sample calls) or *down* (its process died, its
node vanished, or it stalled and was killed). A down actor is not sent samples: a sample call to
an actor Ray cannot restart yet (its node is gone, no CPU is free) would only wait, and in sync
mode hold the whole round. Instead it gets a cheap probe (`pid`), which Ray queues until the
actor is alive again; when the probe answers, the actor is usable again and its next sample
call fetches the current weights (a restarted actor starts with none).

Every loss is counted in the shared `Counters`: a fragment whose actor died (`lost_fragments`,
`actor_failures`), an actor killed for sending nothing within `sample_timeout_s`
(`actor_timeouts`, and its fragment lost), a fragment that fails validation
(`rejected_fragments`: NaN/inf or wrong shapes). Ray runs each call at most once
(`max_task_retries=0`), so a lost fragment is never delivered twice or in part.
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from actors.trajectory import Trajectory
from actors.worker import remote_worker_class
from learner.config import Config

log = logging.getLogger("stride")


class ActorPool:
    def __init__(self, cfg: Config, counters: Any, num_actors: int, seed: int) -> None:
        self.cfg = cfg
        self.counters = counters
        cls = remote_worker_class(cfg.rollout.max_actor_restarts)
        self.workers = [
            cls.remote(i, cfg.env.id, cfg.env.envs_per_actor, seed, cfg.env.kwargs) for i in range(num_actors)
        ]
        # Every actor starts down: it is usable once Ray has placed it and its probe answers.
        self.usable: set[int] = set()
        self.probes: dict[ray.ObjectRef, int] = {w.pid.remote(): i for i, w in enumerate(self.workers)}

    def wait_ready(self, timeout: float) -> int:
        """Wait up to `timeout` s for every actor to start; returns how many did. The others
        (no free CPU for them yet) join as soon as their probe answers."""
        if self.probes:
            ray.wait(list(self.probes), num_returns=len(self.probes), timeout=timeout)
        self.revived()
        return len(self.usable)

    def __len__(self) -> int:
        return len(self.workers)

    def submit(self, i: int, version: int, weights_ref: list[ray.ObjectRef]) -> ray.ObjectRef:
        return self.workers[i].sample.remote(version, weights_ref, self.cfg.rollout.fragment_length)

    def receive(self, obj: ray.ObjectRef, i: int) -> Trajectory | None:
        """The fragment `obj` from actor `i`, or None (counted) when its actor died or it is malformed."""
        try:
            frag = ray.get(obj)
        except RayActorError as exc:
            self.counters.actor_failures += 1
            self.counters.lost_fragments += 1
            log.warning("rollout actor %d died (%s); its fragment is lost, Ray restarts it", i, type(exc).__name__)
            self._mark_down(i)
            return None
        self.counters.env_errors += frag.env_errors
        try:
            frag.validate()
        except ValueError as exc:
            self.counters.rejected_fragments += 1
            log.warning("rejected a fragment from actor %d: %s", i, exc)
            return None
        return frag

    def kill_hung(self, i: int) -> None:
        """Actor `i` sent nothing within sample_timeout_s: kill its process so Ray restarts it."""
        self.counters.actor_timeouts += 1
        self.counters.lost_fragments += 1
        log.warning("rollout actor %d sent nothing for %.0fs; killing it for a restart",
                    i, self.cfg.rollout.sample_timeout_s)
        ray.kill(self.workers[i], no_restart=False)
        self._mark_down(i)

    def _mark_down(self, i: int) -> None:
        self.usable.discard(i)
        if i not in self.probes.values():
            self.probes[self.workers[i].pid.remote()] = i

    def revived(self) -> list[int]:
        """Down actors whose probe has answered since the last call: usable again."""
        if not self.probes:
            return []
        ready, _ = ray.wait(list(self.probes), num_returns=len(self.probes), timeout=0)
        back = []
        for obj in ready:
            i = self.probes.pop(obj)
            try:
                ray.get(obj, timeout=0)
            except (RayActorError, GetTimeoutError):  # still restarting (or gone for good): ask again
                self.probes[self.workers[i].pid.remote()] = i
                continue
            log.debug("rollout actor %d is up", i)
            self.usable.add(i)
            back.append(i)
        return back

    def shutdown(self) -> None:
        for w in self.workers:
            ray.kill(w, no_restart=True)
        self.workers, self.probes = [], {}
        self.usable = set()
