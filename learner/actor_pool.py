"""The rollout actors as the trainer sees them: which are usable, and what went wrong.

An actor is either *usable* (the trainer sends it sample calls) or *down* (its process died, its
node vanished, or it stalled and was killed). A down actor is not sent samples: a sample call to
an actor Ray cannot restart yet (its node is gone, no CPU is free) would only wait, and in sync
mode hold the whole round. Instead it gets a cheap probe (`node_id`), which Ray queues until the
actor is alive again; when the probe answers, the actor is usable again and its next sample
call fetches the current weights (a restarted actor starts with none).

Every loss is counted in the shared `Counters`: a fragment whose actor died, or whose node died
before the driver had it (`lost_fragments`, `actor_failures`), an actor killed for sending
nothing within `sample_timeout_s` (`actor_timeouts`, and its fragment lost), a fragment that
fails validation (`rejected_fragments`: NaN/inf or wrong shapes), a sample call that raised
(`sample_errors`: the actor's own code failed, its process lives on; the fragment is lost and the
actor killed for a restart, so it starts again with fresh envs). Ray runs each call at most once
(`max_task_retries=0`), so a lost fragment is never delivered twice or in part. An actor whose
calls raise `rollout.max_sample_errors` times in a row raises `RolloutFailed`: a broken env fails
every call, and restarting it for ever would hide that. So does an actor whose constructor raised
(the env cannot be built on its node): Ray does not restart those, and waiting for it would hang.

An actor that has used up `rollout.max_actor_restarts` is *gone*: Ray answers every call to it at
once with `ActorDiedError`, where a restarting actor's calls wait (or raise
`ActorUnavailableError`). One such answer can also be a probe that was in flight when a
restartable actor died, so an actor is taken for gone only once its probes have answered nothing
but that, each at once, for `GONE_AFTER_S` (a probe that waits means Ray is restarting the actor,
and starts that count again); it is then no longer probed (`actors_gone`), the run goes on with the
others, and `RolloutFailed` is raised when none is left.

With `rollout.node_relays`, the fragments of actors on other nodes than the driver's are fetched
through one `FragmentRelay` per node (actors/relay.py): one object per node and round instead of
one per fragment, and the checks done there. The probe that says an actor is up also says on
which node, so a restarted actor that Ray placed elsewhere is relayed from its new node. A relay
that fails or is slow is dropped (a new one is made when next needed) and its fragments are
fetched directly: what arrives and what is counted is the same either way.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.packing import unpack
from actors.relay import RelayResult, remote_relay_class
from actors.trajectory import Trajectory
from actors.worker import remote_worker_class
from learner.config import Config

log = logging.getLogger("stride")

RELAY_TIMEOUT_S = 30.0
PROBE_RETRY_S = 1.0  # a probe unanswered this long is sent again (a tiny task per down actor)
GONE_AFTER_S = 5.0  # probes answered only by ActorDiedError this long: Ray will not restart the actor


class RolloutFailed(RuntimeError):
    """An actor's sample calls raised rollout.max_sample_errors times in a row, an actor could
    not start at all (its constructor raised: Ray does not restart such an actor), or every actor
    is gone (its restarts, rollout.max_actor_restarts, used up)."""


def cannot_start(i: int, exc: RayActorError) -> str:
    """What to tell the user when actor `i`'s constructor raised: the error, and the usual cause."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    error = (lines[-1] if lines else type(exc).__name__).rstrip(".")
    return (f"rollout actor {i} could not start ({error}). Every Ray node "
            "must be able to build the env: Stride and the env's package installed there (the image, or a "
            "runtime_env), and a custom env id registered where the actors import it (the 'module:EnvId' form "
            "imports the module first; an id registered in the driver script alone is unknown to them)")


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
        self.probes: dict[ray.ObjectRef, int] = {}
        self.probe_sent: dict[ray.ObjectRef, float] = {}
        for i in range(num_actors):
            self._probe(i)
        self.node_of: dict[int, str] = {}  # where each actor was when its probe last answered
        self.own_node = ray.get_runtime_context().get_node_id()
        self.relays: dict[str, Any] = {}  # node id -> FragmentRelay handle, made when first needed
        # How the trainer waits for fragments: without relays, pulling each to the driver's node
        # as soon as it is made overlaps the transfers with the actors still sampling; with them,
        # a fragment pulled here would cross the network twice (here, and packed by its relay).
        self.fetch_local = not cfg.rollout.node_relays
        self.errors_in_a_row: dict[int, int] = {}  # actor -> sample calls that raised since its last fragment
        self.dead_since: dict[int, float] = {}  # actor -> when its probes began to answer ActorDiedError
        self.gone: set[int] = set()  # actors Ray will not restart: no longer probed

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
        except (RayActorError, ObjectLostError) as exc:  # the actor died, or the node holding its fragment
            self._lost(i, type(exc).__name__)
            return None
        except RayTaskError as exc:  # the actor's code raised; its process lives on
            self._sample_failed(i, exc)
            return None
        self.errors_in_a_row[i] = 0
        self.counters.env_errors += frag.env_errors
        try:
            frag.validate()
        except ValueError as exc:
            self._rejected(i, str(exc))
            return None
        return frag

    def receive_many(self, items: list[tuple[ray.ObjectRef, int]]) -> list[Trajectory | None]:
        """`receive` for each (fragment, actor) of `items`, in their order: through the relays
        where `rollout.node_relays` is on and a node other than the driver's made two or more.
        The fragments must be made already: wait for them with `fetch_local=self.fetch_local`."""
        by_node: dict[str, list[int]] = {}
        if self.cfg.rollout.node_relays:
            for pos, (_, i) in enumerate(items):
                node = self.node_of.get(i)
                if node is not None and node != self.own_node:
                    by_node.setdefault(node, []).append(pos)
        calls = {self._relay(node).pack.remote([items[p][0] for p in poss]): (node, poss)
                 for node, poss in by_node.items() if len(poss) > 1}
        relayed = {p for _, poss in calls.values() for p in poss}
        direct = [pos for pos in range(len(items)) if pos not in relayed]
        if not self.fetch_local and len(direct) > 1:  # the caller's wait left them on their nodes: pull all at once
            ray.wait([items[p][0] for p in direct], num_returns=len(direct), timeout=RELAY_TIMEOUT_S)
        out: list[Trajectory | None] = [None] * len(items)
        for pos in direct:  # while the relays pack
            out[pos] = self.receive(*items[pos])
        if calls:
            ready, _ = ray.wait(list(calls), num_returns=len(calls), timeout=RELAY_TIMEOUT_S)
            for call, (node, poss) in calls.items():
                result = None
                try:
                    if call not in ready:
                        raise TimeoutError(f"no answer within {RELAY_TIMEOUT_S:.0f} s")
                    result = ray.get(call)
                except Exception as exc:  # noqa: BLE001 - whatever went wrong, the direct path decides
                    log.warning("the relay of node %s failed (%s: %s); fetching its %d fragments directly",
                                node[:8], type(exc).__name__, exc, len(poss))
                    ray.kill(self.relays.pop(node), no_restart=True)
                if result is None:
                    for p in poss:
                        out[p] = self.receive(*items[p])
                else:
                    self._apply(result, [items[p][1] for p in poss], poss, out)
        return out

    def _apply(self, result: RelayResult, actors: list[int], poss: list[int], out: list[Trajectory | None]) -> None:
        """Counts what a relay found, and puts its fragments at their positions in `out`."""
        for k in result.lost:
            self._lost(actors[k], "its actor, or the node holding its fragment, died")
        for k, why, env_errors in result.rejected:
            self.errors_in_a_row[actors[k]] = 0
            self.counters.env_errors += env_errors
            self._rejected(actors[k], why)
        if result.packed is not None:
            for k, frag in zip(result.used, unpack(result.packed), strict=True):
                self.errors_in_a_row[actors[k]] = 0
                self.counters.env_errors += frag.env_errors
                self.counters.relayed_fragments += 1
                out[poss[k]] = frag

    def _relay(self, node: str) -> Any:
        if node not in self.relays:
            # Soft: should the node be gone, Ray places it elsewhere and the call still answers.
            where = NodeAffinitySchedulingStrategy(node_id=node, soft=True)
            self.relays[node] = remote_relay_class().options(scheduling_strategy=where).remote()
        return self.relays[node]

    def _lost(self, i: int, why: str) -> None:
        self.counters.actor_failures += 1
        self.counters.lost_fragments += 1
        log.warning("rollout actor %d died (%s); its fragment is lost, Ray restarts it", i, why)
        self._mark_down(i)

    def _sample_failed(self, i: int, exc: RayTaskError) -> None:
        """Actor `i`'s sample call raised: count it, lose its fragment, restart the actor (its envs
        may be left half-stepped), or raise RolloutFailed when that keeps happening."""
        self.counters.sample_errors += 1
        self.counters.lost_fragments += 1
        n = self.errors_in_a_row[i] = self.errors_in_a_row.get(i, 0) + 1
        cause = exc.cause if isinstance(exc.cause, BaseException) else exc
        why = f"{type(cause).__name__}: {cause}"
        limit = self.cfg.rollout.max_sample_errors
        if n >= limit:
            raise RolloutFailed(f"rollout actor {i}'s sample call raised {n} times in a row "
                                f"(rollout.max_sample_errors = {limit}); the last error: {why}") from exc
        log.warning("rollout actor %d's sample call raised (%d in a row, %d stop the run); its fragment is lost "
                    "and the actor restarted. %s", i, n, limit, exc)
        self._restart(i)

    def _rejected(self, i: int, why: str) -> None:
        self.counters.rejected_fragments += 1
        log.warning("rejected a fragment from actor %d: %s", i, why)

    def kill_hung(self, i: int) -> None:
        """Actor `i` sent nothing within sample_timeout_s: kill its process so Ray restarts it."""
        self.counters.actor_timeouts += 1
        self.counters.lost_fragments += 1
        log.warning("rollout actor %d sent nothing for %.0fs; killing it for a restart",
                    i, self.cfg.rollout.sample_timeout_s)
        self._restart(i)

    def _restart(self, i: int) -> None:
        """Kill actor `i`'s process so that Ray starts it again (fresh envs, fresh seeds)."""
        ray.kill(self.workers[i], no_restart=False)
        self._mark_down(i)

    def _mark_down(self, i: int) -> None:
        self.usable.discard(i)
        if i not in self.probes.values() and i not in self.gone:
            self._probe(i)

    def _died(self, i: int, exc: RayActorError, now: float) -> None:
        """Actor `i`'s probe answered that it is dead: ask again, unless its probes have answered
        nothing else for GONE_AFTER_S (Ray will not restart it), or it never started."""
        if exc.actor_init_failed:  # Ray does not restart it: waiting would wait for ever
            log.error("rollout actor %d could not start:\n%s", i, exc)  # the full traceback
            raise RolloutFailed(cannot_start(i, exc)) from exc
        if not isinstance(exc, ray.exceptions.ActorDiedError):  # unavailable: restarting
            self.dead_since.pop(i, None)  # not "nothing but ActorDiedError" any more
            self._probe(i)
            return
        if now - self.dead_since.setdefault(i, now) < GONE_AFTER_S:
            self._probe(i)
            return
        self.gone.add(i)
        self.counters.actors_gone += 1
        restarts = self.cfg.rollout.max_actor_restarts
        if len(self.gone) == len(self.workers):
            raise RolloutFailed(f"every rollout actor is dead and Ray will not restart them: each has used up "
                                f"rollout.max_actor_restarts = {restarts} (-1 restarts without limit); "
                                f"the last died of: {exc}")
        log.error("rollout actor %d is dead and Ray will not restart it (rollout.max_actor_restarts = %d used up); "
                  "training goes on with the %d others", i, restarts, len(self.workers) - len(self.gone))

    def _probe(self, i: int) -> None:
        obj = self.workers[i].node_id.remote()
        self.probes[obj] = i
        self.probe_sent[obj] = time.monotonic()

    def revived(self) -> list[int]:
        """Down actors whose probe has answered since the last call: usable again."""
        if not self.probes:
            return []
        ready, waiting = ray.wait(list(self.probes), num_returns=len(self.probes), timeout=0)
        now = time.monotonic()
        for obj in waiting:
            # A probe sent while Ray still took the actor for merely unreachable can stay unanswered
            # after the actor has restarted: ask again rather than wait on it forever.
            if now - self.probe_sent[obj] > PROBE_RETRY_S:
                ray.cancel(obj)
                del self.probe_sent[obj]
                i = self.probes.pop(obj)
                # A gone actor's probes answer at once; one that waited means Ray is restarting
                # it, so an ActorDiedError after this is a new death, not a sign it is gone.
                self.dead_since.pop(i, None)
                self._probe(i)
        back = []
        for obj in ready:
            i = self.probes.pop(obj)
            del self.probe_sent[obj]
            try:
                self.node_of[i] = ray.get(obj, timeout=0)
            except RayActorError as exc:
                self._died(i, exc, now)
                continue
            except (GetTimeoutError, ray.exceptions.TaskCancelledError):
                self._probe(i)
                continue
            log.debug("rollout actor %d is up", i)
            self.dead_since.pop(i, None)
            self.usable.add(i)
            back.append(i)
        return back

    def shutdown(self) -> None:
        for w in [*self.workers, *self.relays.values()]:
            ray.kill(w, no_restart=True)
        self.workers, self.probes, self.probe_sent, self.relays = [], {}, {}, {}
        self.usable, self.gone = set(), set()
