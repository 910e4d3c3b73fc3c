"""The training driver: spawn rollout actors, gather fragments, update, broadcast weights.

sync:  publish version v -> every actor samples T steps with v -> one PPO update on all
       fragments -> v + 1. Every fragment in an update carries the learner's current version.
async: every actor always has a sample in flight; each fragment that comes back is checked for
       staleness (dropped and counted when more than max_policy_lag versions old), the actor is
       immediately given the newest weights, and the learner updates whenever enough fresh
       fragments are buffered. The PPO ratio is the behaviour log-prob's, clipped around the
       learner's current policy for fragments from older versions (decoupled PPO, learner.py).

Faults (see actor_pool.py and docs/reliability.md): a fragment whose actor died is counted as
lost and the round goes on without it; the actor, restarted by Ray, is used again once a probe
says it is back, with the current weights. An actor that sends nothing within sample_timeout_s
is killed for a restart. A batch whose loss is non-finite is skipped (the learner restores its
weights); `max_bad_updates` of them in a row stop the run with `TrainingDiverged` after a
checkpoint of the last good weights. A sample call that raised loses its fragment and restarts
its actor; `rollout.max_sample_errors` in a row from one actor stop the run with `RolloutFailed`
after a checkpoint. A periodic checkpoint that cannot be written (disk full)
is logged and counted, the previous one stays, and training goes on.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import ray
import torch

from actors.trajectory import EpisodeStats, Trajectory, rss_bytes
from learner import checkpoint, machine
from learner.actor_pool import ActorPool, RolloutFailed
from learner.config import Config, local_cpus, ray_address, resolve_device
from learner.learner import Learner
from learner.progress import Progress
from learner.run_folder import read_jsonl, refuse_existing_run

log = logging.getLogger("stride")


@dataclass
class Counters:
    iteration: int = 0
    env_steps: int = 0
    episodes: int = 0
    dropped_fragments: int = 0
    lost_fragments: int = 0
    actor_failures: int = 0
    env_errors: int = 0
    rejected_fragments: int = 0
    nan_updates: int = 0
    actor_timeouts: int = 0
    checkpoint_failures: int = 0
    relayed_fragments: int = 0  # fragments that came through a node's relay (rollout.node_relays)
    sample_errors: int = 0  # sample calls that raised (the actor's code failed); each loses its fragment
    actors_gone: int = 0  # actors Ray will not restart (rollout.max_actor_restarts used up)


class TrainingDiverged(RuntimeError):
    """The loss stayed non-finite for max_bad_updates batches in a row."""


class Observer(Protocol):
    """What the trainer tells the outside world (metrics exporters, tests)."""

    def on_iteration(self, record: dict[str, Any], episodes: EpisodeStats) -> None: ...

    def on_checkpoint(self, path: Path, when: float) -> None: ...


class ExternalSource(Protocol):
    """Fragments from actors outside Ray (the gRPC ExperienceService): the trainer publishes
    every weights version to it and drains what arrived each round."""

    def publish(self, weights: Any) -> None: ...

    def drain(self) -> list[Trajectory]: ...


def env_spaces(cfg: Config) -> tuple[int, int]:
    import gymnasium as gym

    from actors.envs import flat_box

    env = gym.make(cfg.env.id, **cfg.env.kwargs)
    try:
        return (int(flat_box(env.observation_space, "observation space").shape[0]),
                int(flat_box(env.action_space, "action space").shape[0]))
    finally:
        env.close()


def start_ray(cfg: Config) -> None:
    """Join the cluster named by train.address or RAY_ADDRESS, else start a local Ray."""
    if ray.is_initialized():
        return
    address = ray_address(cfg)
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        log.info("joined the Ray cluster at %s (%d CPUs)", address, int(ray.cluster_resources().get("CPU", 0)))
    else:
        cpus = cfg.train.num_cpus or local_cpus()
        # address="local": always a fresh embedded Ray, never a stale `ray start` left on this host.
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
        log.info("started a local Ray with %d CPUs", cpus)


class Trainer:
    """Train `cfg` in `run_dir` (created, or resumed from its last checkpoint)."""

    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False, progress_stream: Any = None,
                 observers: list[Observer] | None = None, external: ExternalSource | None = None) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.ckpt_dir = run_dir / "checkpoints"
        if not resume:
            refuse_existing_run(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(cfg.train.device)
        obs_dim, act_dim = env_spaces(cfg)
        self.learner = Learner(cfg, obs_dim, act_dim, self.device)
        self.counters = Counters()
        self.resumed_from: Path | None = None
        if resume:
            found = checkpoint.latest(self.ckpt_dir)
            if found is None:
                raise FileNotFoundError(f"--resume: no loadable checkpoint in {self.ckpt_dir}")
            self.resumed_from, state = found
            if state.get("env_id") != cfg.env.id:
                raise ValueError(f"--resume: checkpoint {self.resumed_from} was trained on {state.get('env_id')!r}, "
                                 f"but this run's env.id is {cfg.env.id!r}")
            self.learner.load_state_dict(state["learner"])
            self.counters = Counters(**{**asdict(Counters()), **state["counters"]})
            log.info("resumed from %s at iteration %d, %d env steps",
                     self.resumed_from.name, self.counters.iteration, self.counters.env_steps)
        self.metrics_path = run_dir / "metrics.jsonl"
        # On resume: the last record kept (that of the checkpoint's iteration), or None.
        self.last_record: dict[str, Any] | None = self._truncate_metrics(self.counters.iteration) if resume else None
        self.progress = Progress(cfg.train.total_steps, progress_stream)
        self.pool: ActorPool | None = None
        self.observers = list(observers or [])
        self.external = external
        self.last_checkpoint_time = time.time()
        self._stop = False
        self._ctrl_c = 0  # SIGINTs during `run`: the second stops at once
        self._bad_updates = 0  # non-finite losses in a row
        checkpoint.remove_partial(self.ckpt_dir)

    @property
    def workers(self) -> list[Any]:
        """The rollout actor handles (empty outside `run`)."""
        return self.pool.workers if self.pool is not None else []

    def _truncate_metrics(self, iteration: int) -> dict[str, Any] | None:
        """Drop records of updates after the checkpoint: a crash lost them, and the resumed run
        redoes those iterations. Rewritten atomically. Returns the last record kept, if any."""
        if not self.metrics_path.exists():
            return None
        # A crash mid-write (SIGKILL, a full disk) leaves a partial last line. Records are written
        # before their checkpoint, so its update is one this resume redoes: dropped, not fatal.
        records, dropped = read_jsonl(self.metrics_path, required="iteration")
        kept = [r for r in records if r["iteration"] <= iteration]
        if dropped or len(kept) != len(records):
            tmp = self.metrics_path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
            os.replace(tmp, self.metrics_path)
            log.info("dropped %d metrics records past the checkpoint", len(records) - len(kept))
        return kept[-1] if kept else None

    # -- actors -------------------------------------------------------------------------
    def _spawn_workers(self) -> ActorPool:
        start_ray(self.cfg)
        n = self.cfg.rollout.actors or max(1, int(ray.cluster_resources().get("CPU", 1)))
        # Fresh env seeds on resume, so a resumed run does not replay its first fragments.
        seed = self.cfg.train.seed + 7919 * self.counters.iteration
        self.pool = ActorPool(self.cfg, self.counters, n, seed)
        wait_s = min(60.0, self.cfg.rollout.sample_timeout_s)
        try:
            ready = self.pool.wait_ready(timeout=wait_s)
        except RolloutFailed:  # an actor cannot start: nothing trained since the last checkpoint
            self.pool.shutdown()
            self.pool = None
            raise
        if ready < n:
            log.warning("only %d of %d rollout actors started within %.0f s (the cluster has %d CPUs, each actor "
                        "needs 1); training starts with those, the others join once there is room",
                        ready, n, wait_s, int(ray.cluster_resources().get("CPU", 0)))
        log.info("%d rollout actors x %d envs, fragments of %d steps, learner on %s, mode %s",
                 n, self.cfg.env.envs_per_actor, self.cfg.rollout.fragment_length, self.device, self.cfg.train.mode)
        return self.pool

    def _publish(self) -> tuple[int, list[ray.ObjectRef], float, int]:
        t0 = time.perf_counter()
        weights = self.learner.weights()
        ref = ray.put(weights)
        if self.external is not None:
            self.external.publish(weights)
        return weights.version, [ref], time.perf_counter() - t0, weights.nbytes

    def _external_fragments(self, max_lag: int) -> list[Trajectory]:
        """Fragments pushed by actors outside Ray, under the same staleness rule."""
        if self.external is None:
            return []
        fresh = []
        for frag in self.external.drain():
            if self.learner.version - frag.policy_version > max_lag:
                self.counters.dropped_fragments += 1
            else:
                self.counters.env_errors += frag.env_errors
                fresh.append(frag)
        return fresh

    # -- the loops ----------------------------------------------------------------------
    def _sync_batches(self, pool: ActorPool):
        timeout = self.cfg.rollout.sample_timeout_s
        while True:
            version, ref, t_bcast, nbytes = self._publish()
            t0 = time.perf_counter()
            pool.revived()
            pending = {pool.submit(i, version, ref): i for i in sorted(pool.usable)}
            fragments = []
            deadline = time.monotonic() + timeout
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=len(pending), fetch_local=pool.fetch_local,
                                    timeout=max(0.0, deadline - time.monotonic()))
                if not ready:
                    for i in pending.values():
                        pool.kill_hung(i)
                    break
                for frag in pool.receive_many([(obj, pending.pop(obj)) for obj in ready]):
                    if frag is not None:
                        if frag.policy_version != version:
                            raise AssertionError(f"sync mode got version {frag.policy_version}, expected {version}")
                        fragments.append(frag)
            # In actor order, not arrival order: the batch's layout decides the minibatches, so
            # this keeps a sync run bit-reproducible for a seed on one machine.
            fragments.sort(key=lambda f: f.worker_id)
            fragments += self._external_fragments(max_lag=0)  # sync: only the current version
            yield fragments, time.perf_counter() - t0, t_bcast, nbytes

    def _async_batches(self, pool: ActorPool):
        timeout = self.cfg.rollout.sample_timeout_s
        per_update = self.cfg.train.fragments_per_update or len(pool)
        version, ref, t_bcast, nbytes = self._publish()
        inflight = {pool.submit(i, version, ref): (i, time.monotonic()) for i in sorted(pool.usable)}
        buffer: list[Trajectory] = []
        t0 = time.perf_counter()
        while True:
            if inflight:
                ready, rest = ray.wait(list(inflight), num_returns=1, timeout=1.0, fetch_local=pool.fetch_local)
                if ready and rest and self.cfg.rollout.node_relays:  # and whatever else is back, to relay together
                    ready += ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=False)[0]
            else:  # every actor is down: wait for one to come back
                ready = []
                time.sleep(0.5)
            actors = [inflight.pop(obj)[0] for obj in ready]
            received = pool.receive_many(list(zip(ready, actors, strict=True)))
            for i, frag in zip(actors, received, strict=True):
                if i in pool.usable:
                    inflight[pool.submit(i, version, ref)] = (i, time.monotonic())  # never let an actor wait
                if frag is None:
                    continue
                if self.learner.version - frag.policy_version > self.cfg.train.max_policy_lag:
                    self.counters.dropped_fragments += 1
                    continue
                buffer.append(frag)
            buffer += self._external_fragments(self.cfg.train.max_policy_lag)
            now = time.monotonic()
            for obj, (i, since) in list(inflight.items()):
                if now - since > timeout:
                    del inflight[obj]
                    pool.kill_hung(i)
            for i in pool.revived():
                inflight[pool.submit(i, version, ref)] = (i, time.monotonic())
            if len(buffer) >= per_update or (buffer and not inflight):
                yield buffer, time.perf_counter() - t0, t_bcast, nbytes
                buffer = []
                version, ref, t_bcast, nbytes = self._publish()
                t0 = time.perf_counter()

    def run(self) -> dict[str, Any]:
        """Train until total_steps; returns the last metrics record."""
        pool = self._spawn_workers()
        with (self.run_dir / "machine.jsonl").open("a") as f:  # a line per start: a resume may run elsewhere
            f.write(json.dumps(machine.describe(str(self.device), self.counters.iteration)) + "\n")
        batches = self._sync_batches(pool) if self.cfg.train.mode == "sync" else self._async_batches(pool)
        last: dict[str, Any] = {}
        # Ctrl-C and SIGTERM (`ray job stop`, a scheduler) finish the current iteration, then
        # checkpoint and exit. A KeyboardInterrupt raised at an arbitrary point (inside ray.get,
        # say) could leave Ray's client in a state where shutting the pool down hangs, so the
        # first signal only sets a flag; a second Ctrl-C raises at once.
        self._ctrl_c = 0
        main_thread = threading.current_thread() is threading.main_thread()
        old_handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
        for s in old_handlers:
            signal.signal(s, self._on_signal)
        interrupted = False
        diverged: str | None = None
        rollout_failed: RolloutFailed | None = None
        try:
            with self.metrics_path.open("a") as metrics:
                t_iter = time.perf_counter()
                limit = self.cfg.train.max_seconds
                deadline = time.monotonic() + limit if limit > 0 else float("inf")
                self.progress.deadline = deadline
                while (self.counters.env_steps < self.cfg.train.total_steps and not self._stop
                       and time.monotonic() < deadline):
                    fragments, t_sample, t_bcast, nbytes = next(batches)
                    if not fragments:
                        log.warning("no fragment arrived this round; waiting for actors to come back")
                        time.sleep(1.0)
                        continue
                    try:
                        last, episodes = self._update(fragments, t_sample, t_bcast, nbytes, t_iter)
                    except FloatingPointError as exc:  # the learner restored its weights
                        self.counters.nan_updates += 1
                        self._bad_updates += 1
                        log.warning("skipped a batch (%d in a row): %s", self._bad_updates, exc)
                        if self._bad_updates >= self.cfg.train.max_bad_updates:
                            diverged = str(exc)
                            break
                        continue
                    self._bad_updates = 0
                    t_iter = time.perf_counter()
                    metrics.write(json.dumps(last) + "\n")
                    metrics.flush()
                    for o in self.observers:
                        o.on_iteration(last, episodes)
                    self.progress.show(self.counters.iteration, self.counters.env_steps, last)
                    if self.counters.iteration % self.cfg.train.checkpoint_every == 0:
                        self._periodic_checkpoint()
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: writing a checkpoint before stopping")
        except RolloutFailed as exc:  # a broken env: keep what was learnt, then say what broke
            rollout_failed = exc
        finally:
            self.progress.close()
            for s, handler in old_handlers.items():
                signal.signal(s, handler if handler is not None else signal.SIG_DFL)
            batches.close()
            pool.shutdown()
            self.pool = None
        path = self.save_checkpoint()
        if diverged is not None:
            raise TrainingDiverged(
                f"the loss was non-finite in {self._bad_updates} updates in a row (last: {diverged}); stopped. "
                f"The last good weights are in {path}: lower ppo.lr or ppo.reward_scale, or check the env's "
                f"rewards, then resume with `stride train --resume {self.run_dir}`")
        if rollout_failed is not None:
            raise RolloutFailed(f"{rollout_failed}. Stopped; the weights so far are in {path}: fix the env, then "
                                f"resume with `stride train --resume {self.run_dir}`") from rollout_failed
        if interrupted or self._stop:
            raise KeyboardInterrupt
        return last

    def _periodic_checkpoint(self) -> None:
        """A checkpoint that cannot be written (disk full, quota) must not end a long run: the
        previous checkpoint is still whole (writes are atomic), so log, count and go on. The
        final checkpoint, by contrast, raises."""
        try:
            self.save_checkpoint()
        except OSError as exc:
            self.counters.checkpoint_failures += 1
            kept = checkpoint.list_checkpoints(self.ckpt_dir)
            log.error("could not write a checkpoint (%s); the last one kept is %s", exc,
                      kept[-1].name if kept else "none")

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Counts Ctrl-C alone: a stop already asked for by SIGTERM or by an observer (time-to-walk's
        # threshold) still gets its iteration finished and checkpointed after one Ctrl-C.
        if signum == signal.SIGINT:
            self._ctrl_c += 1
            if self._ctrl_c > 1:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now
            log.warning("%s after this iteration (a checkpoint follows); Ctrl-C again to stop now",
                        "already stopping" if self._stop else "stopping")
        elif not self._stop:
            log.warning("stopping after this iteration (a checkpoint follows)")
        self.request_stop()

    def request_stop(self) -> None:
        """Finish after the current iteration (checkpoint, then `run` raises KeyboardInterrupt)."""
        self._stop = True

    def _update(self, fragments: list[Trajectory], t_sample: float, t_bcast: float, nbytes: int,
                t_iter: float) -> tuple[dict[str, Any], EpisodeStats]:
        c = self.counters
        version_before = self.learner.version
        steps = sum(f.num_steps for f in fragments)
        stats = self.learner.update(fragments, c.env_steps)
        c.iteration += 1
        c.env_steps += steps
        episodes = EpisodeStats(
            np.concatenate([f.episodes.returns for f in fragments]),
            np.concatenate([f.episodes.lengths for f in fragments]),
            tuple(reason for f in fragments for reason in f.episodes.reasons()),
        )
        returns, lengths = episodes.returns, episodes.lengths
        c.episodes += len(returns)
        wall = time.perf_counter() - t_iter
        versions = [f.policy_version for f in fragments]
        rec: dict[str, Any] = {
            "iteration": c.iteration,
            "env_steps": c.env_steps,
            "iteration_steps": steps,
            "policy_version": version_before,
            "fragment_versions": versions,
            "fragment_workers": [f.worker_id for f in fragments],
            "fragment_ids": [f.fragment_id for f in fragments],
            "policy_lag_mean": float(np.mean([version_before - v for v in versions])),
            "fragments": len(fragments),
            "episodes": int(len(returns)),
            "episode_return_mean": float(returns.mean()) if len(returns) else None,
            "episode_length_mean": float(lengths.mean()) if len(lengths) else None,
            "episodes_ended_by": dict(sorted(Counter(episodes.ended_by).items())),
            "env_steps_per_s": steps / max(wall, 1e-9),
            "time_sample": t_sample,
            "time_broadcast": t_bcast,
            "weights_bytes": nbytes,
            "learner_rss_bytes": rss_bytes(),
            "gpu_memory_bytes": self.learner.gpu_memory_bytes(),
            "actors": len(self.pool) if self.pool is not None else 0,
            "actors_alive": len(self.pool.usable) if self.pool is not None else 0,
            "actor_rss_bytes_max": max(f.rss_bytes for f in fragments),
            "time_iteration": wall,
            "wall_time": time.time(),
            **{k: v for k, v in asdict(c).items() if k not in ("iteration", "env_steps", "episodes")},
            "episodes_total": c.episodes,
            **stats,
        }
        return rec, episodes

    def save_checkpoint(self) -> Path:
        if not all(bool(torch.isfinite(p).all()) for p in self.learner.model.state_dict().values()):
            raise FloatingPointError("refusing to checkpoint non-finite weights")  # never happens by design
        state = {
            "learner": self.learner.state_dict(),
            "counters": asdict(self.counters),
            "config": self.cfg.to_dict(),
            "env_id": self.cfg.env.id,
            "model": self.learner.model.state_dict(),
        }
        path = checkpoint.save(self.ckpt_dir, self.counters.iteration, state, self.cfg.train.keep_checkpoints)
        self.last_checkpoint_time = time.time()
        for o in self.observers:
            o.on_checkpoint(path, self.last_checkpoint_time)
        return path
