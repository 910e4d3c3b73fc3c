"""Promise 6: every bad input we know of, and what the user sees. Each row of the table in
docs/reliability.md is one case here (`python -m tests.chaos.test_bad_input --write` regenerates
the table; a test fails when the two disagree). Every case runs the real code path: the config
loader, the `stride` command line in-process, real checkpoint files, a real gRPC server over
loopback, the real env. None of them starts Ray: bad input must fail before anything starts."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import ray
import torch

import actors.envs  # noqa: F401
from actors.envs.biped import BipedWalkerEnv
from actors.trajectory import EpisodeStats, Trajectory
from learner import checkpoint
from learner import config as C
from learner.trainer import Trainer
from services.cli import main as cli_main
from services.proto.stride.v1 import common_pb2, experience_pb2_grpc, policy_pb2, policy_pb2_grpc
from services.rpc import experience_service as es
from services.rpc import policy_service as ps
from services.rpc.codec import fragment_to_msg, to_array
from services.rpc.server import Security, Server, channel

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- bad-input table: begin -->", "<!-- bad-input table: end -->"
TOKEN = "s3cret-token"


@dataclass(frozen=True)
class Case:
    id: str
    layer: str
    bad: str  # the bad input, in words
    sees: str  # what the user sees (asserted verbatim in what `run` returns)
    run: Callable[[Path], str]


# -- how each layer is driven ---------------------------------------------------------------
def config_error(overrides: dict | None = None, yaml_text: str | None = None) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        path = None
        if yaml_text is not None:
            path = tmp / "bad.yaml"
            path.write_text(yaml_text)
        with pytest.raises(C.ConfigError) as info:
            C.validate(C.load(path, overrides))
        return str(info.value)
    return run


def cli(*argv: str, setup: Callable[[Path], None] | None = None, code: int = 2) -> Callable[[Path], str]:
    """`stride ARGV` in-process ({tmp} in an argument is the case's folder); returns stderr."""
    def run(tmp: Path) -> str:
        if setup is not None:
            setup(tmp)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            try:
                got = cli_main([a.replace("{tmp}", str(tmp)) for a in argv])
            except SystemExit as exc:  # argparse's own errors
                got = exc.code
        assert got == code, err.getvalue()
        assert not ray.is_initialized(), "Ray was started for bad input"
        return err.getvalue()
    return run


def make_run(tmp: Path, env_id: str = "Pendulum-v1", checkpoints: int = 1) -> Path:
    """A real run folder: config.yaml and `checkpoints` real checkpoints (no Ray needed)."""
    run_dir = tmp / "run"
    cfg = C.load(None, {"env.id": env_id, "env.envs_per_actor": 4, "ppo.minibatches": 4, "train.video": False})
    run_dir.mkdir(parents=True, exist_ok=True)
    C.save(cfg, run_dir / "config.yaml")
    trainer = Trainer(cfg, run_dir)
    for i in range(checkpoints):
        trainer.counters.iteration = i + 1
        trainer.save_checkpoint()
    return run_dir


@contextlib.contextmanager
def captured_logs():
    logs = io.StringIO()
    handler = logging.StreamHandler(logs)
    logging.getLogger().addHandler(handler)
    try:
        yield logs
    finally:
        logging.getLogger().removeHandler(handler)


def corrupt_newest_and_resume(tmp: Path) -> str:
    run_dir = make_run(tmp, checkpoints=2)
    newest = checkpoint.list_checkpoints(run_dir / "checkpoints")[-1]
    newest.write_bytes(np.random.default_rng(0).bytes(4096))
    with captured_logs() as logs:
        trainer = Trainer(C.load(run_dir / "config.yaml"), run_dir, resume=True)
    assert trainer.resumed_from is not None and trainer.resumed_from.name == "ckpt-000000001.pt"
    return logs.getvalue()


def foreign_checkpoint_skipped(tmp: Path) -> str:
    run_dir = make_run(tmp, checkpoints=2)
    torch.save({"weights": [1, 2, 3]}, run_dir / "checkpoints" / "ckpt-000000009.pt")
    with captured_logs() as logs:
        path, _ = checkpoint.require_latest(run_dir)
    assert path.name == "ckpt-000000002.pt"
    return logs.getvalue()


def resume_on_other_env(tmp: Path) -> str:
    run_dir = make_run(tmp)
    config_before = (run_dir / "config.yaml").read_text()
    seen = cli("train", "--resume", "{tmp}/run", "--env", "MountainCarContinuous-v0", "--set", "ppo.minibatches=4",
               "--metrics-port", "0")(tmp)
    assert (run_dir / "config.yaml").read_text() == config_before  # the refused resume changed nothing
    return seen


def corrupt_all(tmp: Path) -> None:
    run_dir = make_run(tmp, checkpoints=2)
    for p in checkpoint.list_checkpoints(run_dir / "checkpoints"):
        p.write_bytes(p.read_bytes()[:100])


def no_checkpoint(tmp: Path) -> None:
    make_run(tmp, checkpoints=0)


def busy_port(tmp: Path) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    _open_sockets.append(s)
    (tmp / "port").write_text(str(s.getsockname()[1]))


_open_sockets: list[socket.socket] = []


def cli_busy_metrics_port(tmp: Path) -> str:
    busy_port(tmp)
    port = (tmp / "port").read_text()
    return cli("train", "--env", "Pendulum-v1", "--set", "ppo.minibatches=4", "--metrics-port", port,
               "--run-dir", "{tmp}/r")(tmp)


# -- gRPC: a real server over loopback; after each bad request a good one must still work ----------
OBS, ACT = 31, 6


@contextlib.contextmanager
def policy_stub(tmp: Path, token: str | None = TOKEN):
    run_dir = make_run(tmp, env_id="stride/BipedWalker-v0")
    server = Server(ps.register(ps.PolicyServicer(ps.PolicySource(run_dir), max_batch=256)),
                    security=Security(TOKEN), max_message_bytes=1 << 20)
    ch = channel(server.address, token=token)
    try:
        yield policy_pb2_grpc.PolicyServiceStub(ch), server
    finally:
        ch.close()
        server.stop(0)


def rpc_status(call: Callable, token: str | None = TOKEN) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        with policy_stub(tmp, token) as (stub, server):
            with pytest.raises(grpc.RpcError) as info:
                call(stub)
            good = channel(server.address, token=TOKEN)
            ok = policy_pb2_grpc.PolicyServiceStub(good).Act(
                policy_pb2.ActRequest(observations=to_array(np.zeros((2, OBS), np.float32))), timeout=10)
            good.close()
            assert list(ok.actions.shape) == [2, ACT]  # the server keeps serving
        return f"{info.value.code().name}: {info.value.details()}"
    return run


def act_with(obs: np.ndarray) -> Callable:
    return lambda stub: stub.Act(policy_pb2.ActRequest(observations=to_array(obs)), timeout=10)


def push_status(mutate: Callable) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        hub = es.ExperienceHub(OBS, ACT, max_lag=1)
        hub.publish(Trainer(C.load(None, {"train.video": False}), tmp / "r").learner.weights())
        server = Server(es.register(es.ExperienceServicer(hub)))
        ch = channel(server.address)
        try:
            msg = fragment_to_msg(_fragment(), "a")
            mutate(msg)
            with pytest.raises(grpc.RpcError) as info:
                experience_pb2_grpc.ExperienceServiceStub(ch).PushTrajectory(iter([msg]), timeout=10)
            ok = experience_pb2_grpc.ExperienceServiceStub(ch).PushTrajectory(
                iter([fragment_to_msg(_fragment(), "a")]), timeout=10)
            assert ok.accepted == 1  # and the server keeps serving
        finally:
            ch.close()
            server.stop(0)
        return f"{info.value.code().name}: {info.value.details()}"
    return run


def _fragment(t: int = 4, b: int = 2, **changes: np.ndarray) -> Trajectory:
    arrays = dict(obs=np.zeros((t + 1, b, OBS), np.float32), actions=np.zeros((t, b, ACT), np.float32),
                  logp=np.zeros((t, b), np.float32), rewards=np.ones((t, b), np.float32),
                  terminated=np.zeros((t, b), bool), truncated=np.zeros((t, b), bool),
                  final_obs=np.zeros((0, OBS), np.float32))
    arrays.update(changes)
    return Trajectory(**arrays, policy_version=0, worker_id=0, episodes=EpisodeStats.empty())


def fragment_error(**changes: np.ndarray) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        with pytest.raises(ValueError) as info:
            _fragment(**changes).validate()
        return str(info.value)
    return run


# -- env actions ------------------------------------------------------------------------------
def biped_action_error(action: np.ndarray) -> Callable[[Path], str]:
    def run(tmp: Path) -> str:
        env = BipedWalkerEnv()
        env.reset(seed=0)
        with pytest.raises(ValueError) as info:
            env.step(action)
        env.step(np.zeros(6, np.float32))  # the env is still usable
        return str(info.value)
    return run


def biped_out_of_range(tmp: Path) -> str:
    a, b = BipedWalkerEnv(), BipedWalkerEnv()
    a.reset(seed=0)
    b.reset(seed=0)
    big = np.full(6, 50.0, np.float32)
    obs_a, *_ = a.step(big)
    obs_b, *_ = b.step(np.ones(6, np.float32))
    np.testing.assert_array_equal(obs_a, obs_b)
    return "clipped to the action space [-1, 1]"


CASES: list[Case] = [
    # config files and --set overrides
    Case("negative-actors", "config", "`rollout.actors: -1`", "rollout.actors: must be >= 0",
         config_error({"rollout.actors": -1})),
    Case("zero-envs", "config", "`env.envs_per_actor: 0`", "env.envs_per_actor: must be >= 1",
         config_error({"env.envs_per_actor": 0})),
    Case("unknown-env", "config", "`env.id: NoSuchEnv-v9`", "env.id: unknown Gymnasium env 'NoSuchEnv-v9'",
         config_error({"env.id": "NoSuchEnv-v9"})),
    Case("env-module", "config", "`env.id: no_such_pkg.envs:MyEnv-v0` (the module does not import)",
         "env.id: cannot import 'no_such_pkg.envs', the module named before ':'",
         config_error({"env.id": "no_such_pkg.envs:MyEnv-v0"})),
    Case("discrete-env", "config", "`env.id: CartPole-v1` (discrete actions)",
         "env.id: CartPole-v1 needs a continuous (Box) action space", config_error({"env.id": "CartPole-v1"})),
    Case("env-kwargs", "config", "`env.kwargs: {no_such_arg: 1}`", "env.kwargs: Pendulum-v1 does not accept",
         config_error({"env.id": "Pendulum-v1", "env.kwargs": {"no_such_arg": 1}})),
    Case("chaos-prob", "config", "`stride/Chaos-v0` with `crash_prob: 2`", "crash_prob must be in [0, 1], got 2",
         config_error({"env.id": "stride/Chaos-v0", "env.kwargs": {"crash_prob": 2}})),
    Case("minibatches", "config", "`ppo.minibatches: 7` with 16 envs x 128 steps",
         "ppo.minibatches: 7 does not divide the 2048 samples", config_error({"ppo.minibatches": 7})),
    Case("gamma", "config", "`ppo.gamma: 1.5`", "ppo.gamma: must be in [0, 1], got 1.5",
         config_error({"ppo.gamma": 1.5})),
    Case("is-weight-cap", "config", "`ppo.max_is_weight: 0.5`",
         "ppo.max_is_weight: must be 0 (no cap) or >= 1, got 0.5",
         config_error({"ppo.max_is_weight": 0.5})),
    Case("ent-decay", "config", "`ppo.ent_decay_steps: -1`", "ppo.ent_decay_steps: must be >= 0, got -1",
         config_error({"ppo.ent_decay_steps": -1})),
    Case("min-std", "config", "`model.min_std: -0.1`",
         "model.min_std: must be 0 (no floor) or a finite std > 0, got -0.1",
         config_error({"model.min_std": -0.1})),
    Case("unknown-field", "config", "`ppo.nope: 1`", "ppo.nope: unknown field (known: loss, gamma,",
         config_error({"ppo.nope": 1})),
    Case("unknown-section", "config", "a section `nope:`", "nope: unknown section (known: env, rollout, ppo",
         config_error({"nope.x": 1})),
    Case("mistyped", "config", "`ppo.epochs: many`", "ppo.epochs: cannot use 'many' as int",
         config_error({"ppo.epochs": "many"})),
    Case("bad-device", "config", "`train.device: tpu`", "train.device: must be auto, cpu, cuda or cuda:N",
         config_error({"train.device": "tpu"})),
    Case("bad-yaml", "config", "a config file with broken YAML", "is not valid YAML: expected ',' or ']'",
         config_error(yaml_text="ppo: [1, 2\n")),
    Case("yaml-list", "config", "a config file holding a list", "must hold a mapping of sections",
         config_error(yaml_text="- 1\n- 2\n")),
    # the command line
    Case("cli-mode", "cli", "`stride train --mode fast`", "argument --mode: invalid choice: 'fast'",
         cli("train", "--mode", "fast")),
    Case("cli-set", "cli", "`stride train --set ppo.lr` (no value)", "--set 'ppo.lr': expected SECTION.FIELD=VALUE",
         cli("train", "--set", "ppo.lr")),
    Case("cli-steps", "cli", "`stride train --total-steps -5`", "train.total_steps: must be >= 1, got -5",
         cli("train", "--total-steps", "-5")),
    Case("cli-config-missing", "cli", "`stride train --config missing.yaml`", "--config: no such file",
         cli("train", "--config", "{tmp}/missing.yaml")),
    Case("cli-resume-not-a-run", "cli", "`stride train --resume` on a folder that is not a run",
         "has no config.yaml (not a Stride run folder)", cli("train", "--resume", "{tmp}")),
    Case("cli-resume-no-ckpt", "cli", "`stride train --resume` on a run with no checkpoint",
         "--resume: no loadable checkpoint in", cli("train", "--resume", "{tmp}/run", setup=no_checkpoint)),
    Case("cli-resume-with-config", "cli", "`stride train --resume D --config F` (the run has its own config)",
         "drop --config (use --set to change a field)",
         cli("train", "--resume", "{tmp}/run", "--config", "configs/pendulum.yaml",
             setup=lambda tmp: make_run(tmp) and None)),
    Case("cli-train-into-a-run", "cli", "`stride train --run-dir D` where D already holds a run",
         "already holds a run (ckpt-000000001.pt): continue it with --resume",
         cli("train", "--run-dir", "{tmp}/run", "--env", "Pendulum-v1", setup=lambda tmp: make_run(tmp) and None)),
    Case("cli-metrics-port", "cli", "`stride train --metrics-port P` with P in use",
         "(Address already in use); choose another with --metrics-port", cli_busy_metrics_port),
    Case("cli-bench-actors", "cli", "`stride bench scale --actors 0,2`", "--actors: counts must be >= 1",
         cli("bench", "scale", "--actors", "0,2")),
    Case("cli-ttw-linear-no-steps", "cli",
         "`stride bench time-to-walk --set ppo.lr_schedule=linear` with no step budget to anneal over",
         "ppo.lr_schedule: 'linear' anneals over train.total_steps",
         cli("bench", "time-to-walk", "--set", "ppo.lr_schedule=linear", "--out", "{tmp}/ttw")),
    # checkpoints
    Case("ckpt-corrupt-newest", "checkpoint", "the newest checkpoint overwritten with random bytes",
         "is unreadable", corrupt_newest_and_resume),
    Case("ckpt-all-corrupt", "checkpoint", "every checkpoint truncated; `stride eval`",
         "no loadable checkpoint in", cli("eval", "{tmp}/run", setup=corrupt_all)),
    Case("ckpt-foreign-file", "checkpoint", "a newer `ckpt-*.pt` that is not a Stride checkpoint",
         "is not a Stride checkpoint", foreign_checkpoint_skipped),
    Case("ckpt-other-env", "checkpoint", "`--resume` a Pendulum run with `--env MountainCarContinuous-v0`",
         "was trained on 'Pendulum-v1', but this run's env.id is 'MountainCarContinuous-v0'",
         resume_on_other_env),
    Case("serve-no-ckpt", "checkpoint", "`stride serve` a run with no checkpoint", "no loadable checkpoint in",
         cli("serve", "{tmp}/run", setup=no_checkpoint)),
    Case("export-no-ckpt", "checkpoint", "`stride export` a run with no checkpoint", "no loadable checkpoint in",
         cli("export", "{tmp}/run", "--format", "onnx", setup=no_checkpoint)),
    # gRPC requests
    Case("rpc-no-token", "grpc", "Act without the bearer token", "UNAUTHENTICATED",
         rpc_status(act_with(np.zeros((1, OBS), np.float32)), token=None)),
    Case("rpc-wrong-token", "grpc", "Act with a wrong token", "UNAUTHENTICATED",
         rpc_status(act_with(np.zeros((1, OBS), np.float32)), token="wrong")),
    Case("rpc-obs-size", "grpc", "Act with 30-value observations", "INVALID_ARGUMENT",
         rpc_status(act_with(np.zeros((2, 30), np.float32)))),
    Case("rpc-nan", "grpc", "Act with NaN observations", "INVALID_ARGUMENT",
         rpc_status(act_with(np.full((2, OBS), np.nan, np.float32)))),
    Case("rpc-batch", "grpc", "Act with 257 observations (limit 256)", "RESOURCE_EXHAUSTED",
         rpc_status(act_with(np.zeros((257, OBS), np.float32)))),
    Case("rpc-dtype", "grpc", "Act with a float64 array", "INVALID_ARGUMENT",
         rpc_status(lambda stub: stub.Act(policy_pb2.ActRequest(observations=common_pb2.Array(
             shape=[1, OBS], dtype="float64", data=b"\0" * 8 * OBS)), timeout=10))),
    Case("rpc-push-nan", "grpc", "PushTrajectory with NaN rewards",
         "INVALID_ARGUMENT: fragment 0: rewards: contains NaN",
         push_status(lambda m: m.rewards.CopyFrom(to_array(np.full((4, 2), np.nan, np.float32))))),
    Case("rpc-push-version", "grpc", "PushTrajectory claiming a future policy version",
         "INVALID_ARGUMENT: fragment 0: policy_version 99 is unknown",
         push_status(lambda m: setattr(m, "policy_version", 99))),
    Case("rpc-push-final-obs", "grpc", "PushTrajectory with a final observation but no truncated step",
         "INVALID_ARGUMENT: fragment 0: truncated_final_obs: shape [1, 31], expected [0, 31]",
         push_status(lambda m: m.truncated_final_obs.CopyFrom(to_array(np.zeros((1, OBS), np.float32))))),
    # env actions
    Case("action-shape", "env", "a biped action of shape (5,)", "action must have shape (6,), got (5,)",
         biped_action_error(np.zeros(5, np.float32))),
    Case("action-nan", "env", "a biped action holding NaN", "NaN", biped_action_error(np.full(6, np.nan, np.float32))),
    Case("action-range", "env", "a biped action of 50 (range [-1, 1])", "clipped to the action space [-1, 1]",
         biped_out_of_range),
    # fragments reaching the learner (from Ray actors or the ExperienceService)
    Case("fragment-nan-obs", "fragment", "a fragment with an inf observation", "trajectory.obs contains NaN or inf",
         fragment_error(obs=np.full((5, 2, OBS), np.inf, np.float32))),
    Case("fragment-shape", "fragment", "a fragment whose actions cover 3 of 4 steps",
         "trajectory.actions has shape (3, 2, 6), expected (4, 2)+",
         fragment_error(actions=np.zeros((3, 2, ACT), np.float32))),
    Case("fragment-final-obs", "fragment", "a fragment with one truncation and two final observations",
         "trajectory.final_obs has shape (2, 31), expected (1,)+",
         fragment_error(truncated=np.arange(8).reshape(4, 2) == 0, final_obs=np.zeros((2, OBS), np.float32))),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path) -> None:
    seen = case.run(tmp_path)
    assert case.sees in seen, f"expected {case.sees!r} in:\n{seen}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table() -> str:
    rows = ["| # | Where | Bad input | What the user sees (asserted) | Test |", "|---|---|---|---|---|"]
    for i, c in enumerate(CASES, start=1):
        rows.append(f"| {i} | {c.layer} | {_cell(c.bad)} | `{_cell(c.sees)}` | `test_bad_input[{c.id}]` |")
    return "\n".join(rows)


def _doc_table() -> str:
    text = DOC.read_text()
    m = re.search(re.escape(BEGIN) + r"\n(.*?)\n" + re.escape(END), text, re.S)
    assert m, f"{DOC} lacks the {BEGIN} ... {END} markers"
    return m.group(1)


def test_reliability_doc_lists_every_case() -> None:
    assert _doc_table() == markdown_table(), \
        "docs/reliability.md is stale: python -m tests.chaos.test_bad_input --write"
    assert len({c.id for c in CASES}) == len(CASES)


if __name__ == "__main__" and "--write" in sys.argv:
    text = DOC.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    DOC.write_text(text[:start] + "\n" + markdown_table() + "\n" + text[end:])
    print(f"wrote the table of {len(CASES)} cases into {DOC}")
