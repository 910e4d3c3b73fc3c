"""`stride train` / `stride eval` as a user runs them: a fresh process with an embedded local Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STRIDE = str(Path(sys.executable).parent / "stride")
RANDOM_PENDULUM_RETURN = -1200.0  # about what an untrained policy scores (see docs/benchmarks.md)


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([STRIDE, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_pendulum_learns_through_the_real_ray_path(tmp_path: Path) -> None:
    run_dir = tmp_path / "pendulum"
    done = run("train", "--config", "configs/pendulum.yaml", "--actors", "2", "--run-dir", str(run_dir),
               "--metrics-port", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("config.yaml", "metrics.jsonl", "curve.png", "train.log"):
        assert (run_dir / name).is_file(), name
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    returns = [r["episode_return_mean"] for r in recs if r["episode_return_mean"] is not None]
    assert recs[-1]["env_steps"] >= 120_000
    assert np.mean(returns[:2]) < -900  # it started out untrained...
    assert np.mean(returns[-3:]) > -500, returns  # ...and learned to swing up and balance
    evaluated = run("eval", str(run_dir), "--episodes", "10")
    assert evaluated.returncode == 0, evaluated.stderr
    mean = float(evaluated.stdout.split("mean return ")[1].split()[0])
    assert mean > -500, evaluated.stdout
    assert "episodes ended by: time_limit 10" in evaluated.stdout  # Pendulum only truncates
    assert mean > RANDOM_PENDULUM_RETURN + 500


def test_biped_run_writes_checkpoint_curve_and_video(tmp_path: Path) -> None:
    run_dir = tmp_path / "biped"
    done = run("train", "--actors", "2", "--envs-per-actor", "4", "--fragment-length", "32",
               "--total-steps", "512", "--run-dir", str(run_dir), "--set", "ppo.minibatches=4",
               "--metrics-port", "0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / "walk.mp4").stat().st_size > 1000, done.stderr[-2000:]
    assert list((run_dir / "checkpoints").glob("ckpt-*.pt"))
    # Not a terminal: one plain line per iteration.
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("iter ")]
    assert len(lines) == 2 and "\r" not in done.stderr
    assert "steps/s" in lines[-1] and "ETA" in lines[-1]
    evaluated = run("eval", str(run_dir), "--episodes", "2", "--video", str(tmp_path / "eval.gif"))
    assert evaluated.returncode == 0, evaluated.stderr
    assert "forward distance" in evaluated.stdout and (tmp_path / "eval.gif").stat().st_size > 0
    ends = evaluated.stdout.split("episodes ended by: ")[1].splitlines()[0].split(", ")
    reasons = {"fell", "lateral", "tilt", "physics_diverged", "time_limit"}
    assert all(e.split()[0] in reasons for e in ends) and sum(int(e.split()[1]) for e in ends) == 2, ends
    tilts = sum(int(e.split()[1]) for e in ends if e.split()[0] == "tilt")
    went = evaluated.stdout.split("tilt episodes went over: ")[1:]
    if tilts:  # one direction per tilt episode
        ways = [w.split() for w in went[0].splitlines()[0].split(", ")]
        assert {w for w, _ in ways} <= {"forward", "backward", "sideways", "turned"}
        assert sum(int(n) for _, n in ways) == tilts, evaluated.stdout
    else:
        assert not went, evaluated.stdout


def test_resume_if_exists_starts_a_run_then_continues_it(tmp_path: Path) -> None:
    """The command a supervisor re-runs (docker-compose): the first time it starts the run, the
    next time it continues it from the last checkpoint, with the run's counters and records."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # A run that died before its first checkpoint: its records cannot be continued; kept aside.
    (run_dir / "metrics.jsonl").write_text('{"iteration": 1}\n')
    argv = ["train", "--env", "Pendulum-v1", "--actors", "2", "--envs-per-actor", "4", "--fragment-length", "32",
            "--set", "ppo.minibatches=4", "--run-dir", str(run_dir), "--resume-if-exists", "--metrics-port", "0",
            "--no-video"]
    first = run(*argv, "--total-steps", "512")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "has records but no checkpoint: starting afresh" in first.stderr
    (aside,) = run_dir.glob("metrics-*-no-checkpoint.jsonl")
    assert aside.read_text() == '{"iteration": 1}\n'
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in recs] == [1, 2]
    second = run(*argv, "--total-steps", "1024")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from ckpt-000000002.pt" in second.stderr
    recs2 = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in recs2] == [1, 2, 3, 4] and recs2[:2] == recs
    assert recs2[-1]["env_steps"] == 1024
    alone = run("train", "--resume-if-exists", "--env", "Pendulum-v1")
    assert alone.returncode == 2 and "--resume-if-exists needs --run-dir DIR" in alone.stderr
