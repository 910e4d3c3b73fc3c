"""The batched biped replays the single env exactly, with same-step autoreset."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from actors.envs.batched import BatchedBipedEnv
from actors.envs.biped import BipedWalkerEnv

NUM, STEPS, SEED = 6, 250, 11


def test_batched_equals_single_envs_bit_for_bit() -> None:
    batched = BatchedBipedEnv(NUM)
    singles = [BipedWalkerEnv() for _ in range(NUM)]
    obs_b, _ = batched.reset(seed=SEED)
    obs_s = np.stack([e.reset(seed=SEED + i)[0] for i, e in enumerate(singles)])
    np.testing.assert_array_equal(obs_b, obs_s)
    actions = np.random.default_rng(0).uniform(-1.2, 1.2, (STEPS, NUM, 6))
    episodes_ended = 0
    for a in actions:
        obs_b, rew_b, term_b, trunc_b, info = batched.step(a)
        for i, env in enumerate(singles):
            o, r, te, tr, inf = env.step(a[i])
            assert (te, tr) == (term_b[i], trunc_b[i])
            assert r == rew_b[i]
            if te or tr:
                episodes_ended += 1
                assert info["_final_obs"][i]
                np.testing.assert_array_equal(info["final_obs"][i], o)
                assert info["final_info"]["ended_by"][i] == inf["ended_by"]
                o, _ = env.reset()
            np.testing.assert_array_equal(obs_b[i], o)
    assert episodes_ended > 10  # autoreset was exercised many times


def test_batched_equals_gymnasium_sync_vector_env() -> None:
    """Gymnasium's own SAME_STEP vector env over single bipeds is an independent reference."""
    ref = SyncVectorEnv([BipedWalkerEnv for _ in range(NUM)], autoreset_mode=AutoresetMode.SAME_STEP)
    batched = BatchedBipedEnv(NUM)
    np.testing.assert_array_equal(batched.reset(seed=SEED)[0], ref.reset(seed=SEED)[0])
    for a in np.random.default_rng(1).uniform(-1, 1, (150, NUM, 6)):
        ob, rb, teb, trb, ib = batched.step(a)
        orf, rr, ter, trr, ir = ref.step(a)
        np.testing.assert_array_equal(ob, orf)
        np.testing.assert_array_equal(rb, rr)
        np.testing.assert_array_equal(teb, ter)
        np.testing.assert_array_equal(trb, trr)
        assert ("final_obs" in ib) == ("final_obs" in ir)
        if "final_obs" in ir:
            np.testing.assert_array_equal(ib["_final_obs"], ir["_final_obs"])
            mask = ir["_final_obs"]
            np.testing.assert_array_equal(ib["final_obs"][mask], np.stack(ir["final_obs"][mask]))


def test_truncation_and_termination_stay_separate() -> None:
    env = BatchedBipedEnv(2, min_height=-1.0, max_lateral=1e9, max_tilt=10.0, max_episode_steps=30)
    env.reset(seed=0)
    for _ in range(30):
        _, _, term, trunc, info = env.step(np.zeros((2, 6)))
        assert not term.any()
    assert trunc.all() and list(info["final_info"]["ended_by"]) == ["time_limit", "time_limit"]
    # The autoreset observation is a fresh episode (prev action zero), the final one is not.
    env2 = BatchedBipedEnv(1)
    env2.reset(seed=0)
    for _ in range(400):
        obs, _, term, trunc, info = env2.step(np.full((1, 6), 0.7))
        if term[0] or trunc[0]:
            break
    assert term[0] and not trunc[0]
    np.testing.assert_array_equal(obs[0, 25:31], 0.0)
    np.testing.assert_array_equal(info["final_obs"][0, 25:31], np.float32(0.7))


def test_batched_bad_input() -> None:
    env = BatchedBipedEnv(3)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros((2, 6)))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.full((3, 6), np.nan))
    with pytest.raises(ValueError, match="num_envs"):
        BatchedBipedEnv(0)
    with pytest.raises(ValueError, match="seeds"):
        env.reset(seed=[1, 2])


def test_one_diverged_robot_does_not_disturb_the_others() -> None:
    env = BatchedBipedEnv(3)
    ref = BatchedBipedEnv(3)
    env.reset(seed=2)
    ref.reset(seed=2)
    env.sim.datas[1].qvel[:] = 1e12
    obs, rew, term, trunc, info = env.step(np.zeros((3, 6)))
    robs, rrew, *_ = ref.step(np.zeros((3, 6)))
    assert info["physics_diverged"].tolist() == [False, True, False]
    assert term[1] and rew[1] == 0.0 and np.isfinite(obs).all()
    np.testing.assert_array_equal(obs[[0, 2]], robs[[0, 2]])
    np.testing.assert_array_equal(rew[[0, 2]], rrew[[0, 2]])


def test_make_vec_entry_point() -> None:
    import actors.envs  # noqa: F401

    envs = gym.make_vec("stride/BipedWalker-v0", num_envs=4, vectorization_mode="vector_entry_point")
    obs, _ = envs.reset(seed=0)
    assert isinstance(envs.unwrapped, BatchedBipedEnv) and obs.shape == (4, 31)
