"""`stride`: the command line.

    stride train [--env ID] [--actors N] [--envs-per-actor B] [--total-steps S]
                 [--mode sync|async] [--run-dir DIR] [--config FILE] [--set section.field=value ...]
    stride train --resume runs/<run-id> [--total-steps S]
    stride eval runs/<run-id> [--episodes N] [--video PATH]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

# Stride only forks to exec (Ray's processes, ffmpeg), the case for which gRPC's fork-support notes
# say to turn its fork handlers off: with them on, a fork while gRPC's threads run (the experience
# server's, say) can abort the child before it execs. Read when gRPC starts, so set before.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

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
    "experience_port": ("train.experience_port", int),
    "experience_host": ("train.experience_host", str),
}


def _security_flags(p: argparse.ArgumentParser, server: bool) -> None:
    p.add_argument("--token-file", type=Path,
                   help="file holding the bearer token (default: the STRIDE_TOKEN environment variable, if set)")
    if server:
        p.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve over TLS")
        p.add_argument("--tls-key", type=Path, help="PEM private key for --tls-cert")
    else:
        p.add_argument("--tls-ca", type=Path, help="PEM CA certificate: connect over TLS")


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
    t.add_argument("--resume-if-exists", action="store_true",
                   help="with --run-dir: continue that run if it has a checkpoint (as --resume, with the run's "
                        "config and this command's flags), else start it; for commands a supervisor re-runs")
    t.add_argument("--no-video", action="store_true", help="skip the final video")
    t.add_argument("--metrics-port", type=int,
                   help="Prometheus /metrics port of the learner process (default 9470; 0 turns it off)")
    t.add_argument("--metrics-host", help="address the metrics endpoint binds to (default 127.0.0.1)")
    t.add_argument("--experience-port", type=int,
                   help="serve the gRPC ExperienceService on this port for actors outside Ray (default off)")
    t.add_argument("--experience-host", help="address the ExperienceService binds to (default 127.0.0.1)")
    _security_flags(t, server=True)
    e = sub.add_parser("eval", help="mean return of a run's latest checkpoint over seeded episodes")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--episodes", type=int, default=10)
    e.add_argument("--seed", type=int, default=10_000)
    e.add_argument("--video", type=Path, help="also write a video of one episode (.mp4 or .gif)")
    e.add_argument("--stochastic", action="store_true", help="sample actions instead of using the mean")
    s = sub.add_parser("serve", help="serve a run's policy over gRPC (PolicyService)")
    s.add_argument("run_dir", type=Path, help="a run folder, or a file from stride export (.onnx, .pt2, .pt)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=50051)
    s.add_argument("--follow", action="store_true", help="serve each newer checkpoint of a live run as it lands")
    s.add_argument("--max-batch", type=int, default=4096, help="largest observation batch per request")
    s.add_argument("--metrics-port", type=int, default=0, help="Prometheus /metrics port for the RPC metrics")
    _security_flags(s, server=True)
    a = sub.add_parser("actor", help="a rollout actor outside Ray, feeding a learner's ExperienceService")
    a.add_argument("--connect", required=True, metavar="HOST:PORT")
    a.add_argument("--env", default="stride/BipedWalker-v0")
    a.add_argument("--envs", type=int, default=16)
    a.add_argument("--fragment-length", type=int, default=128)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--fragments", type=int, help="stop after this many fragments")
    a.add_argument("--seconds", type=float, help="stop after this long")
    _security_flags(a, server=False)
    from services import bench_cli  # imports this module's helpers: here, not at the top

    bench_cli.add_parser(sub)
    x = sub.add_parser("export", help="write a run's policy as a self-contained ONNX, .pt2 or TorchScript file")
    x.add_argument("run_dir", type=Path)
    x.add_argument("--format", required=True, choices=["onnx", "pt2", "torchscript"],
                   help="onnx; pt2 (torch.export); torchscript (deprecated by PyTorch)")
    x.add_argument("--out", type=Path, help="output file (default RUN_DIR/policy.onnx, .pt2 or .pt)")
    return p


def set_overrides(items: list[str]) -> dict[str, str]:
    """`--set SECTION.FIELD=VALUE` flags as dotted overrides."""
    from learner.config import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected SECTION.FIELD=VALUE")
        out[key.strip()] = value
    return out


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for flag, (dotted, _) in TRAIN_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            out[dotted] = value
    out.update(set_overrides(args.overrides))
    if args.no_video:
        out["train.video"] = False
    return out


def _setup_logging(run_dir: Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if run_dir is not None:
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", handlers=handlers,
                        force=True)


def run_config(run_dir: Path, config: Path | None, overrides: dict[str, Any]) -> Any:
    """The config a resumed run continues with: the run's own config.yaml plus `overrides`
    (`stride train --resume` and `stride bench time-to-walk --resume`)."""
    from learner import config as C

    if config is not None:
        raise C.ConfigError("--resume continues with the run's own config.yaml; drop --config "
                            "(use --set to change a field)")
    if not (run_dir / "config.yaml").is_file():
        raise C.ConfigError(f"--resume: {run_dir} has no config.yaml (not a Stride run folder)")
    return C.load(run_dir / "config.yaml", overrides)


def _resume_if_exists(args: argparse.Namespace) -> None:
    """--resume-if-exists: turn the command into `--resume RUN_DIR` when the run folder has a
    checkpoint. Records of a run that died before its first checkpoint cannot be continued (a
    resume would drop them too): they are moved aside, not deleted, and the run starts afresh."""
    from learner import checkpoint
    from learner import config as C
    from learner.run_folder import has_records

    if args.resume is not None or args.run_dir is None:
        raise C.ConfigError("--resume-if-exists needs --run-dir DIR (and no --resume)")
    run_dir: Path = args.run_dir
    if checkpoint.list_checkpoints(run_dir / "checkpoints"):
        args.resume = run_dir
        return
    if has_records(run_dir):
        metrics = run_dir / "metrics.jsonl"
        aside = metrics.with_name(f"metrics-{time.strftime('%Y%m%d-%H%M%S')}-no-checkpoint.jsonl")
        os.replace(metrics, aside)
        print(f"{run_dir} has records but no checkpoint: starting afresh; the old records are in {aside.name}",
              file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> int:
    from learner import config as C

    overrides = _overrides(args)
    config = args.config
    if args.resume_if_exists:
        _resume_if_exists(args)  # may turn the command into --resume RUN_DIR
        if args.resume is not None:
            config = None  # --config is for the fresh start; a resumed run keeps its own
    run_dir: Path | None = None
    if args.resume is not None:
        run_dir = args.resume
        cfg = run_config(run_dir, config, overrides)
    else:
        cfg = C.load(args.config, overrides)
        if args.run_dir is not None:
            cfg.train.run_dir, cfg.train.run_id = str(args.run_dir.parent), args.run_dir.name
    C.validate(cfg)  # before Ray starts, and before any folder is made
    if run_dir is None:
        if not cfg.train.run_id:
            cfg.train.run_id = claim_folder(Path(cfg.train.run_dir), "").name
        run_dir = Path(cfg.train.run_dir) / cfg.train.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    _setup_logging(run_dir)

    from learner.actor_pool import RolloutFailed
    from learner.evaluate import final_video, plot_curve
    from learner.trainer import Trainer, TrainingDiverged
    from services.metrics import StrideMetrics, serve

    log = logging.getLogger("stride")
    metrics = StrideMetrics(run_id=run_dir.name, mode=cfg.train.mode)
    hub = None
    if cfg.train.experience_port:
        from learner.trainer import env_spaces
        from services.rpc import experience_service as es

        obs_dim, act_dim = env_spaces(cfg)
        hub = es.ExperienceHub(obs_dim, act_dim, cfg.train.max_policy_lag if cfg.train.mode == "async" else 0)
    # The trainer first (it checks the checkpoint to resume from), then the servers: bad input
    # fails before anything listens or starts.
    trainer = Trainer(cfg, run_dir, resume=args.resume is not None, observers=[metrics], external=hub)
    C.save(cfg, run_dir / "config.yaml")  # only now: a refused --resume leaves the run's config as it was
    if trainer.last_record is not None:
        metrics.start_from(trainer.last_record)
    server = experience = None
    code = 0
    try:
        if cfg.train.metrics_port:
            server = serve(metrics.registry, cfg.train.metrics_port, cfg.train.metrics_host)
            log.info("metrics on http://%s:%d/metrics", cfg.train.metrics_host, cfg.train.metrics_port)
        if hub is not None:
            from learner.trainer import start_ray
            from services.metrics import RpcMetrics
            from services.rpc import experience_service as es
            from services.rpc.server import Server

            # Ray first: ray.init forks its raylet, GCS and dashboard, and a fork while the gRPC
            # server's threads run can abort the child (seen: the dashboard died with SIGABRT and
            # the raylet never registered).
            start_ray(cfg)
            experience = Server(es.register(es.ExperienceServicer(hub)), cfg.train.experience_host,
                                cfg.train.experience_port, _security(args), RpcMetrics(metrics.registry))
            log.info("ExperienceService on %s", experience.address)
        log.info("run folder %s", run_dir)
        try:
            last = trainer.run()
        except KeyboardInterrupt:
            log.warning("stopped early; resume with: stride train --resume %s", run_dir)
            last, code = {}, 130
        except TrainingDiverged as exc:
            log.error("%s", exc)
            last, code = {}, 3
        except RolloutFailed as exc:
            log.error("%s", exc)
            last, code = {}, 4
    finally:
        if server is not None:
            server.shutdown()
        if experience is not None:
            experience.stop()
    curve = plot_curve(run_dir)
    if curve:
        log.info("learning curve %s", curve)
    if code == 0 and cfg.train.video:
        log.info(final_video(run_dir, run_dir / "walk.mp4"))
    if last:
        log.info("done: %d env steps, last mean return %s", last["env_steps"], last.get("episode_return_mean"))
    return code


def _security(args: argparse.Namespace):  # noqa: ANN202
    from services.rpc.server import Security

    return Security.from_sources(args.token_file, tls_cert=getattr(args, "tls_cert", None),
                                 tls_key=getattr(args, "tls_key", None))


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from services.metrics import RpcMetrics
    from services.rpc import policy_service as ps
    from services.rpc.server import Server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    registry = None
    if args.metrics_port:
        from prometheus_client import CollectorRegistry

        from services.metrics import serve as serve_metrics

        registry = CollectorRegistry()
        serve_metrics(registry, args.metrics_port, args.host)
    source = ps.PolicySource(args.run_dir, follow=args.follow)
    server = Server(ps.register(ps.PolicyServicer(source, args.max_batch)), args.host, args.port, _security(args),
                    RpcMetrics(registry) if registry is not None else None)
    print(f"serving {source.checkpoint} (version {source.policy.version}) on {server.address}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop(grace=5.0)
    source.close()
    return 0


def cmd_actor(args: argparse.Namespace) -> int:
    from services.rpc.remote_actor import RemoteActor, RemoteActorConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    token = args.token_file.read_text().strip() if args.token_file else os.environ.get("STRIDE_TOKEN")
    actor = RemoteActor(RemoteActorConfig(args.connect, args.env, args.envs, args.fragment_length, args.seed,
                                          token, args.tls_ca))
    try:
        actor.run(args.fragments, args.seconds)
    except KeyboardInterrupt:
        pass
    finally:
        actor.close()
    print(f"pushed {actor.pushed} fragments: {actor.accepted} accepted, {actor.dropped} dropped as stale")
    return 0


def claim_folder(parent: Path, prefix: str) -> Path:
    """A new folder parent/<prefix><date-time>, made here, so that every invocation gets its own
    even when several start in the same second (mkdir is atomic: the second gets a -2 suffix)."""
    parent.mkdir(parents=True, exist_ok=True)
    stamp = prefix + time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 10_000):
        folder = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"no free run folder name for {parent / stamp}")


def cmd_export(args: argparse.Namespace) -> int:
    from learner.export import export

    out = export(args.run_dir, args.format, args.out)
    print(f"wrote {out}")
    return 0


def counts_text(counts: dict[str, int]) -> str:
    """{'fell': 3, 'tilt': 7} -> 'fell 3, tilt 7'."""
    return ", ".join(f"{k} {n}" for k, n in counts.items())


def cmd_eval(args: argparse.Namespace) -> int:
    from learner.evaluate import evaluate

    logging.basicConfig(level=logging.WARNING)
    r = evaluate(args.run_dir, args.episodes, args.seed, args.video, deterministic=not args.stochastic)
    print(f"{r.checkpoint} ({r.env_steps:,} env steps): mean return {r.mean_return:.2f} +- {r.std_return:.2f} "
          f"over {r.episodes} episodes, mean length {r.mean_length:.1f}"
          + (f", mean forward distance {r.mean_forward_distance:.2f} m" if r.mean_forward_distance is not None else ""))
    print("episodes ended by: " + counts_text(r.ended_by))
    if r.tilted:
        print("tilt episodes went over: " + counts_text(r.tilted))
    if args.video:
        print(f"video: {args.video}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from learner.config import ConfigError
    from services import bench_cli

    args = _parser().parse_args(argv)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        commands = {"train": cmd_train, "eval": cmd_eval, "serve": cmd_serve, "actor": cmd_actor,
                    "export": cmd_export, "bench": bench_cli.cmd_bench}
        return commands[args.command](args)
    except (ConfigError, FileNotFoundError, ValueError, OSError) as exc:
        print(f"stride {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:  # give back the logging set-up (matters when main() is called in-process)
        for h in root.handlers:
            if h not in saved[0]:
                h.close()
        root.handlers[:], root.level = saved


if __name__ == "__main__":
    sys.exit(main())
