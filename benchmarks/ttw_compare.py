"""Compare `stride bench time-to-walk` runs at equal env steps, not on the clock.

    python benchmarks/ttw_compare.py RUN_DIR [RUN_DIR ...] [--marks 5,10,20,30] [--window 0.5]

The wall clock of an hour-capped run depends on the day's machine speed (this 2-core machine
has sampled anywhere from 8k to 18k env steps/s with the same command), so a setting is judged
by what it had learned after the same number of env steps. Printed per run folder:
- a summary: reached or not, minutes, env steps, median env steps/s, the final evaluation;
- the evaluation return at each mark (millions of env steps): the last periodic evaluation made
  at or before it (eval_curve.jsonl; "-" if none yet), and the training return and policy
  entropy averaged over the iterations in the `--window` million steps before it (metrics.jsonl);
- the second half's update diagnostics (median approx KL, clip fraction, seconds per update)
  and memory (learner RSS and the largest actor's, first and last record);
- what each ran on (machine.jsonl: CPU, Torch's kernel set, the code's commit), with a warning
  when they differ: on one machine a sync run repeats for a seed, across CPUs it does not; and how
  fast it sampled up to 10 M env steps (where every biped schedule still trains at 3e-4), with a
  warning when that differs by more than 20%: the same CPU model is not the same speed every day;
- the reach rate per setting (the finished runs grouped by how their config.yaml differs from
  the defaults, seed and time budget aside), with Fisher's exact test against the first
  setting listed: one run per seed says little, a rate over several runs is the comparison.
  Each row lists the time budgets (`train.max_seconds`) of its runs. `--within MINUTES` makes
  the rate "reached within MINUTES": a run that reached later counts as not reached, and a run
  that did not reach and did not run that long (a shorter time budget, or a step budget spent
  sooner) is left out (it never had the time, so it is neither; the row says how many).
A line a crash left half written is skipped, as a resume skips it.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learner import config as C  # noqa: E402
from learner.run_folder import read_jsonl  # noqa: E402
from services.time_to_walk import EvalPoint, read_eval_curve, time_budget  # noqa: E402


def load(run_dir: Path) -> tuple[list[dict[str, Any]], list[EvalPoint], dict[str, Any] | None]:
    """metrics.jsonl records, eval_curve.jsonl points and time_to_walk.json (None while running)."""
    records, _ = read_jsonl(run_dir / "metrics.jsonl", required="iteration")
    curve_path = run_dir / "eval_curve.jsonl"
    curve = read_eval_curve(curve_path) if curve_path.exists() else []
    result_path = run_dir / "time_to_walk.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    return records, curve, result


def eval_at(curve: list[EvalPoint], steps: float) -> EvalPoint | None:
    """The last evaluation made at or before `steps` env steps."""
    before = [p for p in curve if p.env_steps <= steps]
    return before[-1] if before else None


def window_mean(records: list[dict[str, Any]], key: str, steps: float, window: float) -> float | None:
    """Mean of `key` over the records of the `window` env steps up to `steps` (None if none)."""
    vals = [r[key] for r in records if steps - window < r["env_steps"] <= steps and r.get(key) is not None]
    return statistics.mean(vals) if vals else None


def fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def summary_row(name: str, records: list[dict[str, Any]], curve: list[EvalPoint],
                result: dict[str, Any] | None) -> list[str]:
    last = records[-1]
    minutes = (result["wall_seconds"] if result else (curve[-1].wall_seconds if curve else 0.0)) / 60
    if result:
        final = f"{result['eval_return']:.1f} +- {result['eval_return_std']:.1f}"
        status = "reached" if result["reached"] else "not reached"
    else:
        final = f"{curve[-1].eval_return:.1f} (last periodic)" if curve else "-"
        status = "running or stopped"
    rate = statistics.median(r["env_steps_per_s"] for r in records)
    return [name, status, f"{minutes:.1f}", f"{last['env_steps'] / 1e6:.1f}", f"{rate:,.0f}", final]


# The machine's speed is read from the env steps/s up to here: every biped schedule compared so far
# (constant, step at 15 M / 22 M, early milestones at 10 M) trains at 3e-4 until 10 M, and a lower
# rate makes each update longer (more epochs before target_kl), so a later window would measure the
# schedule as well as the machine.
SPEED_UPTO = 10_000_000


def early_speed(records: list[dict[str, Any]]) -> float | None:
    """Median env steps/s of the iterations up to SPEED_UPTO env steps (None if none)."""
    rates = [r["env_steps_per_s"] for r in records if r["env_steps"] <= SPEED_UPTO]
    return statistics.median(rates) if rates else None


def diagnostics_row(name: str, records: list[dict[str, Any]]) -> list[str]:
    half = records[len(records) // 2:]
    first, last = records[0], records[-1]

    def mb(r: dict[str, Any], key: str) -> str:
        return f"{r[key] / 1e6:.0f}" if r.get(key) else "-"

    return [name, f"{statistics.median(r['approx_kl'] for r in half):.3f}",
            f"{statistics.median(r['clipfrac'] for r in half):.2f}",
            f"{statistics.median(r['time_update'] for r in half):.3f}",
            f"{mb(first, 'learner_rss_bytes')} -> {mb(last, 'learner_rss_bytes')}",
            f"{mb(first, 'actor_rss_bytes_max')} -> {mb(last, 'actor_rss_bytes_max')}"]


def starts(run_dir: Path) -> list[dict[str, Any]]:
    """The run's machine.jsonl records, one per start; [] for a run made before it existed (session 38)."""
    path = run_dir / "machine.jsonl"
    return read_jsonl(path, required="cpu_model")[0] if path.is_file() else []


def machines(run_dir: Path) -> list[str]:
    """The distinct machines the run started on, "CPU (Torch's kernel set)", in order."""
    return list(dict.fromkeys(f"{m['cpu_model']} ({m.get('torch_cpu_capability') or '?'})" for m in starts(run_dir)))


def code_versions(run_dir: Path) -> list[str]:
    """The distinct `git describe` of the code at each start, in order."""
    return list(dict.fromkeys(str(m.get("stride_code")) for m in starts(run_dir)))


# What a time-to-walk run sets for itself or per run, not a setting being compared.
NOT_A_SETTING = {"train.seed", "train.max_seconds", "train.total_steps", "train.run_dir",
                 "train.run_id", "train.video", "train.metrics_port", "train.address"}


@functools.cache
def baseline() -> dict[str, dict[str, Any]]:
    """What `stride bench time-to-walk` runs with no `--set`, as Config.to_dict gives it."""
    return C.load(None, time_budget(None, {})).to_dict()


def setting(run_config: C.Config) -> str:
    """How a run's config (its config.yaml, loaded) differs from what `stride bench time-to-walk`
    runs with no `--set` ("a.b=v, ..."), or "defaults". The baseline is the trainer's defaults with the
    experiment's own time budget applied (for the biped, the `step` schedule since session 42; a
    constant rate before), so a run that asked for another schedule is tallied apart instead of
    with the defaults. Milestones are not a difference of a run whose schedule has none."""
    saved, default = run_config.to_dict(), baseline()
    ignored = set() if saved["ppo"]["lr_schedule"] == "step" else {"ppo.lr_milestones"}
    diffs = [f"{sec}.{key}={value}" for sec, fields in saved.items() for key, value in fields.items()
             if f"{sec}.{key}" not in NOT_A_SETTING | ignored and default[sec][key] != value]
    return ", ".join(diffs) or "defaults"


def fisher_two_sided(a: int, n1: int, c: int, n2: int) -> float:
    """Fisher's exact test, two-sided, of a/n1 against c/n2 successes: the probability, given
    the margins, of a table no more likely than the one observed."""
    k, n = a + c, n1 + n2

    def prob(x: int) -> float:
        return math.comb(n1, x) * math.comb(n2, k - x) / math.comb(n, k)

    observed = prob(a)
    tables = range(max(0, k - n2), min(k, n1) + 1)  # every a' the margins allow
    return min(1.0, sum(p for x in tables if (p := prob(x)) <= observed * (1 + 1e-9)))


def reached_within(result: dict[str, Any], budget_s: float, within_s: float | None) -> bool | None:
    """Whether a finished run reached the threshold within `within_s` seconds (any time if None);
    None where it did not reach and neither its time budget (0: none) nor the time it ran came to
    `within_s` (a shorter budget, or a step budget spent sooner): it never had the time."""
    if within_s is None:
        return bool(result["reached"])
    if result["reached"]:
        return bool(result["wall_seconds"] <= within_s)
    return False if budget_s >= within_s or result["wall_seconds"] >= within_s else None


def tally_rows(finished: list[tuple[str, dict[str, Any], float]], within_s: float | None = None) -> list[list[str]]:
    """One row per setting, in order of first appearance, from (setting, result, budget in
    seconds; config.yaml's train.max_seconds, 0: none) per run: runs counted, reached (within
    `within_s` if given), median minutes of those, the budgets in minutes, runs left out (missed
    without running `within_s`: reached_within), and Fisher's p against the first setting ("-" on
    its own row, and on every row when it has no run counted: the reference stays the first)."""
    groups: dict[str, list[tuple[bool | None, dict[str, Any], float]]] = {}
    for name, result, budget_s in finished:
        groups.setdefault(name, []).append((reached_within(result, budget_s, within_s), result, budget_s))
    rows: list[list[str]] = []
    reference: tuple[int, int] | None = None  # the first setting's (reached, counted), if it counted any
    for name, runs in groups.items():
        counted = [(hit, r) for hit, r, _ in runs if hit is not None]
        n, hits = len(counted), sum(bool(hit) for hit, _ in counted)
        minutes = [r["wall_seconds"] / 60 for hit, r in counted if hit]
        p = "-" if not rows or reference is None or n == 0 else f"{fisher_two_sided(hits, n, *reference):.2f}"
        if not rows:
            reference = (hits, n) if n else None
        median = f"{statistics.median(minutes):.1f}" if minutes else "-"
        budgets = ", ".join(f"{b / 60:g}" if b > 0 else "none" for b in sorted({b for *_, b in runs}))
        rate = f"{hits} ({hits / n:.0%})" if n else "0"
        rows.append([name, str(n), rate, median, budgets, str(len(runs) - n), p])
    return rows


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="time-to-walk run folders")
    parser.add_argument("--marks", default="5,10,15,20,25,30", help="millions of env steps, comma-separated")
    parser.add_argument("--window", type=float, default=0.5, help="millions of env steps averaged before each mark")
    parser.add_argument("--within", type=float, default=None, metavar="MINUTES",
                        help="tally 'reached within MINUTES' (runs that missed without running that long: left out)")
    args = parser.parse_args(argv)
    try:
        marks = [float(m) * 1e6 for m in args.marks.split(",")]
    except ValueError:
        parser.error(f"--marks must be numbers separated by commas, got {args.marks!r}")
    if args.within is not None and not args.within > 0:
        parser.error(f"--within must be a positive number of minutes, got {args.within:g}")
    loaded = []  # (folder, records, curve, result) of the folders whose run wrote a record
    for run in args.runs:
        if not (run / "metrics.jsonl").is_file():
            parser.error(f"{run} has no metrics.jsonl: not a run folder")
        records, curve, result = load(run)
        if records:
            loaded.append((run, records, curve, result))
    window = args.window * 1e6
    print(table(["run", "result", "minutes", "env steps (M)", "median env steps/s", "final eval (20 ep.)"],
                [summary_row(run.name, recs, curve, res) for run, recs, curve, res in loaded]))
    print()
    head = [f"{m / 1e6:g} M" for m in marks]
    rows = []
    for run, recs, curve, _ in loaded:
        evals = [eval_at(curve, m) for m in marks]
        rows.append([f"{run.name}: eval", *[fmt(p.eval_return if p else None) for p in evals]])
        rows.append([f"{run.name}: training return", *[fmt(window_mean(recs, "episode_return_mean", m, window))
                                                        for m in marks]])
        rows.append([f"{run.name}: entropy", *[fmt(window_mean(recs, "entropy", m, window), 2) for m in marks]])
    print(table(["run, at env steps", *head], rows))
    print()
    print(table(["run", "KL median (2nd half)", "clip fraction", "s per update", "learner RSS MB", "largest actor MB"],
                [diagnostics_row(run.name, recs) for run, recs, _, _ in loaded]))
    print()
    ran_on = [(run, machines(run), code_versions(run)) for run, *_ in loaded]
    speeds = [early_speed(recs) for _, recs, _, _ in loaded]
    print(table(["run", "machine (Torch kernels)", "code", f"env steps/s to {SPEED_UPTO / 1e6:g} M (median)"],
                [[run.name, " + ".join(cpus) or "not recorded", " + ".join(code) or "-",
                  "-" if speed is None else f"{speed:,.0f}"]
                 for (run, cpus, code), speed in zip(ran_on, speeds, strict=True)]))
    if len({tuple(cpus) for _, cpus, _ in ran_on}) > 1:
        print("\nnote: these runs did not all run on one recorded machine; the same seed on another CPU "
              "is another run, so compare them as draws, not as pairs")
    known = [v for v in speeds if v is not None]
    if known and max(known) > 1.2 * min(known):
        # One CPU model is not one speed: the same VM sampled 32% faster one afternoon (session 44) than
        # that morning, so minutes to a threshold carry the day's speed as well as the setting.
        print(f"\nnote: these runs sampled at {min(known):,.0f} to {max(known):,.0f} env steps/s up to "
              f"{SPEED_UPTO / 1e6:g} M env steps, where every biped schedule still trains at 3e-4: minutes "
              "(and reach within minutes) carry that speed, mostly the machine's on the day, as well as the "
              "setting; the marks at env steps do not")
    finished = []  # (setting, result, time budget) of each finished run
    for run, _, _, res in loaded:
        if res is not None and not res.get("interrupted") and (run / "config.yaml").is_file():
            cfg = C.load(run / "config.yaml")
            finished.append((setting(cfg), res, cfg.train.max_seconds))
    if finished:
        within = f" within {args.within:g} min" if args.within else ""
        print()
        print(table(["setting", "runs", f"reached{within}", "median minutes (reached)", "budgets (min)",
                     "left out (missed, ran shorter)", "Fisher p against the first"],
                    tally_rows(finished, args.within * 60 if args.within else None)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
