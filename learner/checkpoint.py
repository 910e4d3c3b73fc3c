"""Checkpoints: everything needed to resume, written atomically.

A checkpoint is written to a temporary file in the same folder, flushed and fsynced, then
renamed over its final name (rename is atomic on POSIX), and the folder is fsynced: a crash at
any moment leaves either the old set of checkpoints or the new one, never a torn file.
`latest` returns the newest checkpoint that loads, skipping any that do not.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)
NAME = re.compile(r"^ckpt-(\d{9})\.pt$")


def path_for(folder: Path, iteration: int) -> Path:
    return folder / f"ckpt-{iteration:09d}.pt"


def save(folder: Path, iteration: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Atomically write `state` as checkpoint `iteration` and keep only the newest `keep`."""
    folder.mkdir(parents=True, exist_ok=True)
    final = path_for(folder, iteration)
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except OSError as exc:  # disk full, quota, read-only: say which write failed
        Path(tmp).unlink(missing_ok=True)
        raise OSError(exc.errno, f"{exc.strerror or exc}: could not write checkpoint {final} "
                                 "(the checkpoints before it are intact)") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    for old in list_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return final


def remove_partial(folder: Path) -> list[Path]:
    """Delete the temporary files of writes a crash interrupted (they are never loaded, but
    they hold disk space). Call only when no other process writes to `folder`."""
    removed = sorted(folder.glob(".ckpt-*.tmp")) if folder.is_dir() else []
    for p in removed:
        p.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted checkpoint write", p.name)
    return removed


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files in `folder`, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if NAME.match(p.name))


def load(path: Path) -> dict[str, Any]:
    """Load one checkpoint on the CPU; raises ValueError naming the file if it is unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ValueError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "model" not in state or "counters" not in state:
        raise ValueError(f"checkpoint {path} is not a Stride checkpoint")
    return state


def latest(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in `folder` that loads, or None when there is none."""
    for path in reversed(list_checkpoints(folder)):
        try:
            return path, load(path)
        except ValueError as exc:
            log.warning("skipping %s", exc)
    return None


def require_latest(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The newest loadable checkpoint of a run folder; FileNotFoundError naming it if none."""
    found = latest(run_dir / "checkpoints")
    if found is None:
        raise FileNotFoundError(f"no loadable checkpoint in {run_dir / 'checkpoints'}")
    return found
