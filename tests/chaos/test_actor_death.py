"""Promise 1: a rollout actor's process killed (SIGKILL) mid-fragment does not stop training; it
is restarted with current weights; its in-flight fragment is counted as lost; no duplicate or
partial fragment reaches an update."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import ray
import torch
from ray.exceptions import RayActorError

from learner import config as C
from learner.actor_pool import GONE_AFTER_S, PROBE_RETRY_S, ActorPool, RolloutFailed
from learner.trainer import Counters, Trainer
from tests.chaos.helpers import TrainerThread, records, small_config, wait_for
from tests.conftest import start_local_ray

T, B = 64, 4


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    start_local_ray(num_cpus=2)
    yield
    ray.shutdown()


def _pid(worker) -> int | None:
    """The actor's process id, or None while Ray is restarting it."""
    try:
        return ray.get(worker.pid.remote(), timeout=60)
    except RayActorError:
        return None


def _check_every_update_is_whole(recs: list[dict]) -> None:
    ids = [i for r in recs for i in r["fragment_ids"]]
    assert all(ids) and len(ids) == len(set(ids)), "a fragment was trained on twice"
    for r in recs:
        assert r["iteration_steps"] == r["fragments"] * T * B, f"a partial fragment in iteration {r['iteration']}"


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_repeated_sigkills_lose_only_counted_fragments(tmp_path: Path, mode: str) -> None:
    kills = 3
    cfg = small_config(**{"train.mode": mode, "rollout.fragment_length": T, "train.max_policy_lag": 2,
                          "train.total_steps": 10_000 * T * B, "train.checkpoint_every": 1000})
    trainer = Trainer(cfg, tmp_path)
    thread = TrainerThread(trainer)
    thread.start()
    pids: list[tuple[int, int]] = []
    for k in range(kills):
        victim = k % 2
        wait_for(f"{3 * (k + 1)} updates", lambda k=k: len(records(tmp_path)) >= 3 * (k + 1), alive=thread)
        pid = _pid(trainer.workers[victim])
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # the actor's process, for real
        pids.append((victim, pid))
        # Restarted by Ray, and sending fragments again, before the next kill.
        wait_for("the restarted actor's process",
                 lambda v=victim, p=pid: _pid(trainer.workers[v]) not in (None, p), alive=thread)
        n = len(records(tmp_path))
        wait_for("a fragment from the restarted actor",
                 lambda v=victim, n=n: any(v in r["fragment_workers"] for r in records(tmp_path)[n:]), alive=thread)
    thread.stop()
    assert isinstance(thread.error, KeyboardInterrupt)  # stopped on request, after a checkpoint
    recs = records(tmp_path)
    last = recs[-1]
    # Every death is seen, and costs exactly the one fragment the actor was collecting (in sync
    # mode a kill between rounds finds the actor idle: nothing in flight, nothing lost).
    assert last["actor_failures"] == last["lost_fragments"]
    if mode == "async":  # actors never idle: every kill lands mid-fragment
        assert last["actor_failures"] == kills
    else:
        assert 1 <= last["actor_failures"] <= kills
    _check_every_update_is_whole(recs)
    if mode == "sync":  # the restarted actor sampled with the weights of the round it joined
        for r in recs:
            assert r["fragment_versions"] == [r["policy_version"]] * r["fragments"]
        assert any(r["fragments"] == 1 for r in recs)  # a round went ahead without the dead actor
    else:
        for r in recs:
            assert all(0 <= r["policy_version"] - v <= 2 for v in r["fragment_versions"])
    assert last["actors_alive"] == 2
    print(f"{mode}: {kills} SIGKILLs, {last['actor_failures']} deaths seen, {last['lost_fragments']} fragments lost, "
          f"{len(recs)} updates, {sum(r['fragments'] for r in recs)} fragments trained on, none twice")


def test_an_actor_out_of_restarts_is_given_up_and_the_last_one_stops_the_run(tmp_path: Path) -> None:
    # With rollout.max_actor_restarts = 0 a killed actor stays dead. The pool used to probe it for
    # ever; the run now goes on with the other, and stops (checkpointed) when none is left.
    cfg = small_config(**{"train.mode": "sync", "rollout.max_actor_restarts": 0,
                          "train.total_steps": 10_000 * 32 * 4, "train.checkpoint_every": 1000})
    trainer = Trainer(cfg, tmp_path)
    thread = TrainerThread(trainer)
    thread.start()
    wait_for("3 updates", lambda: len(records(tmp_path)) >= 3, alive=thread)
    first = _pid(trainer.workers[0])
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for("actor 0 given up", lambda: any(r["actors_gone"] == 1 for r in records(tmp_path)), alive=thread)
    n = len(records(tmp_path))
    wait_for("3 more updates", lambda: len(records(tmp_path)) >= n + 3, alive=thread)
    after = [r for r in records(tmp_path) if r["actors_gone"] == 1]
    assert all(r["fragment_workers"] == [1] for r in after)  # the other actor alone, every round
    assert after[-1]["actors_alive"] == 1
    second = _pid(trainer.workers[1])
    assert second is not None
    os.kill(second, signal.SIGKILL)
    thread.join(120)
    assert not thread.is_alive(), "the run waited for actors that will never come back"
    assert isinstance(thread.error, RolloutFailed), thread.error
    assert "rollout.max_actor_restarts = 0" in str(thread.error) and "resume" in str(thread.error)
    state = torch.load(sorted((tmp_path / "checkpoints").glob("ckpt-*.pt"))[-1], weights_only=False)
    assert state["counters"]["actors_gone"] == 2
    assert state["counters"]["iteration"] == len(records(tmp_path))
    print(f"out of restarts: {len(after)} updates with one actor, then RolloutFailed at "
          f"iteration {state['counters']['iteration']}")


@ray.remote(num_cpus=0)
class _StillRestarting:
    """Stands in for an actor Ray is restarting: its probes go unanswered (sleep) until killed."""

    def node_id(self) -> str:
        time.sleep(60)
        return ray.get_runtime_context().get_node_id()


def test_a_probe_left_waiting_gives_a_later_death_a_fresh_window() -> None:
    # An actor whose probes answered ActorDiedError for almost GONE_AFTER_S, and then a probe that
    # waits (Ray is restarting it after all): the pool re-sends that probe after PROBE_RETRY_S and
    # forgets the earlier deaths, so when the actor then dies for good it gets a whole GONE_AFTER_S
    # of probes before it is given up, not the few milliseconds left of the old window.
    cfg = C.load(None, {"env.id": "Pendulum-v1", "env.envs_per_actor": 2})
    C.validate(cfg)
    pool = ActorPool(cfg, Counters(), 2, seed=0)  # two: the last actor gone would stop the run
    try:
        assert pool.wait_ready(timeout=60) == 2
        pool.workers[0] = _StillRestarting.remote()
        pool.dead_since[0] = time.monotonic() - (GONE_AFTER_S - 0.1)
        pool._mark_down(0)
        (first,) = pool.probes
        deadline = time.monotonic() + 10 * PROBE_RETRY_S
        while first in pool.probes and time.monotonic() < deadline:
            assert pool.revived() == []
            time.sleep(0.05)
        assert first not in pool.probes and list(pool.probes.values()) == [0], "the waiting probe was not re-sent"
        assert 0 not in pool.dead_since and pool.gone == set()
        ray.kill(pool.workers[0], no_restart=True)  # now it dies for good
        killed = time.monotonic()
        while not pool.gone and time.monotonic() < killed + 6 * GONE_AFTER_S:
            pool.revived()
            time.sleep(0.05)
        given_up_after = time.monotonic() - killed
        assert pool.gone == {0} and pool.counters.actors_gone == 1
        assert given_up_after >= 0.9 * GONE_AFTER_S, f"given up {given_up_after:.2f}s after its death"
        print(f"probe re-sent after {PROBE_RETRY_S}s; the dead actor was given up {given_up_after:.1f}s after it died")
    finally:
        pool.shutdown()
