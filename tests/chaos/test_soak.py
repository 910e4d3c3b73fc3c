"""Promise 7 (resources): a run of 1M env steps keeps learner and actor memory flat and the Ray
object store bounded. Slow (minutes): `make test-all` or `pytest -m slow tests/chaos`."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from learner import config as C
from services.soak import print_report, soak
from tests.conftest import start_local_ray


@pytest.mark.slow
def test_a_million_steps_with_flat_memory(tmp_path: Path) -> None:
    start_local_ray(num_cpus=2)
    try:
        cfg = C.load(Path(__file__).resolve().parents[2] / "configs" / "pendulum.yaml", {
            "rollout.actors": 2, "train.total_steps": 1_000_000, "train.metrics_port": 0,
            "train.checkpoint_every": 100})
        C.validate(cfg)
        report = soak(cfg, tmp_path)
    finally:
        ray.shutdown()
    print_report(report)
    assert report.end.env_steps >= 1_000_000
    # After warm-up (allocator pools, Ray's caches), memory may wander a little but not grow
    # with steps: a leak of even 100 bytes per step would add ~95 MiB here.
    assert report.growth("learner_rss_mib") < 25, report.samples
    assert report.growth("actor_rss_mib") < 25, report.samples
    # One weights version plus the fragments in flight (2 actors): a few objects, a few MiB.
    assert report.max_objects <= 12 and report.max_object_store_mib < 64, report.samples
