"""Promise 3: the training process killed at random moments, including in the middle of a
checkpoint write, always resumes (`--resume`) from a valid latest checkpoint (never a torn file)
with its counters, weights, optimiser and normaliser as saved."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import ray
import torch

from learner import checkpoint
from learner.trainer import Trainer
from tests.chaos.helpers import records, small_config, wait_for
from tests.conftest import start_local_ray

ROOT = Path(__file__).resolve().parents[2]
STRIDE = str(Path(sys.executable).parent / "stride")
STEPS_PER_ITER = 2 * 4 * 32

# Runs a Trainer whose n-th checkpoint write dies half-way: half the bytes reach the temporary
# file, then the process SIGKILLs itself (no Python clean-up runs, as with the OOM killer).
TORN_WRITER = textwrap.dedent("""
    import io, os, signal, sys
    from pathlib import Path
    from learner import checkpoint
    from learner.trainer import Trainer
    from tests.chaos.helpers import small_config

    run_dir, die_at = Path(sys.argv[1]), int(sys.argv[2])
    real_save, calls = checkpoint.torch.save, [0]

    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] == die_at:
            buf = io.BytesIO()
            real_save(obj, buf)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        real_save(obj, f, *args, **kwargs)

    checkpoint.torch.save = save
    Trainer(small_config(**{"train.total_steps": 100 * 256}), run_dir).run()
""")


@pytest.fixture(scope="module")
def ray_address():
    start_local_ray(num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _env(address: str) -> dict[str, str]:
    return {**os.environ, "RAY_ADDRESS": address, "PYTHONPATH": str(ROOT)}


def _check_resumable(run_dir: Path) -> dict:
    """The newest checkpoint loads; returns its state."""
    found = checkpoint.latest(run_dir / "checkpoints")
    assert found is not None, "no loadable checkpoint"
    path, state = found
    assert path == checkpoint.list_checkpoints(run_dir / "checkpoints")[-1], "the newest checkpoint is torn"
    return state


def test_killed_during_a_checkpoint_write_resumes_from_the_previous_one(tmp_path: Path, ray_address: str) -> None:
    run_dir = tmp_path / "run"
    script = tmp_path / "torn_writer.py"
    script.write_text(TORN_WRITER)
    done = subprocess.run([sys.executable, str(script), str(run_dir), "5"], cwd=ROOT, env=_env(ray_address),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    partial = list((run_dir / "checkpoints").glob(".ckpt-*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # the torn write is really there
    state = _check_resumable(run_dir)
    assert state["counters"]["iteration"] == 4  # the 5th write died; the 4th is whole
    trainer = Trainer(small_config(**{"train.total_steps": 8 * STEPS_PER_ITER}), run_dir, resume=True)
    assert not list((run_dir / "checkpoints").glob(".ckpt-*.tmp"))  # cleaned up on start
    assert trainer.counters.iteration == 4 and trainer.counters.env_steps == 4 * STEPS_PER_ITER
    assert trainer.learner.version == state["learner"]["version"] == 4
    for k, v in state["model"].items():
        assert torch.equal(trainer.learner.model.state_dict()[k], v), k
    assert trainer.learner.normalizer.count == state["learner"]["normalizer"]["count"]
    opt = trainer.learner.optimizer.state_dict()
    assert opt["state"][0]["step"] == state["learner"]["optimizer"]["state"][0]["step"]
    trainer.run()
    recs = records(run_dir)
    # The record of iteration 5 (written before its checkpoint died) was dropped on resume and
    # iteration 5 was redone: one record per iteration, in order.
    assert [r["iteration"] for r in recs] == list(range(1, 9))
    assert recs[-1]["env_steps"] == 8 * STEPS_PER_ITER


@pytest.mark.parametrize("kills", [pytest.param(3, id="3-kills"),
                                   pytest.param(12, id="12-kills", marks=pytest.mark.slow)])
def test_random_sigkills_of_the_training_process(tmp_path: Path, ray_address: str, kills: int) -> None:
    run_dir = tmp_path / "run"
    total = 1000 * STEPS_PER_ITER  # more than any of the killed runs reaches
    rng = random.Random(kills)
    common = ["--metrics-port", "0", "--no-video"]
    first = [STRIDE, "train", "--env", "Pendulum-v1", "--actors", "2", "--envs-per-actor", "4",
             "--fragment-length", "32", "--total-steps", str(total), "--run-dir", str(run_dir),
             "--set", "ppo.minibatches=4", "--set", "ppo.epochs=2", "--set", "train.checkpoint_every=1", *common]
    torn = 0
    saved_iterations = []
    for k in range(kills):
        cmd = first if k == 0 else [STRIDE, "train", "--resume", str(run_dir), *common]
        before = len(records(run_dir))
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(ray_address), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_for("the restarted run to train", lambda b=before: len(records(run_dir)) > b, timeout=180)
            time.sleep(rng.uniform(0.0, 1.5))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        torn += len(list((run_dir / "checkpoints").glob(".ckpt-*.tmp")))
        state = _check_resumable(run_dir)
        saved_iterations.append(state["counters"]["iteration"])
        assert state["counters"]["env_steps"] == state["counters"]["iteration"] * STEPS_PER_ITER
    assert saved_iterations == sorted(saved_iterations) and saved_iterations[-1] > saved_iterations[0]
    final = saved_iterations[-1] + 3
    done = subprocess.run([STRIDE, "train", "--resume", str(run_dir), "--total-steps", str(final * STEPS_PER_ITER),
                           *common], cwd=ROOT, env=_env(ray_address), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    recs = records(run_dir)
    assert [r["iteration"] for r in recs] == list(range(1, final + 1))  # no gap, no duplicate
    assert recs[-1]["env_steps"] == final * STEPS_PER_ITER
    print(f"{kills} SIGKILLs, {torn} during a checkpoint write; saved iterations {saved_iterations}")
