"""The peers benchmark's learning curve: the mean of the last N episodes finished by each point."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "peers_walker2d", Path(__file__).resolve().parents[1] / "benchmarks" / "peers_walker2d.py")
peers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peers)


def test_each_point_averages_the_last_episodes_finished_by_then() -> None:
    # One episode per entry (SB3, the CleanRL-style script), a window of 2, a point every 10 steps.
    episodes = [[5, 1.0, 1], [12, 3.0, 1], [18, 5.0, 1], [30, 10.0, 1], [30, 12.0, 1], [31, 99.0, 1]]
    assert peers.learning_curve(episodes, every=10, budget=30, window=2) == [
        (10, 1.0),             # only the episode at step 5 has finished
        (20, (3.0 + 5.0) / 2),  # the last two by step 20
        (30, (10.0 + 12.0) / 2),  # step 30 counts as finished by 30; 31 does not
    ]


def test_an_entry_with_a_count_stands_for_that_many_episodes() -> None:
    # Stride's records: a mean over `count` episodes. 3 episodes at 4.0 then 1 at 8.0, window 3:
    # the last three are 4.0, 4.0, 8.0.
    episodes = [[10, 4.0, 3], [20, 8.0, 1]]
    curve = peers.learning_curve(episodes, every=10, budget=20, window=3)
    assert curve[0] == (10, 4.0)
    assert curve[1][0] == 20 and curve[1][1] == pytest.approx((4.0 + 4.0 + 8.0) / 3)


def test_points_before_the_first_episode_are_left_out() -> None:
    assert peers.learning_curve([[25, 7.0, 1]], every=10, budget=40) == [(30, 7.0), (40, 7.0)]
    assert peers.learning_curve([], every=10, budget=40) == []


def test_eval_return_clips_actions_and_is_seeded() -> None:
    """Every system is scored by the same seeded episodes, its actions clipped to the box: a policy
    asking for 50x the torque limit scores what the limit itself scores."""
    import numpy as np

    def full(o: np.ndarray) -> np.ndarray:
        return np.ones(6, dtype=np.float32)

    def over(o: np.ndarray) -> np.ndarray:
        return np.full(6, 50.0, dtype=np.float32)

    limit = peers.eval_return(full, episodes=2)
    assert peers.eval_return(over, episodes=2) == limit
    assert peers.eval_return(full, episodes=2) == limit  # same seeds, same episodes
    assert peers.eval_return(full, episodes=2, seed=1) != limit
