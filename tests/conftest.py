"""Shared test helpers."""

from __future__ import annotations

import ray


def start_local_ray(**kwargs) -> None:
    """ray.init with one retry: on a loaded 2-core machine the GCS can miss Ray's start-up
    deadline ("Timed out waiting for file .../gcs_server_port_..."); a second start succeeds."""
    kwargs.setdefault("address", "local")  # a fresh instance, whatever `ray start` left on this host
    kwargs.setdefault("include_dashboard", False)
    kwargs.setdefault("logging_level", "WARNING")
    try:
        ray.init(**kwargs)
    except RuntimeError as exc:
        if "Timed out waiting for file" not in str(exc):
            raise
        ray.shutdown()
        ray.init(**kwargs)
