"""`stride bench soak`: a long run that watches for leaks.

Trains for `steps` env steps and samples, every few iterations, the learner's and the actors'
resident memory and the Ray object store's use (bytes and objects, over all nodes). A leak shows
as growth between the first sample after warm-up and the last one; the object store must stay
bounded (one weights version plus the fragments in flight).
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from actors.trajectory import EpisodeStats
from learner import config as C
from learner.trainer import Trainer


@dataclass
class SoakSample:
    iteration: int
    env_steps: int
    wall_s: float
    learner_rss_mib: float
    actor_rss_mib: float  # the largest actor's
    object_store_mib: float
    object_store_objects: int


@dataclass
class SoakReport:
    samples: list[SoakSample]
    warmup: SoakSample  # first sample after a fifth of the run
    end: SoakSample

    def growth(self, field: str) -> float:
        return float(getattr(self.end, field) - getattr(self.warmup, field))

    @property
    def max_objects(self) -> int:
        return max(s.object_store_objects for s in self.samples)

    @property
    def max_object_store_mib(self) -> float:
        return max(s.object_store_mib for s in self.samples)


def object_store_use() -> tuple[float, int]:
    """(MiB, objects) in the object store over all nodes, from Ray's memory summary."""
    import ray
    from ray._private.internal_api import memory_summary

    # The connected cluster's address, named: left out, Ray looks for "the" cluster on this host
    # and fails when another Ray instance runs there too (another user's training, say).
    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    for line in text.splitlines():
        if line.startswith("Plasma memory usage"):
            parts = line.replace(",", "").split()  # Plasma memory usage N MiB K objects ...
            return float(parts[3]), int(parts[5])
    raise RuntimeError(f"unexpected memory summary: {text[:200]}")


class _Sampler:
    def __init__(self, every: int, total_steps: int) -> None:
        self.every, self.total = every, total_steps
        self.samples: list[SoakSample] = []
        self.t0: float | None = None

    def on_iteration(self, rec: dict[str, Any], episodes: EpisodeStats) -> None:
        if self.t0 is None:
            self.t0 = rec["wall_time"]
        if rec["iteration"] % self.every and rec["env_steps"] < self.total:  # always sample the last one
            return
        mib, objects = object_store_use()
        self.samples.append(SoakSample(rec["iteration"], rec["env_steps"], rec["wall_time"] - self.t0,
                                       rec["learner_rss_bytes"] / 2**20, rec["actor_rss_bytes_max"] / 2**20,
                                       mib, objects))

    def on_checkpoint(self, path: Path, when: float) -> None:
        pass


def soak(cfg: C.Config, run_dir: Path, every: int = 10) -> SoakReport:
    sampler = _Sampler(every, cfg.train.total_steps)
    trainer = Trainer(cfg, run_dir, observers=[sampler])  # first: it refuses a folder that holds a run
    C.save(cfg, run_dir / "config.yaml")  # what was soaked; `stride eval` reads the folder with it
    trainer.run()
    samples = sampler.samples
    if len(samples) < 3:
        raise RuntimeError(f"only {len(samples)} samples: run longer or sample more often")
    warm = next(s for s in samples if s.env_steps >= cfg.train.total_steps // 5)
    with (run_dir / "soak.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(samples[0])))
        w.writeheader()
        w.writerows(asdict(s) for s in samples)
    return SoakReport(samples, warm, samples[-1])


def print_report(r: SoakReport) -> None:
    print(f"{'':>10} {'env steps':>11} {'wall s':>7} {'learner MiB':>12} {'actor MiB':>10} {'store MiB':>10} "
          f"{'objects':>8}")
    for name, s in (("first", r.samples[0]), ("warm", r.warmup), ("end", r.end)):
        print(f"{name:>10} {s.env_steps:>11,} {s.wall_s:>7.0f} {s.learner_rss_mib:>12.1f} {s.actor_rss_mib:>10.1f} "
              f"{s.object_store_mib:>10.1f} {s.object_store_objects:>8}")
    print(f"growth warm->end: learner {r.growth('learner_rss_mib'):+.1f} MiB, actors "
          f"{r.growth('actor_rss_mib'):+.1f} MiB; object store at most {r.max_object_store_mib:.1f} MiB, "
          f"{r.max_objects} objects")
