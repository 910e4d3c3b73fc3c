"""A run folder's files as the trainer, `stride train --resume` and the benchmarks read them.

A run folder (`runs/<run-id>/`) holds config.yaml, metrics.jsonl, checkpoints/ and what the
commands add (eval_curve.jsonl, machine.jsonl, ...); docs/design.md lists them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from learner import checkpoint

log = logging.getLogger("stride")


def has_records(run_dir: Path) -> bool:
    """Whether `run_dir` has a non-empty metrics.jsonl (a run trained there)."""
    metrics = run_dir / "metrics.jsonl"
    return metrics.is_file() and metrics.stat().st_size > 0


def read_jsonl(path: Path, required: str = "") -> tuple[list[dict[str, Any]], int]:
    """The JSON objects in the JSON-lines file `path` (metrics.jsonl, eval_curve.jsonl), and how
    many lines were dropped, with a warning naming them: lines that are not a JSON object or
    lack the `required` key, i.e. a partial line left by a crash mid-write. Blank lines are
    skipped."""
    records: list[dict[str, Any]] = []
    dropped: list[int] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict) and (not required or required in rec):
            records.append(rec)
        else:
            dropped.append(n)
    if dropped:
        log.warning("dropped %d unreadable line(s) (line %s) from %s", len(dropped),
                    ", ".join(str(n) for n in dropped), path)
    return records, len(dropped)


def refuse_existing_run(run_dir: Path) -> None:
    """Raise FileExistsError if `run_dir` already holds a run (checkpoints or metrics).

    A fresh run there would append its metrics to the old run's, and checkpoint retention keeps
    the highest iteration numbers, so the old run's checkpoints would outrank the new run's and
    the new ones would be deleted as they are written."""
    held = [p.name for p in checkpoint.list_checkpoints(run_dir / "checkpoints")[-1:]]
    if has_records(run_dir):
        held.append("metrics.jsonl")
    if held:
        raise FileExistsError(f"{run_dir} already holds a run ({', '.join(held)}): continue it with "
                              "--resume, or train in another folder")
