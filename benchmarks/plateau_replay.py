"""Where would `ppo.lr_schedule: plateau` have lowered the rate in runs already made?

    python benchmarks/plateau_replay.py RUN_DIR [RUN_DIR ...] [--window 2e6] [--min-gain 0.03,0.05]
                                        [--max-drops 3]

The rule (learner/lr_plateau.py) sees only each update's env steps and the returns of the
episodes that finished in its batch, and metrics.jsonl keeps both (`env_steps`,
`iteration_steps`, `episodes`, `episode_return_mean`), so any run's record can be replayed
through it, whatever schedule the run itself had. A run that had the plateau schedule lowered
its own rate, so its record after the first drop is not what a run without one would have seen:
the replay is exact up to that drop. Printed: for each run and each min_gain, the env steps of
each drop with the two windows' mean training returns. This is how the defaults were picked
(docs/benchmarks.md, session 41).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learner.lr_plateau import Drop, ReturnPlateau  # noqa: E402
from learner.run_folder import read_jsonl  # noqa: E402


def replay(records: list[dict[str, Any]], window: int, min_gain: float, max_drops: int) -> list[Drop]:
    """The drops the rule makes on these metrics records, in order."""
    rule = ReturnPlateau(window, min_gain, max_drops)
    drops = []
    for r in records:
        n, mean = int(r["episodes"]), r["episode_return_mean"]
        # The batch's episodes as n copies of their mean: the rule only ever sums them.
        returns = np.full(n, mean if n else 0.0, dtype=np.float64)
        drop = rule.observe(int(r["env_steps"]) - int(r["iteration_steps"]), int(r["iteration_steps"]), returns)
        if drop is not None:
            drops.append(drop)
    return drops


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--window", type=float, default=2e6, help="env steps per window (default 2e6)")
    ap.add_argument("--min-gain", default="0.03,0.05", help="comma-separated fractions (default 0.03,0.05)")
    ap.add_argument("--max-drops", type=int, default=3, help="drops to look for per run (default 3)")
    args = ap.parse_args(argv)
    gains = [float(g) for g in args.min_gain.split(",")]
    if args.window <= 0 or any(g < 0 for g in gains) or args.max_drops < 1:
        ap.error("--window must be > 0, --min-gain >= 0 and --max-drops >= 1")
    print(f"| run | env steps | min_gain | drops at (env steps: earlier window's mean -> latest's), "
          f"windows of {args.window / 1e6:g} M |")
    print("|---|---:|---:|---|")
    for run in args.runs:
        records, _ = read_jsonl(run / "metrics.jsonl", required="iteration")
        if not records:
            print(f"| {run} | 0 | - | no metrics |")  # a run that has not finished an update
            continue
        for gain in gains:
            drops = replay(records, int(args.window), gain, args.max_drops)
            at = "; ".join(f"{d.env_steps:,}: {d.earlier_mean:.2f} -> {d.latest_mean:.2f}" for d in drops)
            print(f"| {run} | {records[-1]['env_steps']:,} | {gain:g} | {at or 'none'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
