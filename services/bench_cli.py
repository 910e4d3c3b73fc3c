"""`stride bench`: the scale, soak and time-to-walk experiments (services/bench.py, soak.py,
time_to_walk.py hold the experiments; this module holds their flags and what they print)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from services.cli import claim_folder, counts_text, run_config, set_overrides


def add_parser(sub: Any) -> None:
    """The `bench` subcommand and its own subcommands, on `stride`'s subparsers."""
    b = sub.add_parser("bench", help="benchmarks on the current Ray cluster")
    bsub = b.add_subparsers(dest="bench", required=True)
    sc = bsub.add_parser("scale", help="env steps/s and efficiency against the number of actors")
    sc.add_argument("--actors", default="1,2", help="comma-separated actor counts (default 1,2)")
    sc.add_argument("--envs-per-actor", type=int, default=16)
    sc.add_argument("--mode", choices=["sync", "async"], default="async")
    sc.add_argument("--seconds", type=float, default=30.0, help="training time per point")
    sc.add_argument("--env", default="stride/BipedWalker-v0")
    sc.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    sc.add_argument("--out", type=Path, default=Path("bench"), help="folder for scale.csv and scale.png")
    sc.add_argument("--local-nodes", type=int, default=0,
                    help="run on this many Ray nodes started on this machine (learner on a CPU-less head), "
                         "so trajectories and weights cross node boundaries (default: no extra nodes)")
    sc.add_argument("--config", type=Path, help="YAML config the points train with (default: the built-in one)")
    sc.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="override a config field, e.g. --set rollout.fragment_length=256 (repeatable); "
                         "--actors, --envs-per-actor, --mode and --env win over the config")
    so = bsub.add_parser("soak", help="a long run watching learner/actor memory and the object store")
    so.add_argument("--steps", type=int, default=1_000_000, help="env steps to train for (default 1M)")
    so.add_argument("--env", help="env id (default: the config's, else the biped)")
    so.add_argument("--actors", type=int, help="rollout actors (default: the config's, else one per CPU)")
    so.add_argument("--mode", choices=["sync", "async"], help="default: the config's, else sync")
    so.add_argument("--config", type=Path, help="YAML config (default: the built-in biped defaults)")
    so.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="override a config field, e.g. --set env.envs_per_actor=64 (repeatable)")
    so.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    so.add_argument("--out", type=Path,
                    help="run folder, new (default bench/soak-<date-time>); soak.csv is written there")
    tw = bsub.add_parser("time-to-walk", help="train the biped until a return threshold; time, steps, video")
    tw.add_argument("--threshold", type=float, default=216.0,
                    help="mean return to reach, training or evaluation (--stop-on; default 216, the "
                         "reference's best published runs)")
    tw.add_argument("--window", type=int, default=5, help="iterations the training return is averaged over")
    tw.add_argument("--stop-on", choices=["train", "eval"], default="train",
                    help="what must reach the threshold: the training episodes' return (default) or the "
                         "periodic evaluation of the deterministic policy (needs --eval-every)")
    tw.add_argument("--eval-every", type=float, default=0.0, metavar="SECONDS",
                    help="evaluate the policy on the first checkpoint this long after the last evaluation "
                         "(eval_curve.jsonl; default 0: only at the end)")
    tw.add_argument("--eval-episodes", type=int, default=10, help="seeded episodes per evaluation (default 10)")
    tw.add_argument("--max-seconds", type=float, default=3600.0, help="give up after this long (default 1 h)")
    tw.add_argument("--config", type=Path, help="YAML config (default: the built-in biped defaults)")
    tw.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    tw.add_argument("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    tw.add_argument("--out", type=Path, help="run folder, new unless --resume (default bench/time-to-walk-<date-time>)")
    tw.add_argument("--no-video", action="store_true", help="skip the video of the trained policy")
    tw.add_argument("--resume", action="store_true",
                    help="continue the experiment in --out from its last checkpoint (its config, its clock)")


def _new_folder(kind: str) -> Path:
    """bench/<kind>-<date-time>: a folder per invocation, so a second run never lands in the
    first's (which the trainer refuses: docs/reliability.md)."""
    return claim_folder(Path("bench"), f"{kind}-")


def cmd_bench(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return {"time-to-walk": _time_to_walk, "soak": _soak, "scale": _scale}[args.bench](args)


def _time_to_walk(args: argparse.Namespace) -> int:
    from learner import config as C
    from services.time_to_walk import check_options, time_budget, time_to_walk

    overrides: dict[str, Any] = {"train.max_seconds": args.max_seconds, "train.metrics_port": 0,
                                 "train.address": args.address or "", **set_overrides(args.overrides)}
    if args.resume:
        if args.out is None:
            raise C.ConfigError("--resume needs --out DIR, the experiment's folder")
        cfg = run_config(args.out, args.config, overrides)
    else:
        # stops at the threshold or after max_seconds (or total_steps, where one is given)
        cfg = C.load(args.config, {**overrides, **time_budget(args.config, overrides)})
    C.validate(cfg)
    check_options(args.stop_on, args.eval_every, args.eval_episodes)  # before a folder is made
    out = args.out or _new_folder("time-to-walk")
    logging.getLogger("stride").info("run folder %s (if it dies: --out %s --resume)", out, out)
    resume_hint = f"resume with: stride bench time-to-walk --out {out} --resume"
    try:
        r = time_to_walk(cfg, out, args.threshold, args.window, args.eval_episodes, video=not args.no_video,
                         stop_on=args.stop_on, eval_every=args.eval_every, eval_episodes=args.eval_episodes,
                         resume=args.resume)
    except KeyboardInterrupt:  # during start-up or the final evaluation: training stops by itself
        logging.getLogger("stride").warning("stopped early; %s", resume_hint)
        return 130
    state = ("reached" if r.reached else "NOT reached") + f" ({r.stop_on} return)"
    state += " (interrupted)" if r.interrupted else ""
    for pt in r.eval_curve:
        print(f"eval at {pt.wall_seconds:.0f} s, {pt.env_steps:,} env steps: return {pt.eval_return:.1f} "
              f"+- {pt.eval_return_std:.1f}, length {pt.eval_length:.0f} (training {pt.train_return:.1f})"
              + ("; ended by " + counts_text(pt.ended_by) if pt.ended_by else "")
              + (" (tilt: " + counts_text(pt.tilted) + ")" if pt.tilted else ""))
    print(f"threshold {r.threshold:.1f} {state} after {r.wall_seconds:.0f} s, {r.env_steps:,} env steps "
          f"(training return {r.train_return:.1f}); final evaluation (fresh seeds from {r.eval_seed:,}): "
          f"return {r.eval_return:.1f} +- {r.eval_return_std:.1f}, "
          f"length {r.eval_length:.0f}"
          + (f", forward {r.eval_forward_distance_m:.2f} m" if r.eval_forward_distance_m is not None else "")
          + "; ended by " + counts_text(r.eval_ended_by)
          + (" (tilt: " + counts_text(r.eval_tilted) + ")" if r.eval_tilted else "")
          + (f"; video {r.video}" if r.video else ""))
    if r.interrupted:
        logging.getLogger("stride").warning("stopped early; %s", resume_hint)
        return 130
    return 0 if r.reached else 1


def _soak(args: argparse.Namespace) -> int:
    from learner import config as C

    flags = {"env.id": args.env, "rollout.actors": args.actors, "train.mode": args.mode}
    cfg = C.load(args.config, {**{k: v for k, v in flags.items() if v is not None},
                               "train.total_steps": args.steps, "train.address": args.address or "",
                               "train.metrics_port": 0, "train.video": False, "train.checkpoint_every": 100,
                               **set_overrides(args.overrides)})
    C.validate(cfg)
    from services.soak import print_report, soak  # torch and Ray: after the config is known good

    out = args.out or _new_folder("soak")
    report = soak(cfg, out)
    print_report(report)
    print(f"wrote {out / 'soak.csv'}")
    return 0


def _scale(args: argparse.Namespace) -> int:
    from learner import config as C

    try:
        counts = [int(x) for x in args.actors.split(",") if x.strip()]
    except ValueError:
        raise C.ConfigError(f"--actors: expected comma-separated counts, got {args.actors!r}") from None
    if not counts or min(counts) < 1:
        raise C.ConfigError(f"--actors: counts must be >= 1, got {args.actors!r}")
    if args.seconds <= 0:
        raise C.ConfigError(f"--seconds: must be > 0, got {args.seconds}")
    cfg = C.load(args.config, {**set_overrides(args.overrides), "env.id": args.env,
                               "env.envs_per_actor": args.envs_per_actor, "train.mode": args.mode,
                               "train.address": args.address or "", "train.metrics_port": 0})
    C.validate(cfg)
    if args.local_nodes < 0 or (args.local_nodes and args.address):
        raise C.ConfigError("--local-nodes: must be >= 0, and cannot be combined with --address")
    from services.bench import bench_scale  # torch and Ray: after the options are known good

    if args.local_nodes:
        from learner.config import local_cpus
        from services.bench import local_cluster

        per_node = max(1, local_cpus() // args.local_nodes)
        with local_cluster(args.local_nodes, per_node):
            points = bench_scale(cfg, counts, args.seconds, args.out)
    else:
        points = bench_scale(cfg, counts, args.seconds, args.out)
    print(f"{'actors':>6} {'env steps/s':>12} {'efficiency':>10} {'policy lag':>10} {'sample':>7} {'update':>7} "
          f"{'epochs':>6}")
    for p in points:
        print(f"{p.actors:>6} {p.env_steps_per_s:>12,.0f} {p.efficiency:>10.2f} {p.policy_lag_mean:>10.2f} "
              f"{p.share_sample:>7.0%} {p.share_update:>7.0%} {p.epochs_median:>6.1f}")
    print(f"wrote {args.out / 'scale.csv'} and {args.out / 'scale.png'}")
    return 0


