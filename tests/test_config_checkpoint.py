"""Configuration loading/validation and atomic checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch

from learner import checkpoint
from learner import config as C
from services.cli import main as cli_main


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_validates(path: Path) -> None:
    """A config file in configs/ that no longer loads, or fails validation, breaks a README or
    benchmark command: each one is loaded and validated as `stride train --config` would."""
    cfg = C.load(path, {})
    C.validate(cfg)
    assert cfg.env.id


def test_defaults_validate_and_every_field_has_a_docstring() -> None:
    C.validate(C.Config())
    source = Path(C.__file__).read_text()
    for section in (C.EnvConfig, C.RolloutConfig, C.PPOConfig, C.ModelConfig, C.TrainConfig):
        for f in section.__dataclass_fields__:
            line = next(i for i, ln in enumerate(source.splitlines()) if ln.strip().startswith(f"{f}:"))
            assert source.splitlines()[line + 1].strip().startswith('"""'), f"{section.__name__}.{f} lacks a docstring"


def test_yaml_and_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("env:\n  id: Pendulum-v1\n  envs_per_actor: 4\nppo:\n  lr: 1.0e-3\nmodel:\n  hidden: [32, 32]\n")
    cfg = C.load(p, {"ppo.lr": "2e-4", "train.mode": "async", "ppo.lr_schedule": "constant",
                     "train.total_steps": "1e5"})
    assert cfg.env.id == "Pendulum-v1" and cfg.env.envs_per_actor == 4
    assert cfg.ppo.lr == 2e-4 and cfg.train.mode == "async" and cfg.ppo.lr_schedule == "constant"
    assert cfg.model.hidden == (32, 32) and cfg.train.total_steps == 100_000
    C.save(cfg, tmp_path / "out.yaml")
    assert C.load(tmp_path / "out.yaml") == cfg  # round trip
    # --set model.hidden=...: the comma list, or the YAML list a user copies from a config file
    for text in ("256,256", "[256, 256]", " (256,256) ", "256, 256,"):
        assert C.load(None, {"model.hidden": text}).model.hidden == (256, 256), text
    with pytest.raises(C.ConfigError, match="model.hidden"):
        C.load(None, {"model.hidden": "[256, wide]"})


def test_run_folders_saved_with_anneal_lr_still_load(tmp_path: Path) -> None:
    """`ppo.anneal_lr` (before ppo.lr_schedule) maps to 'linear' / 'constant', so older run
    folders' config.yaml still resume."""
    p = tmp_path / "config.yaml"
    for value, schedule in (("false", "constant"), ("true", "linear")):
        p.write_text(f"ppo:\n  anneal_lr: {value}\n")
        assert C.load(p).ppo.lr_schedule == schedule
    assert C.load(None, {"ppo.anneal_lr": "false"}).ppo.lr_schedule == "constant"


def test_lr_milestones_read_as_a_user_writes_them_and_survive_a_save(tmp_path: Path) -> None:
    """On the command line as "1.5e7,3e7" (the int fields' exponent form), in YAML as a list;
    config.yaml keeps them, so a resumed run has the same schedule."""
    cfg = C.load(None, {"ppo.lr_schedule": "step", "ppo.lr_milestones": "1.5e7, 3e7"})
    C.validate(cfg)
    assert cfg.ppo.lr_milestones == (15_000_000, 30_000_000)
    C.save(cfg, tmp_path / "config.yaml")
    assert "- 15000000" in (tmp_path / "config.yaml").read_text()
    assert C.load(tmp_path / "config.yaml").ppo.lr_milestones == (15_000_000, 30_000_000)
    (tmp_path / "mine.yaml").write_text("ppo:\n  lr_schedule: step\n  lr_milestones: [1000, 5000]\n")
    assert C.load(tmp_path / "mine.yaml").ppo.lr_milestones == (1000, 5000)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"rollout.actors": -1}, "rollout.actors"),
        ({"ppo.lr_schedule": "cosine"}, "ppo.lr_schedule"),
        ({"ppo.lr_kl_target": 0}, "ppo.lr_kl_target"),
        ({"ppo.lr_schedule": "step"}, "ppo.lr_milestones"),  # no milestone
        ({"ppo.lr_milestones": "1000"}, "ppo.lr_milestones"),  # a milestone the schedule ignores
        ({"ppo.lr_schedule": "step", "ppo.lr_milestones": "2000,1000"}, "ppo.lr_milestones"),
        ({"ppo.lr_schedule": "step", "ppo.lr_milestones": "0"}, "ppo.lr_milestones"),
        ({"ppo.lr_schedule": "step", "ppo.lr_milestones": "1000", "ppo.lr_step_factor": 0}, "ppo.lr_step_factor"),
        ({"ppo.lr_schedule": "plateau", "ppo.lr_plateau_window": 0}, "ppo.lr_plateau_window"),
        ({"ppo.lr_schedule": "plateau", "ppo.lr_plateau_min_gain": -0.1}, "ppo.lr_plateau_min_gain"),
        ({"ppo.lr_schedule": "plateau", "ppo.lr_plateau_min_gain": "inf"}, "ppo.lr_plateau_min_gain"),
        ({"ppo.lr_schedule": "plateau", "ppo.lr_plateau_max_drops": -1}, "ppo.lr_plateau_max_drops"),
        ({"env.envs_per_actor": 0}, "env.envs_per_actor"),
        ({"env.id": "NoSuchEnv-v9"}, "env.id"),
        ({"env.id": "CartPole-v1"}, "env.id"),  # discrete actions
        ({"ppo.minibatches": 7}, "ppo.minibatches"),  # 16 * 128 not divisible by 7
        ({"ppo.loss": "trust-region"}, "ppo.loss"),
        ({"ppo.gamma": 1.5}, "ppo.gamma"),
        ({"ppo.lr": 0}, "ppo.lr"),
        ({"train.mode": "fast"}, "train.mode"),
        ({"train.total_steps": -5}, "train.total_steps"),
        ({"train.device": "tpu"}, "train.device"),
        ({"env.kwargs": {"no_such_arg": 1}}, "env.kwargs"),
    ],
)
def test_invalid_values_name_the_field(overrides: dict, field: str) -> None:
    cfg = C.load(None, overrides)
    with pytest.raises(C.ConfigError, match=f"^{field}:"):
        C.validate(cfg)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"ppo.nope": 1}, "ppo.nope"), ({"nope.lr": 1}, "nope"), ({"ppo.epochs": "many"}, "ppo.epochs"),
     ({"ppo.anneal_lr": "maybe"}, "ppo.anneal_lr"), ({"rollout.actors": 2.5}, "rollout.actors"),
     ({"ppo.lr_milestones": "1e6,many"}, "ppo.lr_milestones")],
)
def test_unknown_or_mistyped_fields_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(C.ConfigError, match=f"^{field}"):
        C.load(None, overrides)


def test_missing_gpu_fails_before_start() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the check is for machines without one")
    with pytest.raises(C.ConfigError, match="^train.device: 'cuda' requested but no CUDA GPU"):
        C.validate(C.load(None, {"train.device": "cuda"}))


def test_cli_bad_config_fails_before_ray_starts(tmp_path: Path, capsys) -> None:
    start = time.perf_counter()
    code = cli_main(["train", "--actors", "-3", "--run-dir", str(tmp_path / "r")])
    assert code == 2
    assert "rollout.actors: must be >= 0" in capsys.readouterr().err
    assert not ray.is_initialized() and not (tmp_path / "r").exists()
    assert time.perf_counter() - start < 30
    code = cli_main(["train", "--set", "ppo.minibatches=3"])
    assert code == 2 and "ppo.minibatches" in capsys.readouterr().err
    code = cli_main(["train", "--resume", str(tmp_path / "nothing")])
    assert code == 2 and "no config.yaml" in capsys.readouterr().err


def test_a_fresh_run_refuses_a_folder_that_holds_a_run(tmp_path: Path, capsys) -> None:
    """Training afresh in a run folder would append to the old run's metrics, and retention keeps
    the highest iteration numbers, so the new run's checkpoints would be deleted as it wrote them:
    refused before anything starts, with nothing in the folder touched."""
    from learner.trainer import Trainer

    cfg = C.load(Path(__file__).parents[1] / "configs" / "pendulum.yaml", {"train.video": False})
    run = tmp_path / "run"
    old = Trainer(cfg, run)
    old.counters.iteration = 500
    old.save_checkpoint()
    (run / "metrics.jsonl").write_text('{"iteration": 500}\n')
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match=r"ckpt-000000500\.pt, metrics\.jsonl.*--resume"):
        Trainer(cfg, run)
    assert cli_main(["train", "--config", "configs/pendulum.yaml", "--run-dir", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli_main(["bench", "time-to-walk", "--config", "configs/pendulum.yaml", "--threshold", "0",
                     "--no-video", "--out", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert not ray.is_initialized()
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "train.log"}
    assert after == before  # no clock file, no config rewritten, no checkpoint added
    assert Trainer(cfg, run, resume=True).counters.iteration == 500
    metrics_only = tmp_path / "metrics-only"
    metrics_only.mkdir()
    (metrics_only / "metrics.jsonl").write_text('{"iteration": 1}\n')
    with pytest.raises(FileExistsError, match="metrics.jsonl"):
        Trainer(cfg, metrics_only)
    # A folder where a run died before its first record (empty metrics, a config) is not a run.
    started = tmp_path / "started"
    started.mkdir()
    (started / "metrics.jsonl").write_text("")
    C.save(cfg, started / "config.yaml")
    Trainer(cfg, started)


def test_resume_drops_a_metrics_line_a_crash_left_half_written(tmp_path: Path, caplog) -> None:
    """A learner killed while appending a record leaves a partial last line; the resume drops it
    (and the records past the checkpoint) instead of failing to parse it, says so, and the file
    it leaves ends in a newline so the next record starts a line of its own."""
    import json

    from learner.trainer import Trainer

    cfg = C.load(Path(__file__).parents[1] / "configs" / "pendulum.yaml", {"train.video": False})
    run = tmp_path / "run"
    first = Trainer(cfg, run)
    first.counters.iteration = 3
    first.save_checkpoint()
    recs = [{"iteration": i, "env_steps": 256 * i, "episode_return_mean": -1000.0 + i} for i in (1, 2, 3, 4)]
    metrics = run / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"iteration": 5, "env_st')
    with caplog.at_level("WARNING", logger="stride"):
        resumed = Trainer(cfg, run, resume=True)
    assert resumed.counters.iteration == 3
    assert resumed.last_record == recs[2]
    assert metrics.read_text() == "".join(json.dumps(r) + "\n" for r in recs[:3])
    assert "dropped 1 unreadable line(s) (line 5) from" in caplog.text
    # The partial line may also be the checkpointed update's own record: the records before it stay.
    metrics.write_text("".join(json.dumps(r) + "\n" for r in recs[:2]) + '{"itera')
    again = Trainer(cfg, run, resume=True)
    assert again.last_record == recs[1]
    assert metrics.read_text() == "".join(json.dumps(r) + "\n" for r in recs[:2])


def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path: Path, monkeypatch) -> None:
    from services import bench_cli, cli

    monkeypatch.setattr(cli.time, "strftime", lambda fmt, *a: "20261122-120000")
    made = [cli.claim_folder(tmp_path / "runs", "") for _ in range(3)]
    assert [p.name for p in made] == ["20261122-120000", "20261122-120000-2", "20261122-120000-3"]
    assert all(p.is_dir() for p in made)
    monkeypatch.chdir(tmp_path)
    assert bench_cli._new_folder("soak") == Path("bench/soak-20261122-120000")
    assert (tmp_path / "bench" / "soak-20261122-120000").is_dir()


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "stride"
    out = subprocess.run([str(exe), "train", "--help"], capture_output=True, text=True, check=True).stdout
    for flag in ("--env", "--actors", "--envs-per-actor", "--total-steps", "--mode", "--run-dir", "--config",
                 "--resume", "--address"):
        assert flag in out


def _state(i: int) -> dict:
    return {"model": {"w": torch.full((3,), float(i))}, "counters": {"iteration": i}}


def test_checkpoint_roundtrip_keep_and_skip_corrupt(tmp_path: Path) -> None:
    for i in (1, 2, 3, 4):
        checkpoint.save(tmp_path, i, _state(i), keep=3)
    names = [p.name for p in checkpoint.list_checkpoints(tmp_path)]
    assert names == ["ckpt-000000002.pt", "ckpt-000000003.pt", "ckpt-000000004.pt"]
    path, state = checkpoint.latest(tmp_path)
    assert path.name == "ckpt-000000004.pt" and state["counters"]["iteration"] == 4
    # A torn newest file (as a crash outside our atomic write would leave) is skipped.
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    path, state = checkpoint.latest(tmp_path)
    assert path.name == "ckpt-000000003.pt" and torch.equal(state["model"]["w"], torch.full((3,), 3.0))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_checkpoint_write_failure_leaves_previous_intact(tmp_path: Path, monkeypatch) -> None:
    checkpoint.save(tmp_path, 1, _state(1))

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", boom)
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, 2, _state(2))
    monkeypatch.undo()
    path, state = checkpoint.latest(tmp_path)
    assert path.name == "ckpt-000000001.pt" and state["counters"]["iteration"] == 1
    assert sorted(os.listdir(tmp_path)) == ["ckpt-000000001.pt"]  # no temp file left behind


def test_not_a_checkpoint_is_rejected_with_its_name(tmp_path: Path) -> None:
    bad = tmp_path / "ckpt-000000001.pt"
    torch.save({"something": 1}, bad)
    with pytest.raises(ValueError, match="not a Stride checkpoint"):
        checkpoint.load(bad)
    assert checkpoint.latest(tmp_path) is None


def test_learner_threads_leave_the_actors_their_cores(monkeypatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(C, "local_cpus", lambda: 16)
    assert C.learner_threads(C.load(None, {"rollout.actors": 12}), "cpu") == 4
    assert C.learner_threads(C.load(None, {"rollout.actors": 0}), "cpu") == 1  # one actor per CPU
    assert C.learner_threads(C.load(None, {"rollout.actors": 20}), "cpu") == 1
    assert C.learner_threads(C.load(None, {"train.torch_threads": 3}), "cpu") == 3  # explicit wins
    assert C.learner_threads(C.load(None, {"rollout.actors": 2}), "cuda") == 0  # GPU: torch default
    assert C.learner_threads(C.load(None, {"rollout.actors": 2, "train.address": "auto"}), "cpu") == 0
