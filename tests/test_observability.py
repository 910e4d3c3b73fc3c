"""Metrics: a real Prometheus scrapes a real training run; every dashboard query returns data;
exported values agree with metrics.jsonl; promtool accepts the config and the exposition."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from learner import config as C
from learner.trainer import Trainer
from services.cli import main as cli_main
from services.metrics import MetricsPortError, StrideMetrics, serve
from tests.conftest import start_local_ray

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "grafana"))
import generate as dashboard_gen  # noqa: E402

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="Debian's prometheus package is not installed (.ci/run installs it)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def query(prom: str, expr: str) -> list:
    body = json.loads(get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})))
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def scalar_samples(exposition: str) -> dict[str, float]:
    """name{labels} -> value, labels rendered without run_id/mode."""
    out = {}
    for fam in text_string_to_metric_families(exposition):
        for s in fam.samples:
            extra = {k: v for k, v in s.labels.items() if k not in ("run_id", "mode")}
            key = s.name + (json.dumps(extra, sort_keys=True) if extra else "")
            out[key] = s.value
    return out


@pytest.fixture(scope="module")
def observed_run(tmp_path_factory):
    """A short real training run, exported on loopback and scraped by a real Prometheus."""
    if PROMETHEUS is None:
        pytest.skip("Debian's prometheus package is not installed (.ci/run installs it)")
    tmp = tmp_path_factory.mktemp("obs")
    ray_port, stride_port, prom_port = free_port(), free_port(), free_port()
    start_local_ray(num_cpus=2, _metrics_export_port=ray_port)
    (tmp / "prom.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n"
        f"  - job_name: stride\n    static_configs:\n      - targets: ['127.0.0.1:{stride_port}']\n"
        f"  - job_name: ray\n    static_configs:\n      - targets: ['127.0.0.1:{ray_port}']\n"
    )
    prom = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp / 'prom.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{prom_port}"
    run_dir = tmp / "run"
    cfg = C.load(None, {
        "env.id": "Pendulum-v1", "env.envs_per_actor": 4, "rollout.actors": 2, "rollout.fragment_length": 64,
        "ppo.minibatches": 4, "ppo.epochs": 2, "train.total_steps": 30 * 2 * 4 * 64, "train.video": False,
        "train.checkpoint_every": 5,
    })
    C.validate(cfg)
    metrics = StrideMetrics(run_id=run_dir.name, mode=cfg.train.mode)
    server = serve(metrics.registry, stride_port)
    try:
        for _ in range(100):  # Prometheus up
            try:
                get(f"{url}/-/ready")
                break
            except OSError:
                time.sleep(0.2)
        Trainer(cfg, run_dir, observers=[metrics]).run()
        last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
        deadline = time.monotonic() + 30  # until Prometheus has scraped the final values
        while time.monotonic() < deadline:
            got = query(url, "stride_env_steps_total")
            if got and float(got[0]["value"][1]) == last["env_steps"] and query(url, "ray_node_cpu_utilization"):
                break
            time.sleep(0.5)
        time.sleep(3)  # a few more scrapes, so every rate() window has two points after the end
        exposition = get(f"http://127.0.0.1:{stride_port}/metrics")
        yield {"prom": url, "run_dir": run_dir, "last": last, "exposition": exposition}
    finally:
        server.shutdown()
        prom.terminate()
        prom.wait(timeout=30)
        ray.shutdown()


@needs_prometheus
def test_every_dashboard_query_returns_data(observed_run) -> None:
    dash = json.loads(dashboard_gen.OUT.read_text())
    exprs = dashboard_gen.expressions(dash)
    assert len(exprs) >= 30
    empty = []
    for expr in exprs:
        concrete = expr.replace("$run_id", observed_run["run_dir"].name).replace("$__rate_interval", "20s")
        if not query(observed_run["prom"], concrete):
            empty.append(concrete)
    assert not empty, f"dashboard queries with no data: {empty}"


@needs_prometheus
def test_exported_values_agree_with_metrics_jsonl(observed_run) -> None:
    s = scalar_samples(observed_run["exposition"])
    last = observed_run["last"]
    recs = [json.loads(x) for x in (observed_run["run_dir"] / "metrics.jsonl").read_text().splitlines()]
    assert s["stride_env_steps_total"] == last["env_steps"]
    assert s["stride_iterations_total"] == last["iteration"] == len(recs)
    assert s["stride_episodes_total"] == last["episodes_total"] == sum(r["episodes"] for r in recs)
    assert s["stride_episode_return_count"] == last["episodes_total"]
    # Pendulum never terminates: every episode ends at its 200-step time limit.
    assert all(r["episodes_ended_by"] == ({"time_limit": r["episodes"]} if r["episodes"] else {}) for r in recs)
    assert s['stride_episodes_ended_total{"reason": "time_limit"}'] == last["episodes_total"] > 0
    pairs = {
        "stride_approx_kl": "approx_kl", "stride_clip_fraction": "clipfrac", "stride_policy_entropy": "entropy",
        "stride_ppo_epochs": "epochs",
        "stride_explained_variance": "explained_variance", "stride_learning_rate": "lr",
        "stride_entropy_coef": "ent_coef",
        "stride_env_steps_per_second": "env_steps_per_s", "stride_weights_broadcast_bytes": "weights_bytes",
        "stride_policy_lag": "policy_lag_mean", "stride_actors_alive": "actors_alive",
        "stride_stale_sample_fraction": "stale_fraction", "stride_importance_weight_max": "is_weight_max",
        'stride_loss{"loss": "policy"}': "policy_loss", 'stride_loss{"loss": "value"}': "value_loss",
        'stride_iteration_phase_seconds{"phase": "update"}': "time_update",
        'stride_iteration_phase_seconds{"phase": "sample"}': "time_sample",
    }
    for metric, key in pairs.items():
        assert s[metric] == pytest.approx(last[key], rel=1e-9), metric
    # The episode gauges hold the last iteration in which episodes finished.
    with_episodes = [r for r in recs if r["episode_return_mean"] is not None][-1]
    assert s["stride_episode_return_mean"] == pytest.approx(with_episodes["episode_return_mean"], rel=1e-9)
    assert s["stride_episode_length_mean_steps"] == pytest.approx(with_episodes["episode_length_mean"], rel=1e-9)
    assert s["stride_policy_version"] == last["policy_version"] + 1
    total_update = sum(r["time_update"] for r in recs)
    assert s['stride_phase_seconds_total{"phase": "update"}'] == pytest.approx(total_update, rel=1e-9)
    assert s["stride_checkpoints_total"] == 30 // 5 + 1  # every 5 iterations, and at the end
    # And Prometheus holds the same value it scraped.
    got = query(observed_run["prom"], f'stride_env_steps_total{{run_id="{observed_run["run_dir"].name}"}}')
    assert float(got[0]["value"][1]) == last["env_steps"]


@needs_prometheus
def test_promtool_accepts_exposition_and_config(observed_run, tmp_path: Path) -> None:
    lint = subprocess.run([PROMTOOL, "check", "metrics"], input=observed_run["exposition"],
                          capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    cfg = subprocess.run([PROMTOOL, "check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml")],
                         capture_output=True, text=True)
    assert cfg.returncode == 0 and "SUCCESS" in cfg.stdout, cfg.stdout + cfg.stderr


def test_dashboard_json_is_current_and_well_formed() -> None:
    assert dashboard_gen.OUT.read_text() == dashboard_gen.render(), "run python deploy/grafana/generate.py"
    dash = json.loads(dashboard_gen.OUT.read_text())
    assert dash["uid"] == "stride-training"
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert rows == ["Progress", "Learning health", "Throughput and timings", "Fleet"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(set(ids)) == len(ids)
    for p in dash["panels"]:
        for t in p.get("targets", []):
            assert "$run_id" in t["expr"] or "ray_" in t["expr"], t["expr"]
    assert ids


def test_a_bad_dashboard_edit_fails_the_check(tmp_path: Path, monkeypatch) -> None:
    edited = tmp_path / "stride.json"
    edited.write_text(dashboard_gen.OUT.read_text().replace("stride_approx_kl", "stride_aprox_kl"))
    monkeypatch.setattr(dashboard_gen, "OUT", edited)
    monkeypatch.setattr(sys, "argv", ["generate.py", "--check"])
    assert dashboard_gen.main() == 1


def test_metrics_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(MetricsPortError, match=f"127.0.0.1:{port}"):
            serve(StrideMetrics().registry, port)


def test_cli_metrics_port_in_use_fails_before_training(tmp_path: Path, capsys) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = cli_main(["train", "--env", "Pendulum-v1", "--set", "ppo.minibatches=4", "--metrics-port", str(port),
                         "--run-dir", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "--metrics-port" in err
    assert not (tmp_path / "r" / "metrics.jsonl").exists()  # nothing trained
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_metrics_bind_loopback_by_default() -> None:
    assert C.TrainConfig().metrics_host == "127.0.0.1"
    server = serve(StrideMetrics().registry, 0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()


def test_end_reason_labels_are_capped() -> None:
    """Episode end reasons can come from any env or over gRPC; each label value is a series kept
    for the life of the process, so past MAX_END_REASONS distinct ones they are counted as other."""
    from services.metrics import MAX_END_REASONS

    m = StrideMetrics(run_id="r", mode="sync")
    names = [f"reason{i}" for i in range(MAX_END_REASONS + 4)]
    got = [m._reason_label(n) for n in names]
    assert got[:MAX_END_REASONS] == names[:MAX_END_REASONS] and set(got[MAX_END_REASONS:]) == {"other"}
    assert m._reason_label("reason0") == "reason0"  # one already seen keeps its own label
