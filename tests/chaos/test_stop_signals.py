"""Ctrl-C and SIGTERM (`ray job stop`, a scheduler) sent to a real `stride` process mid-run: it
writes a checkpoint of its last iteration, prints a one-line resume hint, exits with 130 and no
traceback, and the run resumes from where it stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from learner import checkpoint as ckpt
from tests.chaos.helpers import records

ROOT = Path(__file__).resolve().parents[2]
STRIDE = str(Path(sys.executable).parent / "stride")
SMALL = ["--set", "env.envs_per_actor=4", "--set", "rollout.fragment_length=32", "--set", "ppo.minibatches=4",
         "--set", "rollout.actors=1", "--set", "train.checkpoint_every=1"]


def signal_when(argv: list[str], ready: Callable[[], bool], sig: signal.Signals,
                timeout: float = 240.0) -> subprocess.CompletedProcess:
    """Run `stride argv`, send `sig` to it (the process, as `kill` does) once `ready()` holds,
    and wait for it to exit."""
    proc = subprocess.Popen([STRIDE, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if proc.poll() is not None:
                raise AssertionError(f"stride exited before the signal: {proc.communicate()[1][-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not ready after {timeout:.0f} s")
            time.sleep(0.2)
        proc.send_signal(sig)
        sent = time.monotonic()
        stdout, stderr = proc.communicate(timeout=120)
        print(f"{' '.join(argv[:2])}: {sig.name} -> exit {proc.returncode} after {time.monotonic() - sent:.1f} s")
    finally:
        proc.kill()
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def newest_checkpoint_iteration(run_dir: Path) -> int:
    newest = ckpt.latest(run_dir / "checkpoints")
    assert newest is not None, "no checkpoint"
    return int(ckpt.NAME.match(newest[0].name).group(1))  # type: ignore[union-attr]


# Ctrl-C here is slow: the default run sends a real Ctrl-C to `stride bench time-to-walk` (below),
# which stops through the same Trainer handler as SIGTERM does here.
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGINT, id="ctrl-c", marks=pytest.mark.slow),
                                 pytest.param(signal.SIGTERM, id="sigterm")])
def test_train_stops_with_a_checkpoint_and_resumes(tmp_path: Path, sig: signal.Signals) -> None:
    run_dir = tmp_path / "run"
    argv = ["train", "--env", "Pendulum-v1", "--run-dir", str(run_dir), "--metrics-port", "0", "--no-video", *SMALL]
    done = signal_when([*argv, "--total-steps", "10000000"], lambda: len(records(run_dir)) >= 3, sig)
    assert done.returncode == 130, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"stopped early; resume with: stride train --resume {run_dir}" in done.stderr
    recs = records(run_dir)
    assert newest_checkpoint_iteration(run_dir) == recs[-1]["iteration"]  # nothing trained is lost
    resumed = subprocess.run([STRIDE, "train", "--resume", str(run_dir), "--total-steps",
                              str(recs[-1]["env_steps"] + 2 * 128)], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    recs2 = records(run_dir)
    assert recs2[:len(recs)] == recs
    assert [r["iteration"] for r in recs2[len(recs):]] == [recs[-1]["iteration"] + 1, recs[-1]["iteration"] + 2]


def test_time_to_walk_stops_with_its_partial_result(tmp_path: Path) -> None:
    """`stride bench time-to-walk` stopped by Ctrl-C: time_to_walk.json holds the evaluations so
    far and the last checkpoint's evaluation, marked as interrupted; no video is rendered."""
    out = tmp_path / "ttw"
    curve = out / "eval_curve.jsonl"
    done = signal_when(["bench", "time-to-walk", "--config", "configs/pendulum.yaml", "--threshold", "0",
                        "--stop-on", "eval", "--eval-every", "1", "--eval-episodes", "2", "--max-seconds", "300",
                        "--set", "train.total_steps=10000000", "--out", str(out), *SMALL],
                       lambda: curve.exists() and len(curve.read_text().splitlines()) >= 2, signal.SIGINT)
    assert done.returncode == 130, done.stdout + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"stopped early; resume with: stride bench time-to-walk --out {out} --resume" in done.stderr
    assert "threshold 0.0 NOT reached (eval return) (interrupted)" in done.stdout
    result = json.loads((out / "time_to_walk.json").read_text())
    recs = records(out)
    assert result["interrupted"] and not result["reached"] and result["video"] is None
    assert result["env_steps"] == recs[-1]["env_steps"] == recs[-1]["iteration"] * 4 * 32
    assert newest_checkpoint_iteration(out) == recs[-1]["iteration"]
    assert result["eval_curve"] == [json.loads(x) for x in curve.read_text().splitlines()]
    assert len(result["eval_curve"]) >= 2 and not (out / "walk.mp4").exists()


@pytest.mark.parametrize("first", ["sigterm", "threshold"])
def test_one_ctrl_c_after_another_stop_request_still_waits_for_the_checkpoint(tmp_path: Path, first: str) -> None:
    """The handler `Trainer.run` installs, called as the signal would call it: a stop already
    asked for (by SIGTERM, or by time-to-walk's threshold) does not turn the user's first Ctrl-C
    into "stop now"; only a second Ctrl-C raises."""
    import ray

    from learner.trainer import Trainer
    from tests.chaos.helpers import small_config

    trainer = Trainer(small_config(), tmp_path)
    if first == "sigterm":
        trainer._on_signal(signal.SIGTERM, None)
        trainer._on_signal(signal.SIGTERM, None)  # repeated SIGTERMs never raise
    else:
        trainer.request_stop()
    assert trainer._stop
    trainer._on_signal(signal.SIGINT, None)  # the first Ctrl-C: the iteration still finishes
    with pytest.raises(KeyboardInterrupt):
        trainer._on_signal(signal.SIGINT, None)
    assert not ray.is_initialized()
