"""`stride bench time-to-walk`: train the biped until its return reaches a threshold.

Two stop rules (`stop_on`):
- "train": the mean return of the training episodes that finished in the last `window`
  iterations (stochastic policy, costs nothing while training);
- "eval": the deterministic policy's mean return over `eval_episodes` seeded episodes, measured
  on the first checkpoint written at least `eval_every` seconds after the previous evaluation.
  The evaluations run in the driver, on the same cores, inside the measured wall time.
With `eval_every` > 0 the evaluations are recorded (eval_curve.jsonl) whichever rule stops the
run. At the end the latest checkpoint is evaluated again, on other seeds than the periodic
evaluations' (from FINAL_EVAL_SEED), and a video written. Reports wall-clock time to the
threshold, env steps, and that final evaluation. Why other seeds: with `stop_on` "eval" the run
stops at the first evaluation that reaches the threshold, so that evaluation is picked for being
high (a 20-episode mean with a std of 50-90 on the biped); the final one, on fresh episodes of the
same checkpoint, is an estimate that was not picked.

Ctrl-C (or SIGTERM) stops it after a checkpoint, like `stride train`: the latest checkpoint is
evaluated (no video, to stop soon) and time_to_walk.json records the partial result with
`interrupted: true`.

An hour-long experiment that dies (machine restart, OOM, Ctrl-C) resumes from its last checkpoint
(`resume=True`). The clock then goes on from the time that checkpoint's iteration ended, measured
from the original start (kept in time_to_walk_clock.json): the work lost after the checkpoint is
not counted, because the resumed run does it again, but the resumed run's own start-up is. The
evaluations recorded up to the checkpoint are kept; later ones are dropped with the lost work.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actors.trajectory import EpisodeStats
from learner import config as C

if TYPE_CHECKING:  # torch and Ray load with these (~4 s): the CLI checks its options first
    from learner.trainer import Trainer

log = logging.getLogger("stride")

CLOCK_FILE = "time_to_walk_clock.json"  # {"started_at": Unix time of the original start}
# The periodic evaluations' episodes are seeded EVAL_SEED, EVAL_SEED + 1, ...: evaluate()'s and
# `stride eval`'s default, written out here because learner.evaluate loads later (see above).
EVAL_SEED = 10_000
FINAL_EVAL_SEED = 1_000_000  # the final evaluation's: disjoint from them for any eval_episodes allowed
MAX_EVAL_EPISODES = FINAL_EVAL_SEED - EVAL_SEED
# The biped's time-bounded schedule (time_budget): 3e-4 to 15 M env steps, 1e-4 to 22 M, then 3.3e-5.
BIPED_LR_MILESTONES = (15_000_000, 22_000_000)


@dataclass
class EvalPoint:
    """One periodic evaluation of the deterministic policy during the run."""

    wall_seconds: float  # since the call, as TimeToWalk.wall_seconds
    env_steps: int
    train_return: float  # the windowed training return at that moment, for comparison
    eval_return: float
    eval_return_std: float
    eval_length: float
    eval_forward_distance_m: float | None
    ended_by: dict[str, int] = field(default_factory=dict)  # how the evaluation's episodes ended
    tilted: dict[str, int] = field(default_factory=dict)  # which way its "tilt" episodes went over


@dataclass
class TimeToWalk:
    threshold: float
    reached: bool
    wall_seconds: float  # from the call (Ray and actor start-up included) to the crossing iteration, or the stop
    env_steps: int
    train_return: float  # windowed training return when it stopped
    eval_return: float
    eval_return_std: float
    eval_length: float
    eval_forward_distance_m: float | None
    eval_ended_by: dict[str, int]
    video: str | None
    stop_on: str = "train"
    eval_curve: list[EvalPoint] = field(default_factory=list)  # the periodic evaluations, in order
    interrupted: bool = False  # stopped by Ctrl-C or SIGTERM before the threshold or the budget: resumable
    eval_tilted: dict[str, int] = field(default_factory=dict)  # which way the final eval's "tilt" episodes went
    eval_seed: int = FINAL_EVAL_SEED  # the final evaluation's first episode seed (the periodic ones start at EVAL_SEED)


class _StopAtReturn:
    """Tracks the windowed training return; stops the trainer when it reaches the threshold
    (stop_on "train"), or when a periodic evaluation does (stop_on "eval")."""

    def __init__(self, trainer: Trainer, run_dir: Path, threshold: float, window: int, stop_on: str,
                 eval_every: float, eval_episodes: int, elapsed: float = 0.0,
                 curve: list[EvalPoint] | None = None) -> None:
        self.trainer, self.run_dir, self.threshold, self.stop_on = trainer, run_dir, threshold, stop_on
        self.eval_every, self.eval_episodes = eval_every, eval_episodes
        self.curve: list[EvalPoint] = list(curve or [])
        self.recent: deque[tuple[float, int]] = deque(maxlen=window)  # (sum of returns, episodes)
        self.start = time.perf_counter() - elapsed  # a resumed run's clock goes on from the checkpoint
        self.hit: tuple[float, int, float] | None = None
        self.last = (0.0, 0, float("nan"))

    def on_iteration(self, rec: dict[str, Any], episodes: EpisodeStats) -> None:
        self.recent.append((float(episodes.returns.sum()), len(episodes.returns)))
        n = sum(k for _, k in self.recent)
        mean = sum(s for s, _ in self.recent) / n if n else float("nan")
        self.last = (time.perf_counter() - self.start, rec["env_steps"], mean)
        if (self.stop_on == "train" and self.hit is None and len(self.recent) == self.recent.maxlen and n
                and mean >= self.threshold):
            self._stop(self.last, "training return", mean)

    def on_checkpoint(self, path: Path, when: float) -> None:
        if self.eval_every <= 0 or self.hit is not None:
            return
        now = time.perf_counter() - self.start
        if now - (self.curve[-1].wall_seconds if self.curve else 0.0) < self.eval_every:
            return
        from learner.evaluate import evaluate

        ev = evaluate(self.run_dir, self.eval_episodes, seed=EVAL_SEED)  # the checkpoint just written is the latest
        now = time.perf_counter() - self.start
        point = EvalPoint(now, ev.env_steps, self.last[2], ev.mean_return, ev.std_return, ev.mean_length,
                          ev.mean_forward_distance, ev.ended_by, ev.tilted)
        self.curve.append(point)
        with (self.run_dir / "eval_curve.jsonl").open("a") as f:
            f.write(_json(asdict(point)) + "\n")
        log.info("eval at %.0f s, %d env steps: return %.1f +- %.1f, length %.0f", now, ev.env_steps,
                 ev.mean_return, ev.std_return, ev.mean_length)
        if self.stop_on == "eval" and ev.mean_return >= self.threshold:
            self._stop((now, ev.env_steps, self.last[2]), "eval return", ev.mean_return)

    def _stop(self, hit: tuple[float, int, float], what: str, value: float) -> None:
        self.hit = hit
        log.info("%s %.1f >= %.1f after %.0f s, %d env steps", what, value, self.threshold, hit[0], hit[1])
        self.trainer.request_stop()


STOP_RULES = ("train", "eval")


def _json(value: Any, indent: int | None = None) -> str:
    """Strict JSON: a NaN (no training episode had ended yet) is written as null."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), indent=indent, allow_nan=False)


def read_eval_curve(path: Path) -> list[EvalPoint]:
    """The evaluations in an eval_curve.jsonl, one JSON object per line. Lines written before a
    field existed (ended_by and tilted came in session 27) load with that field's default, so an
    older experiment can still be resumed. A line a crash left half written is dropped, logged."""
    from learner.run_folder import read_jsonl

    points, _ = read_jsonl(path, required="env_steps")
    return [EvalPoint(**p) for p in points]


def _resume_clock(run_dir: Path, trainer: Trainer) -> tuple[float, list[EvalPoint]]:
    """Seconds from the original start to the end of the checkpoint's iteration (the resumed
    trainer's last kept record), and the evaluations made up to that checkpoint, with
    eval_curve.jsonl rewritten (atomically) to hold just those."""
    started_at = float(json.loads((run_dir / CLOCK_FILE).read_text())["started_at"])
    last, env_steps = trainer.last_record, trainer.counters.env_steps
    elapsed = float(last["wall_time"]) - started_at if last else 0.0
    curve_path = run_dir / "eval_curve.jsonl"
    curve = read_eval_curve(curve_path) if curve_path.exists() else []
    kept = [p for p in curve if p.env_steps <= env_steps]
    if curve_path.exists():
        tmp = curve_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(_json(asdict(p)) + "\n" for p in kept))
        os.replace(tmp, curve_path)
    return elapsed, kept


def check_options(stop_on: str, eval_every: float, eval_episodes: int) -> None:
    """ValueError for options that cannot work together. The messages name the CLI flags too:
    `stride bench time-to-walk` calls this before it makes a folder."""
    if stop_on not in STOP_RULES:
        raise ValueError(f"stop_on (--stop-on) must be one of {STOP_RULES}, got {stop_on!r}")
    if stop_on == "eval" and eval_every <= 0:
        raise ValueError("stop_on 'eval' (--stop-on eval) needs eval_every > 0 (--eval-every SECONDS)")
    if not 1 <= eval_episodes <= MAX_EVAL_EPISODES:  # more would reuse the final evaluation's seeds
        raise ValueError(f"eval_episodes (--eval-episodes) must be in 1..{MAX_EVAL_EPISODES:,}, got {eval_episodes}")


def time_budget(config_path: str | Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides that make an experiment bounded by time, not by the config's step budget.

    Unless train.total_steps is given (in the config file or as an override), the built-in
    3 M steps would end an hour's experiment after a few minutes: the step limit is lifted, and
    the learning rate schedule, unless one is given, is one with no horizon: on the biped the rate
    is lowered by ppo.lr_step_factor at BIPED_LR_MILESTONES env steps (`step`), on any other env it
    stays constant. (On the biped, annealing to 0 within the hour cost more than half the
    progress, session 9; a third of the rate led the constant one in every branch 15-18 M steps
    into a run, sessions 39-41; with the two milestones seed 0 reached 216 in 45.7 minutes on a
    2-core Xeon, session 42: docs/benchmarks.md.) A linear schedule asked for explicitly without a
    step budget is refused, naming the field, unless ppo.lr_decay_steps gives it a horizon.
    """
    from actors.envs import is_biped  # with Gymnasium (~0.25 s): only where a time budget is worked out

    given = {**(C.read_file(config_path) if config_path is not None else {}), **overrides}
    if "train.total_steps" in given:
        return {}
    if "ppo.lr_schedule" in given:
        # a horizon that is not a number is left for C.load to refuse, naming its field
        horizon = str(given.get("ppo.lr_decay_steps", 0)).strip()
        if str(given["ppo.lr_schedule"]) == "linear" and horizon in ("0", ""):
            raise C.ConfigError("ppo.lr_schedule: 'linear' anneals over train.total_steps; give "
                                "train.total_steps or ppo.lr_decay_steps (--set ...=N), or use 'constant'")
        return {"train.total_steps": C.NO_STEP_LIMIT}
    schedule: dict[str, Any] = {"ppo.lr_schedule": "constant"}
    how = "constant learning rate"
    if is_biped(str(given.get("env.id", C.EnvConfig.id))) and "ppo.lr_milestones" not in given:
        milestones = ",".join(str(m) for m in BIPED_LR_MILESTONES)
        schedule = {"ppo.lr_schedule": "step", "ppo.lr_milestones": milestones}
        how = f"learning rate lowered at {milestones} env steps (ppo.lr_schedule=step)"
    log.info("no train.total_steps given: time-bounded (--max-seconds), %s", how)
    return {"train.total_steps": C.NO_STEP_LIMIT, **schedule}


def time_to_walk(cfg: C.Config, run_dir: Path, threshold: float, window: int = 5, episodes: int = 10,
                 video: bool = True, stop_on: str = "train", eval_every: float = 0.0,
                 eval_episodes: int = 10, resume: bool = False) -> TimeToWalk:
    from learner.evaluate import evaluate
    from learner.trainer import Trainer

    check_options(stop_on, eval_every, eval_episodes)
    elapsed, curve = 0.0, list[EvalPoint]()
    if resume:
        if not (run_dir / CLOCK_FILE).is_file():
            raise ValueError(f"--resume: {run_dir} has no {CLOCK_FILE} (not a time-to-walk run folder)")
        trainer = Trainer(cfg, run_dir, resume=True)  # cuts metrics.jsonl back to the checkpoint
        elapsed, curve = _resume_clock(run_dir, trainer)
        C.save(cfg, run_dir / "config.yaml")  # with the whole budget: it may be resumed again
        if cfg.train.max_seconds > 0:
            # max_seconds is the experiment's budget, not this process's.
            cfg.train.max_seconds = max(1.0, cfg.train.max_seconds - elapsed)
        log.info("time-to-walk resumed at %.0f s, %d env steps, with %d evaluations", elapsed,
                 trainer.counters.env_steps, len(curve))
    else:
        trainer = Trainer(cfg, run_dir)  # first: it refuses a folder that already holds a run
        (run_dir / CLOCK_FILE).write_text(json.dumps({"started_at": time.time()}) + "\n")
        C.save(cfg, run_dir / "config.yaml")  # as `stride train` does: the run can be resumed or evaluated
    stop = _StopAtReturn(trainer, run_dir, threshold, window, stop_on, eval_every, eval_episodes, elapsed, curve)
    trainer.observers.append(stop)
    interrupted = False
    try:
        trainer.run()
    except KeyboardInterrupt:  # the trainer has written its checkpoint either way
        interrupted = stop.hit is None  # else it was the stop rule's own request
    if interrupted:
        log.warning("interrupted at %.0f s, %d env steps: evaluating the last checkpoint", *stop.last[:2])
    wall, steps, ret = stop.hit or stop.last
    video_path = run_dir / "walk.mp4" if video and not interrupted else None
    ev = evaluate(run_dir, episodes, seed=FINAL_EVAL_SEED, video=video_path)
    result = TimeToWalk(threshold, stop.hit is not None, wall, steps, ret, ev.mean_return, ev.std_return,
                        ev.mean_length, ev.mean_forward_distance, ev.ended_by,
                        str(video_path) if video_path else None, stop_on, stop.curve, interrupted, ev.tilted,
                        FINAL_EVAL_SEED)
    (run_dir / "time_to_walk.json").write_text(_json(asdict(result), indent=2) + "\n")
    return result
