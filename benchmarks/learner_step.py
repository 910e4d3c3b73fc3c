"""PPO update cost on this machine: milliseconds per minibatch step and microseconds per sample.

    python benchmarks/learner_step.py [--device cpu|cuda] [--threads 1] [--repeats 7]

Times `ppo_update` (learner/ppo.py) on random data for the two shapes the configs use:
Walker2d (17 obs, 64x64, 2,048 samples, 10 epochs x 32 minibatches of 64) and the biped
(31 obs, 128x128, 4,096 samples, 5 epochs x 8 minibatches of 512). Variants, interleaved
repeat by repeat so that machine noise hits them alike:
  per-layer  torch.optim.Adam over each layer's tensors (torch's default), nn.Tanh  (the old learner)
  flat       one flat parameter buffer, fused Adam, the sigmoid-based Tanh   (the learner on a CPU)
  graph      flat, with each minibatch's forward, loss and backward replayed as a CUDA graph
             (learner/cuda_graph.py; CUDA only: the learner on a GPU)
  mirror     flat, plus the mirror-symmetry loss of ppo.mirror_coef = 1 (biped only; eager)
Medians of --repeats.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from torch import nn

from actors.envs import mirror_maps
from actors.policy import ActorCritic, Tanh
from learner.config import PPOConfig
from learner.cuda_graph import GraphCache
from learner.learner import flatten_parameters
from learner.ppo import Batch, Mirror, ppo_update

SHAPES = {
    "walker2d": dict(obs_dim=17, hidden=(64, 64), n=2048, epochs=10, minibatches=32),
    "biped": dict(obs_dim=31, hidden=(128, 128), n=4096, epochs=5, minibatches=8),
}


def build(shape: dict, variant: str, device: str
          ) -> tuple[ActorCritic, torch.optim.Optimizer, Batch, PPOConfig, GraphCache | None, Mirror | None]:
    torch.manual_seed(0)
    model = ActorCritic(shape["obs_dim"], 6, shape["hidden"]).to(device)
    flat = None
    if variant == "per-layer":
        for net in (model.pi, model.v):
            for i, layer in enumerate(net):
                if isinstance(layer, Tanh):
                    net[i] = nn.Tanh()
        opt = torch.optim.Adam(model.parameters(), lr=3e-4, eps=1e-5)
    else:
        flat = flatten_parameters(model)
        opt = torch.optim.Adam([flat], lr=3e-4, eps=1e-5, fused=True)
    n = shape["n"]
    obs = torch.randn(n, shape["obs_dim"], device=device)
    actions = torch.randn(n, 6, device=device)
    with torch.no_grad():
        logp, _, values = model.evaluate(obs, actions)
    batch = Batch(obs, actions, logp, torch.randn(n, device=device), values + torch.randn(n, device=device), values,
                  torch.ones(n, device=device))
    cfg = PPOConfig(epochs=shape["epochs"], minibatches=shape["minibatches"],
                    mirror_coef=1.0 if variant == "mirror" else 0.0)
    graphs = GraphCache(model, flat.grad, cfg) if variant == "graph" and flat is not None and flat.grad is not None \
        else None
    mirror = None
    if variant == "mirror":
        maps = mirror_maps("stride/BipedWalker-v0")
        assert maps is not None
        (perm, sign), (aperm, asign) = maps
        mirror = Mirror(*(torch.as_tensor(a, device=device) for a in (perm, sign, aperm, asign)))
    return model, opt, batch, cfg, graphs, mirror


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices_variants = ("per-layer", "flat", "graph") if args.device.startswith("cuda") else ("per-layer", "flat")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}, "
          f"torch {torch.__version__}, device {args.device}, {args.threads} thread(s), median of {args.repeats}")
    print(f"{'shape':>9} {'variant':>10} {'update ms':>10} {'ms/step':>8} {'us/sample':>10} {'speed-up':>9}")
    for name, shape in SHAPES.items():
        variants = devices_variants + (("mirror",) if name == "biped" else ())
        built = {v: build(shape, v, args.device) for v in variants}
        gen = {v: torch.Generator().manual_seed(0) for v in variants}
        times: dict[str, list[float]] = {v: [] for v in variants}
        for rep in range(args.repeats + 1):
            for v in variants:
                model, opt, batch, cfg, graphs, mirror = built[v]
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                ppo_update(model, opt, batch, cfg, 1.0, gen[v], graphs, mirror=mirror)  # ends in a host read
                if rep:  # the first round warms up
                    times[v].append(time.perf_counter() - start)
        base = statistics.median(times["per-layer"])
        for v in variants:
            med = statistics.median(times[v])
            steps = shape["epochs"] * shape["minibatches"]
            print(f"{name:>9} {v:>10} {med * 1e3:>10.1f} {med / steps * 1e3:>8.3f} "
                  f"{med / shape['n'] * 1e6:>10.1f} {base / med:>8.2f}x")


if __name__ == "__main__":
    main()
