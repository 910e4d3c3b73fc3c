"""What a run ran on: the record `Trainer.run` appends to `<run_dir>/machine.jsonl` at every start
(the driver's machine, where the learner runs; on a cluster the actors may be elsewhere).

Why it is kept: on one machine a sync run repeats bit for bit for a seed, but on another kind of
CPU the same seed and code give a different run (Torch picks its kernels by instruction set, e.g.
AVX2 or AVX-512, and different kernels round differently; the differences then grow). Wall-clock
results such as time-to-walk also depend on the machine. So two runs can be compared only
knowing the CPU, the kernel set Torch chose, the library versions and the code's commit; a
resumed run appends a line per start, since it may continue elsewhere.
"""

from __future__ import annotations

import platform
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from learner.config import local_cpus

REPO_ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def code_version() -> str | None:
    """`git describe --always --dirty` of the Stride checkout, or None outside one (an installed
    wheel, an image built without .git). Only where the checkout's own .git is: git would
    otherwise describe whatever repository encloses site-packages (a project holding the venv)."""
    if not (REPO_ROOT / ".git").exists():  # a directory, or a file in a worktree
        return None
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def describe(device: str, from_iteration: int) -> dict[str, Any]:
    """One machine.jsonl record: this process's machine, libraries and code, for a start of the
    run at `from_iteration` (0 for a fresh run) with its learner on `device`."""
    dev = torch.device(device)
    return {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "from_iteration": from_iteration,
        "host": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpus": local_cpus(),
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "learner_device": str(dev),
        "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
        "python": platform.python_version(),
        "ray": _version("ray"),
        "mujoco": _version("mujoco"),
        "gymnasium": _version("gymnasium"),
        "stride_code": code_version(),
    }
