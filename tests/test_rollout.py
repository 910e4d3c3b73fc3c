"""The rollout loop's fragments: one final observation per truncated step, checked against the
pendulum's own dynamics replayed from the observation before that step."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import actors.envs  # noqa: F401  (registers stride/Chaos-v0)
from actors.policy import ActorCritic
from actors.rollout import Sampler, make_envs
from actors.trajectory import Trajectory
from learner import checkpoint
from learner.evaluate import evaluate
from tests.custom_env import ECHO_ID


def _pendulum_step(obs: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Pendulum-v1's observation after `action` from the state that `obs` ([cos, sin, thdot])
    shows: the env's own step, started from that state."""
    env = gym.make("Pendulum-v1").unwrapped
    env.reset(seed=0)
    env.state = np.array([np.arctan2(obs[1], obs[0]), obs[2]], dtype=np.float64)
    next_obs, *_ = env.step(action)
    return np.asarray(next_obs, dtype=np.float32)


def _collect(env: str, num_envs: int, steps: int, **env_kwargs: object) -> Trajectory:
    sampler = Sampler(make_envs(env, num_envs, env_kwargs), worker_id=0, seed=0)
    sampler.set_weights(ActorCritic(3, 1, init_log_std=0.0).weights(0))
    frag = sampler.collect(steps)
    frag.validate()
    return frag


def _check_final_rows(frag: Trajectory) -> None:
    t_idx, b_idx = np.nonzero(frag.truncated)
    assert frag.final_obs.shape == (len(t_idx), 3)
    for row, t, b in zip(frag.final_obs, t_idx, b_idx, strict=True):
        np.testing.assert_allclose(row, _pendulum_step(frag.obs[t, b], frag.actions[t, b]), rtol=1e-5, atol=1e-5)
        # obs[t + 1] is already the next episode's first observation, not the bootstrap point.
        assert not np.allclose(row, frag.obs[t + 1, b], atol=1e-3)


def test_time_limit_truncations_ship_the_final_observation() -> None:
    frag = _collect("Pendulum-v1", 3, 230)
    # Pendulum-v1's 200-step limit ends every episode at step index 199, and nothing terminates.
    assert not frag.terminated.any()
    np.testing.assert_array_equal(np.flatnonzero(frag.truncated.any(axis=1)), [199])
    assert frag.truncated[199].all() and frag.truncated.sum() == 3
    _check_final_rows(frag)
    assert [int(n) for n in frag.episodes.lengths] == [200, 200, 200]
    assert frag.episodes.ended_by == ("time_limit",) * 3  # Pendulum's info says nothing: the flags do


def test_env_crash_cuts_episodes_with_their_last_real_observation() -> None:
    frag = _collect(actors.envs.CHAOS_ID, 2, 150, env_id="Pendulum-v1", crash_prob=0.01, fault_seed=1)
    assert frag.env_errors >= 1
    # A crash at step t resets the envs and marks every running episode truncated at t - 1.
    cut_steps = np.flatnonzero(frag.truncated.all(axis=1))
    assert len(cut_steps) >= 1 and not frag.terminated.any()
    _check_final_rows(frag)


def test_a_fragment_with_a_final_obs_per_step_is_refused() -> None:
    frag = _collect("Pendulum-v1", 2, 8)
    bad = Trajectory(**{**frag.__dict__, "final_obs": np.zeros((8, 2, 3), np.float32)})
    with pytest.raises(ValueError, match=r"final_obs has shape \(8, 2, 3\), expected \(0,\)"):
        bad.validate()


class _InfObservationAt(gym.Wrapper):
    """Pendulum whose `bad_step`-th step returns an inf observation and a finite reward (an env
    whose reward does not come from its observation, so only the observation shows the fault)."""

    def __init__(self, bad_step: int) -> None:
        super().__init__(gym.make("Pendulum-v1"))
        self.bad_step, self.steps = bad_step, 0

    def step(self, action):  # type: ignore[no-untyped-def]
        obs, reward, term, trunc, info = self.env.step(action)
        self.steps += 1
        if self.steps == self.bad_step:
            obs = np.full_like(obs, np.inf)
        return obs, reward, term, trunc, info


@pytest.mark.parametrize("bad_step", [5, 8])  # in the middle, and the fragment's last step
def test_a_non_finite_observation_alone_gets_the_fragment_refused(bad_step: int) -> None:
    envs = gym.vector.SyncVectorEnv([lambda: _InfObservationAt(bad_step), lambda: _InfObservationAt(10**9)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    sampler = Sampler(envs, worker_id=0, seed=0)
    sampler.set_weights(ActorCritic(3, 1, init_log_std=0.0).weights(0))
    frag = sampler.collect(8)
    assert np.isfinite(frag.rewards).all()
    with pytest.raises(ValueError, match="contains NaN or inf"):
        frag.validate()
    # The envs were reset: the policy never acts on the bad observation, the next fragment is clean.
    assert np.isfinite(sampler.obs).all()
    sampler.collect(8).validate()


def test_the_biped_gets_its_batched_fast_path_under_either_spelling_of_its_id() -> None:
    from actors.envs.batched import BatchedBipedEnv

    plain = make_envs("stride/BipedWalker-v0", 3)
    module_form = make_envs("actors.envs:stride/BipedWalker-v0", 3, {"effort_weight": 0.3})
    other = make_envs("Pendulum-v1", 2)
    try:
        assert isinstance(plain, BatchedBipedEnv) and isinstance(module_form, BatchedBipedEnv)
        assert module_form.num_envs == 3 and module_form.observation_space.shape == (3, 31)
        assert not isinstance(other, BatchedBipedEnv)
        # Same env either way: the same seeds give the same first observations.
        np.testing.assert_array_equal(plain.reset(seed=7)[0], module_form.reset(seed=7)[0])
    finally:
        for envs in (plain, module_form, other):
            envs.close()


def test_each_finished_biped_episode_says_why_it_ended() -> None:
    """The biped's own reasons ride along with the episodes, one per episode, and they agree
    with the flags: every termination is a fall, tilt, lateral or divergence, every truncation
    a time limit."""
    sampler = Sampler(make_envs(actors.envs.BIPED_ID, 4, {}), worker_id=0, seed=0)
    sampler.set_weights(ActorCritic(31, 6, init_log_std=0.0).weights(0))
    frag = sampler.collect(120)
    reasons = frag.episodes.ended_by
    assert len(reasons) == len(frag.episodes.returns) == int(frag.terminated.sum() + frag.truncated.sum()) > 0
    assert set(reasons) <= {"fell", "lateral", "tilt", "physics_diverged"}  # 120 steps: no time limit yet
    assert frag.episodes.reasons() == reasons


def test_the_env_gets_the_action_clipped_to_its_box_and_the_fragment_keeps_the_sample() -> None:
    # sigma = e^1.5 ~ 4.5: most samples leave [-1, 1]. The env pays the action it received.
    sampler = Sampler(make_envs(f"tests.custom_env:{ECHO_ID}", 4), worker_id=0, seed=0)
    sampler.set_weights(ActorCritic(3, 1, init_log_std=1.5).weights(0))
    frag = sampler.collect(60)
    sampled = frag.actions[..., 0]
    assert (np.abs(sampled) > 1).mean() > 0.5  # stored as sampled: their log-probs are of these
    np.testing.assert_array_equal(frag.rewards, np.clip(sampled, -1.0, 1.0))


def test_stride_eval_hands_the_env_the_mean_action_clipped_to_its_box(tmp_path: Path) -> None:
    model = ActorCritic(3, 1)
    with torch.no_grad():
        model.pi[-1].bias.fill_(3.0)  # the mean action is 3 (the weights are ~0.01): outside [-1, 1]
    state = {"learner": {"version": 7}, "model": model.state_dict(), "counters": {"env_steps": 0},
             "config": {"env": {"id": f"tests.custom_env:{ECHO_ID}", "kwargs": {}}}}
    checkpoint.save(tmp_path / "checkpoints", 1, state)
    result = evaluate(tmp_path, episodes=2)
    assert result.mean_length == 50  # the time limit
    assert result.mean_return == pytest.approx(50.0)  # paid 1 a step, not 3
