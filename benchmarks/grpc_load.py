"""Load on the gRPC services over loopback: requests/s, actions/s, latency, fragments/s.

    python benchmarks/grpc_load.py [--seconds 10] [--clients 4]

The PolicyService (`stride serve` on a checkpoint of a biped policy) and an ExperienceService
run in their own processes; clients are separate processes too (no shared GIL). Rows:
- closed loop: each client sends its next request as soon as the last one is answered;
- open loop at a fixed total rate: requests are sent on a schedule, latency is measured from
  the scheduled send time (so queueing delay counts), which is what "p99 at 1,000 req/s" means;
- ExperienceService: clients push biped-sized fragments (T=128, B=16) as fast as accepted.
Every run is bounded in count and time and talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OBS, ACT = 31, 6
CTX = mp.get_context("spawn")  # gRPC does not survive fork() once the parent has used it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_run() -> Path:
    from learner import config as C
    from learner.trainer import Trainer

    d = Path(tempfile.mkdtemp(prefix="stride-grpc-bench-"))
    Trainer(C.load(None, {"train.video": False}), d).save_checkpoint()
    return d


def wait_ready(address: str, timeout: float = 60) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    raise TimeoutError(address)


def policy_client(address: str, batch: int, seconds: float, rate: float, out: mp.Queue) -> None:
    import grpc

    from services.proto.stride.v1 import policy_pb2, policy_pb2_grpc
    from services.rpc.codec import to_array

    ch = grpc.insecure_channel(address)
    stub = policy_pb2_grpc.PolicyServiceStub(ch)
    req = policy_pb2.ActRequest(observations=to_array(np.zeros((batch, OBS), np.float32)), deterministic=True)
    stub.Act(req, timeout=5)  # connect and warm up
    lat, start = [], time.perf_counter()
    next_send = start
    while True:
        now = time.perf_counter()
        if now - start >= seconds:
            break
        if rate > 0:  # open loop: wait for the scheduled send time, measure from it
            if now < next_send:
                time.sleep(next_send - now)
            sched = next_send
            next_send += 1.0 / rate
        else:
            sched = time.perf_counter()
        stub.Act(req, timeout=5)
        lat.append(time.perf_counter() - sched)
    out.put((len(lat), time.perf_counter() - start, lat))
    ch.close()


def experience_client(address: str, seconds: float, out: mp.Queue) -> None:
    import grpc

    from actors.trajectory import Trajectory
    from services.proto.stride.v1 import experience_pb2_grpc
    from services.rpc.codec import fragment_to_msg

    t, b = 128, 16
    frag = Trajectory(np.zeros((t + 1, b, OBS), np.float32), np.zeros((t, b, ACT), np.float32),
                      np.zeros((t, b), np.float32), np.zeros((t, b), np.float32), np.zeros((t, b), bool),
                      np.zeros((t, b), bool), np.zeros((0, OBS), np.float32), 0, 0)
    msg = fragment_to_msg(frag, f"bench-{os.getpid()}")
    stub = experience_pb2_grpc.ExperienceServiceStub(grpc.insecure_channel(address))
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        n += stub.PushTrajectory(iter([msg] * 4), timeout=10).accepted
    out.put((n, time.perf_counter() - start, []))


def experience_server(port: int, seconds: float) -> None:
    """Host an ExperienceService with a trainer-like consumer draining the queue."""
    from actors.policy import ActorCritic
    from services.rpc import experience_service as es
    from services.rpc.server import Server

    hub = es.ExperienceHub(OBS, ACT, max_lag=1, max_queued=100_000)
    hub.publish(ActorCritic(OBS, ACT).weights(0))
    server = Server(es.register(es.ExperienceServicer(hub)), port=port)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        hub.drain()
        time.sleep(0.01)
    server.stop(1)


def run_clients(target, args_list) -> tuple[int, float, list[float]]:
    q = CTX.Queue()
    procs = [CTX.Process(target=target, args=(*a, q)) for a in args_list]
    for p in procs:
        p.start()
    results = [q.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    n = sum(r[0] for r in results)
    secs = max(r[1] for r in results)
    lat = [x for r in results for x in r[2]]
    return n, secs, lat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop total requests/s")
    args = parser.parse_args()
    run = make_run()
    port = free_port()
    address = f"127.0.0.1:{port}"
    server = subprocess.Popen([str(Path(sys.executable).parent / "stride"), "serve", str(run), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        wait_ready(address)
        for batch in (1, 64):
            n, secs, lat = run_clients(policy_client, [(address, batch, args.seconds, 0.0)] * args.clients)
            rows.append((f"Act closed loop, {args.clients} clients, batch {batch}", n / secs, n * batch / secs, lat))
        per = args.rate / 2
        n, secs, lat = run_clients(policy_client, [(address, 1, args.seconds, per)] * 2)
        rows.append((f"Act open loop {args.rate:,.0f} req/s, batch 1", n / secs, n / secs, lat))
    finally:
        server.terminate()
        server.wait(timeout=30)
    eport = free_port()
    eserver = CTX.Process(target=experience_server, args=(eport, args.seconds + 30))
    eserver.start()
    try:
        wait_ready(f"127.0.0.1:{eport}")
        n, secs, _ = run_clients(experience_client, [(f"127.0.0.1:{eport}", args.seconds)] * 2)
    finally:
        eserver.terminate()
        eserver.join()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
          f"server and clients on one machine over loopback, {args.seconds:.0f}s per row")
    print(f"{'load':<42} {'requests/s':>11} {'actions/s':>11} {'p50 ms':>8} {'p99 ms':>8}")
    for name, rps, aps, lat in rows:
        p50, p99 = (np.percentile(lat, q) * 1e3 for q in (50, 99))
        print(f"{name:<42} {rps:>11,.0f} {aps:>11,.0f} {p50:>8.2f} {p99:>8.2f}")
    print(f"{'ExperienceService PushTrajectory, 2 clients':<42} fragments/s {n / secs:,.1f} "
          f"(T=128, B=16: {n / secs * 2048:,.0f} env steps/s ingested)")


if __name__ == "__main__":
    main()
