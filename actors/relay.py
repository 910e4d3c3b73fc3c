"""FragmentRelay: one per node, it turns that node's fragments into one object for the learner.

The driver pulls every fragment from the node that made it; at 1,000 actors one learner process
would take in thousands of objects a second (docs/scaling.md's model). With relays it hands each
node's relay the references of the fragments made there (no data moves); the relay reads them
from its node's shared memory, checks them (`Trajectory.validate`, so that cost is spread over
the nodes too) and returns one `PackedFragments`: one cross-node object instead of K.

A fragment whose actor died comes back as `lost`, one that fails its checks as `rejected`; any
other error of the fragment's task (the actor's code raised) is raised from `pack`, and the
driver then fetches that node's fragments itself, where it is counted (`sample_errors`) and the
actor restarted, as without relays.
The objects belong to the driver, so a relay that dies loses nothing: the driver falls back to
fetching those fragments directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import ObjectLostError, RayActorError

from actors.packing import PackedFragments, pack


@dataclass(frozen=True)
class RelayResult:
    packed: PackedFragments | None  # the fragments that arrived and passed their checks, in order
    used: tuple[int, ...]  # their indices in the list `pack` was given
    lost: tuple[int, ...]  # indices whose actor (or the node holding the fragment) died
    rejected: tuple[tuple[int, str, int], ...]  # (index, why, env_errors) of fragments failing validate()


class FragmentRelay:
    def pack(self, refs: list[ray.ObjectRef]) -> RelayResult:
        """`refs` are fragment references made on this node (passed in a list, so Ray does not
        resolve them into the call: this method fetches them and sorts out the failures)."""
        lost_errors = (RayActorError, ObjectLostError)  # the actor died, or the node holding the fragment
        try:
            got: list[Any] = ray.get(refs)  # one request for all: the common case
        except lost_errors:  # fetch one by one to tell which
            got = []
            for ref in refs:
                try:
                    got.append(ray.get(ref))
                except lost_errors:
                    got.append(None)
        frags, used, lost, rejected = [], [], [], []
        for k, frag in enumerate(got):
            if frag is None:
                lost.append(k)
                continue
            try:
                frag.validate()
            except ValueError as exc:
                rejected.append((k, str(exc), frag.env_errors))
                continue
            frags.append(frag)
            used.append(k)
        return RelayResult(pack(frags) if frags else None, tuple(used), tuple(lost), tuple(rejected))

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


def remote_relay_class() -> Any:
    """The Ray actor class: no CPU of its own (it only moves memory, ~1 ms per fragment), so it
    never takes an actor's place. Not restarted and calls not retried: the driver fetches a dead
    relay's fragments itself and makes a new relay for the next round."""
    return ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)(FragmentRelay)
