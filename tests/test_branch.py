"""benchmarks/branch.py: copies of a run resumed with different settings, on real Ray and files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from learner import checkpoint
from learner import config as C
from learner.evaluate import evaluate
from learner.run_folder import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import branch  # noqa: E402

SMALL = ["--set", "rollout.actors=1", "--set", "env.envs_per_actor=4", "--set", "rollout.fragment_length=32",
         "--set", "ppo.minibatches=4", "--set", "train.checkpoint_every=2"]
KEYS = ("policy_loss", "value_loss", "approx_kl", "entropy", "episode_return_mean")


def _train(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "services.cli", "train", "--no-video", "--metrics-port", "0",
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _curve(run: Path) -> list[dict]:
    return [{k: r[k] for k in KEYS} | {"iteration": r["iteration"]}
            for r in read_jsonl(run / "metrics.jsonl", required="iteration")[0]]


def test_branches_continue_the_checkpoint_and_the_control_is_the_run_continued(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    _train(["--config", "configs/pendulum.yaml", "--total-steps", str(4 * 128), "--run-dir", str(src), *SMALL])
    _, state = checkpoint.require_latest(src)
    start_it, start_steps = state["counters"]["iteration"], state["counters"]["env_steps"]
    assert start_steps == 4 * 128
    straight = tmp_path / "straight"  # the source run continued by hand, for the control to equal
    shutil.copytree(src, straight)
    _train(["--resume", str(straight), "--set", f"train.total_steps={start_steps + 3 * 128}"])

    out = tmp_path / "branches"
    assert branch.main([str(src), "--steps", str(3 * 128), "--out", str(out), "--variant", "control",
                        "--variant", "fast", "ppo.lr=0.01", "--set", "train.mode=sync",
                        "--eval-episodes", "3"]) == 0
    printed = capsys.readouterr().out
    evals = {}
    for name in ("control", "fast"):
        run = out / name
        recs = _curve(run)
        assert recs[start_it]["iteration"] == start_it + 1 and len(recs) == start_it + 3  # its own 3 after the copy's
        ev = evals[name] = evaluate(run, 3, 2_000_000)  # the table's figures, recomputed
        assert len(ev.returns) == 3 and sum(ev.returns) / 3 == pytest.approx(ev.mean_return)
        row = printed.split(f"| {name} |")[1].split("\n")[0]
        assert f"| {ev.mean_return:.1f} ± {ev.std_return:.1f} |" in row
    diffs = [f - c for f, c in zip(evals["fast"].returns, evals["control"].returns, strict=True)]
    mean = sum(diffs) / 3
    err = (sum((d - mean) ** 2 for d in diffs) / 2) ** 0.5 / 3**0.5
    ahead = sum(d > 0 for d in diffs)
    assert f"± {evals['fast'].std_return:.1f} | {mean:+.1f} ± {err:.1f}, ahead on {ahead} of 3 |" in printed
    for name in ("control", "fast"):  # each episode's return kept beside the branch
        saved = json.loads((out / name / "branch_eval.json").read_text())
        assert saved["returns"] == evals[name].returns and saved["eval_seed"] == 2_000_000
    assert f"± {evals['control'].std_return:.1f} | - |" in printed
    assert _curve(out / "control") == _curve(straight)
    control_w = checkpoint.require_latest(out / "control")[1]["model"]
    straight_w = checkpoint.require_latest(straight)[1]["model"]
    fast_w = checkpoint.require_latest(out / "fast")[1]["model"]
    assert all(torch.equal(control_w[k], straight_w[k]) for k in control_w)
    assert not torch.equal(fast_w["pi.0.weight"], control_w["pi.0.weight"])
    assert C.load(out / "fast" / "config.yaml").ppo.lr == 0.01
    assert C.load(out / "control" / "config.yaml").ppo.lr == C.load(src / "config.yaml").ppo.lr
    for bad, field in ((["ppo.lrr=1"], "ppo.lrr"), (["ppo.lr=-1"], "ppo.lr")):
        with pytest.raises(SystemExit) as exc:  # checked before any branch starts, naming the field
            branch.main([str(src), "--steps", "128", "--out", str(out), "--variant", "ok", "--variant", "bad", *bad])
        assert exc.value.code == 2 and field in capsys.readouterr().err
        assert not (out / "ok").exists() and not (out / "bad").exists()


def test_a_time_budget_trains_each_branch_for_its_seconds_with_no_step_limit(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    _train(["--config", "configs/pendulum.yaml", "--total-steps", str(2 * 128), "--run-dir", str(src), *SMALL])
    start_steps = checkpoint.require_latest(src)[1]["counters"]["env_steps"]
    out = tmp_path / "branches"
    assert branch.main([str(src), "--seconds", "4", "--out", str(out), "--variant", "control",
                        "--variant", "slow", "ppo.epochs=100", "--set", "train.mode=sync", "--eval-episodes", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"({start_steps:,} env steps) for 4 s each" in printed
    trained = {}
    for name in ("control", "slow"):
        cfg = C.load(out / name / "config.yaml")
        assert cfg.train.max_seconds == 4 and cfg.train.total_steps == C.NO_STEP_LIMIT
        mine = [r for r in read_jsonl(out / name / "metrics.jsonl", required="iteration")[0]
                if r["env_steps"] > start_steps]
        assert mine, f"{name} trained nothing"
        # the clock ended it: the first record comes after the clock started, the last iteration
        # started before 4 s were up (a record's wall_time is its iteration's end)
        assert mine[-1]["wall_time"] - mine[0]["wall_time"] < 4 + max(r["time_iteration"] for r in mine)
        trained[name] = mine[-1]["env_steps"] - start_steps
        row = printed.split(f"| {name} |")[1].split("\n")[0].split(" | ")
        assert row[1] == f"{trained[name]:,}"
        assert all(r["epochs"] == cfg.ppo.epochs for r in mine)  # pendulum.yaml: target_kl 0, every epoch
        assert row[9] == f"{cfg.ppo.epochs:.1f}"  # the epochs median
    assert C.load(out / "slow" / "config.yaml").ppo.epochs == 100
    # 100 epochs per update against 10 on one clock: fewer env steps (the point of a time budget)
    assert trained["slow"] < trained["control"]


def test_a_bad_variant_is_refused_before_any_branch_starts(tmp_path: Path, capsys) -> None:
    src = tmp_path / "src"
    (src / "checkpoints").mkdir(parents=True)
    C.save(C.load(ROOT / "configs" / "pendulum.yaml"), src / "config.yaml")
    out = tmp_path / "branches"
    with pytest.raises(SystemExit) as exc:  # no checkpoint to branch from
        branch.main([str(src), "--steps", "100", "--out", str(out), "--variant", "a"])
    assert exc.value.code == 2 and "no loadable checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        branch.main([str(src), "--steps", "100", "--out", str(out), "--variant", "a=1"])
    assert "the first word is the branch's name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        branch.main([str(src), "--steps", "100", "--out", str(out), "--variant", "a", "--variant", "a", "ppo.lr=1"])
    assert "names must differ" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        branch.main([str(src), "--steps", "100", "--out", str(out), "--variant", "a", "ppo.lr"])
    assert "--variant a: 'ppo.lr' is not SECTION.FIELD=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one budget: steps or seconds
        branch.main([str(src), "--steps", "100", "--seconds", "10", "--out", str(out), "--variant", "a"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        branch.main([str(src), "--out", str(out), "--variant", "a"])
    assert "one of the arguments --steps --seconds is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        branch.main([str(src), "--seconds", "0", "--out", str(out), "--variant", "a"])
    assert "--seconds: must be > 0, got 0.0" in capsys.readouterr().err
    assert not out.exists()
