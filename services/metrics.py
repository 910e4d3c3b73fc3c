"""Every Prometheus metric Stride exports, defined here on an injectable registry.

`StrideMetrics` is a trainer observer: the trainer hands it each iteration's record (the same
dict it writes to metrics.jsonl) and the episodes that finished, so the exported values and
the file agree by construction. Actor-side figures (episodes, env errors, actor memory) ride
along with the trajectories, so the learner process is the one scrape target a job needs;
node health comes from Ray's own metrics.

Names: `stride_` prefix, base units (seconds, bytes), `_total` counters; labels `run_id` and
`mode` on every series, plus `phase`, `reason` or `loss` where they say which one. No
per-episode or per-actor-process labels.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from actors.trajectory import EpisodeStats

# Returns of the biped: a fall scores ~0-10, a dash before falling 20-60, a full 400-step
# episode 25 + 400 * mean forward speed (the reference's best runs average ~216).
RETURN_BUCKETS = (-50, -10, 0, 5, 10, 20, 30, 40, 60, 80, 100, 150, 200, 250, 300, 400, 600, 1000)
LENGTH_BUCKETS = (5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 399, 400, 1000)
PHASES = ("sample", "gae", "update", "broadcast")
LOSSES = ("policy", "value", "total")
DEFAULT_PORT = 9470
MAX_END_REASONS = 16  # distinct `reason` labels of stride_episodes_ended_total; the rest is "other"


class MetricsPortError(OSError):
    """The metrics port cannot be bound (in use, or not permitted)."""


class StrideMetrics:
    """The metric families of one training process, children bound to (run_id, mode)."""

    def __init__(self, registry: CollectorRegistry | None = None, run_id: str = "", mode: str = "") -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r, base = self.registry, ("run_id", "mode")
        self._ids = (run_id, mode)
        ids = self._ids

        def counter(name: str, doc: str, *extra: str) -> Counter:
            return Counter(name, doc, base + extra, registry=r)

        def gauge(name: str, doc: str, *extra: str) -> Gauge:
            return Gauge(name, doc, base + extra, registry=r)

        self.env_steps = counter("stride_env_steps", "Env steps trained on").labels(*ids)
        self.episodes = counter("stride_episodes", "Episodes finished in the fragments trained on").labels(*ids)
        self.episodes_ended = counter("stride_episodes_ended", "Episodes finished, by why they ended (the "
                                      "biped: fell, lateral, tilt, physics_diverged, time_limit; other envs: "
                                      "terminated, time_limit)", "reason")
        self.iterations = counter("stride_iterations", "PPO updates done").labels(*ids)
        self.episode_return = Histogram("stride_episode_return", "Undiscounted return of finished episodes",
                                        base, buckets=RETURN_BUCKETS, registry=r).labels(*ids)
        self.episode_length = Histogram("stride_episode_length_steps", "Length of finished episodes (env steps)",
                                        base, buckets=LENGTH_BUCKETS, registry=r).labels(*ids)
        # The histograms give the distribution; with negative buckets the client (rightly) exposes
        # no _sum, so the mean comes as a gauge: the mean of the last iteration's episodes.
        self.episode_return_mean = gauge("stride_episode_return_mean",
                                         "Mean return of the episodes finished in the last iteration").labels(*ids)
        self.episode_length_mean = gauge("stride_episode_length_mean_steps",
                                         "Mean length of the episodes finished in the last iteration").labels(*ids)
        self.env_steps_per_second = gauge("stride_env_steps_per_second",
                                          "Env steps per second over the last iteration").labels(*ids)
        self.learner_samples_per_second = gauge(
            "stride_learner_samples_per_second", "Samples per second through GAE and the PPO update").labels(*ids)
        self.loss = gauge("stride_loss", "PPO losses of the last update (mean over minibatches)", "loss")
        self.entropy = gauge("stride_policy_entropy", "Mean policy entropy (nats)").labels(*ids)
        self.approx_kl = gauge("stride_approx_kl", "Approximate KL(old || new) of the last update").labels(*ids)
        self.clip_fraction = gauge("stride_clip_fraction", "Fraction of samples with |ratio - 1| > clip").labels(*ids)
        self.ppo_epochs = gauge("stride_ppo_epochs", "Epochs the last update ran (fewer than ppo.epochs where "
                                "ppo.target_kl stopped it)").labels(*ids)
        self.explained_variance = gauge("stride_explained_variance",
                                        "1 - Var[returns - values] / Var[returns]").labels(*ids)
        self.learning_rate = gauge("stride_learning_rate", "Learning rate of the last update").labels(*ids)
        self.kl_beta = gauge("stride_kl_beta", "KL penalty coefficient beta (penalty loss)").labels(*ids)
        self.ent_coef = gauge("stride_entropy_coef", "Entropy bonus weight of the last update").labels(*ids)
        self.policy_version = gauge("stride_policy_version", "Version of the learner's weights").labels(*ids)
        self.policy_lag = gauge("stride_policy_lag", "Mean versions between behaviour and learner policy").labels(*ids)
        self.stale_fraction = gauge("stride_stale_sample_fraction",
                                    "Fraction of the last update's samples from an older policy version").labels(*ids)
        self.is_weight_max = gauge("stride_importance_weight_max",
                                   "Largest pi_current / pi_behaviour of the last update, before any cap "
                                   "(1 when every sample was on-policy)").labels(*ids)
        self.phase_seconds = gauge("stride_iteration_phase_seconds", "Duration of each phase in the last iteration",
                                   "phase")
        self.phase_seconds_total = counter("stride_phase_seconds", "Time spent in each phase", "phase")
        self.weights_bytes = gauge("stride_weights_broadcast_bytes", "Size of one weights broadcast").labels(*ids)
        self.broadcasts = counter("stride_weights_broadcasts", "Weights versions published").labels(*ids)
        self.actors_alive = gauge("stride_actors_alive", "Rollout actors whose last fragment arrived").labels(*ids)
        self.actors_configured = gauge("stride_actors", "Rollout actors the run was started with").labels(*ids)
        self.actors_gone = gauge("stride_actors_gone", "Rollout actors Ray will not restart "
                                 "(rollout.max_actor_restarts used up)").labels(*ids)
        self.actor_restarts = counter("stride_actor_restarts",
                                      "Rollout actors lost and restarted, by cause (died; timeout: stalled "
                                      "past rollout.sample_timeout_s and killed; error: a sample call "
                                      "raised and the actor was killed)", "cause")
        self.fragments_dropped = counter("stride_fragments_dropped",
                                         "Fragments not trained on, by reason (stale, lost, rejected)", "reason")
        self.env_errors = counter("stride_env_errors",
                                  "Env exceptions caught and recovered from in actors").labels(*ids)
        self.nan_events = counter("stride_nan_events", "Fragments or updates rejected for NaN/inf").labels(*ids)
        self.checkpoint_age = gauge("stride_checkpoint_age_seconds", "Seconds since the last checkpoint").labels(*ids)
        self.checkpoints = counter("stride_checkpoints", "Checkpoints written").labels(*ids)
        self.checkpoint_failures = counter("stride_checkpoint_failures",
                                           "Periodic checkpoints that could not be written (e.g. disk full)"
                                           ).labels(*ids)
        self.learner_rss = gauge("stride_learner_resident_memory_bytes", "Resident memory of the learner").labels(*ids)
        self.actor_rss = gauge("stride_actor_resident_memory_bytes",
                               "Largest resident memory among actors in the last iteration").labels(*ids)
        self.gpu_memory = gauge("stride_gpu_memory_bytes", "CUDA memory allocated by the learner").labels(*ids)
        self._last_checkpoint = time.time()
        self.checkpoint_age.set_function(lambda: time.time() - self._last_checkpoint)
        for name in LOSSES:
            self.loss.labels(*ids, name)
        for phase in PHASES:
            self.phase_seconds.labels(*ids, phase)
            self.phase_seconds_total.labels(*ids, phase)
        for reason in ("stale", "lost", "rejected"):
            self.fragments_dropped.labels(*ids, reason)
        for cause in ("died", "timeout", "error"):
            self.actor_restarts.labels(*ids, cause)
        self._seen: dict[str, float] = {}
        self._reasons: set[str] = set()

    def _reason_label(self, reason: str) -> str:
        """`reason` as a label value; past MAX_END_REASONS distinct ones, "other" (reasons can
        come from any env, or over gRPC, and every label value is a series kept for ever)."""
        if reason in self._reasons or len(self._reasons) < MAX_END_REASONS:
            self._reasons.add(reason)
            return reason
        return "other"

    def _inc_to(self, counter: Any, key: str, total: float) -> None:
        """Advance a counter to a cumulative total from the record (never backwards)."""
        delta = total - self._seen.get(key, 0.0)
        if delta > 0:
            counter.inc(delta)
        self._seen[key] = total

    def start_from(self, record: dict[str, Any]) -> None:
        """On resume: take the cumulative counters of the last record as already counted."""
        for key in COUNTED:
            self._seen[key] = float(record.get(key, 0))
        self._seen["nan_events"] = float(record.get("rejected_fragments", 0) + record.get("nan_updates", 0))

    def on_iteration(self, rec: dict[str, Any], episodes: EpisodeStats) -> None:
        ids = self._ids
        self.iterations.inc()
        self.env_steps.inc(rec["iteration_steps"])
        self.episodes.inc(len(episodes.returns))
        for reason, n in rec["episodes_ended_by"].items():
            self.episodes_ended.labels(*ids, self._reason_label(reason)).inc(n)
        for ret, length in zip(episodes.returns, episodes.lengths, strict=True):
            self.episode_return.observe(float(ret))
            self.episode_length.observe(float(length))
        if rec["episode_return_mean"] is not None:
            self.episode_return_mean.set(rec["episode_return_mean"])
            self.episode_length_mean.set(rec["episode_length_mean"])
        self.env_steps_per_second.set(rec["env_steps_per_s"])
        self.learner_samples_per_second.set(rec["learner_samples_per_s"])
        self.loss.labels(*ids, "policy").set(rec["policy_loss"])
        self.loss.labels(*ids, "value").set(rec["value_loss"])
        self.loss.labels(*ids, "total").set(rec["loss"])
        self.entropy.set(rec["entropy"])
        self.approx_kl.set(rec["approx_kl"])
        self.clip_fraction.set(rec["clipfrac"])
        self.ppo_epochs.set(rec["epochs"])
        if np.isfinite(rec["explained_variance"]):
            self.explained_variance.set(rec["explained_variance"])
        self.learning_rate.set(rec["lr"])
        self.kl_beta.set(rec["kl_beta"])
        self.ent_coef.set(rec["ent_coef"])
        self.policy_version.set(rec["policy_version"] + 1)
        self.policy_lag.set(rec["policy_lag_mean"])
        self.stale_fraction.set(rec["stale_fraction"])
        self.is_weight_max.set(rec["is_weight_max"])
        for phase, key in zip(PHASES, ("time_sample", "time_gae", "time_update", "time_broadcast"), strict=True):
            self.phase_seconds.labels(*ids, phase).set(rec[key])
            self.phase_seconds_total.labels(*ids, phase).inc(rec[key])
        self.weights_bytes.set(rec["weights_bytes"])
        self.broadcasts.inc()
        self.actors_alive.set(rec["actors_alive"])
        self.actors_configured.set(rec["actors"])
        self.actors_gone.set(rec["actors_gone"])
        self._inc_to(self.actor_restarts.labels(*ids, "died"), "actor_failures", rec["actor_failures"])
        self._inc_to(self.actor_restarts.labels(*ids, "timeout"), "actor_timeouts", rec["actor_timeouts"])
        self._inc_to(self.actor_restarts.labels(*ids, "error"), "sample_errors", rec["sample_errors"])
        self._inc_to(self.checkpoint_failures, "checkpoint_failures", rec["checkpoint_failures"])
        self._inc_to(self.fragments_dropped.labels(*ids, "stale"), "dropped_fragments", rec["dropped_fragments"])
        self._inc_to(self.fragments_dropped.labels(*ids, "lost"), "lost_fragments", rec["lost_fragments"])
        self._inc_to(self.fragments_dropped.labels(*ids, "rejected"), "rejected_fragments", rec["rejected_fragments"])
        self._inc_to(self.nan_events, "nan_events", rec["rejected_fragments"] + rec["nan_updates"])
        self._inc_to(self.env_errors, "env_errors", rec["env_errors"])
        self.learner_rss.set(rec["learner_rss_bytes"])
        self.actor_rss.set(rec["actor_rss_bytes_max"])
        if rec.get("gpu_memory_bytes") is not None:
            self.gpu_memory.set(rec["gpu_memory_bytes"])

    def on_checkpoint(self, path: Path, when: float) -> None:
        self._last_checkpoint = when
        self.checkpoints.inc()


# Cumulative counters of the trainer's record that map onto Prometheus counters.
COUNTED = ("dropped_fragments", "lost_fragments", "rejected_fragments", "actor_failures", "actor_timeouts",
           "sample_errors", "checkpoint_failures", "env_errors")


def serve(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> Any:
    """Serve `registry` at http://host:port/metrics; returns the server (call .shutdown())."""
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise MetricsPortError(
            f"cannot serve metrics on {host}:{port} ({exc.strerror or exc}); "
            f"choose another with --metrics-port, or --metrics-port 0 to disable"
        ) from None
    return server


RPC_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class RpcMetrics:
    """Per-RPC metrics of the gRPC services (count by status code, latency)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("stride_grpc_requests", "gRPC requests handled, by final status code",
                                ("service", "method", "code"), registry=registry)
        self.latency = Histogram("stride_grpc_request_duration_seconds", "gRPC request handling time",
                                 ("service", "method"), buckets=RPC_LATENCY_BUCKETS, registry=registry)

    def observe(self, full_method: str, code: str, seconds: float) -> None:
        _, service, method = full_method.split("/", 2) if full_method.count("/") == 2 else ("", "?", full_method)
        self.requests.labels(service, method, code).inc()
        self.latency.labels(service, method).observe(seconds)
