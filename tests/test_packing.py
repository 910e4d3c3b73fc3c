"""pack()/unpack(): several fragments as one object, and back, field for field."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest

from actors.packing import pack, unpack
from actors.trajectory import EpisodeStats, Trajectory

OBS, ACT = 5, 2


def fragment(seed: int, t: int, b: int, truncations: int) -> Trajectory:
    """A random fragment of T x B steps with `truncations` truncated steps (and their final rows)."""
    rng = np.random.default_rng(seed)
    truncated = np.zeros((t, b), bool)
    truncated.flat[rng.choice(t * b, size=truncations, replace=False)] = True
    return Trajectory(
        obs=rng.normal(size=(t + 1, b, OBS)).astype(np.float32),
        actions=rng.normal(size=(t, b, ACT)).astype(np.float32),
        logp=rng.normal(size=(t, b)).astype(np.float32),
        rewards=rng.normal(size=(t, b)).astype(np.float32),
        terminated=rng.random((t, b)) < 0.1,
        truncated=truncated,
        final_obs=rng.normal(size=(truncations, OBS)).astype(np.float32),
        policy_version=seed + 3, worker_id=seed,
        episodes=EpisodeStats(rng.normal(size=seed + 1), np.arange(seed + 1, dtype=np.int64),
                              ("time_limit",) * (seed + 1)),
        env_errors=seed % 2, sample_seconds=0.25 * seed, rss_bytes=1000 + seed, fragment_id=f"{seed}-42-{seed}",
    )


def assert_same(a: Trajectory, b: Trajectory) -> None:
    for f in fields(Trajectory):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), f.name
        elif isinstance(x, EpisodeStats):
            assert np.array_equal(x.returns, y.returns) and np.array_equal(x.lengths, y.lengths)
            assert x.ended_by == y.ended_by
        else:
            assert x == y, f.name


def test_round_trip_keeps_every_field_for_fragments_of_different_widths() -> None:
    # Different B per fragment, truncations in some and none in others (K = 0 rows).
    frags = [fragment(0, 6, 4, 3), fragment(1, 6, 1, 0), fragment(2, 6, 3, 5), fragment(3, 6, 2, 0)]
    packed = pack(frags)
    assert len(packed) == 4
    assert packed.obs.shape == (7, 10, OBS) and packed.rewards.shape == (6, 10)
    assert packed.final_obs.shape == (8, OBS)
    back = unpack(packed)
    assert len(back) == 4
    for orig, got in zip(frags, back, strict=True):
        assert_same(orig, got)
        got.validate()  # sparse final_obs rows still line up with their fragment's truncations
    # Views into the packed arrays, not copies: unpacking costs no memory traffic.
    assert np.shares_memory(back[2].obs, packed.obs) and np.shares_memory(back[2].final_obs, packed.final_obs)


def test_the_packed_env_axis_is_the_fragments_side_by_side() -> None:
    a, b = fragment(4, 3, 2, 1), fragment(5, 3, 3, 2)
    packed = pack([a, b])
    np.testing.assert_array_equal(packed.actions[:, :2], a.actions)
    np.testing.assert_array_equal(packed.actions[:, 2:], b.actions)
    np.testing.assert_array_equal(packed.final_obs, np.concatenate([a.final_obs, b.final_obs]))


def test_pack_refuses_nothing_and_mixed_lengths() -> None:
    with pytest.raises(ValueError, match="at least one"):
        pack([])
    with pytest.raises(ValueError, match="one length T"):
        pack([fragment(0, 4, 2, 0), fragment(1, 5, 2, 0)])
