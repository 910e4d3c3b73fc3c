"""Deployment files: Compose against the Compose spec schema, Ray cluster configs against Ray's
own schema, the KubeRay manifest's shape, and a real `ray job submit` to a local Ray head."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def compose_schema(tmp_path_factory) -> dict:
    """The Compose specification's JSON schema, as shipped inside the docker-compose 1.29.2 wheel
    on PyPI (the Compose spec has no PyPI package of its own)."""
    d = tmp_path_factory.mktemp("compose-schema")
    got = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(d),
                          "docker-compose==1.29.2"], capture_output=True, text=True, timeout=300)
    wheels = list(d.glob("docker_compose-*.whl"))
    if got.returncode != 0 or not wheels:
        pytest.skip(f"cannot fetch the Compose spec schema from PyPI: {got.stderr.strip()[-300:]}")
    with zipfile.ZipFile(wheels[0]) as z:
        return json.loads(z.read("compose/config/compose_spec.json"))


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.gpu.yml"])
def test_compose_files_match_the_compose_spec(compose_schema: dict, name: str) -> None:
    doc = yaml.safe_load((DEPLOY / name).read_text())
    jsonschema.Draft201909Validator(compose_schema).validate(doc)  # the draft the spec declares
    broken = {**doc, "services": {"x": {"image": "a:1", "shm_sise": "2gb"}}}  # a typo must be caught
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft201909Validator(compose_schema).validate(broken)


def _stride_train_args(line: str):
    """The flags of a `stride train` command line in a deploy file, parsed by the real CLI parser
    (a misspelt flag fails here, not in the cluster)."""
    from services.cli import _parser

    return _parser().parse_args(["train", *line.split()])


def test_compose_is_runnable_as_written() -> None:
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"ray-head", "ray-worker", "prometheus", "grafana"} <= set(services)
    for name, svc in services.items():
        image = svc["image"]
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), f"{name}: pin {image}"
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name} mounts missing {src}"
    for name in ("ray-head", "ray-worker"):
        assert services[name]["shm_size"] == "2gb"
        build = services[name]["build"]
        assert ((DEPLOY / build["context"]).resolve() / build["dockerfile"]).is_file()
    assert "stride train --address auto" in " ".join(services["ray-head"]["command"])
    line = " ".join(services["ray-head"]["command"]).split("stride train ")[1].split(";")[0]
    args = _stride_train_args(line.replace("$${STRIDE_ARGS:-}", ""))
    # `up` again (or a restarted head) continues the run in the volume instead of refusing it.
    assert args.run_dir == Path("/runs/compose") and args.resume_if_exists
    assert "--address=ray-head:6379" in " ".join(services["ray-worker"]["command"])
    # No secret in the repo: Grafana's password must come from the environment.
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    gpu = yaml.safe_load((DEPLOY / "docker-compose.gpu.yml").read_text())
    devices = gpu["services"]["ray-head"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def _run_head_command(tmp_path: Path, ray_start_rc: int, stride_rc: int) -> tuple[int, list[str]]:
    """Run the Compose head's shell line in bash (after Compose's `$$` unescaping), with `ray`
    and `stride` replaced by scripts that log their arguments and exit with the given status
    (Docker and a Ray head do not run here; what is checked is the line's own logic)."""
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    shell, flag, line = doc["services"]["ray-head"]["command"]
    assert (shell, flag) == ("bash", "-c")
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    log.write_text("")
    for name, rc in (("ray", None), ("stride", stride_rc)):
        exit_rc = f"[ \"$1\" = start ] && exit {ray_start_rc}; exit 0" if rc is None else f"exit {rc}"
        script = bindir / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> {log}\n{exit_rc}\n')
        script.chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "STRIDE_ARGS": "--total-steps 1000"}
    got = subprocess.run(["bash", "-c", line.replace("$$", "$")], env=env, capture_output=True, text=True,
                         timeout=30)
    return got.returncode, log.read_text().splitlines()


def test_compose_head_exits_with_strides_status(tmp_path: Path) -> None:
    """The head's restart policy (on-failure) can only tell a crashed run from a finished one if
    the container's status is stride's, not `ray stop`'s."""
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert doc["services"]["ray-head"]["restart"].startswith("on-failure")
    assert doc["services"]["ray-worker"]["restart"].startswith("on-failure")
    for stride_rc in (0, 1, 130):
        rc, calls = _run_head_command(tmp_path, ray_start_rc=0, stride_rc=stride_rc)
        assert rc == stride_rc, calls
        assert [c.split()[:2] for c in calls] == [["ray", "start"], ["stride", "train"], ["ray", "stop"]]
        assert calls[1].endswith("--resume-if-exists --total-steps 1000")  # STRIDE_ARGS passed on
    rc, calls = _run_head_command(tmp_path, ray_start_rc=3, stride_rc=0)
    assert rc == 3 and [c.split()[:2] for c in calls] == [["ray", "start"], ["ray", "stop"]]


def test_dockerfile_copies_what_exists() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert ":" in base and "latest" not in base
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for part in src.split():
            assert (ROOT / part).exists(), part


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-aws.yaml"])
def test_ray_cluster_configs_match_rays_schema(name: str) -> None:
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((DEPLOY / "ray" / name).read_text())
    jsonschema.validate(config, schema)
    bad = dict(config, min_workers=2)  # a key Ray's schema does not know: the check must catch it
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_local_cluster_config_passes_rays_own_preparation() -> None:
    from ray.autoscaler._private.commands import prepare_config
    from ray.autoscaler._private.util import validate_config

    config = prepare_config(yaml.safe_load((DEPLOY / "ray" / "cluster.yaml").read_text()))
    validate_config(config)
    assert config["provider"]["type"] == "local"


def test_kuberay_rayjob_manifest() -> None:
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "k8s" / "rayjob.yaml").read_text())}
    assert set(docs) == {"RayJob", "PersistentVolumeClaim"}
    doc = docs["RayJob"]
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"]
    assert spec["entrypoint"].startswith("stride train --address auto")
    args = _stride_train_args(spec["entrypoint"].split("stride train ")[1])
    assert args.address == "auto" and args.metrics_host == "0.0.0.0" and args.resume_if_exists
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["resources"]["limits"]["nvidia.com/gpu"] == "1"  # the learner's GPU
    assert any(p["containerPort"] == 9470 for p in head["ports"])
    # The run folder outlives the head pod (a claim, not an emptyDir) and a failed job is retried:
    # the retry's --resume-if-exists then finds the checkpoints.
    volumes = {v["name"]: v for v in cluster["headGroupSpec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in head["volumeMounts"]}
    run_volume = next(volumes[name] for path, name in mounts.items() if args.run_dir.is_relative_to(path))
    assert run_volume["persistentVolumeClaim"]["claimName"] == docs["PersistentVolumeClaim"]["metadata"]["name"]
    assert spec["backoffLimit"] >= 1
    workers = cluster["workerGroupSpecs"]
    assert workers and workers[0]["replicas"] >= 1
    for c in [head] + [w["template"]["spec"]["containers"][0] for w in workers]:
        assert not c["image"].endswith(":latest")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_cluster(temp_dir: str) -> None:
    """Stop only the Ray processes of the cluster rooted at `temp_dir` (`ray stop` would stop
    every Ray on the machine, a user's training run included)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                if temp_dir.encode() in cmdline and int(entry) != os.getpid():
                    pids.append(int(entry))
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if not pids:
            return
        time.sleep(2)


def test_real_ray_job_submission(tmp_path: Path) -> None:
    """`ray start --head` on loopback, `ray job submit --working-dir .` a short training run,
    wait for success, check the run's outputs, stop the cluster."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    gcs, dash = free_port(), free_port()
    run_dir = tmp_path / "job-run"
    temp_dir = tempfile.mkdtemp(prefix="strray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    start = subprocess.run(
        [str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2", "--include-dashboard=true",
         # Own ports for every agent: another Ray on this machine (a user's run) holds the defaults.
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
         "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180)
    try:
        assert start.returncode == 0, start.stderr[-2000:]
        submit = [str(BIN / "ray"), "job", "submit", f"--address=http://127.0.0.1:{dash}", "--working-dir", ".",
                  "--", "stride", "train", "--env", "Pendulum-v1", "--actors", "2", "--envs-per-actor", "4",
                  "--fragment-length", "32", "--total-steps", "512", "--set", "ppo.minibatches=4", "--no-video",
                  "--metrics-port", "0", "--run-dir", str(run_dir)]
        deadline = time.monotonic() + 60
        while True:  # `ray start` returns before the head's job agent is up: retry only that answer
            job = subprocess.run(submit, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
            out = job.stdout + job.stderr
            if "No available agent to submit job" not in out or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert job.returncode == 0 and "succeeded" in out, out[-3000:]
        assert "joined the Ray cluster" in out and "started a local Ray" not in out, out[-2000:]
        recs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert recs[-1]["env_steps"] == 512
        assert list((run_dir / "checkpoints").glob("ckpt-*.pt")) and (run_dir / "config.yaml").exists()
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
