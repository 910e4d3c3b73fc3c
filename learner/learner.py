"""Learner: owns the model, optimiser and normaliser, and turns fragments into a PPO update.

Knows nothing of Ray: `update(fragments)` takes `Trajectory` objects from wherever they came.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch

from actors.policy import ActorCritic
from actors.trajectory import Trajectory, Weights
from learner.config import Config, learner_threads
from learner.gae import compute_gae
from learner.normalizer import RunningMeanStd
from learner.ppo import Batch, adapt_beta, explained_variance, ppo_update


def stack_fragments(fragments: list[Trajectory]) -> dict[str, np.ndarray]:
    """Concatenate fragments of equal T along the env axis: [T(+1), sum(B), ...]."""
    keys = ("obs", "actions", "logp", "rewards", "terminated", "truncated", "final_obs")
    return {k: np.concatenate([getattr(f, k) for f in fragments], axis=1) for k in keys}


def values_and_bootstrap(
    model: ActorCritic, obs: torch.Tensor, final_obs: torch.Tensor, truncated: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """V(obs[t]) [T, B] and the value of the state after each step [T, B]: V(obs[t+1]), except
    V(final_obs[t]) where the episode was truncated at t (obs[t+1] is then the next episode's
    first observation). Terminated steps get V(obs[t+1]) too; GAE ignores it.

    obs [T+1, B, obs_dim], final_obs [T, B, obs_dim], truncated [T, B] bool.
    """
    t1, b = obs.shape[:2]
    values_all = model.value(obs.reshape(t1 * b, -1)).reshape(t1, b)
    next_values = values_all[1:].clone()
    if bool(truncated.any()):
        next_values[truncated] = model.value(final_obs[truncated])
    return values_all[:-1], next_values


def flatten_parameters(model: torch.nn.Module) -> torch.nn.Parameter:
    """Move every parameter of `model` and its gradient into one contiguous buffer each, and
    return a single Parameter over them for the optimiser.

    The module's parameters become views of the flat buffer (so the forward pass and state
    dicts are unchanged) and their `.grad`s views of one flat gradient that autograd adds into
    in place. Adam and the gradient-norm clip then see one tensor instead of one per layer:
    for the small nets PPO uses, the per-tensor bookkeeping, not the arithmetic, was most of a
    minibatch step on the CPU. Call after moving the model to its device; zero gradients with
    `zero_grad(set_to_none=False)` so the views stay attached.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in params)
    ref = params[0]
    flat = torch.zeros(total, dtype=ref.dtype, device=ref.device)
    flat_grad = torch.zeros_like(flat)
    offset = 0
    for p in params:
        n = p.numel()
        flat[offset : offset + n].copy_(p.data.reshape(-1))
        p.data = flat[offset : offset + n].view_as(p)
        p.grad = flat_grad[offset : offset + n].view_as(p)
        offset += n
    flat_param = torch.nn.Parameter(flat)
    flat_param.grad = flat_grad
    return flat_param


def _flatten_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """An Adam state dict saved with one entry per layer (checkpoints written before the flat
    buffer) -> the single-parameter layout, concatenating the moments in parameter order."""
    per_param = state["state"]
    ids = state["param_groups"][0]["params"]
    if len(ids) == 1:
        return state
    flat: dict[str, Any] = {}
    if per_param:
        flat = {
            "step": per_param[ids[0]]["step"],
            "exp_avg": torch.cat([per_param[i]["exp_avg"].reshape(-1) for i in ids]),
            "exp_avg_sq": torch.cat([per_param[i]["exp_avg_sq"].reshape(-1) for i in ids]),
        }
    groups = [{**state["param_groups"][0], "params": [0], "fused": True}]
    return {"state": {0: flat} if flat else {}, "param_groups": groups}


class Learner:
    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, device: str) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        threads = learner_threads(cfg, device)
        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(cfg.train.seed)
        self.model = ActorCritic(obs_dim, act_dim, tuple(cfg.model.hidden), cfg.model.init_log_std).to(self.device)
        # fused: one kernel for all parameters instead of a loop of small ops per tensor (-20% step time
        # on a 64x64 net's 64-sample minibatches on the CPU; the usual win on CUDA).
        self.flat_params = flatten_parameters(self.model)
        self.optimizer = torch.optim.Adam([self.flat_params], lr=cfg.ppo.lr, eps=1e-5, fused=True)
        self.normalizer = RunningMeanStd(obs_dim)
        self.beta = cfg.ppo.kl_beta
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.version = 0

    def weights(self) -> Weights:
        return self.model.weights(self.version)

    def _sync_normalizer(self) -> None:
        self.model.obs_mean.copy_(torch.as_tensor(self.normalizer.mean, dtype=torch.float32))
        self.model.obs_var.copy_(torch.as_tensor(self.normalizer.var, dtype=torch.float32))

    def learning_rate(self, env_steps: int) -> float:
        p = self.cfg.ppo
        if not p.anneal_lr:
            return p.lr
        return p.lr * max(0.0, 1.0 - env_steps / self.cfg.train.total_steps)

    def update(self, fragments: list[Trajectory], env_steps: int) -> dict[str, float]:
        """One PPO update on `fragments`; bumps the policy version. Returns diagnostics.

        The batch is evaluated with the normaliser the behaviour policy used (so the first
        ratio is exactly 1 on-policy); its observations are merged into the normaliser after
        the update and ship with the next version. The very first batch initialises the
        normaliser before anything else, since version 0's statistics are placeholders.
        """
        t0 = time.perf_counter()
        data = stack_fragments(fragments)
        raw_obs = data["obs"][:-1].reshape(-1, data["obs"].shape[-1])
        if self.normalizer.count == 0:
            self.normalizer.update(raw_obs)
            self._sync_normalizer()
        dev = self.device
        tensors = {k: torch.as_tensor(v, device=dev) for k, v in data.items()}
        T, B = data["rewards"].shape
        obs = tensors["obs"]
        trunc = tensors["truncated"]
        with torch.no_grad():
            values, next_values = values_and_bootstrap(self.model, obs, tensors["final_obs"], trunc)
            adv, returns = compute_gae(
                tensors["rewards"] * self.cfg.ppo.reward_scale, values, next_values, tensors["terminated"], trunc,
                self.cfg.ppo.gamma, self.cfg.ppo.gae_lambda,
            )
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t1 = time.perf_counter()
        lr = self.learning_rate(env_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batch = Batch(
            obs=obs[:-1].reshape(T * B, -1),
            actions=tensors["actions"].reshape(T * B, -1),
            logp=tensors["logp"].reshape(-1),
            advantages=adv.reshape(-1),
            returns=returns.reshape(-1),
            values=values.reshape(-1),
        )
        # A non-finite loss must never reach the weights: restore the pre-update state, re-raise.
        saved = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict()))
        try:
            stats = ppo_update(self.model, self.optimizer, batch, self.cfg.ppo, self.beta, self.generator)
        except FloatingPointError:
            self.model.load_state_dict(saved[0])
            self.optimizer.load_state_dict(saved[1])
            raise
        beta_used = self.beta
        if self.cfg.ppo.loss == "penalty":
            self.beta = adapt_beta(self.beta, stats["approx_kl"], self.cfg.ppo.kl_target)
        with torch.no_grad():
            ev = explained_variance(values.reshape(-1), returns.reshape(-1))
        self.normalizer.update(raw_obs)
        self._sync_normalizer()
        self.version += 1
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t2 = time.perf_counter()
        stats.update(
            explained_variance=ev, lr=lr, kl_beta=beta_used, batch_size=float(T * B),
            time_gae=t1 - t0, time_update=t2 - t1,
            learner_samples_per_s=T * B / max(t2 - t0, 1e-9),
        )
        return stats

    def gpu_memory_bytes(self) -> int | None:
        return int(torch.cuda.memory_allocated(self.device)) if self.device.type == "cuda" else None

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "beta": self.beta,
            "version": self.version,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(_flatten_optimizer_state(state["optimizer"]))
        self.normalizer.load_state_dict(state["normalizer"])
        self.beta = float(state["beta"])
        self.version = int(state["version"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
