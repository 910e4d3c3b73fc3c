"""Promise 7 (disk): the checkpoint volume fills up during a run. Periodic checkpoints that cannot
be written are logged and counted while training goes on; the previous checkpoint stays whole and
a resumed run starts from it. The full disk is real: a 4 MiB tmpfs mounted over the run's
checkpoint folder in a private mount namespace (`unshare -m`, root or an unprivileged user
namespace), so writes fail with ENOSPC from the kernel."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import ray

from tests.conftest import start_local_ray

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import errno, json, sys
    from pathlib import Path
    from learner import checkpoint
    from learner.trainer import Trainer
    from tests.chaos.helpers import records, small_config

    run_dir = Path(sys.argv[1])
    ckpt_dir = run_dir / "checkpoints"
    filler = ckpt_dir / "filler"

    class FillDiskAfterSecondCheckpoint:
        def on_iteration(self, record, episodes):
            pass

        def on_checkpoint(self, path, when):
            if path.name == "ckpt-000000002.pt":
                try:
                    with filler.open("wb") as f:
                        while True:
                            f.write(b"x" * 65536)
                            f.flush()
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc

    out = {}
    cfg = small_config(**{"train.total_steps": 8 * 256})
    trainer = Trainer(cfg, run_dir, observers=[FillDiskAfterSecondCheckpoint()])
    try:
        trainer.run()
    except OSError as exc:
        out["final_error"] = f"{exc.errno} {exc.strerror}"
    out["records"] = len(records(run_dir))
    out["checkpoint_failures"] = trainer.counters.checkpoint_failures
    out["files"] = sorted(p.name for p in ckpt_dir.iterdir())
    path, state = checkpoint.latest(ckpt_dir)
    out["latest"], out["latest_iteration"] = path.name, state["counters"]["iteration"]
    filler.unlink()
    resumed = Trainer(cfg, run_dir, resume=True)
    out["resumed_iteration"] = resumed.counters.iteration
    print("RESULT " + json.dumps(out))
""")


@pytest.fixture(scope="module")
def ray_address():
    start_local_ray(num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _namespace_cmd() -> list[str]:
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux's unshare to mount a private tmpfs")
    return ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-m", "-r"]


def test_full_disk_during_checkpoints_keeps_the_previous_one(tmp_path: Path, ray_address: str) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    script = tmp_path / "fill.py"
    script.write_text(SCRIPT)
    shell = (f"mount -t tmpfs -o size=4m tmpfs {run_dir / 'checkpoints'} && "
             f"exec {sys.executable} {script} {run_dir}")
    done = subprocess.run([*_namespace_cmd(), "sh", "-c", shell], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "RAY_ADDRESS": ray_address, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0 and "mount" in done.stderr and "ermission" in done.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[:200]}")
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    assert out["records"] == 8  # training went on to the end while the disk was full
    assert out["checkpoint_failures"] == 6  # iterations 3..8 could not be saved, each counted
    assert out["final_error"].startswith(f"{28} ")  # ENOSPC surfaced for the final checkpoint
    assert out["latest"] == "ckpt-000000002.pt" and out["latest_iteration"] == 2
    assert out["files"] == ["ckpt-000000001.pt", "ckpt-000000002.pt", "filler"]  # no temp file left
    assert out["resumed_iteration"] == 2
