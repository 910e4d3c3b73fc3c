"""ExperienceService: actors outside Ray push fragments to the learner and pull its weights.

`ExperienceHub` is the thread-safe handoff between the gRPC handler threads and the trainer
(it implements the trainer's `ExternalSource`): handlers queue decoded, checked fragments;
the trainer drains them each round and applies the same staleness rule as to Ray fragments.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator

import grpc

from actors.trajectory import Trajectory, Weights
from services.proto.stride.v1 import experience_pb2, experience_pb2_grpc
from services.rpc.codec import RequestError, invalid, msg_to_fragment, weights_to_bytes
from services.rpc.server import handle_errors

CHUNK_BYTES = 1 << 20
REMOTE_WORKER_BASE = 10_000  # worker ids of remote actors start here (Ray actors are 0..N-1)


class ExperienceHub:
    def __init__(self, obs_dim: int, act_dim: int, max_lag: int, max_fragment_steps: int = 1 << 20,
                 max_queued: int = 1024) -> None:
        self.obs_dim, self.act_dim, self.max_lag = obs_dim, act_dim, max_lag
        self.max_fragment_steps = max_fragment_steps
        self._queue: queue.Queue[Trajectory] = queue.Queue(maxsize=max_queued)
        self._lock = threading.Lock()
        self._version = -1
        self._blob = b""
        self._names: dict[str, int] = {}
        self.accepted = 0
        self._received = 0  # numbers the fragments' ids
        self.dropped_stale = 0

    # -- trainer side ---------------------------------------------------------------------
    def publish(self, weights: Weights) -> None:
        blob = weights_to_bytes(weights)  # serialised once per version, shared by every reader
        with self._lock:
            self._version, self._blob = weights.version, blob

    def drain(self) -> list[Trajectory]:
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                return out

    # -- handler side ---------------------------------------------------------------------
    def current(self) -> tuple[int, bytes]:
        with self._lock:
            return self._version, self._blob

    def worker_id(self, name: str) -> int:
        with self._lock:
            return self._names.setdefault(name, REMOTE_WORKER_BASE + len(self._names))

    def offer(self, frag: Trajectory) -> bool:
        """Queue a fragment unless it is already too stale; True when queued."""
        version, _ = self.current()
        if frag.policy_version > version:
            raise invalid(f"policy_version {frag.policy_version} is unknown: the learner is at {version}")
        if version - frag.policy_version > self.max_lag:
            with self._lock:
                self.dropped_stale += 1
            return False
        with self._lock:
            frag = dataclasses.replace(frag, fragment_id=f"remote{frag.worker_id}-{self._received}")
            self._received += 1
        try:
            self._queue.put_nowait(frag)
        except queue.Full:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, "learner queue full; retry later") from None
        with self._lock:
            self.accepted += 1
        return True


class ExperienceServicer(experience_pb2_grpc.ExperienceServiceServicer):
    def __init__(self, hub: ExperienceHub) -> None:
        self.hub = hub

    @handle_errors
    def PushTrajectory(self, request_iterator: Iterator[experience_pb2.TrajectoryFragment],
                       context: grpc.ServicerContext) -> experience_pb2.PushSummary:
        accepted = dropped = 0
        for i, msg in enumerate(request_iterator):
            try:
                frag = msg_to_fragment(msg, self.hub.obs_dim, self.hub.act_dim,
                                       self.hub.worker_id(msg.actor_name or context.peer()),
                                       self.hub.max_fragment_steps)
                if self.hub.offer(frag):
                    accepted += 1
                else:
                    dropped += 1
            except RequestError as exc:  # fragments before this one stay accepted
                raise RequestError(exc.code, f"fragment {i}: {exc} ({accepted} earlier fragments accepted)") from None
        return experience_pb2.PushSummary(accepted=accepted, dropped_stale=dropped,
                                          learner_version=self.hub.current()[0])

    def GetWeights(self, request: experience_pb2.GetWeightsRequest,
                   context: grpc.ServicerContext) -> Iterator[experience_pb2.WeightsChunk]:
        version, blob = self.hub.current()
        if version < 0:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the learner has not published weights yet")
        if request.known_version == version:
            yield experience_pb2.WeightsChunk(version=version, index=0, count=0, total_bytes=0)
            return
        count = max(1, -(-len(blob) // CHUNK_BYTES))
        for i in range(count):
            yield experience_pb2.WeightsChunk(version=version, index=i, count=count, total_bytes=len(blob),
                                              data=blob[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES])


def register(servicer: ExperienceServicer):  # noqa: ANN201 - returns the registration callback
    def add(server: grpc.Server) -> list[str]:
        experience_pb2_grpc.add_ExperienceServiceServicer_to_server(servicer, server)
        return [experience_pb2.DESCRIPTOR.services_by_name["ExperienceService"].full_name]

    return add
