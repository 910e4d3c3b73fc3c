"""Generate the Stride Grafana dashboard (deploy/grafana/dashboards/stride.json) as code.

    python deploy/grafana/generate.py          # rewrite the JSON
    python deploy/grafana/generate.py --check  # exit 1 if the committed JSON is not current

Built with Grafana's grafana-foundation-sdk. Every query is a PromQL expression over the
metrics in services/metrics.py, filtered by the run_id variable; a test runs each of them
against a real Prometheus scraping a real training run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

UID = "stride-training"
OUT = Path(__file__).parent / "dashboards" / "stride.json"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
SEL = '{run_id=~"$run_id"}'


def sel(extra: str = "") -> str:
    """Label selector with the run filter, plus any extra matchers."""
    return '{run_id=~"$run_id"' + (", " + extra if extra else "") + "}"


def q(expr: str, legend: str = "", ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend or "__auto").ref_id(ref).datasource(DS)


def ts(title: str, unit: str, *queries: tuple[str, str], width: int = 8, stacked: bool = False) -> timeseries.Panel:
    panel = timeseries.Panel().title(title).unit(unit).span(width).height(8).datasource(DS)
    for i, (expr, legend) in enumerate(queries):
        panel = panel.with_target(q(expr, legend, chr(ord("A") + i)))
    if stacked:
        from grafana_foundation_sdk.builders.common import StackingConfig
        from grafana_foundation_sdk.models.common import StackingMode

        panel = panel.stacking(StackingConfig().mode(StackingMode.PERCENT)).fill_opacity(60)
    return panel


def single(title: str, unit: str, expr: str, width: int = 4) -> stat.Panel:
    return stat.Panel().title(title).unit(unit).span(width).height(4).datasource(DS).with_target(q(expr))


def build() -> dict:
    d = (
        dashboard.Dashboard("Stride training")
        .uid(UID)
        .tags(["stride", "ppo", "ray"])
        .refresh("10s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(
            dashboard.QueryVariable("run_id").label("Run").datasource(DS)
            .query("label_values(stride_env_steps_total, run_id)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True).all_value(".*")
        )
        # --- progress -------------------------------------------------------------------
        .with_row(dashboard.Row("Progress"))
        .with_panel(single("Env steps", "short", f"sum(stride_env_steps_total{SEL})"))
        .with_panel(single("Episodes", "short", f"sum(stride_episodes_total{SEL})"))
        .with_panel(single("Policy version", "short", f"max(stride_policy_version{SEL})"))
        .with_panel(single("Env steps/s", "short", f"sum(stride_env_steps_per_second{SEL})"))
        .with_panel(single("Actors alive", "short", f"sum(stride_actors_alive{SEL})"))
        .with_panel(single("Checkpoint age", "s", f"max(stride_checkpoint_age_seconds{SEL})"))
        .with_panel(ts("Episode return", "short",
                       (f"stride_episode_return_mean{SEL}", "{{run_id}} mean"),
                       (f"histogram_quantile(0.9, sum by (run_id, le) "
                        f"(rate(stride_episode_return_bucket{SEL}[$__rate_interval])))", "{{run_id}} p90"),
                       width=12))
        .with_panel(ts("Episode length", "short",
                       (f"stride_episode_length_mean_steps{SEL}", "{{run_id}} mean"),
                       (f"histogram_quantile(0.5, sum by (run_id, le) "
                        f"(rate(stride_episode_length_steps_bucket{SEL}[$__rate_interval])))", "{{run_id}} median"),
                       width=12))
        .with_panel(ts("How episodes end (share of episodes)", "short",
                       (f"sum by (reason) (rate(stride_episodes_ended_total{SEL}[$__rate_interval]))", "{{reason}}"),
                       width=24, stacked=True))
        # --- learning health ------------------------------------------------------------
        .with_row(dashboard.Row("Learning health"))
        .with_panel(ts("Losses", "short", (f"stride_loss{SEL}", "{{loss}}")))
        .with_panel(ts("Approx KL, epochs per update", "short", (f"stride_approx_kl{SEL}", "{{run_id}}"),
                       (f"stride_kl_beta{SEL}", "beta (penalty loss)"),
                       (f"stride_ppo_epochs{SEL}", "epochs run (target_kl stops early)")))
        .with_panel(ts("Clip fraction", "percentunit", (f"stride_clip_fraction{SEL}", "{{run_id}}")))
        .with_panel(ts("Policy entropy", "short", (f"stride_policy_entropy{SEL}", "{{run_id}}")))
        .with_panel(ts("Explained variance", "short", (f"stride_explained_variance{SEL}", "{{run_id}}")))
        .with_panel(ts("Policy lag, off-policy samples, learning rate, entropy bonus", "short",
                       (f"stride_policy_lag{SEL}", "lag (versions)"),
                       (f"stride_stale_sample_fraction{SEL}", "stale sample fraction"),
                       (f"stride_importance_weight_max{SEL}", "largest importance weight"),
                       (f"stride_learning_rate{SEL}", "learning rate"),
                       (f"stride_entropy_coef{SEL}", "entropy bonus weight")))
        # --- throughput and timings -----------------------------------------------------
        .with_row(dashboard.Row("Throughput and timings"))
        .with_panel(ts("Env steps/s", "short", (f"rate(stride_env_steps_total{SEL}[$__rate_interval])", "trained"),
                       (f"stride_learner_samples_per_second{SEL}", "learner samples/s")))
        .with_panel(ts("Phase durations (last iteration)", "s", (f"stride_iteration_phase_seconds{SEL}", "{{phase}}")))
        .with_panel(ts("Share of time per phase", "percentunit",
                       (f"rate(stride_phase_seconds_total{SEL}[$__rate_interval])", "{{phase}}"), stacked=True))
        .with_panel(ts("Weights broadcast", "bytes", (f"stride_weights_broadcast_bytes{SEL}", "bytes per version")))
        .with_panel(ts("Memory", "bytes", (f"stride_learner_resident_memory_bytes{SEL}", "learner RSS"),
                       (f"stride_actor_resident_memory_bytes{SEL}", "largest actor RSS"),
                       (f"stride_gpu_memory_bytes{SEL}", "GPU allocated")))
        .with_panel(ts("Broadcasts and checkpoints", "short",
                       (f"increase(stride_weights_broadcasts_total{SEL}[$__rate_interval])", "broadcasts"),
                       (f"increase(stride_checkpoints_total{SEL}[$__rate_interval])", "checkpoints"),
                       (f"increase(stride_checkpoint_failures_total{SEL}[$__rate_interval])", "checkpoint failures")))
        # --- fleet ------------------------------------------------------------------------
        .with_row(dashboard.Row("Fleet"))
        .with_panel(ts("Actors", "short", (f"stride_actors_alive{SEL}", "alive"),
                       (f"stride_actors{SEL}", "configured")))
        .with_panel(ts("Actor restarts", "short",
                       (f"increase(stride_actor_restarts_total{SEL}[$__rate_interval])", "{{cause}}")))
        .with_panel(ts("Fragments dropped", "short",
                       (f"increase(stride_fragments_dropped_total{SEL}[$__rate_interval])", "{{reason}}")))
        .with_panel(ts("Env errors and NaN events", "short",
                       (f"increase(stride_env_errors_total{SEL}[$__rate_interval])", "env errors"),
                       (f"increase(stride_nan_events_total{SEL}[$__rate_interval])", "NaN events")))
        .with_panel(ts("Ray nodes' CPU", "percent",
                       ('avg by (instance) (ray_node_cpu_utilization{SessionName=~".+"})', "{{instance}}")))
    )
    out = json.loads(JSONEncoder(sort_keys=True, indent=2).encode(d.build()))
    for i, panel in enumerate(out["panels"], start=1):  # stable, unique panel ids
        panel["id"] = i
    return out


def expressions(dash: dict) -> list[str]:
    """Every PromQL expression in a dashboard JSON."""
    return [t["expr"] for p in dash.get("panels", []) for t in p.get("targets", []) if t.get("expr")]


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is not current: run python deploy/grafana/generate.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
