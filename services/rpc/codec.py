"""Conversions between protobuf messages and NumPy / domain types, with strict checks.

Every problem with a request raises `RequestError` carrying the gRPC status code that fits;
the servicers turn it into a status in one place (server.py).
"""

from __future__ import annotations

import io
import re

import grpc
import numpy as np

from actors.trajectory import EpisodeStats, Trajectory, Weights
from services.proto.stride.v1 import common_pb2, experience_pb2

DTYPES = {"float32": np.dtype("<f4"), "bool": np.dtype("bool")}
# What an episode end reason may look like: each one becomes a Prometheus label value, so a
# pushed string is kept short and plain.
END_REASON = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class RequestError(Exception):
    """A bad request: `code` is the gRPC status to answer with, the message says what was wrong."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def to_array(a: np.ndarray) -> common_pb2.Array:
    dtype = "bool" if a.dtype == np.bool_ else "float32"
    data = np.ascontiguousarray(a, dtype=DTYPES[dtype])
    return common_pb2.Array(shape=list(data.shape), dtype=dtype, data=data.tobytes())


def from_array(msg: common_pb2.Array, name: str, dtype: str, ndim: int, finite: bool = True) -> np.ndarray:
    """Decode `msg` as an array of `dtype` with `ndim` dimensions, or raise RequestError."""
    if msg.dtype != dtype:
        raise invalid(f"{name}: dtype must be {dtype!r}, got {msg.dtype!r}")
    shape = tuple(int(s) for s in msg.shape)
    if len(shape) != ndim:
        raise invalid(f"{name}: expected {ndim} dimensions, got shape {list(shape)}")
    if any(s < 0 for s in shape):
        raise invalid(f"{name}: negative dimension in shape {list(shape)}")
    expected = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
    if len(msg.data) != expected:
        raise invalid(f"{name}: shape {list(shape)} needs {expected} bytes of {dtype}, got {len(msg.data)}")
    arr = np.frombuffer(msg.data, dtype=DTYPES[dtype]).reshape(shape)
    if finite and dtype == "float32" and not np.isfinite(arr).all():
        raise invalid(f"{name}: contains NaN or inf")
    return arr


def space(low: np.ndarray, high: np.ndarray) -> common_pb2.Space:
    return common_pb2.Space(shape=list(low.shape), low=low.ravel().tolist(), high=high.ravel().tolist())


def fragment_to_msg(t: Trajectory, actor_name: str) -> experience_pb2.TrajectoryFragment:
    return experience_pb2.TrajectoryFragment(
        obs=to_array(t.obs), actions=to_array(t.actions), logp=to_array(t.logp), rewards=to_array(t.rewards),
        terminated=to_array(t.terminated), truncated=to_array(t.truncated),
        truncated_final_obs=to_array(t.final_obs),
        policy_version=t.policy_version, actor_name=actor_name,
        episode_returns=t.episodes.returns.tolist(), episode_lengths=t.episodes.lengths.tolist(),
        episode_ended_by=list(t.episodes.ended_by),
    )


def msg_to_fragment(m: experience_pb2.TrajectoryFragment, obs_dim: int, act_dim: int, worker_id: int,
                    max_steps: int) -> Trajectory:
    """Decode and check a pushed fragment against the learner's spaces; RequestError if bad."""
    obs = from_array(m.obs, "obs", "float32", 3)
    t1, b, od = obs.shape
    t = t1 - 1
    if t < 1 or b < 1:
        raise invalid(f"obs: shape {list(obs.shape)} holds no step (need T >= 1, B >= 1)")
    if t * b > max_steps:
        raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"fragment of {t * b} steps exceeds the {max_steps}-step limit")
    if od != obs_dim:
        raise invalid(f"obs: observation size {od}, the learner's env has {obs_dim}")
    actions = from_array(m.actions, "actions", "float32", 3)
    if actions.shape != (t, b, act_dim):
        raise invalid(f"actions: shape {list(actions.shape)}, expected {[t, b, act_dim]}")
    arrays = {
        "logp": from_array(m.logp, "logp", "float32", 2),
        "rewards": from_array(m.rewards, "rewards", "float32", 2),
        "terminated": from_array(m.terminated, "terminated", "bool", 2),
        "truncated": from_array(m.truncated, "truncated", "bool", 2),
    }
    for name, a in arrays.items():
        if a.shape != (t, b):
            raise invalid(f"{name}: shape {list(a.shape)}, expected {[t, b]}")
    final_obs = _final_obs(m, arrays["truncated"], obs_dim)
    if len(m.episode_returns) != len(m.episode_lengths):
        raise invalid("episode_returns and episode_lengths differ in length")
    returns = np.asarray(m.episode_returns, dtype=np.float64)
    if not np.isfinite(returns).all():
        raise invalid("episode_returns: contains NaN or inf")
    ended_by = tuple(m.episode_ended_by)
    if ended_by and len(ended_by) != len(returns):
        raise invalid(f"episode_ended_by: {len(ended_by)} reasons for {len(returns)} episodes (send one each, or none)")
    for reason in ended_by:
        if not END_REASON.fullmatch(reason):
            raise invalid(f"episode_ended_by: {reason[:80]!r} is not 1-64 characters of [A-Za-z0-9_.-]")
    return Trajectory(
        obs=obs.copy(), actions=actions.copy(), logp=arrays["logp"].copy(), rewards=arrays["rewards"].copy(),
        terminated=arrays["terminated"].copy(), truncated=arrays["truncated"].copy(), final_obs=final_obs.copy(),
        policy_version=int(m.policy_version), worker_id=worker_id,
        episodes=EpisodeStats(returns, np.asarray(m.episode_lengths, dtype=np.int64), ended_by),
    )


def _final_obs(m: experience_pb2.TrajectoryFragment, truncated: np.ndarray, obs_dim: int) -> np.ndarray:
    """The [K, obs_dim] rows of `truncated_final_obs`, or of the deprecated dense `final_obs`."""
    if m.HasField("final_obs"):
        if m.HasField("truncated_final_obs"):
            raise invalid("final_obs and truncated_final_obs are both set; send truncated_final_obs only")
        dense = from_array(m.final_obs, "final_obs", "float32", 3)
        if dense.shape != (*truncated.shape, obs_dim):
            raise invalid(f"final_obs: shape {list(dense.shape)}, expected {[*truncated.shape, obs_dim]}")
        return dense[truncated]
    k = int(np.count_nonzero(truncated))
    if not m.HasField("truncated_final_obs"):
        if k:
            raise invalid(f"truncated_final_obs: missing, and truncated has {k} true entries")
        return np.zeros((0, obs_dim), np.float32)
    rows = from_array(m.truncated_final_obs, "truncated_final_obs", "float32", 2)
    if rows.shape != (k, obs_dim):
        raise invalid(f"truncated_final_obs: shape {list(rows.shape)}, expected {[k, obs_dim]} "
                      f"(one row per true entry of truncated)")
    return rows


def weights_to_bytes(w: Weights) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **w.state)  # type: ignore[arg-type]  # numpy's stub types **kwds as allow_pickle
    return buf.getvalue()


def weights_from_bytes(version: int, data: bytes) -> Weights:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return Weights(version, {k: z[k] for k in z.files})
