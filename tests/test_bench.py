"""`stride bench scale` end to end on a local Ray: a CSV and a plot with one row per actor count."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from learner import config as C
from learner.evaluate import evaluate
from services import time_to_walk as ttw

ROOT = Path(__file__).resolve().parents[1]


def test_bench_scale_writes_csv_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    done = subprocess.run([str(Path(sys.executable).parent / "stride"), "bench", "scale", "--actors", "1,2",
                           "--seconds", "5", "--env", "Pendulum-v1", "--envs-per-actor", "4", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader((out / "scale.csv").open()))
    assert [int(r["actors"]) for r in rows] == [1, 2]
    for r in rows:
        rate, base = float(r["env_steps_per_s"]), float(r["single_core_env_steps_per_s"])
        assert rate > 0 and base > 0
        assert float(r["efficiency"]) == rate / (int(r["actors"]) * base)
        shares = sum(float(r[k]) for k in ("share_sample", "share_gae", "share_update", "share_broadcast"))
        assert 0.5 < shares <= 1.01  # the phases account for (nearly) all of an iteration
        assert 1 <= float(r["epochs_median"]) <= C.PPOConfig.epochs  # within what the config allows
    assert (out / "scale.png").stat().st_size > 10_000


def test_bench_scale_rejects_bad_counts(tmp_path: Path) -> None:
    done = subprocess.run([str(Path(sys.executable).parent / "stride"), "bench", "scale", "--actors", "0,2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--actors" in done.stderr


def test_soak_takes_a_config_and_overrides(tmp_path: Path) -> None:
    """`stride bench soak --config F --set ...`: the batch shape under test comes from the flags,
    the soak's own settings (steps, no video) from the command, and the folder records both.
    Another Ray instance runs on the host meanwhile: the soak reads its own cluster's object
    store, not "the" cluster Ray would look for (which fails when there are two)."""
    import ray

    from tests.conftest import start_local_ray

    out = tmp_path / "soak"
    stride = str(Path(sys.executable).parent / "stride")
    start_local_ray(num_cpus=1)
    try:
        done = subprocess.run([stride, "bench", "soak", "--config", "configs/pendulum.yaml", "--steps", "3840",
                               "--actors", "1", "--set", "env.envs_per_actor=4", "--set",
                               "rollout.fragment_length=32", "--set", "ppo.minibatches=4", "--out", str(out)],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        ray.shutdown()
    assert done.returncode == 0, done.stderr[-3000:]
    saved = C.load(out / "config.yaml")
    assert (saved.env.id, saved.env.envs_per_actor, saved.rollout.fragment_length, saved.rollout.actors) == (
        "Pendulum-v1", 4, 32, 1)
    assert saved.ppo.lr == C.load(ROOT / "configs/pendulum.yaml").ppo.lr  # the file's, kept
    assert saved.train.total_steps == 3840 and not saved.train.video
    rows = list(csv.DictReader((out / "soak.csv").open()))
    assert len(rows) == 3 and int(rows[-1]["env_steps"]) == 3840  # every 10 iterations of 128 steps
    bad = subprocess.run([stride, "bench", "soak", "--set", "env.envs_per_actor=0", "--out", str(tmp_path / "b")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "env.envs_per_actor" in bad.stderr and not (tmp_path / "b").exists()


def test_time_to_walk_stops_at_the_threshold_and_reports(tmp_path: Path) -> None:
    """The same command as for the biped, on Pendulum so it finishes in CI: an untrained policy
    scores about -1200; -700 takes a few tens of thousands of steps."""
    out = tmp_path / "ttw"
    done = subprocess.run([str(Path(sys.executable).parent / "stride"), "bench", "time-to-walk", "--config",
                           "configs/pendulum.yaml", "--threshold", "-700", "--window", "3", "--max-seconds", "240",
                           "--set", "rollout.actors=2", "--no-video", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    result = json.loads((out / "time_to_walk.json").read_text())
    assert result["reached"] and result["train_return"] >= -700
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert result["env_steps"] == recs[-1]["env_steps"] < 120_000  # stopped at the threshold, not the end
    tail = [r for r in recs[-3:]]
    n = sum(r["episodes"] for r in tail)
    assert n and abs(sum(r["episode_return_mean"] * r["episodes"] for r in tail if r["episodes"]) / n
                     - result["train_return"]) < 1e-6  # the window's episode-weighted mean
    assert result["eval_return"] > -1000 and "threshold -700.0 reached (train return)" in done.stdout
    assert result["eval_curve"] == []  # no --eval-every: evaluated only at the end
    # ... on seeds of its own, not the periodic evaluations': the same checkpoint scores differently there
    assert result["eval_seed"] == ttw.FINAL_EVAL_SEED > ttw.EVAL_SEED + 10
    assert evaluate(out, 10, seed=ttw.FINAL_EVAL_SEED).mean_return == pytest.approx(result["eval_return"], abs=1e-9)
    assert evaluate(out, 10, seed=ttw.EVAL_SEED).mean_return != result["eval_return"]
    assert f"final evaluation (fresh seeds from {ttw.FINAL_EVAL_SEED:,}): return " in done.stdout
    saved = C.load(out / "config.yaml")  # the resolved config, as `stride train` writes it
    assert saved.env.id == "Pendulum-v1" and saved.rollout.actors == 2 and saved.train.max_seconds == 240


# slow: the default run's resume test also stops on evaluations (--stop-on eval); this one checks the stop itself
@pytest.mark.slow
def test_time_to_walk_can_stop_on_the_periodic_evaluation(tmp_path: Path) -> None:
    """--stop-on eval: the deterministic policy is evaluated every few seconds (on the next
    checkpoint) and the run stops at the first evaluation that reaches the threshold."""
    out = tmp_path / "ttw"
    done = subprocess.run([str(Path(sys.executable).parent / "stride"), "bench", "time-to-walk", "--config",
                           "configs/pendulum.yaml", "--threshold", "-700", "--stop-on", "eval", "--eval-every", "4",
                           "--eval-episodes", "3", "--max-seconds", "240", "--set", "rollout.actors=2",
                           "--set", "train.checkpoint_every=5", "--no-video", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    result = json.loads((out / "time_to_walk.json").read_text())
    curve = [json.loads(x) for x in (out / "eval_curve.jsonl").read_text().splitlines()]
    assert result["reached"] and result["stop_on"] == "eval" and result["eval_curve"] == curve
    assert len(curve) >= 2  # an untrained policy scores about -1200: not at the first evaluation
    assert all(p["eval_return"] < -700 for p in curve[:-1]) and curve[-1]["eval_return"] >= -700
    assert all(p["ended_by"] == {"time_limit": 3} and p["tilted"] == {} for p in curve)  # Pendulum only truncates
    assert all(b["wall_seconds"] - a["wall_seconds"] >= 4 for a, b in zip(curve, curve[1:], strict=False))
    assert [p["env_steps"] for p in curve] == sorted({p["env_steps"] for p in curve})  # distinct checkpoints
    assert result["wall_seconds"] == curve[-1]["wall_seconds"] and result["env_steps"] == curve[-1]["env_steps"]
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["env_steps"] < 120_000  # stopped at the evaluation, not at total_steps
    assert "threshold -700.0 reached (eval return)" in done.stdout and done.stdout.count("eval at ") == len(curve)


def test_time_budget_lifts_the_step_limit_only_where_none_is_given(tmp_path: Path) -> None:
    """`stride bench time-to-walk --max-seconds 3600` with the built-in config used to stop at its
    3 M steps after a few minutes; now time bounds it, with a schedule that needs no horizon: the
    biped's rate lowered at 15 M and 22 M env steps, any other env's constant."""
    from learner.config import NO_STEP_LIMIT
    from services.time_to_walk import time_budget

    biped = {"train.total_steps": NO_STEP_LIMIT, "ppo.lr_schedule": "step", "ppo.lr_milestones": "15000000,22000000"}
    assert time_budget(None, {}) == biped
    assert time_budget(None, {"env.id": "actors.envs:stride/BipedWalker-v0"}) == biped  # Gymnasium's module form
    cfg = C.load(None, biped)
    assert cfg.ppo.lr_milestones == (15_000_000, 22_000_000) and cfg.ppo.lr_step_factor == pytest.approx(1 / 3)
    # the user's own factor goes with the milestones; the user's own milestones are not replaced
    assert time_budget(None, {"ppo.lr_step_factor": "0.5"}) == biped
    assert time_budget(None, {"ppo.lr_milestones": "5e6"}) == {"train.total_steps": NO_STEP_LIMIT,
                                                               "ppo.lr_schedule": "constant"}
    with pytest.raises(C.ConfigError, match="^ppo.lr_milestones"):  # ... so a milestone without 'step' is refused
        C.validate(C.load(None, {"ppo.lr_milestones": "5e6", **time_budget(None, {"ppo.lr_milestones": "5e6"})}))
    assert time_budget(None, {"env.id": "Walker2d-v5"}) == {"train.total_steps": NO_STEP_LIMIT,
                                                            "ppo.lr_schedule": "constant"}
    walker = tmp_path / "walker.yaml"
    walker.write_text("env:\n  id: Walker2d-v5\n")
    assert time_budget(walker, {})["ppo.lr_schedule"] == "constant"
    assert time_budget(None, {"train.total_steps": "38000000"}) == {}
    assert time_budget(ROOT / "configs" / "pendulum.yaml", {}) == {}  # the file gives total_steps
    assert time_budget(None, {"ppo.lr_schedule": "adaptive"}) == {"train.total_steps": NO_STEP_LIMIT}
    stepped = {"ppo.lr_schedule": "step", "ppo.lr_milestones": "15e6"}  # its milestones are env steps, not a budget
    assert time_budget(None, stepped) == {"train.total_steps": NO_STEP_LIMIT}
    assert time_budget(None, {"ppo.lr_schedule": "plateau"}) == {"train.total_steps": NO_STEP_LIMIT}
    with pytest.raises(C.ConfigError, match=r"^ppo.lr_schedule: 'linear' anneals over train.total_steps"):
        time_budget(None, {"ppo.lr_schedule": "linear"})
    # with a horizon of its own, a linear schedule needs no step budget
    assert time_budget(None, {"ppo.lr_schedule": "linear", "ppo.lr_decay_steps": "5000000"}) == {
        "train.total_steps": NO_STEP_LIMIT}
    with pytest.raises(C.ConfigError, match=r"^ppo.lr_schedule: 'linear'"):
        time_budget(None, {"ppo.lr_schedule": "linear", "ppo.lr_decay_steps": 0})
    config = tmp_path / "linear.yaml"
    config.write_text("ppo:\n  lr_schedule: linear\n")
    with pytest.raises(C.ConfigError, match="train.total_steps"):
        time_budget(config, {})


# slow: the rule itself (time_budget) is checked above without a run
@pytest.mark.slow
def test_time_to_walk_without_a_step_budget_runs_until_its_time(tmp_path: Path) -> None:
    config = tmp_path / "pendulum-no-steps.yaml"
    config.write_text("\n".join(line for line in (ROOT / "configs" / "pendulum.yaml").read_text().splitlines()
                                if "total_steps" not in line))
    out = tmp_path / "ttw"
    done = subprocess.run([str(Path(sys.executable).parent / "stride"), "bench", "time-to-walk", "--config",
                           str(config), "--threshold", "0", "--max-seconds", "12", "--set", "rollout.actors=1",
                           "--no-video", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "threshold 0.0 NOT reached" in done.stdout, done.stderr[-2000:]
    saved = C.load(out / "config.yaml")
    assert saved.train.total_steps == C.NO_STEP_LIMIT and saved.ppo.lr_schedule == "constant"
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["wall_time"] - recs[0]["wall_time"] > 5  # ran on until the time limit
    assert {r["lr"] for r in recs} == {saved.ppo.lr}


def test_time_to_walk_stop_on_eval_needs_an_interval(tmp_path: Path) -> None:
    done = subprocess.run([str(Path(sys.executable).parent / "stride"), "bench", "time-to-walk", "--stop-on", "eval",
                           "--out", str(tmp_path / "ttw")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--eval-every" in done.stderr
    assert not (tmp_path / "ttw").exists()  # failed before anything started


def test_time_to_walk_eval_episodes_must_leave_the_final_seeds_apart() -> None:
    """The periodic evaluations' seeds (EVAL_SEED + episode) must stay below the final
    evaluation's (FINAL_EVAL_SEED), or the final one would repeat episodes it is meant to check."""
    ttw.check_options("eval", 300, ttw.MAX_EVAL_EPISODES)  # the largest allowed
    assert ttw.EVAL_SEED + ttw.MAX_EVAL_EPISODES - 1 < ttw.FINAL_EVAL_SEED
    for bad in (0, ttw.MAX_EVAL_EPISODES + 1):
        with pytest.raises(ValueError, match="--eval-episodes"):
            ttw.check_options("eval", 300, bad)


def test_time_to_walk_resumes_with_its_clock_and_evaluations(tmp_path: Path) -> None:
    """An experiment that died between checkpoints resumes from the last one it wrote: the
    iterations and evaluations after it are dropped (they are done again), the clock goes on from
    the checkpoint's time since the original start, and the config stays the run's own."""
    out = tmp_path / "ttw"
    stride = str(Path(sys.executable).parent / "stride")
    common = ["--threshold", "0", "--stop-on", "eval", "--eval-every", "0.5", "--eval-episodes", "2",
              "--no-video", "--out", str(out)]
    first = subprocess.run([stride, "bench", "time-to-walk", "--config", "configs/pendulum.yaml", *common,
                            "--set", "rollout.actors=2", "--set", "train.total_steps=20480",
                            "--set", "train.checkpoint_every=2"],
                           cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert first.returncode == 1, first.stdout + first.stderr[-2000:]  # 0 is out of reach: not reached
    clock = (out / "time_to_walk_clock.json").read_text()
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    curve = [json.loads(x) for x in (out / "eval_curve.jsonl").read_text().splitlines()]
    assert recs[-1]["iteration"] == 10 and len(curve) >= 2
    # The "crash": the newest checkpoint never made it to disk, so the run resumes from iteration 8.
    ckpts = sorted((out / "checkpoints").glob("ckpt-*.pt"))
    ckpts[-1].unlink()
    resumed = subprocess.run([stride, "bench", "time-to-walk", "--resume", *common,
                              "--set", "train.total_steps=32768"],
                             cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr[-2000:]
    assert (out / "time_to_walk_clock.json").read_text() == clock  # the original start
    at_ckpt = next(r for r in recs if r["iteration"] == 8)
    elapsed = at_ckpt["wall_time"] - json.loads(clock)["started_at"]
    recs2 = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in recs2] == list(range(1, 17))  # 9 and 10 were done again, once
    assert recs2[:8] == recs[:8]
    curve2 = [json.loads(x) for x in (out / "eval_curve.jsonl").read_text().splitlines()]
    kept = [p for p in curve if p["env_steps"] <= at_ckpt["env_steps"]]
    assert curve2[:len(kept)] == kept and len(curve2) > len(kept)
    assert all(p["wall_seconds"] > elapsed and p["env_steps"] > at_ckpt["env_steps"] for p in curve2[len(kept):])
    result = json.loads((out / "time_to_walk.json").read_text())
    assert result["eval_curve"] == curve2 and result["env_steps"] == 32768 and result["wall_seconds"] > elapsed
    saved = C.load(out / "config.yaml")
    assert saved.env.id == "Pendulum-v1" and saved.train.total_steps == 32768 and saved.train.max_seconds == 3600


def test_time_to_walk_resume_needs_a_time_to_walk_folder(tmp_path: Path) -> None:
    stride = str(Path(sys.executable).parent / "stride")
    done = subprocess.run([stride, "bench", "time-to-walk", "--resume"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "--resume needs --out DIR" in done.stderr
    done = subprocess.run([stride, "bench", "time-to-walk", "--resume", "--out", str(tmp_path / "none")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no config.yaml" in done.stderr
    done = subprocess.run([stride, "bench", "time-to-walk", "--resume", "--config", "configs/pendulum.yaml",
                           "--out", str(tmp_path / "none")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "drop --config" in done.stderr
    train_run = tmp_path / "train-run"  # a `stride train` folder: no clock to go on from
    train_run.mkdir()
    C.save(C.load(ROOT / "configs/pendulum.yaml"), train_run / "config.yaml")
    done = subprocess.run([stride, "bench", "time-to-walk", "--resume", "--out", str(train_run)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "time_to_walk_clock.json" in done.stderr
    assert sorted(p.name for p in train_run.iterdir()) == ["config.yaml"]  # nothing started


# slow: the default run crosses nodes in tests/test_multinode.py and tests/chaos/test_node_loss.py
@pytest.mark.slow
def test_bench_scale_on_several_local_nodes(tmp_path: Path) -> None:
    # Also: --set reaches the points (fragment length, node relays) and the config is kept.
    out = tmp_path / "bench"
    done = subprocess.run([str(Path(sys.executable).parent / "stride"), "bench", "scale", "--actors", "2",
                           "--local-nodes", "2", "--seconds", "5", "--env", "Pendulum-v1", "--envs-per-actor", "4",
                           "--set", "rollout.fragment_length=64", "--set", "rollout.node_relays=true",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader((out / "scale.csv").open()))
    assert [int(r["actors"]) for r in rows] == [2] and float(rows[0]["env_steps_per_s"]) > 0
    assert (int(rows[0]["envs_per_actor"]), int(rows[0]["fragment_length"])) == (4, 64)
    kept = C.load(out / "config.yaml")
    assert kept.rollout.fragment_length == 64 and kept.rollout.node_relays and kept.env.id == "Pendulum-v1"


def test_bench_scale_names_a_bad_override() -> None:
    done = subprocess.run([str(Path(sys.executable).parent / "stride"), "bench", "scale", "--set",
                           "rollout.fragment_length=-3"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "rollout.fragment_length" in done.stderr


def test_time_to_walk_writes_strict_json() -> None:
    """A training return that is still NaN (no episode had ended) is written as null, so strict
    JSON readers (jq, browsers) can read time_to_walk.json and eval_curve.jsonl."""
    from services.time_to_walk import _json

    text = _json({"train_return": float("nan"), "eval_curve": [{"train_return": float("nan"), "x": 1.5}]})
    assert "NaN" not in text
    assert json.loads(text) == {"train_return": None, "eval_curve": [{"train_return": None, "x": 1.5}]}


def test_an_older_eval_curve_still_loads(tmp_path: Path) -> None:
    """eval_curve.jsonl lines from before ended_by/tilted were recorded load with empty counts
    next to newer lines, and a NaN training return written as null comes back; written out again
    (as a resume does) every line has every field."""
    from dataclasses import asdict

    from services.time_to_walk import _json, read_eval_curve

    old = {"wall_seconds": 300.5, "env_steps": 2_700_000, "train_return": None, "eval_return": 69.0,
           "eval_return_std": 12.5, "eval_length": 33.0, "eval_forward_distance_m": 1.88}
    new = {**old, "wall_seconds": 601.0, "env_steps": 5_400_000, "train_return": 72.3,
           "ended_by": {"tilt": 15, "fell": 5}, "tilted": {"forward": 9, "sideways": 6}}
    path = tmp_path / "eval_curve.jsonl"
    path.write_text(json.dumps(old) + "\n" + json.dumps(new) + "\n\n")
    first, second = read_eval_curve(path)
    assert first.ended_by == {} and first.tilted == {} and first.train_return is None
    assert first.eval_forward_distance_m == 1.88 and first.env_steps == 2_700_000
    assert second.ended_by == {"tilt": 15, "fell": 5} and second.tilted == {"forward": 9, "sideways": 6}
    rewritten = [json.loads(_json(asdict(p))) for p in (first, second)]
    assert rewritten == [{**old, "ended_by": {}, "tilted": {}}, new]
    # A crash while the next evaluation was appended: its partial line is dropped, not fatal.
    path.write_text(json.dumps(old) + "\n" + json.dumps(new) + "\n" + json.dumps(new)[:40])
    assert read_eval_curve(path) == [first, second]
