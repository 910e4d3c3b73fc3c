"""Shared test helpers."""

from __future__ import annotations

import os
import shutil

# Before anything imports gRPC: the suite runs gRPC servers and starts Ray in one process, and
# ray.init forks its raylet; with gRPC's fork handlers on, that child can abort before it execs
# (seen: "The current node timed out during startup"). As services/cli.py does for `stride`.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import ray  # noqa: E402

# Picks MuJoCo's GL backend (EGL on a headless machine) before anything imports mujoco: a test
# module that imports mujoco itself first would otherwise get the default (GLFW), and rendering
# would fail when that module runs on its own (`pytest tests/test_biped_env.py`).
import actors.envs.biped_sim  # noqa: E402, F401

# What the tests' Ray clusters hold at most in their object stores: the largest object they put is
# a few MiB (weights, fragments). Ray's default is 30% of the machine's memory, backed by a file
# under /tmp when /dev/shm is small, and a file that size on a nearly full disk can bring the
# raylet down (and with it the pytest process, which is the driver). The same figure as
# ray.cluster_utils.Cluster's nodes, which the multi-node tests use.
TEST_OBJECT_STORE_BYTES = 150 * 2**20
# The Ray instances that tests start in subprocesses (`stride train`, `ray start`) inherit this:
# 2% of the machine's memory instead of 30%.
os.environ.setdefault("RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION", "0.02")


def pytest_report_header(config) -> str:
    """The machine's state when the suite starts, so that a CI log says what the tests ran on."""
    def free_gib(path: str) -> str:
        try:
            return f"{shutil.disk_usage(path).free / 2**30:.1f} GiB"
        except OSError:
            return "n/a"

    mem = "n/a"
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        mem = f"{int(fields['MemAvailable'].split()[0]) / 2**20:.1f} GiB"
    except (OSError, KeyError, ValueError):
        pass
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"machine: {os.cpu_count()} cores, load {load}, memory available {mem}; "
            f"free: /tmp {free_gib('/tmp')}, /dev/shm {free_gib('/dev/shm')}; ray {ray.__version__}")


def start_local_ray(**kwargs) -> None:
    """ray.init with one retry: on a loaded 2-core machine the GCS can miss Ray's start-up
    deadline ("Timed out waiting for file .../gcs_server_port_..."); a second start succeeds."""
    kwargs.setdefault("address", "local")  # a fresh instance, whatever `ray start` left on this host
    kwargs.setdefault("include_dashboard", False)
    kwargs.setdefault("logging_level", "WARNING")
    kwargs.setdefault("object_store_memory", TEST_OBJECT_STORE_BYTES)
    try:
        ray.init(**kwargs)
    except RuntimeError as exc:
        if "Timed out waiting for file" not in str(exc):
            raise
        ray.shutdown()
        ray.init(**kwargs)
