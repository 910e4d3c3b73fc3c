"""`stride`: the command line.

    stride train [--env ID] [--actors N] [--envs-per-actor B] [--total-steps S]
                 [--mode sync|async] [--run-dir DIR] [--config FILE] [--set section.field=value ...]
    stride train --resume runs/<run-id> [--total-steps S]
    stride eval runs/<run-id> [--episodes N] [--video PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

# Flag -> dotted config field. Flags left unset do not override the config file.
TRAIN_FLAGS: dict[str, tuple[str, type]] = {
    "env": ("env.id", str),
    "envs_per_actor": ("env.envs_per_actor", int),
    "actors": ("rollout.actors", int),
    "fragment_length": ("rollout.fragment_length", int),
    "total_steps": ("train.total_steps", int),
    "mode": ("train.mode", str),
    "seed": ("train.seed", int),
    "device": ("train.device", str),
    "address": ("train.address", str),
    "loss": ("ppo.loss", str),
    "metrics_port": ("train.metrics_port", int),
    "metrics_host": ("train.metrics_host", str),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stride", description="Distributed PPO for the Stride biped and Gymnasium tasks.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a policy (embedded local Ray unless --address or RAY_ADDRESS)")
    t.add_argument("--env", help="Gymnasium id (default stride/BipedWalker-v0), e.g. Walker2d-v5")
    t.add_argument("--actors", type=int, help="rollout actors (default: one per CPU)")
    t.add_argument("--envs-per-actor", type=int, help="envs each actor steps together")
    t.add_argument("--fragment-length", type=int, help="env steps per fragment")
    t.add_argument("--total-steps", type=int, help="env steps to train for")
    t.add_argument("--mode", choices=["sync", "async"])
    t.add_argument("--loss", choices=["clip", "penalty"])
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    t.add_argument("--address", help="Ray cluster to join ('auto' for the local node's cluster)")
    t.add_argument("--run-dir", type=Path, help="folder for this run (default runs/<timestamp>)")
    t.add_argument("--config", type=Path, help="YAML file with sections env, rollout, ppo, model, train")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any config field, e.g. --set ppo.lr=1e-4 (repeatable)")
    t.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint")
    t.add_argument("--no-video", action="store_true", help="skip the final video")
    t.add_argument("--metrics-port", type=int,
                   help="Prometheus /metrics port of the learner process (default 9470; 0 turns it off)")
    t.add_argument("--metrics-host", help="address the metrics endpoint binds to (default 127.0.0.1)")
    e = sub.add_parser("eval", help="mean return of a run's latest checkpoint over seeded episodes")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--episodes", type=int, default=10)
    e.add_argument("--seed", type=int, default=10_000)
    e.add_argument("--video", type=Path, help="also write a video of one episode (.mp4 or .gif)")
    e.add_argument("--stochastic", action="store_true", help="sample actions instead of using the mean")
    return p


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from learner.config import ConfigError

    out: dict[str, Any] = {}
    for flag, (dotted, _) in TRAIN_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            out[dotted] = value
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected SECTION.FIELD=VALUE")
        out[key.strip()] = value
    if args.no_video:
        out["train.video"] = False
    return out


def _setup_logging(run_dir: Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None:
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", handlers=handlers,
                        force=True)


def cmd_train(args: argparse.Namespace) -> int:
    from learner import config as C

    overrides = _overrides(args)
    if args.resume is not None:
        run_dir = args.resume
        if not (run_dir / "config.yaml").is_file():
            raise C.ConfigError(f"--resume: {run_dir} has no config.yaml (not a Stride run folder)")
        cfg = C.load(run_dir / "config.yaml", overrides)
    else:
        cfg = C.load(args.config, overrides)
        if args.run_dir is not None:
            cfg.train.run_dir, cfg.train.run_id = str(args.run_dir.parent), args.run_dir.name
        if not cfg.train.run_id:
            cfg.train.run_id = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(cfg.train.run_dir) / cfg.train.run_id
    C.validate(cfg)  # before Ray starts
    run_dir.mkdir(parents=True, exist_ok=True)
    C.save(cfg, run_dir / "config.yaml")
    _setup_logging(run_dir)

    from learner.evaluate import final_video, plot_curve
    from learner.trainer import Trainer
    from services.metrics import StrideMetrics, serve

    log = logging.getLogger("stride")
    metrics = StrideMetrics(run_id=run_dir.name, mode=cfg.train.mode)
    server = None
    if cfg.train.metrics_port:
        server = serve(metrics.registry, cfg.train.metrics_port, cfg.train.metrics_host)
        log.info("metrics on http://%s:%d/metrics", cfg.train.metrics_host, cfg.train.metrics_port)
    trainer = Trainer(cfg, run_dir, resume=args.resume is not None, observers=[metrics])
    if args.resume is not None and (run_dir / "metrics.jsonl").exists():
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        if lines:
            metrics.start_from(json.loads(lines[-1]))
    log.info("run folder %s", run_dir)
    code = 0
    try:
        last = trainer.run()
    except KeyboardInterrupt:
        log.warning("stopped early; resume with: stride train --resume %s", run_dir)
        last, code = {}, 130
    curve = plot_curve(run_dir)
    if curve:
        log.info("learning curve %s", curve)
    if code == 0 and cfg.train.video:
        log.info(final_video(run_dir, run_dir / "walk.mp4"))
    if last:
        log.info("done: %d env steps, last mean return %s", last["env_steps"], last.get("episode_return_mean"))
    if server is not None:
        server.shutdown()
    return code


def cmd_eval(args: argparse.Namespace) -> int:
    from learner.evaluate import evaluate

    logging.basicConfig(level=logging.WARNING)
    r = evaluate(args.run_dir, args.episodes, args.seed, args.video, deterministic=not args.stochastic)
    print(f"{r.checkpoint} ({r.env_steps:,} env steps): mean return {r.mean_return:.2f} +- {r.std_return:.2f} "
          f"over {r.episodes} episodes, mean length {r.mean_length:.1f}"
          + (f", mean forward distance {r.mean_forward_distance:.2f} m" if r.mean_forward_distance is not None else ""))
    if args.video:
        print(f"video: {args.video}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from learner.config import ConfigError

    args = _parser().parse_args(argv)
    try:
        return cmd_train(args) if args.command == "train" else cmd_eval(args)
    except (ConfigError, FileNotFoundError, ValueError, OSError) as exc:
        print(f"stride {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
