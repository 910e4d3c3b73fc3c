"""Training configuration: nested dataclasses, one docstring per field.

Load order: defaults < YAML file (`--config`) < command-line flags < `--set section.field=value`.
`validate` runs before Ray starts and raises `ConfigError` naming the offending field.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

NO_STEP_LIMIT = 10**12  # train.total_steps of a run bounded by time (`stride bench time-to-walk`)


class ConfigError(ValueError):
    """A configuration value is invalid; the message starts with the field's dotted name."""


@dataclass
class EnvConfig:
    id: str = "stride/BipedWalker-v0"
    """Gymnasium id of the task: the biped (default) or any continuous-action env, e.g. Walker2d-v5."""
    envs_per_actor: int = 16
    """B: envs each rollout actor steps together (one batched policy forward per step)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the env constructor (e.g. {effort_weight: 0.22} for the biped)."""


@dataclass
class RolloutConfig:
    actors: int = 0
    """N: rollout actors. 0 means one per CPU of the Ray cluster (all local cores by default)."""
    fragment_length: int = 128
    """T: env steps per fragment each actor returns."""
    max_actor_restarts: int = -1
    """How often Ray may restart a dead actor (-1: without limit). An actor that has used them up
    is given up (`actors_gone`): the run trains on with the others, and stops with `RolloutFailed`
    after a checkpoint when none is left."""
    sample_timeout_s: float = 300.0
    """A fragment not back after this long counts as lost (hung actor); the actor is restarted."""
    max_sample_errors: int = 3
    """Sample calls of one actor that may raise in a row (its env's reset raised, or more than 100
    env errors in one fragment) before the run stops with `RolloutFailed`, after a checkpoint.
    Each one loses its fragment (counted in `sample_errors`) and restarts the actor with fresh envs;
    a fragment from that actor resets the count. A broken env fails every call: this stops it in
    a few rounds instead of restarting actors for ever."""
    node_relays: bool = False
    """Fetch the fragments of actors on other nodes through one relay per node, which packs that
    node's fragments of a round into one object (fewer, larger transfers into the learner). Off
    by default: on one machine it was slower than direct fetches and saved the driver little CPU
    (docs/scaling.md), and it has not been measured across real machines yet."""


@dataclass
class PPOConfig:
    loss: str = "clip"
    """'clip' (PPO-Clip) or 'penalty' (PPO with an adaptive KL penalty)."""
    gamma: float = 0.995
    """Discount factor (0.995: the biped learned faster than with 0.99, docs/benchmarks.md)."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    epochs: int = 10
    """Most passes over each batch (target_kl usually stops the biped's updates after one to three;
    without it, 10 x 32 reached 73 at 4 M steps against 51 with 5 x 8, docs/benchmarks.md). At the
    step schedule's 3.3e-5 the KL stays low and all ten run (medians 2 at 3e-4, 4 at 1e-4), 0.47 s per
    update against 0.10; a cap of 3 there got 35% more env steps in 15 minutes and no better walker
    (docs/benchmarks.md, session 45)."""
    minibatches: int = 8
    """Minibatches per epoch; envs_per_actor * fragment_length must be divisible by it. 8 (512 of
    the biped's 4,096 samples each): with target_kl 0.02 the biped's training return at 10
    minutes was 76 against 54 with 32 minibatches of 128 (docs/benchmarks.md)."""
    lr: float = 3e-4
    """Adam learning rate at the start."""
    lr_schedule: str = "linear"
    """'linear': decay the learning rate to 0 over total_steps; 'constant'; 'adaptive': start at
    lr, then after each update divide it by 1.5 if the update's approx KL exceeded 2 x
    lr_kl_target, multiply it by 1.5 if the KL stayed under half of it (kept within 1e-6..1e-2,
    checkpointed); 'step': lr until the first of lr_milestones, then multiplied by
    lr_step_factor at each milestone; 'plateau': lr, multiplied by lr_step_factor each time the
    training return stops rising (lr_plateau_window). (Old configs' `anneal_lr: true/false` still
    load, as 'linear'/'constant'.)"""
    lr_decay_steps: int = 0
    """lr_schedule 'linear': the env steps over which the rate falls to 0, then stays there (0:
    train.total_steps). A horizon of its own makes the rate at a given step independent of the
    budget, so runs of different lengths share one schedule (a 100k run of a 1M schedule keeps
    ~90% of its rate), and it gives `stride bench time-to-walk`, which has no step budget, a
    linear schedule."""
    lr_milestones: tuple[int, ...] = ()
    """lr_schedule 'step': the env steps (increasing) from which the rate is lr x lr_step_factor^k,
    k the milestones passed, e.g. `--set ppo.lr_milestones=15000000`. An update trains at the
    rate of the env steps before its batch, so a milestone at a checkpoint's env steps lowers the
    rate from the same update as resuming there with `--set ppo.lr=...` does (tested). On the biped,
    1e-4 led the constant 3e-4 in all seven branches tried 15-18 M steps into three runs, two stalled
    and one still climbing, 6-8 M env steps each (docs/benchmarks.md, sessions 39-41); `stride bench
    time-to-walk` uses 15 M and 22 M on the biped unless given a schedule (services/time_to_walk.py)."""
    lr_step_factor: float = 1 / 3
    """lr_schedule 'step' and 'plateau': what the rate is multiplied by at each milestone or drop."""
    lr_plateau_window: int = 2_000_000
    """lr_schedule 'plateau': env steps per window. The training episodes' mean return in the latest
    window is compared with the window before; when it is not ahead by lr_plateau_min_gain, the rate
    is lowered and two fresh windows are needed before the next comparison (learner/lr_plateau.py)."""
    lr_plateau_min_gain: float = 0.03
    """lr_schedule 'plateau': the least rise of the windowed training return, as a fraction of the
    earlier window's |mean|, that counts as still learning. With 2 M windows, 3% fires at 10.6 and
    12.9 M env steps on the two stalled biped runs it was calibrated on, and at 21 M or later (or not
    at all) on the recorded curves of five runs that reached 216; 5% also fires on four of those at
    11-17 M (docs/benchmarks.md, session 41)."""
    lr_plateau_max_drops: int = 1
    """lr_schedule 'plateau': how many times the rate may be lowered. 1: what was measured most on the
    biped (3e-4 to 1e-4); a second drop (to 3.3e-5) led in its one draw (docs/benchmarks.md, session 41)."""
    lr_kl_target: float = 0.01
    """lr_schedule 'adaptive': the approx KL per update the learning rate is steered towards."""
    clip_coef: float = 0.2
    """Surrogate clip range epsilon (clip loss)."""
    clip_vloss: bool = False
    """Clip the value loss around the old values with the same epsilon. It matters per task: the
    biped's best runs had it off (docs/benchmarks.md), as do SB3's defaults and
    configs/walker2d.yaml; Pendulum (configs/pendulum.yaml, lr 3e-3) ended at -198 with it and
    -556 without, so that config turns it on."""
    vf_coef: float = 0.5
    """Value loss weight."""
    ent_coef: float = 0.005
    """Entropy bonus weight (0.005 kept the biped's policy from collapsing early: docs/benchmarks.md)."""
    ent_decay_steps: int = 0
    """Lower the entropy bonus linearly from ent_coef to 0 over this many env steps, then keep it
    at 0 (0: a constant bonus). Counted in env steps, not total_steps, so it also applies to
    `stride bench time-to-walk`, which has no step limit. With the constant bonus the biped's
    entropy stops falling near -3.5 after ~20 minutes; see docs/benchmarks.md, session 18."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    norm_adv: bool = True
    """Normalise advantages per minibatch."""
    reward_scale: float = 0.1
    """Rewards are multiplied by this before GAE (keeps value targets near unit scale, so the value
    loss does not dominate the shared gradient-norm clip)."""
    reward_norm: bool = False
    """Also divide rewards by the running standard deviation of each env's discounted return (the
    scaling SB3's VecNormalize and Gymnasium's NormalizeReward apply; no mean is subtracted). The
    learner keeps the statistics from the fragments' rewards, per worker and env, and checkpoints
    them. Off by default: on the biped it reached a return of 216 within the hour in one run of
    four, no different from the fixed scale's four of twelve (docs/benchmarks.md, session 37).
    configs/walker2d.yaml turns it on with a learning rate that stays near its start over 100k
    steps: together they lifted Walker2d's evaluation return at 100k above SB3's, while on its
    own it changed nothing measurable; at 1M it is level with the fixed 0.1 scale over 23 paired
    seeds, with 3 stalled runs against 1 (docs/benchmarks.md, sessions 34-36)."""
    kl_target: float = 0.01
    """Penalty loss: the KL the adaptive beta aims at (beta x2 above 1.5x, /2 below target/1.5)."""
    kl_beta: float = 1.0
    """Penalty loss: initial KL coefficient beta."""
    target_kl: float = 0.02
    """Stop an update's epochs early when an epoch's mean approx KL exceeds this (0: never). With
    10 x 32 minibatches at lr 3e-4 the biped's updates otherwise reach KL 0.08 and clip half the
    samples; stopping at 0.02 (usually after the first epoch) learned more per second on the CPU
    (docs/benchmarks.md). configs/walker2d.yaml sets 0, as the peers it is compared with run."""
    decoupled: bool = True
    """Fragments from an older policy version (async mode): clip the ratio, and measure the KL,
    against the current policy, weighting each sample by pi_current / pi_behaviour (decoupled
    PPO; the gradient is still the behaviour-policy ratio's). False clips against the behaviour
    log-probs directly; on the biped that clipped 40-60% of samples before the first step and let
    the entropy bonus drive entropy up (docs/benchmarks.md). No effect on on-policy fragments."""
    mirror_coef: float = 0.0
    """Biped only: weight of a mirror-symmetry loss, the mean over the minibatch and the action
    dimensions of (mu(mirror s) - mirror mu(s))^2, where mirror reflects the robot left to right
    (legs swapped; y, yaw and roll negated: an exact symmetry of the task, tested) and mu is the
    policy's mean action (Yu, Turk and Liu 2018, "Learning symmetric and low-energy
    locomotion"). The observation normaliser is then fed both images of every observation, so
    normalising commutes with mirroring, and after each update the state-independent log-std is
    averaged with its mirror image (each joint's with the other leg's). 0: off (the default;
    docs/benchmarks.md, session 27). Adding the mirrored samples to the PPO batch instead was
    tried first and diverged."""
    max_is_weight: float = 0.0
    """Decoupled PPO: truncate the weights pi_current / pi_behaviour at this value (0: never),
    trading a little bias for less variance when a sample's behaviour policy made its action
    much less likely than the current one does (V-trace's rho-bar; Espeholt et al. 2018). Off by
    default: with max_policy_lag 1 the weights stay small (Walker2d async: largest weight per
    update median 1.8, at most 3.1; a cap of 2 truncated 0.01% of samples; docs/benchmarks.md).
    The metrics log stale_fraction, is_weight_max and is_weight_capped per update."""


@dataclass
class ModelConfig:
    hidden: tuple[int, ...] = (128, 128)
    """Hidden layer sizes of the policy and of the value MLP (tanh)."""
    init_log_std: float = -0.5
    """Initial log standard deviation of the Gaussian policy."""
    min_std: float = 0.0
    """Floor on the policy's standard deviation, per action dimension (0: none). After every
    update the learner raises each log-std below log(min_std) back to it, so PPO cannot shrink
    the exploration noise below the floor; actors, checkpoints and exports all get the floored
    value. Without the entropy bonus the biped's std falls to ~0.03-0.06 within the hour; a floor
    of 0.1 kept it there but learned no faster (one seed, docs/benchmarks.md), so none by default."""


@dataclass
class TrainConfig:
    total_steps: int = 3_000_000
    """Env steps to train for (NO_STEP_LIMIT: until max_seconds or a stop rule ends the run)."""
    max_seconds: float = 0.0
    """Also stop after this much wall time (0: no time limit); a checkpoint is written either way."""
    mode: str = "sync"
    """'sync' (every fragment from the current weights) or 'async' (actors never wait)."""
    max_policy_lag: int = 1
    """Async: drop fragments more than this many versions behind the learner."""
    fragments_per_update: int = 0
    """Async: fragments per PPO update (0: one per actor)."""
    max_bad_updates: int = 5
    """Stop (after checkpointing the last good weights) when this many updates in a row have a
    non-finite loss; isolated ones are skipped and counted."""
    seed: int = 0
    """Seed for the learner and (derived) for every actor's envs."""
    device: str = "auto"
    """'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'."""
    cuda_graphs: bool = True
    """On a CUDA learner, replay each PPO minibatch's forward, loss and backward as one captured
    CUDA graph (learner/cuda_graph.py): the small nets' steps are bound by kernel launches, not
    arithmetic. Same results as the eager path; ignored on the CPU."""
    torch_threads: int = 0
    """CPU threads for the learner's torch ops. 0 (auto): on a CPU learner with an embedded local
    Ray, the cores the actors leave free (at least 1), so the update does not steal the actors'
    cores (measured +17-37% env steps/s on 2 cores, docs/scaling.md); otherwise torch's default."""
    run_dir: str = "runs"
    """Parent folder of runs; a run lives in run_dir/run_id."""
    run_id: str = ""
    """Name of the run folder ('' : a timestamp)."""
    checkpoint_every: int = 20
    """Write a checkpoint every this many updates (and always at the end)."""
    keep_checkpoints: int = 3
    """Checkpoints kept on disk (oldest deleted)."""
    video: bool = True
    """Write a video of the trained policy at the end (where rendering works)."""
    address: str = ""
    """Ray cluster address ('' : join RAY_ADDRESS if set, else start a local Ray; 'auto')."""
    num_cpus: int = 0
    """CPUs for an embedded local Ray (0: all local cores)."""
    metrics_port: int = 9470
    """Port of the Prometheus /metrics endpoint served by the learner process (0: off)."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics endpoint binds to (0.0.0.0 to let Prometheus on other hosts scrape)."""
    experience_port: int = 0
    """Port of the gRPC ExperienceService for actors outside Ray (0: off)."""
    experience_host: str = "127.0.0.1"
    """Address the ExperienceService binds to."""


@dataclass
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert a YAML/CLI value to the field's declared type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes", "on"):
                    return True
                if value.lower() in ("false", "0", "no", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, bool):
                return value
            raise ValueError(value)
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            return float(value)
        if tp is str:
            if not isinstance(value, str | int | float):
                raise ValueError(value)
            return str(value)
        if origin is tuple:  # "256,256", or YAML's "[256, 256]" as a user would write it in a file
            items = value.strip().strip("[]()").split(",") if isinstance(value, str) else list(value)
            (item_type, *_) = typing.get_args(tp)
            return tuple(_coerce(name, item_type, x.strip() if isinstance(x, str) else x)
                         for x in items if str(x).strip() != "")
        if origin is dict:
            if isinstance(value, str):
                value = yaml.safe_load(value)
            if not isinstance(value, dict):
                raise ValueError(value)
            return dict(value)
        if origin in (typing.Union, types.UnionType):
            return value
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: cannot use {value!r} as {getattr(tp, '__name__', tp)}") from None
    return value


def _check_section(name: str) -> None:
    if name not in {f.name for f in dataclasses.fields(Config)}:
        raise ConfigError(f"{name}: unknown section (known: env, rollout, ppo, model, train)")


def _section(cfg: Config, name: str) -> Any:
    _check_section(name)
    return getattr(cfg, name)


def set_value(cfg: Config, dotted: str, value: Any) -> None:
    """Set `section.field` from a YAML or command-line value, with type conversion."""
    if dotted == "ppo.anneal_lr":  # replaced by ppo.lr_schedule; run folders saved before still resume
        cfg.ppo.lr_schedule = "linear" if _coerce(dotted, bool, value) else "constant"
        return
    section_name, _, field_name = dotted.partition(".")
    section = _section(cfg, section_name)
    hints = typing.get_type_hints(type(section))
    if field_name not in hints:
        raise ConfigError(f"{dotted}: unknown field (known: {', '.join(hints)})")
    setattr(section, field_name, _coerce(dotted, hints[field_name], value))


def read_file(path: str | Path) -> dict[str, Any]:
    """The settings a YAML config file gives, by dotted name (`ppo.lr`), in the file's order.

    Checks the file's shape (sections as mappings, known section names), not the values:
    load() converts and checks those.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config: no such file {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"--config: {p} is not valid YAML: {problem}{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {p} must hold a mapping of sections")
    given: dict[str, Any] = {}
    for section, values in data.items():
        _check_section(str(section))
        if not isinstance(values, dict):
            raise ConfigError(f"{section}: must be a mapping of fields")
        given.update({f"{section}.{key}": value for key, value in values.items()})
    return given


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Defaults, then a YAML file (sections as mappings), then dotted overrides."""
    cfg = Config()
    for dotted, value in [*(read_file(path) if path is not None else {}).items(), *(overrides or {}).items()]:
        set_value(cfg, dotted, value)
    return cfg


def save(cfg: Config, path: Path) -> None:
    # YAML's safe dumper has no tuples: every tuple field (model.hidden, ppo.lr_milestones) as a list
    data = {section: {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
            for section, fields in cfg.to_dict().items()}
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {message}")


def validate(cfg: Config) -> None:
    """Raise ConfigError (naming the field) for any value training cannot start with."""
    e, r, p, m, t = cfg.env, cfg.rollout, cfg.ppo, cfg.model, cfg.train
    _check(e.envs_per_actor >= 1, "env.envs_per_actor", f"must be >= 1, got {e.envs_per_actor}")
    _check(r.actors >= 0, "rollout.actors", f"must be >= 0 (0 = one per CPU), got {r.actors}")
    _check(r.fragment_length >= 1, "rollout.fragment_length", f"must be >= 1, got {r.fragment_length}")
    _check(r.sample_timeout_s > 0, "rollout.sample_timeout_s", f"must be > 0, got {r.sample_timeout_s}")
    _check(r.max_sample_errors >= 1, "rollout.max_sample_errors", f"must be >= 1, got {r.max_sample_errors}")
    _check(p.loss in ("clip", "penalty"), "ppo.loss", f"must be 'clip' or 'penalty', got {p.loss!r}")
    _check(0.0 <= p.gamma <= 1.0, "ppo.gamma", f"must be in [0, 1], got {p.gamma}")
    _check(0.0 <= p.gae_lambda <= 1.0, "ppo.gae_lambda", f"must be in [0, 1], got {p.gae_lambda}")
    _check(p.epochs >= 1, "ppo.epochs", f"must be >= 1, got {p.epochs}")
    _check(p.minibatches >= 1, "ppo.minibatches", f"must be >= 1, got {p.minibatches}")
    per_fragment = e.envs_per_actor * r.fragment_length
    _check(
        per_fragment % p.minibatches == 0,
        "ppo.minibatches",
        f"{p.minibatches} does not divide the {per_fragment} samples of a fragment "
        f"(env.envs_per_actor {e.envs_per_actor} x rollout.fragment_length {r.fragment_length})",
    )
    _check(p.lr > 0, "ppo.lr", f"must be > 0, got {p.lr}")
    _check(p.lr_schedule in ("linear", "constant", "adaptive", "step", "plateau"), "ppo.lr_schedule",
           f"must be 'linear', 'constant', 'adaptive', 'step' or 'plateau', got {p.lr_schedule!r}")
    _check(p.lr_schedule != "step" or len(p.lr_milestones) > 0, "ppo.lr_milestones",
           "lr_schedule 'step' needs at least one milestone (env steps)")
    _check(p.lr_schedule == "step" or not p.lr_milestones, "ppo.lr_milestones",
           f"only lr_schedule 'step' uses milestones (lr_schedule is {p.lr_schedule!r})")
    _check(all(m > 0 for m in p.lr_milestones) and list(p.lr_milestones) == sorted(set(p.lr_milestones)),
           "ppo.lr_milestones", f"must be positive env steps in increasing order, got {list(p.lr_milestones)}")
    _check(p.lr_step_factor > 0, "ppo.lr_step_factor", f"must be > 0, got {p.lr_step_factor}")
    _check(p.lr_plateau_window > 0, "ppo.lr_plateau_window", f"must be > 0 env steps, got {p.lr_plateau_window}")
    _check(0 <= p.lr_plateau_min_gain < math.inf, "ppo.lr_plateau_min_gain",
           f"must be finite and >= 0, got {p.lr_plateau_min_gain}")
    _check(p.lr_plateau_max_drops >= 0, "ppo.lr_plateau_max_drops", f"must be >= 0, got {p.lr_plateau_max_drops}")
    _check(p.lr_kl_target > 0, "ppo.lr_kl_target", f"must be > 0, got {p.lr_kl_target}")
    _check(p.reward_scale > 0, "ppo.reward_scale", f"must be > 0, got {p.reward_scale}")
    _check(p.ent_decay_steps >= 0, "ppo.ent_decay_steps", f"must be >= 0, got {p.ent_decay_steps}")
    _check(p.lr_decay_steps >= 0, "ppo.lr_decay_steps", f"must be >= 0, got {p.lr_decay_steps}")
    for name in ("clip_coef", "vf_coef", "ent_coef", "max_grad_norm", "kl_target", "kl_beta", "target_kl"):
        _check(getattr(p, name) >= 0, f"ppo.{name}", f"must be >= 0, got {getattr(p, name)}")
    _check(p.max_is_weight == 0 or p.max_is_weight >= 1, "ppo.max_is_weight",
           f"must be 0 (no cap) or >= 1, got {p.max_is_weight}")
    _check(p.clip_coef > 0 or p.loss == "penalty", "ppo.clip_coef", "must be > 0 for the clip loss")
    _check(p.mirror_coef >= 0 and math.isfinite(p.mirror_coef), "ppo.mirror_coef",
           f"must be a finite value >= 0, got {p.mirror_coef}")
    if p.mirror_coef > 0:
        from actors.envs import BIPED_ID, mirror_maps

        _check(mirror_maps(e.id) is not None, "ppo.mirror_coef",
               f"needs an env whose left-right symmetry is known (the biped, {BIPED_ID}); {e.id} has none")
    _check(m.min_std >= 0 and math.isfinite(m.min_std), "model.min_std",
           f"must be 0 (no floor) or a finite std > 0, got {m.min_std}")
    _check(len(m.hidden) >= 1 and all(h >= 1 for h in m.hidden), "model.hidden",
           f"must be positive sizes, got {m.hidden}")
    _check(t.total_steps >= 1, "train.total_steps", f"must be >= 1, got {t.total_steps}")
    _check(t.max_seconds >= 0, "train.max_seconds", f"must be >= 0, got {t.max_seconds}")
    _check(t.mode in ("sync", "async"), "train.mode", f"must be 'sync' or 'async', got {t.mode!r}")
    _check(t.max_policy_lag >= 0, "train.max_policy_lag", f"must be >= 0, got {t.max_policy_lag}")
    _check(t.fragments_per_update >= 0, "train.fragments_per_update", f"must be >= 0, got {t.fragments_per_update}")
    _check(t.max_bad_updates >= 1, "train.max_bad_updates", f"must be >= 1, got {t.max_bad_updates}")
    _check(t.checkpoint_every >= 1, "train.checkpoint_every", f"must be >= 1, got {t.checkpoint_every}")
    _check(t.keep_checkpoints >= 1, "train.keep_checkpoints", f"must be >= 1, got {t.keep_checkpoints}")
    _check(0 <= t.experience_port <= 65535, "train.experience_port",
           f"must be in 0..65535, got {t.experience_port}")
    _check(0 <= t.metrics_port <= 65535, "train.metrics_port", f"must be in 0..65535, got {t.metrics_port}")
    _check(t.torch_threads >= 0, "train.torch_threads", f"must be >= 0, got {t.torch_threads}")
    _check(t.num_cpus >= 0, "train.num_cpus", f"must be >= 0, got {t.num_cpus}")
    _check(
        t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"),
        "train.device", f"must be auto, cpu, cuda or cuda:N, got {t.device!r}",
    )
    if t.device.startswith("cuda"):
        import torch

        _check(torch.cuda.is_available(), "train.device", f"{t.device!r} requested but no CUDA GPU is available")
    _check(t.run_id == "" or ("/" not in t.run_id and t.run_id not in (".", "..")), "train.run_id",
           f"must be a plain folder name, got {t.run_id!r}")
    _validate_env(e)


def _validate_env(e: EnvConfig) -> None:
    """The env id must be registered and have a continuous (Box) action space. Gymnasium's
    'module:EnvId' form imports the module first (it registers the env), as `gym.make` does, and
    as every actor will: the way to train a custom env on a cluster."""
    import importlib

    import gymnasium as gym

    import actors.envs  # noqa: F401  (registers the biped)

    module, _, name = e.id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"env.id: cannot import {module!r}, the module named before ':' in {e.id!r} "
                              f"({type(exc).__name__}: {exc})") from None
    try:
        spec = gym.spec(name)
    except Exception as exc:  # gymnasium raises several error types for unknown ids
        raise ConfigError(f"env.id: unknown Gymnasium env {e.id!r} ({type(exc).__name__}: {exc})") from None
    try:
        env = gym.make(spec, **e.kwargs)
    except TypeError as exc:
        raise ConfigError(f"env.kwargs: {e.id} does not accept {e.kwargs} ({exc})") from None
    except Exception as exc:
        raise ConfigError(f"env.id: {e.id} cannot be created ({type(exc).__name__}: {exc})") from None
    try:
        space = env.action_space
        _check(isinstance(space, gym.spaces.Box) and len(space.shape) == 1, "env.id",
               f"{e.id} needs a continuous (Box) action space, has {space}")
        obs_space = env.observation_space
        _check(isinstance(obs_space, gym.spaces.Box) and len(obs_space.shape) == 1, "env.id",
               f"{e.id} needs a flat Box observation space, has {obs_space}")
    finally:
        env.close()


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def ray_address(cfg: Config) -> str:
    """The Ray cluster to join: train.address, else RAY_ADDRESS; '' means an embedded local Ray."""
    return cfg.train.address or os.environ.get("RAY_ADDRESS", "")


def learner_threads(cfg: Config, device: str) -> int:
    """Torch threads for the learner (0: leave torch's default); see TrainConfig.torch_threads."""
    if cfg.train.torch_threads:
        return cfg.train.torch_threads
    if not device.startswith("cpu") or ray_address(cfg):
        return 0  # a GPU learner, or actors on other machines: nothing to share
    cpus = cfg.train.num_cpus or local_cpus()
    actors = cfg.rollout.actors or cpus
    return max(1, cpus - actors)


def local_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
