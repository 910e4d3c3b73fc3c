"""A rollout actor outside Ray: pull weights over gRPC, collect fragments, push them back.

    stride actor --connect HOST:PORT [--env ID] [--envs 16] [--fragment-length 128]

The same `Sampler` as the Ray actors, in its own process; every call carries a deadline.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from actors.rollout import Sampler, make_envs
from services.proto.stride.v1 import experience_pb2, experience_pb2_grpc
from services.rpc.codec import fragment_to_msg, weights_from_bytes
from services.rpc.server import channel

log = logging.getLogger("stride.actor")


@dataclass
class RemoteActorConfig:
    address: str
    env_id: str = "stride/BipedWalker-v0"
    num_envs: int = 16
    fragment_length: int = 128
    seed: int = 0
    token: str | None = None
    tls_ca: Path | None = None
    deadline_s: float = 30.0
    name: str = ""


class RemoteActor:
    def __init__(self, cfg: RemoteActorConfig) -> None:
        self.cfg = cfg
        self.name = cfg.name or f"{socket.gethostname()}-{os.getpid()}"
        self.channel = channel(cfg.address, cfg.token, cfg.tls_ca)
        self.stub = experience_pb2_grpc.ExperienceServiceStub(self.channel)
        self.sampler = Sampler(make_envs(cfg.env_id, cfg.num_envs), worker_id=0, seed=cfg.seed)
        self.version = -1
        self.pushed = self.accepted = self.dropped = 0

    def refresh_weights(self) -> bool:
        """Fetch the learner's weights if they are newer than ours; True when they changed."""
        chunks = list(self.stub.GetWeights(experience_pb2.GetWeightsRequest(known_version=self.version),
                                           timeout=self.cfg.deadline_s))
        if not chunks or chunks[0].count == 0:
            return False
        version = chunks[0].version
        if any(c.version != version for c in chunks) or len(chunks) != chunks[0].count:
            raise RuntimeError("inconsistent weight chunks")
        self.sampler.set_weights(weights_from_bytes(version, b"".join(c.data for c in chunks)))
        self.version = version
        return True

    def step(self) -> experience_pb2.PushSummary:
        """Collect one fragment with the newest weights and push it."""
        self.refresh_weights()
        frag = self.sampler.collect(self.cfg.fragment_length)
        summary = self.stub.PushTrajectory(iter([fragment_to_msg(frag, self.name)]), timeout=self.cfg.deadline_s)
        self.pushed += 1
        self.accepted += summary.accepted
        self.dropped += summary.dropped_stale
        return summary

    def run(self, max_fragments: int | None = None, max_seconds: float | None = None) -> None:
        start = time.monotonic()
        while (max_fragments is None or self.pushed < max_fragments) and (
            max_seconds is None or time.monotonic() - start < max_seconds
        ):
            try:
                self.step()
            except grpc.RpcError as exc:
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.RESOURCE_EXHAUSTED):
                    log.warning("learner unreachable or busy (%s); retrying", exc.code().name)
                    time.sleep(1.0)
                    continue
                raise
        log.info("pushed %d fragments (%d accepted, %d stale)", self.pushed, self.accepted, self.dropped)

    def close(self) -> None:
        self.channel.close()
