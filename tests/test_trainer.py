"""The training driver on a real local Ray cluster (2 CPUs): modes, resume, actor death."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import ray
import torch

from learner import checkpoint
from learner import config as C
from learner.progress import Progress
from learner.trainer import Trainer
from tests.conftest import start_local_ray


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    start_local_ray(num_cpus=2)
    yield
    ray.shutdown()


def small_config(**overrides) -> C.Config:
    base = {
        "env.id": "Pendulum-v1", "env.envs_per_actor": 4, "rollout.actors": 2, "rollout.fragment_length": 32,
        "ppo.minibatches": 4, "ppo.epochs": 2, "train.total_steps": 3 * 2 * 4 * 32, "train.video": False,
        "train.checkpoint_every": 1,
    }
    base.update(overrides)
    cfg = C.load(None, base)
    C.validate(cfg)
    return cfg


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_progress_eta_is_the_nearer_of_steps_and_time_limit() -> None:
    """A time-bounded run (train.max_seconds, `stride bench time-to-walk`) shows the time left,
    not how long its step budget would take."""
    import io

    out = io.StringIO()
    p = Progress(total=1_000_000, stream=out)
    p.show(1, 1_000, {"env_steps_per_s": 1_000.0, "episode_return_mean": 1.0})
    p.start -= 10.0  # 10 s later, 10,000 more steps: 1,000 steps/s
    p.show(2, 11_000, {"env_steps_per_s": 1_000.0, "episode_return_mean": 1.0})
    assert out.getvalue().splitlines()[-1].endswith("ETA 16m29s")  # 989,000 steps at 1,000/s
    p.deadline = time.monotonic() + 125.5
    p.show(3, 11_000, {"env_steps_per_s": 1_000.0, "episode_return_mean": 1.0})
    assert out.getvalue().splitlines()[-1].endswith("ETA 2m05s")
    unbounded = Progress(total=C.NO_STEP_LIMIT, stream=out)  # time-to-walk with no step budget: no fraction
    unbounded.show(1, 4_096, {"env_steps_per_s": 1_000.0, "episode_return_mean": 1.0})
    assert out.getvalue().splitlines()[-1].startswith("iter 1 | 4,096 steps | ")


def test_sync_mode_trains_on_current_version_only(tmp_path: Path) -> None:
    Trainer(small_config(), tmp_path).run()
    recs = records(tmp_path)
    assert [r["iteration"] for r in recs] == [1, 2, 3]
    assert [r["policy_version"] for r in recs] == [0, 1, 2]
    for r in recs:
        assert r["fragment_versions"] == [r["policy_version"]] * 2
        assert sorted(r["fragment_workers"]) == [0, 1]
        assert r["iteration_steps"] == 2 * 4 * 32
        for key in ("approx_kl", "clipfrac", "explained_variance", "entropy", "env_steps_per_s", "time_update"):
            assert key in r
    assert recs[-1]["env_steps"] == 768
    assert checkpoint.latest(tmp_path / "checkpoints")[0].name == "ckpt-000000003.pt"


def test_sync_run_repeats_bit_for_bit_for_a_seed(tmp_path: Path) -> None:
    """The same seed on the same machine gives the same run: every diagnostic of every update and
    the final weights are equal, not close. A different seed gives a different run, so the
    comparison can fail. Each start is recorded in machine.jsonl (other CPUs give other bits)."""
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("other", 4)):
        cfg = small_config(**{"train.total_steps": 5 * 2 * 4 * 32, "train.seed": seed})
        Trainer(cfg, tmp_path / name).run()
        model = checkpoint.latest(tmp_path / name / "checkpoints")[1]["model"]
        keys = ("policy_loss", "value_loss", "approx_kl", "entropy", "grad_norm", "episode_return_mean")
        runs[name] = ([{k: r[k] for k in keys} for r in records(tmp_path / name)], model)
    (curve_a, model_a), (curve_b, model_b), (curve_o, model_o) = runs["a"], runs["b"], runs["other"]
    assert len(curve_a) == 5 and curve_a == curve_b
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)
    assert curve_o[0]["policy_loss"] != curve_a[0]["policy_loss"]
    assert not torch.equal(model_o["log_std"], model_a["log_std"])  # trained apart, not merely initialised apart
    starts = [json.loads(line) for line in (tmp_path / "a" / "machine.jsonl").read_text().splitlines()]
    assert len(starts) == 1 and starts[0]["from_iteration"] == 0
    assert starts[0]["cpu_model"] and starts[0]["torch"] == torch.__version__
    assert starts[0]["learner_device"] == "cpu" and starts[0]["torch_cpu_capability"]


def test_a_step_schedule_is_the_run_resumed_at_its_milestone_with_the_lower_rate(tmp_path: Path) -> None:
    """ppo.lr_schedule 'step' with a milestone at a checkpoint's env steps trains as the run with
    a constant rate resumed there with `--set ppo.lr=` the lowered rate (what benchmarks/branch.py's
    lower-rate branches did by hand), to the bit. Both stop and resume at the milestone, since a
    resume restarts the envs from seeds (a run that goes straight on keeps its episodes)."""
    per_update = 2 * 4 * 32
    keys = ("policy_loss", "value_loss", "approx_kl", "entropy", "grad_norm", "lr")
    stepped = small_config(**{"train.total_steps": 5 * per_update, "ppo.lr_schedule": "step",
                              "ppo.lr_milestones": str(3 * per_update), "ppo.lr_step_factor": 0.5})
    Trainer(dataclasses.replace(stepped, train=dataclasses.replace(stepped.train, total_steps=3 * per_update)),
            tmp_path / "step").run()
    Trainer(stepped, tmp_path / "step", resume=True).run()
    Trainer(small_config(**{"train.total_steps": 3 * per_update, "ppo.lr_schedule": "constant"}),
            tmp_path / "hand").run()
    lowered = small_config(**{"train.total_steps": 5 * per_update, "ppo.lr_schedule": "constant",
                              "ppo.lr": stepped.ppo.lr * 0.5})
    Trainer(lowered, tmp_path / "hand", resume=True).run()
    curves = {name: [{k: r[k] for k in keys} for r in records(tmp_path / name)] for name in ("step", "hand")}
    assert [r["lr"] for r in curves["step"]] == [stepped.ppo.lr] * 3 + [stepped.ppo.lr * 0.5] * 2
    assert curves["step"] == curves["hand"]
    w_step = checkpoint.latest(tmp_path / "step" / "checkpoints")[1]["model"]
    w_hand = checkpoint.latest(tmp_path / "hand" / "checkpoints")[1]["model"]
    assert all(torch.equal(w_step[k], w_hand[k]) for k in w_step)


def test_async_mode_drops_and_counts_stale_fragments(tmp_path: Path) -> None:
    cfg = small_config(**{"train.mode": "async", "train.max_policy_lag": 0, "train.fragments_per_update": 1,
                          "train.total_steps": 12 * 4 * 32})
    Trainer(cfg, tmp_path).run()
    recs = records(tmp_path)
    assert recs[-1]["env_steps"] >= 12 * 4 * 32
    # Two actors, an update after every fragment, no lag allowed: the other actor's fragment in
    # flight during an update is always one version behind, so drops must happen and be counted.
    assert recs[-1]["dropped_fragments"] > 0
    for r in recs:
        assert all(r["policy_version"] - v <= 0 for v in r["fragment_versions"])
    lagged = small_config(**{"train.mode": "async", "train.max_policy_lag": 3, "train.fragments_per_update": 1,
                             "train.total_steps": 12 * 4 * 32})
    Trainer(lagged, tmp_path / "lagged").run()
    recs = records(tmp_path / "lagged")
    lags = [r["policy_version"] - v for r in recs for v in r["fragment_versions"]]
    # Stale-but-allowed fragments are used, older ones never (a slow-starting actor can still
    # fall more than 3 versions behind; its fragment is then dropped, and counted).
    assert max(lags) >= 1 and max(lags) <= 3


def test_resume_continues_with_identical_counters_and_weights(tmp_path: Path) -> None:
    Trainer(small_config(), tmp_path).run()
    path, saved = checkpoint.latest(tmp_path / "checkpoints")
    # As if the learner had crashed after one more update that no checkpoint saved:
    with (tmp_path / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"iteration": 4, "env_steps": 1024, "lost": True}) + "\n")
    resumed = Trainer(small_config(**{"train.total_steps": 5 * 2 * 4 * 32}), tmp_path, resume=True)
    assert resumed.resumed_from == path
    assert resumed.counters.iteration == saved["counters"]["iteration"] == 3
    assert resumed.counters.env_steps == saved["counters"]["env_steps"] == 768
    assert resumed.learner.version == 3
    for k, v in saved["model"].items():
        assert torch.equal(resumed.learner.model.state_dict()[k], v), k
    opt_saved = saved["learner"]["optimizer"]["state"]
    opt_now = resumed.learner.optimizer.state_dict()["state"]
    assert all(torch.equal(opt_saved[i]["exp_avg"], opt_now[i]["exp_avg"]) for i in opt_saved)
    assert resumed.learner.normalizer.count == saved["learner"]["normalizer"]["count"] > 0
    resumed.run()
    recs = records(tmp_path)
    assert [r["iteration"] for r in recs] == [1, 2, 3, 4, 5]  # the lost update's record is gone
    assert not any(r.get("lost") for r in recs)
    assert [r["policy_version"] for r in recs] == [0, 1, 2, 3, 4]
    assert recs[-1]["env_steps"] == 5 * 2 * 4 * 32


def test_killed_actor_does_not_stop_training(tmp_path: Path) -> None:
    cfg = small_config(**{"train.total_steps": 60 * 2 * 4 * 32, "train.checkpoint_every": 100})
    trainer = Trainer(cfg, tmp_path)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(trainer.run()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not (tmp_path / "metrics.jsonl").exists() or len(records(tmp_path)) < 3:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.05)
    old_pid = ray.get(trainer.workers[0].pid.remote())
    killed_at = len(records(tmp_path))  # read first: every record before it predates the kill
    os.kill(old_pid, signal.SIGKILL)  # the actor's process, for real
    thread.join(timeout=300)
    assert not thread.is_alive()
    recs = records(tmp_path)
    assert result["env_steps"] >= cfg.train.total_steps
    assert recs[-1]["actor_failures"] >= 1 and recs[-1]["lost_fragments"] >= 1
    # Before the kill every update had both actors' fragments; the round the kill interrupted (its
    # record may be the first one after killed_at, when Ray restarts the actor before the next
    # round) went ahead with the other actor's fragment alone.
    assert all(r["fragments"] == 2 for r in recs[:killed_at])
    assert any(r["fragments"] == 1 for r in recs[killed_at:])  # an update went ahead without the dead actor
    assert any(0 in r["fragment_workers"] for r in recs[killed_at + 1 :])  # the restarted actor was used again
    for r in recs:  # every fragment in an update still came from the current weights
        assert r["fragment_versions"] == [r["policy_version"]] * r["fragments"]


def test_code_version_only_describes_stride_s_own_checkout(tmp_path: Path, monkeypatch) -> None:
    """Installed outside a checkout (site-packages inside some other repository), git would
    describe the enclosing repository: machine.jsonl says null instead of a wrong commit."""
    from learner import machine

    if (machine.REPO_ROOT / ".git").exists():  # this checkout: described (a hash, maybe -dirty)
        assert machine.code_version()
    enclosing = tmp_path / "project"
    (enclosing / ".git").mkdir(parents=True)  # a repository that is not Stride's...
    monkeypatch.setattr(machine, "REPO_ROOT", enclosing / "venv" / "site-packages")  # ...holding its venv
    assert machine.code_version() is None
