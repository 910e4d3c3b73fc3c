"""lr_schedule 'plateau' (learner/lr_plateau.py): the windows, the rule and the state, worked out
by hand. Batches of 50 env steps, windows of 100: at the end of the batch that started at 150
(now = 200), the earlier window holds the batches that started at 0 and 50, the latest those that
started at 100 and 150."""

from __future__ import annotations

import json

import numpy as np
import pytest

from learner.lr_plateau import Drop, ReturnPlateau


def feed(rule: ReturnPlateau, returns_per_batch: list[list[float]], first: int = 0) -> list[Drop | None]:
    """Batches of 50 env steps from `first` on; what each one's observe returned."""
    return [rule.observe(first + 50 * i, 50, np.array(r, dtype=np.float64)) for i, r in enumerate(returns_per_batch)]


def test_a_flat_return_lowers_the_rate_then_two_fresh_windows_are_needed() -> None:
    rule = ReturnPlateau(window=100, min_gain=0.1, max_drops=3)
    # Earlier window: 10 and 10, mean 10. Latest: 10, 11, 10.5, 10, 10.5, mean 52 / 5 = 10.4,
    # short of 10 + 0.1 x 10 = 11.
    out = feed(rule, [[10.0], [10.0], [10.0, 11.0], [10.5, 10.0, 10.5]])
    assert out[:3] == [None, None, None]  # no decision before 2 x 100 env steps
    assert out[3] == Drop(env_steps=200, earlier_mean=pytest.approx(10.0), latest_mean=pytest.approx(10.4), drops=1)
    assert len(rule.batches) == 0
    # The same flat return again: nothing until 200 more env steps are in (now = 400).
    out = feed(rule, [[10.0]] * 4, first=200)
    assert out[:3] == [None, None, None]
    assert out[3] is not None and (out[3].env_steps, out[3].drops) == (400, 2)


def test_a_rise_of_exactly_min_gain_counts_as_learning_and_the_windows_slide() -> None:
    rule = ReturnPlateau(window=100, min_gain=0.5, max_drops=1)
    # now = 200: earlier mean 10, latest 15 = 10 + 0.5 x 10: still learning.
    assert feed(rule, [[10.0], [10.0], [15.0], [15.0]]) == [None] * 4
    # now = 250: the batch at 0 has left; earlier = batches at 50 and 100 ([10], [15]: mean 12.5),
    # latest = 150 and 200 ([15], [18]: 16.5), short of 12.5 x 1.5 = 18.75.
    drop = rule.observe(200, 50, np.array([18.0]))
    assert drop == Drop(250, pytest.approx(12.5), pytest.approx(16.5), 1)


def test_means_are_over_episodes_not_batches() -> None:
    """Earlier window: three episodes of 0 and one of 40, mean 10 (the batches' means would average
    20). Latest 16 >= 10 x 1.5: no drop, where batch means would have dropped (16 < 30)."""
    rule = ReturnPlateau(window=100, min_gain=0.5, max_drops=1)
    assert feed(rule, [[0.0, 0.0, 0.0], [40.0], [16.0], [16.0]]) == [None] * 4
    assert rule.drops == 0


def test_negative_returns_must_rise_by_min_gain_of_their_size() -> None:
    """Pendulum's returns are negative: -100 must reach -100 + 0.1 x 100 = -90."""
    short = ReturnPlateau(window=100, min_gain=0.1, max_drops=1)
    assert feed(short, [[-100.0], [-100.0], [-95.0], [-95.0]])[3] == Drop(200, -100.0, -95.0, 1)
    enough = ReturnPlateau(window=100, min_gain=0.1, max_drops=1)
    assert feed(enough, [[-100.0], [-100.0], [-90.0], [-90.0]]) == [None] * 4


def test_no_decision_while_a_window_has_no_finished_episode() -> None:
    rule = ReturnPlateau(window=100, min_gain=0.5, max_drops=1)
    assert feed(rule, [[], [], [5.0], [5.0]]) == [None] * 4  # the earlier window is empty
    # now = 250: earlier = batches at 50 ([]) and 100 ([5]), latest = 150 and 200: 5 against 5.
    assert rule.observe(200, 50, np.array([5.0])) == Drop(250, 5.0, 5.0, 1)


def test_max_drops_stops_the_rule_and_its_memory() -> None:
    once = ReturnPlateau(window=100, min_gain=0.1, max_drops=1)
    out = feed(once, [[1.0]] * 20)
    assert [d.env_steps for d in out if d is not None] == [200]
    assert once.drops == 1 and len(once.batches) == 0
    never = ReturnPlateau(window=100, min_gain=0.1, max_drops=0)
    assert feed(never, [[1.0]] * 20) == [None] * 20 and len(never.batches) == 0


def test_a_restored_rule_makes_the_same_decisions() -> None:
    """state_dict through JSON (plain types only) into a new rule: from there both decide alike."""
    rng = np.random.default_rng(3)
    returns = [list(rng.normal(10.0 + 0.02 * i, 3.0, size=rng.integers(0, 4))) for i in range(120)]
    first = ReturnPlateau(window=200, min_gain=0.05, max_drops=10)
    feed(first, returns[:21])
    assert first.drops >= 1 and first.since > 0 and len(first.batches) > 0  # a state with something in it
    second = ReturnPlateau(window=200, min_gain=0.05, max_drops=10)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    a, b = feed(first, returns[21:], first=21 * 50), feed(second, returns[21:], first=21 * 50)
    assert a == b and first.drops == second.drops
    assert sum(d is not None for d in a) >= 2  # the continuation did decide something


def test_replaying_a_metrics_record_gives_the_drops_the_learner_would_make(tmp_path, capsys) -> None:
    """benchmarks/plateau_replay.py rebuilds each batch from metrics.jsonl's episode count and mean
    return: the first test's batches (with an update where no episode ended, mean null) give the
    same drop, printed with its env steps and the two means."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "plateau_replay", Path(__file__).resolve().parents[1] / "benchmarks" / "plateau_replay.py")
    replay = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replay)
    batches = [[10.0], [], [10.0], [10.0, 11.0], [10.5, 10.0, 10.5]]
    starts = [0, 25, 50, 100, 150]
    sizes = [25, 25, 50, 50, 50]
    records = [{"iteration": i + 1, "env_steps": s + n, "iteration_steps": n, "episodes": len(r),
                "episode_return_mean": float(np.mean(r)) if r else None}
               for i, (r, s, n) in enumerate(zip(batches, starts, sizes, strict=True))]
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert replay.replay(records, 100, 0.1, 3) == [Drop(200, pytest.approx(10.0), pytest.approx(10.4), 1)]
    assert replay.main([str(run), "--window", "100", "--min-gain", "0.1,0.5"]) == 0
    out = capsys.readouterr().out
    assert f"| {run} | 200 | 0.1 | 200: 10.00 -> 10.40 |" in out
    assert f"| {run} | 200 | 0.5 | 200: 10.00 -> 10.40 |" in out  # 10.4 < 15 as well
