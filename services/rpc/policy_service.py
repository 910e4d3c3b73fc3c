"""PolicyService: serve a trained policy from a run's checkpoint, with no trainer running.

`PolicySource` holds the current weights; with `follow=True` it watches the run's checkpoint
folder and swaps in each newer checkpoint, so a server attached to a live run always serves
its newest weights.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import grpc
import numpy as np

from actors.envs import flat_box
from actors.policy import NumpyPolicy
from learner.evaluate import load_policy
from learner.export import SUFFIXES, read_exported
from services.proto.stride.v1 import policy_pb2, policy_pb2_grpc
from services.rpc.codec import RequestError, from_array, invalid, space, to_array
from services.rpc.server import handle_errors

log = logging.getLogger("stride.rpc")
DEFAULT_MAX_BATCH = 4096


class ExportedPolicy:
    """An exported ONNX / .pt2 / TorchScript file behind the `NumpyPolicy` interface the servicer uses."""

    def __init__(self, path: Path) -> None:
        meta, self._run = read_exported(path)
        self.meta = meta
        self.version = int(meta["policy_version"])
        self.obs_mean = np.zeros(int(meta["obs_dim"]), np.float32)  # only its size is read
        self.std = np.exp(np.asarray(meta["log_std"], np.float32))
        self._logp_const = float(-np.sum(meta["log_std"]) - 0.5 * np.log(2 * np.pi) * self.std.size)

    def mean(self, obs: np.ndarray) -> np.ndarray:
        # The exported module already clips to the action space; clipping again is harmless.
        return np.asarray(self._run(obs), np.float32)

    def act(self, obs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        noise = rng.standard_normal((obs.shape[0], self.std.size), dtype=np.float32)
        logp = self._logp_const - 0.5 * np.sum(noise * noise, axis=-1)
        return self.mean(obs) + self.std * noise, logp.astype(np.float32)


class PolicySource:
    """The policy to serve and where it came from: a run folder (its latest checkpoint; with
    `follow`, each newer one as it lands) or an exported .onnx / .pt2 / .pt file."""

    def __init__(self, run_dir: Path, follow: bool = False, poll_seconds: float = 2.0) -> None:
        self.run_dir = run_dir
        self._lock = threading.Lock()
        if run_dir.is_file():
            if follow:
                raise ValueError("--follow needs a run folder, not an exported file")
            self._load_exported(run_dir)
        else:
            self._load()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if follow:
            self._thread = threading.Thread(target=self._watch, args=(poll_seconds,), daemon=True)
            self._thread.start()

    def _load(self) -> None:
        import gymnasium as gym

        policy, state, path = load_policy(self.run_dir)
        env_cfg = state["config"]["env"]
        env = gym.make(env_cfg["id"], **env_cfg["kwargs"])
        try:
            obs_space = flat_box(env.observation_space, "observation space")
            act_space = flat_box(env.action_space, "action space")
        finally:
            env.close()
        with self._lock:
            self.policy: NumpyPolicy = policy
            self.checkpoint = path
            self.env_id = env_cfg["id"]
            self.env_steps = int(state["counters"]["env_steps"])
            self.obs_low, self.obs_high = obs_space.low.astype(np.float32), obs_space.high.astype(np.float32)
            self.act_low, self.act_high = act_space.low.astype(np.float32), act_space.high.astype(np.float32)

    def _load_exported(self, path: Path) -> None:
        if path.suffix not in SUFFIXES.values():
            raise ValueError(f"{path}: serve a run folder or an exported {' / '.join(SUFFIXES.values())} file")
        policy = ExportedPolicy(path)
        meta = policy.meta
        self.policy = policy  # type: ignore[assignment]
        self.checkpoint = path
        self.env_id = meta["env_id"]
        self.env_steps = int(meta["env_steps"])
        dim = int(meta["obs_dim"])
        self.obs_low = np.full(dim, -np.inf, np.float32)
        self.obs_high = np.full(dim, np.inf, np.float32)
        self.act_low = np.asarray(meta["act_low"], np.float32)
        self.act_high = np.asarray(meta["act_high"], np.float32)

    def _watch(self, poll: float) -> None:
        from learner import checkpoint

        while not self._stop.wait(poll):
            paths = checkpoint.list_checkpoints(self.run_dir / "checkpoints")
            if paths and paths[-1] != self.checkpoint:
                try:
                    self._load()
                    log.info("now serving %s (version %d)", self.checkpoint.name, self.policy.version)
                except (ValueError, FileNotFoundError) as exc:
                    log.warning("could not load a newer checkpoint: %s", exc)

    def snapshot(self) -> tuple[NumpyPolicy, np.ndarray, np.ndarray]:
        with self._lock:
            return self.policy, self.act_low, self.act_high

    def describe(self, max_batch: int) -> policy_pb2.PolicyInfo:
        """What is being served, read consistently with a concurrent checkpoint swap."""
        with self._lock:
            return policy_pb2.PolicyInfo(
                env_id=self.env_id, observation_space=space(self.obs_low, self.obs_high),
                action_space=space(self.act_low, self.act_high), policy_version=self.policy.version,
                source=str(self.checkpoint), env_steps=self.env_steps, max_batch=max_batch,
            )

    def close(self) -> None:
        self._stop.set()


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    def __init__(self, source: PolicySource, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self.source = source
        self.max_batch = max_batch

    @handle_errors
    def Act(self, request: policy_pb2.ActRequest, context: grpc.ServicerContext) -> policy_pb2.ActResponse:
        policy, low, high = self.source.snapshot()
        if not request.HasField("observations"):
            raise invalid("observations: missing")
        obs = from_array(request.observations, "observations", "float32", 2)
        n, dim = obs.shape
        if n == 0:
            raise invalid("observations: empty batch (shape [0, ...])")
        if n > self.max_batch:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"observations: batch of {n} exceeds the server's limit of {self.max_batch}")
        if dim != policy.obs_mean.shape[0]:
            raise invalid(f"observations: size {dim}, the policy expects {policy.obs_mean.shape[0]}")
        if request.deterministic:
            actions = policy.mean(obs)
        else:
            rng = np.random.default_rng(request.seed if request.seed else None)
            actions, _ = policy.act(obs, rng)
        actions = np.clip(actions, low, high).astype(np.float32)
        return policy_pb2.ActResponse(actions=to_array(actions), policy_version=policy.version)

    @handle_errors
    def GetPolicyInfo(self, request: policy_pb2.GetPolicyInfoRequest,
                      context: grpc.ServicerContext) -> policy_pb2.PolicyInfo:
        return self.source.describe(self.max_batch)


def register(servicer: PolicyServicer):  # noqa: ANN201 - returns the registration callback
    def add(server: grpc.Server) -> list[str]:
        policy_pb2_grpc.add_PolicyServiceServicer_to_server(servicer, server)
        return [policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name]

    return add
