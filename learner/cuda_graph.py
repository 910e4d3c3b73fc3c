"""The PPO minibatch step's forward, loss and backward replayed as one CUDA graph.

Why: the learner's nets are small (two 128-wide MLPs), so on a GPU a minibatch step is ~150
tiny kernels whose launch and PyTorch dispatch cost, on the host, is what takes the time: on the
lent H100 machine a biped step took 3.9-4.9 ms of which the GPU was busy ~0.4 ms
(docs/scaling.md). Captured once per minibatch size, the forward pass, the loss and the backward
pass become one `replay()`; the gradient clip and the fused Adam step stay eager (a handful of
kernels), after the host has checked that the loss is finite, so a non-finite loss still never
reaches the weights.

What the graph reads and writes must keep its memory: the minibatch is copied into static input
tensors before each replay, the loss terms land in static outputs, the gradients in the flat
gradient buffer (`learner.flatten_parameters`) that autograd adds into in place, and the
parameters and normaliser buffers are updated in place by the optimiser and `load_state_dict`.
`beta` (the KL penalty's coefficient) and the entropy bonus weight, which change between
updates, are device scalars.
"""

from __future__ import annotations

import torch

from actors.policy import ActorCritic
from learner.config import PPOConfig
from learner.ppo import _FIELDS, Batch, LossOut, ppo_loss

WARMUP_STEPS = 3  # eager runs on a side stream before capture (cuBLAS handles, autograd's buffers)


class GraphedLossAndGrad:
    """`run(mb, beta, ent_coef)`: the loss terms of minibatch `mb` ([M] rows, M fixed at construction),
    with the gradient of the total loss left in `grad` (zeroed first: not accumulated)."""

    def __init__(self, model: ActorCritic, grad: torch.Tensor, size: int, cfg: PPOConfig) -> None:
        device = grad.device
        obs_dim = int(model.obs_mean.shape[0])
        act_dim = int(model.log_std.shape[0])
        self.model, self.grad, self.cfg = model, grad, cfg
        self.inputs = Batch(
            obs=torch.zeros(size, obs_dim, device=device), actions=torch.zeros(size, act_dim, device=device),
            logp=torch.zeros(size, device=device), advantages=torch.zeros(size, device=device),
            returns=torch.zeros(size, device=device), values=torch.zeros(size, device=device),
            weights=torch.ones(size, device=device),
        )
        self.beta = torch.zeros((), device=device)
        self.ent_coef = torch.full((), cfg.ent_coef, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._forward_backward()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._forward_backward()

    def _forward_backward(self) -> LossOut:
        self.grad.zero_()
        mb = self.inputs
        adv = mb.advantages
        if self.cfg.norm_adv and len(adv) > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        new_logp, entropy, new_values = self.model.evaluate(mb.obs, mb.actions)
        out = ppo_loss(new_logp, mb.logp, adv, new_values, mb.values, mb.returns, entropy, self.cfg,
                       self.beta, mb.weights, self.ent_coef)
        out.loss.backward()
        return out

    def run(self, mb: Batch, beta: float, ent_coef: float) -> LossOut:
        for name in _FIELDS:
            getattr(self.inputs, name).copy_(getattr(mb, name))
        self.beta.fill_(beta)
        self.ent_coef.fill_(ent_coef)
        self.graph.replay()
        return self.out


class GraphCache:
    """One `GraphedLossAndGrad` per minibatch size (a batch's size changes only when the number
    of fragments in an update does: a lost actor in sync mode, the last update of a run)."""

    def __init__(self, model: ActorCritic, grad: torch.Tensor, cfg: PPOConfig) -> None:
        self.model, self.grad, self.cfg = model, grad, cfg
        self.graphs: dict[int, GraphedLossAndGrad] = {}

    def get(self, size: int) -> GraphedLossAndGrad:
        if size not in self.graphs:
            self.graphs[size] = GraphedLossAndGrad(self.model, self.grad, size, self.cfg)
        return self.graphs[size]
