"""`stride bench scale` end to end on a local Ray: a CSV and a plot with one row per actor count."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_scale_writes_csv_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    done = subprocess.run([str(Path(sys.executable).parent / "stride"), "bench", "scale", "--actors", "1,2",
                           "--seconds", "5", "--env", "Pendulum-v1", "--envs-per-actor", "4", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader((out / "scale.csv").open()))
    assert [int(r["actors"]) for r in rows] == [1, 2]
    for r in rows:
        rate, base = float(r["env_steps_per_s"]), float(r["single_core_env_steps_per_s"])
        assert rate > 0 and base > 0
        assert float(r["efficiency"]) == rate / (int(r["actors"]) * base)
        shares = sum(float(r[k]) for k in ("share_sample", "share_gae", "share_update", "share_broadcast"))
        assert 0.5 < shares <= 1.01  # the phases account for (nearly) all of an iteration
    assert (out / "scale.png").stat().st_size > 10_000


def test_bench_scale_rejects_bad_counts(tmp_path: Path) -> None:
    done = subprocess.run([str(Path(sys.executable).parent / "stride"), "bench", "scale", "--actors", "0,2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--actors" in done.stderr
