"""gRPC services on loopback: PolicyService, ExperienceService, auth, TLS, health, reflection,
limits, per-RPC metrics, bad input (including a hypothesis fuzz), export, stub freshness."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from actors.trajectory import EpisodeStats, Trajectory
from learner import config as C
from learner.trainer import Trainer
from services.metrics import RpcMetrics
from services.proto.stride.v1 import common_pb2, experience_pb2, experience_pb2_grpc, policy_pb2, policy_pb2_grpc
from services.rpc import experience_service as es
from services.rpc import policy_service as ps
from services.rpc.codec import fragment_to_msg, to_array, weights_from_bytes
from services.rpc.server import Security, Server, channel
from tests.conftest import start_local_ray

ROOT = Path(__file__).resolve().parents[1]
OBS = 31
ACT = 6


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real run folder with one checkpoint of a (freshly initialised) biped policy."""
    d = tmp_path_factory.mktemp("run")
    cfg = C.load(None, {"train.video": False})
    trainer = Trainer(cfg, d)
    trainer.learner.normalizer.update(np.random.default_rng(0).normal(size=(100, OBS)))
    trainer.learner._sync_normalizer()
    trainer.save_checkpoint()
    (d / "config.yaml").write_text("")
    return d


@pytest.fixture(scope="module")
def policy_server(run_dir):
    registry = CollectorRegistry()
    source = ps.PolicySource(run_dir)
    server = Server(ps.register(ps.PolicyServicer(source, max_batch=256)), metrics=RpcMetrics(registry),
                    max_message_bytes=1 << 20)
    ch = channel(server.address, max_message_bytes=4 << 20)
    yield server, policy_pb2_grpc.PolicyServiceStub(ch), source, registry
    ch.close()
    server.stop(0)


def act(stub, obs: np.ndarray, deterministic: bool = True, seed: int = 0) -> policy_pb2.ActResponse:
    return stub.Act(policy_pb2.ActRequest(observations=to_array(obs), deterministic=deterministic, seed=seed),
                    timeout=10)


def code_of(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code(), info.value.details()


def test_act_returns_the_policys_actions(policy_server) -> None:
    _, stub, source, _ = policy_server
    obs = np.random.default_rng(1).normal(size=(7, OBS)).astype(np.float32)
    reply = act(stub, obs)
    actions = np.frombuffer(reply.actions.data, np.float32).reshape(list(reply.actions.shape))
    expected = np.clip(source.policy.mean(obs), -1, 1)
    np.testing.assert_allclose(actions, expected, rtol=1e-6)
    assert reply.policy_version == source.policy.version
    a = act(stub, obs, deterministic=False, seed=5)
    b = act(stub, obs, deterministic=False, seed=5)
    assert a.actions.data == b.actions.data and a.actions.data != reply.actions.data


def test_policy_info(policy_server, run_dir) -> None:
    _, stub, source, _ = policy_server
    info = stub.GetPolicyInfo(policy_pb2.GetPolicyInfoRequest(), timeout=10)
    assert info.env_id == "stride/BipedWalker-v0"
    assert list(info.observation_space.shape) == [OBS] and list(info.action_space.shape) == [ACT]
    assert list(info.action_space.low) == [-1.0] * ACT
    assert info.source.endswith("ckpt-000000000.pt") and info.max_batch == 256


def good_obs(n: int = 2) -> common_pb2.Array:
    return to_array(np.zeros((n, OBS), np.float32))


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        (policy_pb2.ActRequest(), grpc.StatusCode.INVALID_ARGUMENT, "missing"),
        (policy_pb2.ActRequest(observations=to_array(np.zeros((2, 30), np.float32))),
         grpc.StatusCode.INVALID_ARGUMENT, "size 30"),
        (policy_pb2.ActRequest(observations=to_array(np.full((2, OBS), np.nan, np.float32))),
         grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
        (policy_pb2.ActRequest(observations=to_array(np.full((1, OBS), np.inf, np.float32))),
         grpc.StatusCode.INVALID_ARGUMENT, "inf"),
        (policy_pb2.ActRequest(observations=to_array(np.zeros((0, OBS), np.float32))),
         grpc.StatusCode.INVALID_ARGUMENT, "empty"),
        (policy_pb2.ActRequest(observations=to_array(np.zeros((257, OBS), np.float32))),
         grpc.StatusCode.RESOURCE_EXHAUSTED, "257"),
        (policy_pb2.ActRequest(observations=common_pb2.Array(shape=[1, OBS], dtype="float64", data=b"\0" * 248)),
         grpc.StatusCode.INVALID_ARGUMENT, "dtype"),
        (policy_pb2.ActRequest(observations=common_pb2.Array(shape=[2, OBS], dtype="float32", data=b"\0" * 12)),
         grpc.StatusCode.INVALID_ARGUMENT, "bytes"),
        (policy_pb2.ActRequest(observations=common_pb2.Array(shape=[OBS], dtype="float32", data=b"\0" * 124)),
         grpc.StatusCode.INVALID_ARGUMENT, "dimensions"),
    ],
)
def test_bad_act_requests_get_a_status_and_the_server_keeps_serving(policy_server, request_, code, words) -> None:
    _, stub, _, _ = policy_server
    got, details = code_of(lambda: stub.Act(request_, timeout=10))
    assert got == code and words in details
    assert list(act(stub, np.zeros((3, OBS), np.float32)).actions.shape) == [3, ACT]


def test_oversized_message_is_refused_by_the_size_limit(policy_server) -> None:
    _, stub, _, _ = policy_server
    big = policy_pb2.ActRequest(observations=common_pb2.Array(shape=[1, OBS], dtype="float32", data=b"\0" * (2 << 20)))
    got, _ = code_of(lambda: stub.Act(big, timeout=10))
    assert got == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert list(act(stub, np.zeros((1, OBS), np.float32)).actions.shape) == [1, ACT]


def test_per_rpc_metrics(policy_server) -> None:
    _, stub, _, registry = policy_server

    def count(code: str) -> float:
        v = registry.get_sample_value("stride_grpc_requests_total",
                                      {"service": "stride.v1.PolicyService", "method": "Act", "code": code})
        return v or 0.0

    ok, bad = count("OK"), count("INVALID_ARGUMENT")
    act(stub, np.zeros((1, OBS), np.float32))
    code_of(lambda: stub.Act(policy_pb2.ActRequest(), timeout=10))
    assert count("OK") == ok + 1 and count("INVALID_ARGUMENT") == bad + 1
    n = registry.get_sample_value("stride_grpc_request_duration_seconds_count",
                                  {"service": "stride.v1.PolicyService", "method": "Act"})
    assert n is not None and n >= 2


def test_health_reflection_and_graceful_shutdown(run_dir) -> None:
    source = ps.PolicySource(run_dir)
    server = Server(ps.register(ps.PolicyServicer(source)))
    ch = channel(server.address)
    health = health_pb2_grpc.HealthStub(ch)
    req = health_pb2.HealthCheckRequest(service="stride.v1.PolicyService")
    assert health.Check(req, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(ch)
    replies = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                             timeout=5))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"stride.v1.PolicyService", "grpc.health.v1.Health"} <= names
    server.health.enter_graceful_shutdown()
    assert health.Check(req, timeout=5).status == health_pb2.HealthCheckResponse.NOT_SERVING
    server.stop(grace=1)
    ch.close()


def test_binds_loopback_by_default(run_dir) -> None:
    server = Server(ps.register(ps.PolicyServicer(ps.PolicySource(run_dir))))
    try:
        assert server.host == "127.0.0.1"
    finally:
        server.stop(0)


def test_token_is_required_when_configured(run_dir) -> None:
    server = Server(ps.register(ps.PolicyServicer(ps.PolicySource(run_dir))), security=Security(token="s3cret"))
    try:
        obs = np.zeros((1, OBS), np.float32)
        for token, expected in ((None, "missing"), ("wrong", "invalid")):
            ch = channel(server.address, token=token)
            got, details = code_of(lambda ch=ch: act(policy_pb2_grpc.PolicyServiceStub(ch), obs))
            assert got == grpc.StatusCode.UNAUTHENTICATED and expected in details
            ch.close()
        ch = channel(server.address, token="s3cret")
        assert list(act(policy_pb2_grpc.PolicyServiceStub(ch), obs).actions.shape) == [1, ACT]
        # Health checks stay open for load balancers and probes.
        health = health_pb2_grpc.HealthStub(channel(server.address))
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_tls_with_token(run_dir, tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    server = Server(ps.register(ps.PolicyServicer(ps.PolicySource(run_dir))), host="localhost",
                    security=Security(token="t0ken", tls_cert=cert, tls_key=key))
    try:
        ch = channel(f"localhost:{server.port}", token="t0ken", tls_ca=cert)
        reply = act(policy_pb2_grpc.PolicyServiceStub(ch), np.zeros((2, OBS), np.float32))
        assert list(reply.actions.shape) == [2, ACT]
        ch.close()
        plain = channel(f"localhost:{server.port}", token="t0ken")  # no TLS: the handshake fails
        got, _ = code_of(lambda: act(policy_pb2_grpc.PolicyServiceStub(plain), np.zeros((1, OBS), np.float32)))
        assert got == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)


arrays = st.builds(
    common_pb2.Array,
    shape=st.lists(st.integers(-2, 300), max_size=4),
    dtype=st.sampled_from(["float32", "float64", "bool", "", "int8", "f\x00"]),
    data=st.binary(max_size=4096),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(obs=arrays, deterministic=st.booleans(), seed=st.integers(0, 2**64 - 1))
def test_fuzz_act_never_breaks_the_server(policy_server, obs, deterministic, seed) -> None:
    _, stub, _, _ = policy_server
    try:
        stub.Act(policy_pb2.ActRequest(observations=obs, deterministic=deterministic, seed=seed), timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), exc.details()
    assert list(act(stub, np.ones((2, OBS), np.float32)).actions.shape) == [2, ACT]


# -- ExperienceService ------------------------------------------------------------------------


@pytest.fixture
def experience():
    from actors.policy import ActorCritic

    hub = es.ExperienceHub(OBS, ACT, max_lag=1, max_fragment_steps=10_000)
    hub.publish(ActorCritic(OBS, ACT).weights(3))
    server = Server(es.register(es.ExperienceServicer(hub)))
    ch = channel(server.address)
    yield hub, experience_pb2_grpc.ExperienceServiceStub(ch)
    ch.close()
    server.stop(0)


def fragment(version: int = 3, t: int = 4, b: int = 2, obs_dim: int = OBS) -> Trajectory:
    """A fragment with two time-limit truncations, at (t, b) = (1, 1) and (3, 0)."""
    rng = np.random.default_rng(version)
    truncated = np.zeros((t, b), bool)
    truncated[1, 1] = truncated[3, 0] = True
    return Trajectory(
        obs=rng.normal(size=(t + 1, b, obs_dim)).astype(np.float32), actions=np.zeros((t, b, ACT), np.float32),
        logp=np.zeros((t, b), np.float32), rewards=np.ones((t, b), np.float32),
        terminated=np.zeros((t, b), bool), truncated=truncated,
        final_obs=rng.normal(size=(2, obs_dim)).astype(np.float32), policy_version=version, worker_id=0,
        episodes=EpisodeStats(np.array([1.5]), np.array([4]), ("time_limit",)),
    )


def test_push_and_drain(experience) -> None:
    hub, stub = experience
    summary = stub.PushTrajectory(iter([fragment_to_msg(fragment(3), "a"), fragment_to_msg(fragment(2), "a"),
                                        fragment_to_msg(fragment(1), "b")]), timeout=10)
    assert (summary.accepted, summary.dropped_stale, summary.learner_version) == (2, 1, 3)
    got = hub.drain()
    assert [f.policy_version for f in got] == [3, 2]
    for name in ("obs", "truncated", "final_obs"):
        np.testing.assert_array_equal(getattr(got[0], name), getattr(fragment(3), name))
    assert got[0].worker_id >= es.REMOTE_WORKER_BASE and got[0].episodes.returns.tolist() == [1.5]
    assert got[0].episodes.ended_by == ("time_limit",)


def test_a_fragment_that_does_not_say_why_its_episodes_ended_is_accepted(experience) -> None:
    """Actors built on the proto before episode_ended_by send none: the episodes still count."""
    hub, stub = experience
    msg = fragment_to_msg(fragment(3), "old")
    msg.ClearField("episode_ended_by")
    assert stub.PushTrajectory(iter([msg]), timeout=10).accepted == 1
    got = hub.drain()[0].episodes
    assert got.returns.tolist() == [1.5] and got.ended_by == ()


def test_the_deprecated_dense_final_obs_is_still_accepted(experience) -> None:
    """Clients built on the first proto send final_obs as [T, B, obs_dim]; its truncated rows
    are what the learner keeps."""
    hub, stub = experience
    frag = fragment(3)
    dense = np.zeros((*frag.truncated.shape, OBS), np.float32)
    dense[frag.truncated] = frag.final_obs
    msg = fragment_to_msg(frag, "old")
    msg.ClearField("truncated_final_obs")
    msg.final_obs.CopyFrom(to_array(dense))
    assert stub.PushTrajectory(iter([msg]), timeout=10).accepted == 1
    np.testing.assert_array_equal(hub.drain()[0].final_obs, frag.final_obs)


def _dense_final_obs(m: experience_pb2.TrajectoryFragment, shape: tuple[int, ...]) -> None:
    m.ClearField("truncated_final_obs")
    m.final_obs.CopyFrom(to_array(np.zeros(shape, np.float32)))


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (lambda m: m.obs.CopyFrom(to_array(np.zeros((5, 2, 30), np.float32))), "observation size 30"),
        (lambda m: m.rewards.CopyFrom(to_array(np.full((4, 2), np.nan, np.float32))), "rewards: contains NaN"),
        (lambda m: m.terminated.CopyFrom(to_array(np.zeros((4, 2), np.float32))), "terminated: dtype must be 'bool'"),
        (lambda m: m.actions.CopyFrom(to_array(np.zeros((4, 2, 5), np.float32))), "actions: shape"),
        (lambda m: setattr(m, "policy_version", 99), "policy_version 99 is unknown"),
        (lambda m: m.obs.CopyFrom(to_array(np.zeros((1, 2, OBS), np.float32))), "holds no step"),
        (lambda m: m.truncated_final_obs.CopyFrom(to_array(np.zeros((1, OBS), np.float32))),
         f"truncated_final_obs: shape [1, {OBS}], expected [2, {OBS}]"),
        (lambda m: m.ClearField("truncated_final_obs"), "truncated_final_obs: missing, and truncated has 2 true"),
        (lambda m: m.final_obs.CopyFrom(to_array(np.zeros((4, 2, OBS), np.float32))), "are both set"),
        (lambda m: _dense_final_obs(m, (4, 2, OBS + 1)), f"final_obs: shape [4, 2, {OBS + 1}], expected [4, 2, {OBS}]"),
        (lambda m: m.episode_ended_by.append("tilt"), "episode_ended_by: 2 reasons for 1 episodes"),
        (lambda m: m.episode_ended_by.__setitem__(0, 'fell{job="x"}'), "is not 1-64 characters"),
    ],
)
def test_bad_fragments_are_refused_and_earlier_ones_kept(experience, bad, words) -> None:
    hub, stub = experience
    msg = fragment_to_msg(fragment(3), "a")
    bad(msg)
    got, details = code_of(lambda: stub.PushTrajectory(iter([fragment_to_msg(fragment(3), "a"), msg]), timeout=10))
    assert got == grpc.StatusCode.INVALID_ARGUMENT and words in details and "1 earlier fragments accepted" in details
    assert len(hub.drain()) == 1  # the good fragment before the bad one was not lost


def test_get_weights_streams_the_current_version(experience) -> None:
    hub, stub = experience
    chunks = list(stub.GetWeights(experience_pb2.GetWeightsRequest(known_version=-1), timeout=10))
    assert chunks[0].version == 3 and len(chunks) == chunks[0].count
    w = weights_from_bytes(3, b"".join(c.data for c in chunks))
    assert w.state["log_std"].shape == (ACT,)
    same = list(stub.GetWeights(experience_pb2.GetWeightsRequest(known_version=3), timeout=10))
    assert len(same) == 1 and same[0].count == 0 and same[0].data == b""


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_push_never_breaks_the_server(experience, data) -> None:
    hub, stub = experience
    msg = fragment_to_msg(fragment(3), "fuzz")
    field = data.draw(st.sampled_from(["obs", "actions", "logp", "rewards", "terminated", "truncated", "final_obs",
                                          "truncated_final_obs"]))
    getattr(msg, field).CopyFrom(data.draw(arrays))
    msg.policy_version = data.draw(st.integers(-5, 10))
    try:
        stub.PushTrajectory(iter([msg]), timeout=10)
    except grpc.RpcError as exc:
        assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), exc.details()
    hub.drain()
    assert stub.PushTrajectory(iter([fragment_to_msg(fragment(3), "ok")]), timeout=10).accepted == 1
    assert len(hub.drain()) == 1


# -- export and stubs -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["onnx", "pt2", "torchscript"])
def test_export_gives_the_same_actions(run_dir, tmp_path: Path, fmt: str) -> None:
    from learner.export import export, load_model

    # A tracer warning means a Python branch on a tensor was frozen into the exported graph.
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        if fmt != "torchscript":  # torch.export-based: nothing PyTorch has deprecated
            warnings.filterwarnings("error", category=DeprecationWarning, module=r"torch\.(onnx|export|jit)")
            warnings.filterwarnings("error", category=DeprecationWarning, module=r"learner\.export")
        out = export(run_dir, fmt, tmp_path / f"policy.{fmt}")
    policy, _, _ = load_model(run_dir)
    obs = np.random.default_rng(2).normal(size=(16, OBS)).astype(np.float32) * 3
    with torch.no_grad():
        expected = policy(torch.as_tensor(obs)).numpy()
    if fmt == "onnx":
        import onnxruntime

        got = onnxruntime.InferenceSession(str(out)).run(None, {"observations": obs})[0]
    elif fmt == "pt2":
        got = torch.export.load(str(out)).module()(torch.as_tensor(obs)).detach().numpy()
    else:
        got = torch.jit.load(str(out))(torch.as_tensor(obs)).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # The batch size is free in every format: one observation, like a robot's control loop sends.
    from learner.export import read_exported

    _, run = read_exported(out)
    np.testing.assert_allclose(run(obs[:1]), expected[:1], rtol=1e-5, atol=1e-6)
    # ...and the same as the policy server and the actors' NumPy policy (the deterministic action).
    source = ps.PolicySource(run_dir)
    np.testing.assert_allclose(got, np.clip(source.policy.mean(obs), -1, 1), rtol=1e-5, atol=1e-6)


def test_generated_stubs_are_current() -> None:
    check = subprocess.run([sys.executable, str(ROOT / "services" / "proto" / "generate.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_remote_actor_process_feeds_a_real_training_run(tmp_path: Path) -> None:
    """`stride actor --connect` in its own process contributes fragments the learner trains on."""
    import json
    import threading

    import ray

    # The run lasts until the learner has trained on 8 remote fragments (the step budget, far
    # above that, is only a bound): a fixed short budget raced the actor process's start-up, which
    # on a busy machine could outlast the run (the actor then met a closed port and sent nothing).
    cfg = C.load(None, {"env.id": "Pendulum-v1", "env.envs_per_actor": 4, "rollout.actors": 1,
                        "rollout.fragment_length": 32, "ppo.minibatches": 4, "ppo.epochs": 1,
                        "train.mode": "async", "train.max_policy_lag": 3, "train.fragments_per_update": 2,
                        "train.total_steps": 20_000 * 128, "train.video": False, "train.checkpoint_every": 1000})
    C.validate(cfg)

    class StopAfterRemoteFragments:
        def __init__(self) -> None:
            self.remote = 0
            self.trainer: Trainer | None = None

        def on_iteration(self, record: dict, episodes: object) -> None:
            self.remote += sum(w >= es.REMOTE_WORKER_BASE for w in record["fragment_workers"])
            if self.remote >= 8 and self.trainer is not None:
                self.trainer.request_stop()

        def on_checkpoint(self, path: Path, when: float) -> None:
            pass

    # Ray before the gRPC server, as `stride train --experience-port` does: ray.init forks, and a
    # fork while gRPC's threads run can abort the child (the raylet then never registers).
    start_local_ray(num_cpus=1)
    hub = es.ExperienceHub(3, 1, max_lag=3)
    server = Server(es.register(es.ExperienceServicer(hub)))
    stopper = StopAfterRemoteFragments()
    trainer = Trainer(cfg, tmp_path, external=hub, observers=[stopper])
    stopper.trainer = trainer
    stopped = []

    def train() -> None:
        try:
            trainer.run()
        except KeyboardInterrupt:  # how `run` reports a requested stop, after its checkpoint
            stopped.append(True)

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    actor = subprocess.Popen([str(Path(sys.executable).parent / "stride"), "actor", "--connect", server.address,
                              "--env", "Pendulum-v1", "--envs", "4", "--fragment-length", "32", "--seconds", "200"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        thread.join(timeout=180)
        timed_out = thread.is_alive()
        if timed_out:  # no remote fragments in time: stop the run cleanly, then fail below
            trainer.request_stop()
            thread.join(timeout=60)
    finally:
        actor.terminate()
        out, err = actor.communicate(timeout=30)
        server.stop(0)
        ray.shutdown()
    assert stopped and not timed_out, err[-2000:]  # it stopped on the remote fragments
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    workers = [w for r in recs for w in r["fragment_workers"]]
    assert sum(w >= es.REMOTE_WORKER_BASE for w in workers) >= 8, err[-2000:]
    assert any(w < es.REMOTE_WORKER_BASE for w in workers)  # Ray's actor trained alongside it
    for r in recs:  # remote fragments obey the same staleness rule
        assert all(r["policy_version"] - v <= 3 for v in r["fragment_versions"])


@pytest.mark.parametrize("fmt", ["onnx", "pt2", "torchscript"])
def test_policy_server_serves_an_exported_file(run_dir, tmp_path: Path, fmt: str) -> None:
    from learner.export import SUFFIXES, export

    path = export(run_dir, fmt, tmp_path / f"p{SUFFIXES[fmt]}")
    server = Server(ps.register(ps.PolicyServicer(ps.PolicySource(path))))
    try:
        stub = policy_pb2_grpc.PolicyServiceStub(channel(server.address))
        obs = np.random.default_rng(4).normal(size=(5, OBS)).astype(np.float32)
        reply = act(stub, obs)
        got = np.frombuffer(reply.actions.data, np.float32).reshape(5, ACT)
        np.testing.assert_allclose(got, np.clip(ps.PolicySource(run_dir).policy.mean(obs), -1, 1), rtol=1e-5,
                                   atol=1e-6)
        info = stub.GetPolicyInfo(policy_pb2.GetPolicyInfoRequest(), timeout=10)
        assert info.env_id == "stride/BipedWalker-v0" and info.source == str(path)
        sampled = act(stub, obs, deterministic=False, seed=1)
        assert list(sampled.actions.shape) == [5, ACT] and sampled.actions.data != reply.actions.data
        got_code, details = code_of(lambda: stub.Act(policy_pb2.ActRequest(
            observations=to_array(np.zeros((1, 3), np.float32))), timeout=10))
        assert got_code == grpc.StatusCode.INVALID_ARGUMENT and "size 3" in details
    finally:
        server.stop(0)


def test_follow_serves_each_newer_checkpoint(tmp_path: Path) -> None:
    """Attached to a live run, the server swaps in the newest weights as checkpoints land."""
    import time

    trainer = Trainer(C.load(None, {"train.video": False}), tmp_path)
    trainer.save_checkpoint()
    source = ps.PolicySource(tmp_path, follow=True, poll_seconds=0.1)
    server = Server(ps.register(ps.PolicyServicer(source)))
    try:
        stub = policy_pb2_grpc.PolicyServiceStub(channel(server.address))
        obs = np.ones((1, OBS), np.float32)
        first = act(stub, obs)
        assert first.policy_version == 0
        with torch.no_grad():  # the learner moves on: new weights, a new version, a new checkpoint
            trainer.learner.model.pi[-1].bias.add_(0.5)
        trainer.learner.version = 7
        trainer.counters.iteration = 7
        trainer.save_checkpoint()
        deadline = time.monotonic() + 10
        while act(stub, obs).policy_version != 7:
            assert time.monotonic() < deadline, "the server never picked up the new checkpoint"
            time.sleep(0.1)
        assert act(stub, obs).actions.data != first.actions.data
    finally:
        server.stop(0)
        source.close()
