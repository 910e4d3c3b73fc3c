"""benchmarks/ttw_compare.py: time-to-walk runs read at equal env steps."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "ttw_compare", Path(__file__).resolve().parents[1] / "benchmarks" / "ttw_compare.py")
ttw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ttw)


def _record(i: int, steps: int, ret: float, entropy: float) -> dict:
    return {"iteration": i, "env_steps": steps, "episode_return_mean": ret, "entropy": entropy,
            "env_steps_per_s": 10_000.0 + i, "approx_kl": 0.01 * i, "clipfrac": 0.1 * i, "time_update": 0.05,
            "learner_rss_bytes": 400e6 + i * 1e6, "actor_rss_bytes_max": 300e6}


def _point(minutes: float, steps: int, ret: float) -> dict:
    return {"wall_seconds": 60.0 * minutes, "env_steps": steps, "train_return": ret - 5, "eval_return": ret,
            "eval_return_std": 3.0, "eval_length": 40.0, "eval_forward_distance_m": 1.5}


def _result(reached: bool, minutes: float) -> dict:
    """The two fields of a time_to_walk.json that the reach tally reads."""
    return {"reached": reached, "wall_seconds": 60 * minutes}


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "s9_demo"
    run.mkdir()
    # Records every 0.4 M steps; the last line is half written, as a crash mid-append leaves it.
    recs = [_record(i, 400_000 * i, 10.0 * i, -0.5 * i) for i in range(1, 6)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"iteration": 6, "env')
    points = [_point(5, 700_000, 50.0), _point(10, 1_500_000, 80.0)]
    (run / "eval_curve.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    return run


def test_marks_read_the_last_evaluation_and_the_window_before_them(tmp_path: Path) -> None:
    records, curve, result = ttw.load(_run(tmp_path))
    assert [r["iteration"] for r in records] == [1, 2, 3, 4, 5] and result is None
    assert ttw.eval_at(curve, 500_000) is None  # no evaluation yet
    assert ttw.eval_at(curve, 700_000).eval_return == 50.0  # made exactly at the mark
    assert ttw.eval_at(curve, 1_400_000).eval_return == 50.0
    assert ttw.eval_at(curve, 9e9).eval_return == 80.0
    # Window (1.2 M, 2.0 M]: records at 1.6 M and 2.0 M (returns 40 and 50); 1.2 M is outside.
    assert ttw.window_mean(records, "episode_return_mean", 2_000_000, 800_000) == pytest.approx(45.0)
    assert ttw.window_mean(records, "entropy", 2_000_000, 800_000) == pytest.approx(-2.25)
    assert ttw.window_mean(records, "entropy", 100_000, 800_000) is None


def test_main_prints_the_three_tables(tmp_path: Path, capsys) -> None:
    run = _run(tmp_path)
    assert ttw.main([str(run), "--marks", "1,2", "--window", "0.8"]) == 0
    out = capsys.readouterr().out
    assert "| s9_demo | running or stopped | 10.0 | 2.0 | 10,003 | 80.0 (last periodic) |" in out
    assert "| s9_demo: eval | 50.0 | 80.0 |" in out
    assert "| s9_demo: training return | 15.0 | 45.0 |" in out  # at 1 M: the records at 0.4 and 0.8 M
    assert "| s9_demo | 0.040 | 0.40 | 0.050 | 401 -> 405 | 300 -> 300 |" in out  # second half: records 3-5
    with pytest.raises(SystemExit):
        ttw.main([str(tmp_path / "nothing")])


def test_the_machines_table_warns_when_runs_ran_on_different_cpus(tmp_path: Path, capsys) -> None:
    """A seed pairs two runs only on one machine: the comparison says what each ran on."""
    def start(cpu: str, isa: str, code: str, it: int) -> str:
        return json.dumps({"cpu_model": cpu, "torch_cpu_capability": isa, "stride_code": code,
                           "from_iteration": it}) + "\n"

    a = _run(tmp_path)
    b = tmp_path / "other"
    b.mkdir()
    for name in ("metrics.jsonl", "eval_curve.jsonl"):
        (b / name).write_text((a / name).read_text())
    (a / "machine.jsonl").write_text(start("AMD EPYC", "AVX2", "abc123", 0) + start("AMD EPYC", "AVX2", "abc123", 40))
    (b / "machine.jsonl").write_text(start("Intel Xeon", "AVX512", "abc123", 0)
                                     + start("AMD EPYC", "AVX2", "def456", 9))
    assert ttw.machines(a) == ["AMD EPYC (AVX2)"]  # a resume on the same machine is one machine
    assert ttw.machines(b) == ["Intel Xeon (AVX512)", "AMD EPYC (AVX2)"]
    assert ttw.machines(tmp_path / "nowhere") == []
    assert ttw.main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "| s9_demo | AMD EPYC (AVX2) | abc123 |" in out
    assert "| other | Intel Xeon (AVX512) + AMD EPYC (AVX2) | abc123 + def456 |" in out
    assert "did not all run on one recorded machine" in out
    (b / "machine.jsonl").write_text(start("AMD EPYC", "AVX2", "abc123", 0))
    ttw.main([str(a), str(b)])
    out = capsys.readouterr().out
    assert "did not all run on one recorded machine" not in out
    assert "| other | AMD EPYC (AVX2) | abc123 | 10,003 |" in out  # median of 10,001..10,005 (all under 10 M)
    assert "sampled at" not in out  # the same speed: no warning


def test_the_machines_table_warns_when_one_machine_ran_at_different_speeds(tmp_path: Path, capsys) -> None:
    a = _run(tmp_path)
    b = tmp_path / "faster"
    b.mkdir()
    recs = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()[:5]]
    # 1.3x as fast up to 10 M; a record past 10 M (after a drop, slower) does not count
    fast = [{**r, "env_steps_per_s": 1.3 * r["env_steps_per_s"]} for r in recs]
    fast.append({**recs[-1], "iteration": 6, "env_steps": 10_400_000, "env_steps_per_s": 100.0})
    (b / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fast))
    assert ttw.early_speed(fast) == pytest.approx(1.3 * 10_003)
    assert ttw.early_speed(fast[-1:]) is None
    assert ttw.main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "| faster | not recorded | - | 13,004 |" in out
    assert "sampled at 10,003 to 13,004 env steps/s up to 10 M env steps" in out


def test_fisher_two_sided_matches_a_hand_count() -> None:
    """3 of 5 against 4 of 12 (docs/benchmarks.md's tally): with margins 5, 12 and 7 successes,
    the tables with a = 0..5 have C(5,a) C(12,7-a) = 792, 4620, 7920, 4950, 1100, 66 of
    C(17,7) = 19448; the observed a = 3 (4950) and every less likely table sum to 11528."""
    assert ttw.fisher_two_sided(3, 5, 4, 12) == pytest.approx(11528 / 19448, rel=1e-12)
    assert ttw.fisher_two_sided(2, 4, 2, 4) == pytest.approx(1.0)
    assert ttw.fisher_two_sided(5, 5, 0, 5) == pytest.approx(2 / 252)  # all against none: 2 of C(10,5) tables


def test_reach_rates_are_tallied_per_setting(tmp_path: Path, capsys) -> None:
    from learner import config as C
    from services.time_to_walk import time_budget

    base = _run(tmp_path)
    runs = []
    plan = [("d0", {}, True, 35.5), ("d1", {}, False, 60.0), ("d2", {}, False, 60.0),
            ("w0", {"model.hidden": "256,256", "ppo.ent_coef": 0}, True, 30.2),
            ("w1", {"model.hidden": "256,256", "ppo.ent_coef": 0}, True, 55.4)]
    for seed, (name, overrides, reached, minutes) in enumerate(plan):
        run = tmp_path / name
        run.mkdir()
        (run / "metrics.jsonl").write_text((base / "metrics.jsonl").read_text())
        # What time-to-walk sets for itself (no step limit, its rate schedule, a budget, a seed) is no setting.
        C.save(C.load(None, {**overrides, "train.seed": seed, "train.max_seconds": 3600,
                             **time_budget(None, overrides)}), run / "config.yaml")
        (run / "time_to_walk.json").write_text(json.dumps(
            {"reached": reached, "wall_seconds": 60 * minutes, "eval_return": 220.0 if reached else 150.0,
             "eval_return_std": 40.0, "interrupted": False}))
        runs.append(run)
    assert ttw.setting(C.load(runs[0] / "config.yaml")) == "defaults"
    assert ttw.setting(C.load(runs[3] / "config.yaml")) == "ppo.ent_coef=0.0, model.hidden=(256, 256)"
    # A run given a step budget anneals its rate (the trainer's default schedule): another setting.
    annealed = tmp_path / "annealed"
    annealed.mkdir()
    C.save(C.load(None, {"train.total_steps": 40_000_000, "train.max_seconds": 3600}), annealed / "config.yaml")
    assert ttw.setting(C.load(annealed / "config.yaml")) == "ppo.lr_schedule=linear"
    # The biped's time-bounded runs before session 42 kept the rate constant: now a setting of its own.
    constant = tmp_path / "constant"
    constant.mkdir()
    C.save(C.load(None, {"train.total_steps": C.NO_STEP_LIMIT, "ppo.lr_schedule": "constant"}),
           constant / "config.yaml")
    assert ttw.setting(C.load(constant / "config.yaml")) == "ppo.lr_schedule=constant"
    assert ttw.main([str(r) for r in runs]) == 0
    out = capsys.readouterr().out
    assert "| defaults | 3 | 1 (33%) | 35.5 | 60 | 0 | - |" in out
    # 2 of 2 against 1 of 3: the tables a = 0, 1, 2 weigh 1, 6, 3 of 10, so p = (1 + 3) / 10
    p = ttw.fisher_two_sided(2, 2, 1, 3)
    assert p == pytest.approx(0.4)
    assert f"| ppo.ent_coef=0.0, model.hidden=(256, 256) | 2 | 2 (100%) | 42.8 | 60 | 0 | {p:.2f} |" in out


def test_reached_within_counts_late_runs_as_not_reached_and_leaves_out_short_budgets() -> None:
    hour = 3600.0
    assert ttw.reached_within(_result(True, 45.7), 3600, hour) is True
    assert ttw.reached_within(_result(True, 70.0), 5400, hour) is False  # reached, but after the hour
    assert ttw.reached_within(_result(False, 60.1), 3600, hour) is False  # had the hour, did not reach
    assert ttw.reached_within(_result(False, 35.1), 2100, hour) is None  # 35 minutes: never had the hour
    assert ttw.reached_within(_result(False, 80.0), 0, hour) is False  # no time budget, ran past the hour
    assert ttw.reached_within(_result(False, 20.0), 0, hour) is None  # its step budget ended it at 20 minutes
    assert ttw.reached_within(_result(False, 35.1), 2100, None) is False  # no --within: as the run reported
    finished = [("step", _result(True, 45.7), 3600.0), ("step", _result(False, 60.1), 3600.0),
                ("step", _result(True, 70.0), 5400.0),
                ("constant", _result(False, 35.1), 2100.0), ("constant", _result(False, 40.1), 2400.0),
                ("constant", _result(True, 35.5), 3600.0), ("constant", _result(False, 60.0), 3600.0)]
    rows = ttw.tally_rows(finished, hour)
    # step: 1 of 3 within the hour (the 70-minute reach counts as a miss); constant: the two short
    # budgets that did not reach are left out, 1 of 2 counted. Tables a = 0, 1, 2 weigh 3, 6, 1 of 10.
    p = ttw.fisher_two_sided(1, 2, 1, 3)
    assert p == pytest.approx(1.0)
    assert rows == [["step", "3", "1 (33%)", "45.7", "60, 90", "0", "-"],
                    ["constant", "2", "1 (50%)", "35.5", "35, 40, 60", "2", f"{p:.2f}"]]
    # Without --within every finished run counts as it reported itself, whatever its budget.
    assert [row[1:3] for row in ttw.tally_rows(finished)] == [["3", "2 (67%)"], ["4", "1 (25%)"]]


def test_the_tally_keeps_the_first_setting_as_the_reference_even_with_no_run_counted() -> None:
    # constant comes first and all its runs had 35-40 minutes: nothing to test the others against,
    # so no p anywhere (before, the next setting silently became the reference).
    finished = [("constant", _result(False, 35.1), 2100.0), ("constant", _result(False, 40.1), 2400.0),
                ("step", _result(True, 45.7), 3600.0), ("step", _result(False, 60.1), 3600.0),
                ("early", _result(False, 60.1), 3600.0), ("early", _result(False, 60.2), 3600.0)]
    rows = ttw.tally_rows(finished, 3600.0)
    assert [row[0] for row in rows] == ["constant", "step", "early"]
    assert [row[1:3] for row in rows] == [["0", "0"], ["2", "1 (50%)"], ["2", "0 (0%)"]]
    assert [row[5:] for row in rows] == [["2", "-"], ["0", "-"], ["0", "-"]]
    # With a counted first setting the others are tested against it: 1/2 against 0/2, p = 1.
    rows = ttw.tally_rows(finished[2:], 3600.0)
    assert [row[6] for row in rows] == ["-", f"{ttw.fisher_two_sided(0, 2, 1, 2):.2f}"]
    assert ttw.fisher_two_sided(0, 2, 1, 2) == pytest.approx(1.0)


def test_within_must_be_positive(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        ttw.main([str(_run(tmp_path)), "--within", "0"])
    assert "--within must be a positive number of minutes, got 0" in capsys.readouterr().err
