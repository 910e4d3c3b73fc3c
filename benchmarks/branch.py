"""Branch a run at its last checkpoint: continue copies of it with different settings, side by side.

    python benchmarks/branch.py RUN_DIR --steps 4000000 --out DIR \
        --variant control --variant lowlr ppo.lr=1e-4 --variant big env.envs_per_actor=64 \
        [--set train.mode=sync ...] [--eval-episodes 50] [--eval-seed 2000000]
    python benchmarks/branch.py RUN_DIR --seconds 900 --out DIR --variant control --variant fewer ppo.epochs=3

The paired test of a setting on one machine: every variant starts from the same weights,
optimiser state, normaliser and counters (a copy of RUN_DIR's config, metrics and newest
checkpoint in DIR/NAME), trains `--steps` more env steps (or for `--seconds` of wall time: the
comparison for a setting that changes the speed, since what a user waits for is the clock)
through `stride train --resume` with the common `--set`s and its own, one variant after the
other, and is then evaluated with the deterministic policy on the same seeded episodes. In sync
mode a variant with no settings of its own is the run continued exactly (a sync run repeats for
a seed on one machine, under `--steps`), so it is the control; it is still one draw of a chaotic
process, so branch several runs before believing a small difference.

Printed per variant: its settings, the env steps it trained, the evaluation (mean ± std over the
episodes; the mean per-seed difference from the first variant with its standard error and the
seeds it is ahead on, since every variant plays the same seeds, each branch's per-seed returns
kept in DIR/NAME/branch_eval.json; length, forward distance where the env has one), the training
return and policy entropy over the last tenth of the branch, and the branch's median approx KL,
epochs per update and seconds per update. Compare by the evaluation: the training return is the
stochastic policy's, so a setting that shrinks σ faster raises it without a better mean action
(docs/benchmarks.md, session 39). Every variant's config is checked before the first branch
starts, so a misspelt field fails naming it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ttw_compare import fmt  # noqa: E402  (benchmarks/ is on the path: the script's folder)

from learner import checkpoint  # noqa: E402
from learner import config as C  # noqa: E402
from learner.run_folder import read_jsonl  # noqa: E402
from services.cli import set_overrides  # noqa: E402

COPIED = ("config.yaml", "metrics.jsonl", "machine.jsonl")  # what a resume reads (machine.jsonl: the record)


@dataclass
class Variant:
    name: str
    overrides: dict[str, str]


def parse_variant(words: list[str]) -> Variant:
    """`NAME [SECTION.FIELD=VALUE ...]` -> Variant; a name that is not a plain folder name is refused."""
    name, *settings = words
    if "=" in name or "/" in name or name in (".", ".."):
        raise C.ConfigError(f"--variant {' '.join(words)}: the first word is the branch's name (a folder), "
                            f"then SECTION.FIELD=VALUE settings")
    try:
        return Variant(name, set_overrides(settings))
    except C.ConfigError:  # set_overrides names --set; this word came from --variant
        bad = next(w for w in settings if "=" not in w)
        raise C.ConfigError(f"--variant {name}: {bad!r} is not SECTION.FIELD=VALUE") from None


@dataclass
class Budget:
    """How long each branch trains: `steps` env steps past the checkpoint, or `seconds` of wall
    time (the other one 0)."""
    steps: int = 0
    seconds: float = 0.0


def branch_overrides(start_steps: int, budget: Budget, common: dict[str, str], variant: Variant) -> dict[str, Any]:
    """The `--set`s a branch resumes with: the budget (a step limit `budget.steps` past the
    checkpoint and no time limit, or a time limit and no step limit), no video, then the common
    settings, then the variant's own."""
    if budget.seconds > 0:
        limits: dict[str, Any] = {"train.total_steps": C.NO_STEP_LIMIT, "train.max_seconds": budget.seconds}
    else:
        limits = {"train.total_steps": start_steps + budget.steps, "train.max_seconds": 0}
    return {**limits, "train.video": False, **common, **variant.overrides}


def check(run_dir: Path, start_steps: int, budget: Budget, common: dict[str, str], variants: list[Variant]) -> None:
    """Every variant's resulting config is valid (ConfigError naming the field otherwise)."""
    for v in variants:
        try:
            C.validate(C.load(run_dir / "config.yaml", branch_overrides(start_steps, budget, common, v)))
        except C.ConfigError as exc:
            raise C.ConfigError(f"--variant {v.name}: {exc}") from None


def make_branch(run_dir: Path, ckpt: Path, dst: Path) -> None:
    """DIR/NAME: the run's config and records and its newest checkpoint, nothing else."""
    (dst / "checkpoints").mkdir(parents=True)
    for name in COPIED:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dst / name)
    shutil.copy2(ckpt, dst / "checkpoints" / ckpt.name)


def resume(dst: Path, overrides: dict[str, Any], log_path: Path) -> float:
    """`stride train --resume dst --set ...` in its own process (its own Ray); wall seconds."""
    cmd = [sys.executable, "-m", "services.cli", "train", "--resume", str(dst)]
    for key, value in overrides.items():
        cmd += ["--set", f"{key}={value}"]
    start = time.perf_counter()
    with log_path.open("w") as log:
        done = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"branch {dst.name} failed (exit {done.returncode}); see {log_path}")
    return time.perf_counter() - start


def tail_stats(records: list[dict[str, Any]], start_steps: int) -> dict[str, float | None]:
    """The env steps the branch trained; training return and entropy over its last tenth; median
    KL, epochs per update (where the records have them) and update time over all of it."""
    mine = [r for r in records if r["env_steps"] > start_steps]
    if not mine:
        return {"trained": 0, "train_return": None, "entropy": None, "kl": None, "epochs": None, "update_s": None}
    cut = start_steps + 0.9 * (mine[-1]["env_steps"] - start_steps)
    last = [r for r in mine if r["env_steps"] > cut] or mine[-1:]

    def mean(key: str, rows: list[dict[str, Any]]) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return statistics.mean(vals) if vals else None

    def median(key: str) -> float | None:
        vals = [r[key] for r in mine if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    return {"trained": mine[-1]["env_steps"] - start_steps,
            "train_return": mean("episode_return_mean", last), "entropy": mean("entropy", last),
            "kl": median("approx_kl"), "epochs": median("epochs"), "update_s": median("time_update")}


def paired_difference(returns: list[float], base: list[float]) -> tuple[float, float, int]:
    """Mean and standard error of the per-episode differences returns[i] - base[i] of two
    evaluations on the same seeds (each seed's episode starts the same way for both), and on how
    many seeds `returns` is ahead."""
    diffs = [a - b for a, b in zip(returns, base, strict=True)]
    err = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    return statistics.mean(diffs), err, sum(d > 0 for d in diffs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the run folder to branch (its newest checkpoint)")
    length = parser.add_mutually_exclusive_group(required=True)
    length.add_argument("--steps", type=int, help="env steps each branch trains past the checkpoint")
    length.add_argument("--seconds", type=float,
                        help="wall seconds each branch trains (its `stride train --resume`'s train.max_seconds)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the branches (DIR/NAME each)")
    parser.add_argument("--variant", nargs="+", action="append", required=True, metavar="NAME [KEY=VALUE]",
                        help="a branch: its name, then its own settings (none: the control); repeatable")
    parser.add_argument("--set", dest="common", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="a setting every branch takes, e.g. train.mode=sync (repeatable)")
    parser.add_argument("--eval-episodes", type=int, default=50)
    parser.add_argument("--eval-seed", type=int, default=2_000_000, help="first seed of the evaluation episodes")
    args = parser.parse_args(argv)
    try:
        if args.steps is not None and args.steps < 1:
            raise C.ConfigError(f"--steps: must be >= 1, got {args.steps}")
        if args.seconds is not None and not args.seconds > 0:
            raise C.ConfigError(f"--seconds: must be > 0, got {args.seconds}")
        budget = Budget(steps=args.steps or 0, seconds=args.seconds or 0.0)
        if args.eval_episodes < 1:
            raise C.ConfigError(f"--eval-episodes: must be >= 1, got {args.eval_episodes}")
        variants = [parse_variant(words) for words in args.variant]
        names = [v.name for v in variants]
        if len(set(names)) != len(names):
            raise C.ConfigError(f"--variant: names must differ, got {names}")
        common = set_overrides(args.common)
        if not (args.run / "config.yaml").is_file():
            raise C.ConfigError(f"{args.run} has no config.yaml: not a Stride run folder")
        ckpt, state = checkpoint.require_latest(args.run)
        start_steps = int(state["counters"]["env_steps"])
        check(args.run, start_steps, budget, common, variants)
        taken = [args.out / n for n in names if (args.out / n).exists()]
        if taken:
            raise C.ConfigError(f"--out: {', '.join(map(str, taken))} already exist; branch into another folder")
    except (C.ConfigError, FileNotFoundError) as exc:
        parser.error(str(exc))

    from learner.evaluate import evaluate  # torch: after the options are known good

    span = f"{budget.seconds:g} s each" if budget.seconds > 0 else f"{budget.steps:,} more env steps"
    print(f"branching {args.run} at {ckpt.name} ({start_steps:,} env steps) for {span}", flush=True)
    rows, base_returns = [], None
    for v in variants:
        dst = args.out / v.name
        make_branch(args.run, ckpt, dst)
        seconds = resume(dst, branch_overrides(start_steps, budget, common, v),
                         args.out / f"{v.name}.log")
        ev = evaluate(dst, args.eval_episodes, args.eval_seed)
        records, _ = read_jsonl(dst / "metrics.jsonl", required="iteration")
        tail = tail_stats(records, start_steps)
        settings = ", ".join(f"{k}={val}" for k, val in v.overrides.items()) or "(control)"
        if base_returns is None:
            base_returns, paired = ev.returns, "-"
        else:
            diff, err, ahead = paired_difference(ev.returns, base_returns)
            paired = f"{diff:+.1f} ± {err:.1f}, ahead on {ahead} of {len(ev.returns)}"
        # each episode's return, seed order, to pair with later branches of the same point
        (dst / "branch_eval.json").write_text(json.dumps(
            {"eval_seed": args.eval_seed, "checkpoint": ev.checkpoint, "returns": ev.returns}) + "\n")
        rows.append([v.name, settings, f"{tail['trained']:,}", f"{ev.mean_return:.1f} ± {ev.std_return:.1f}", paired,
                     f"{ev.mean_length:.1f}", fmt(ev.mean_forward_distance, 2), fmt(tail["train_return"]),
                     fmt(tail["entropy"], 2), fmt(tail["kl"], 4), fmt(tail["epochs"], 1), fmt(tail["update_s"], 3),
                     f"{seconds:.0f}"])
        print(f"{v.name}: evaluation {ev.mean_return:.2f} ± {ev.std_return:.2f} ({ev.checkpoint})", flush=True)
    head = ["branch", "settings", "env steps trained",
            f"evaluation ({args.eval_episodes} ep., seeds from {args.eval_seed:,})",
            f"against {variants[0].name}, paired by seed (± s.e.)", "length", "distance (m)",
            "training return (last tenth)", "entropy (last tenth)", "KL median", "epochs median", "s per update",
            "wall s"]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
