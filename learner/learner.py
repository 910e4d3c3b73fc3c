"""Learner: owns the model, optimiser and normaliser, and turns fragments into a PPO update.

Knows nothing of Ray: `update(fragments)` takes `Trajectory` objects from wherever they came.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any

import numpy as np
import torch

from actors.envs import mirror_maps
from actors.policy import ActorCritic
from actors.trajectory import Trajectory, Weights
from learner.config import Config, learner_threads
from learner.cuda_graph import GraphCache
from learner.gae import compute_gae
from learner.lr_plateau import ReturnPlateau
from learner.normalizer import RunningMeanStd
from learner.ppo import LR_BOUNDS, Batch, Mirror, adapt_beta, adapt_lr, entropy_coef, explained_variance, ppo_update

log = logging.getLogger("stride")


def stack_fragments(fragments: list[Trajectory]) -> dict[str, np.ndarray]:
    """Concatenate fragments of equal T along the env axis: [T(+1), sum(B), ...].

    `final_obs` [K, obs_dim] comes out in the row-major order of the stacked `truncated`
    [T, sum(B)], as in a single fragment: each fragment's rows are in its own (t, b) order, so
    they are merged by (t, offset + b).
    """
    keys = ("obs", "actions", "logp", "rewards", "terminated", "truncated")
    out = {k: np.concatenate([getattr(f, k) for f in fragments], axis=1) for k in keys}
    final_obs = np.concatenate([f.final_obs for f in fragments], axis=0)
    if len(fragments) > 1 and len(final_obs) > 1:
        rows, cols, offset = [], [], 0
        for f in fragments:
            t_idx, b_idx = np.nonzero(f.truncated)
            rows.append(t_idx)
            cols.append(b_idx + offset)
            offset += f.truncated.shape[1]
        final_obs = final_obs[np.lexsort((np.concatenate(cols), np.concatenate(rows)))]
    out["final_obs"] = final_obs
    return out


def values_and_bootstrap(
    model: ActorCritic, obs: torch.Tensor, final_obs: torch.Tensor, truncated: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """V(obs[t]) [T, B] and the value of the state after each step [T, B]: V(obs[t+1]), except
    V(final_obs[k]) where the episode was truncated at t (obs[t+1] is then the next episode's
    first observation). Terminated steps get V(obs[t+1]) too; GAE ignores it.

    obs [T+1, B, obs_dim]; truncated [T, B] bool; final_obs [K, obs_dim], K = truncated.sum(),
    one row per truncated step in the row-major order of `truncated` (see `Trajectory`).
    """
    t1, b = obs.shape[:2]
    values_all = model.value(obs.reshape(t1 * b, -1)).reshape(t1, b)
    next_values = values_all[1:].clone()
    if final_obs.shape[0]:
        next_values[truncated] = model.value(final_obs)
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
        assert self.flat_params.grad is not None  # the flat gradient buffer autograd adds into
        # The graphed step has no mirror loss: with one, the eager step runs.
        self.graphs = (GraphCache(self.model, self.flat_params.grad, cfg.ppo)
                       if self.device.type == "cuda" and cfg.train.cuda_graphs and cfg.ppo.mirror_coef == 0 else None)
        self.normalizer = RunningMeanStd(obs_dim)
        self.return_stats = RunningMeanStd(1)  # of discounted returns, for ppo.reward_norm
        self.return_acc: dict[int, np.ndarray] = {}  # worker id -> running discounted return [B]
        self.beta = cfg.ppo.kl_beta
        self.adaptive_lr = min(max(cfg.ppo.lr, LR_BOUNDS[0]), LR_BOUNDS[1])  # lr_schedule 'adaptive'
        p = cfg.ppo
        self.plateau = ReturnPlateau(p.lr_plateau_window, p.lr_plateau_min_gain, p.lr_plateau_max_drops)
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.version = 0
        maps = mirror_maps(cfg.env.id) if cfg.ppo.mirror_coef > 0 else None  # validate() checked it exists
        self.mirror = None if maps is None else Mirror(*(
            torch.as_tensor(a, device=self.device) for a in (*maps[0], *maps[1])))
        self._mirror_obs_np = None if maps is None else maps[0]

    def weights(self) -> Weights:
        return self.model.weights(self.version)

    def _sync_normalizer(self) -> None:
        self.model.obs_mean.copy_(torch.as_tensor(self.normalizer.mean, dtype=torch.float32))
        self.model.obs_var.copy_(torch.as_tensor(self.normalizer.var, dtype=torch.float32))

    def learning_rate(self, env_steps: int) -> float:
        p = self.cfg.ppo
        if p.lr_schedule == "constant":
            return p.lr
        if p.lr_schedule == "adaptive":
            return self.adaptive_lr
        if p.lr_schedule == "step":
            return p.lr * p.lr_step_factor ** sum(env_steps >= m for m in p.lr_milestones)
        if p.lr_schedule == "plateau":
            return p.lr * p.lr_step_factor ** self.plateau.drops
        return p.lr * max(0.0, 1.0 - env_steps / (p.lr_decay_steps or self.cfg.train.total_steps))

    def reward_multiplier(self, fragments: list[Trajectory]) -> float:
        """What rewards are multiplied by before GAE: reward_scale, and with reward_norm also
        1 / std of the discounted returns seen so far, this batch's included.

        Each worker's envs carry their discounted return from fragment to fragment (a worker's
        fragments arrive in the order it sampled them), reset where an episode ended.
        """
        p = self.cfg.ppo
        if not p.reward_norm:
            return p.reward_scale
        seen = []
        for f in fragments:
            acc = self.return_acc.get(f.worker_id)
            if acc is None or acc.shape[0] != f.rewards.shape[1]:
                acc = np.zeros(f.rewards.shape[1])
            done = f.terminated | f.truncated
            for t in range(f.rewards.shape[0]):
                acc = acc * p.gamma + f.rewards[t]
                seen.append(acc)
                acc = np.where(done[t], 0.0, acc)
            self.return_acc[f.worker_id] = acc
        self.return_stats.update(np.concatenate(seen)[:, None])
        return p.reward_scale / float(np.sqrt(self.return_stats.var[0] + 1e-8))

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
        if self._mirror_obs_np is not None:  # the statistics of both images: normalising commutes with mirroring
            perm, sign = self._mirror_obs_np
            raw_obs = np.concatenate([raw_obs, raw_obs[:, perm] * sign])
        if self.normalizer.count == 0:
            self.normalizer.update(raw_obs)
            self._sync_normalizer()
        dev = self.device
        tensors = {k: torch.as_tensor(v, device=dev) for k, v in data.items()}
        T, B = data["rewards"].shape
        obs = tensors["obs"]
        trunc = tensors["truncated"]
        reward_multiplier = self.reward_multiplier(fragments)
        with torch.no_grad():
            values, next_values = values_and_bootstrap(self.model, obs, tensors["final_obs"], trunc)
            adv, returns = compute_gae(
                tensors["rewards"] * reward_multiplier, values, next_values, tensors["terminated"], trunc,
                self.cfg.ppo.gamma, self.cfg.ppo.gae_lambda,
            )
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t1 = time.perf_counter()
        lr = self.learning_rate(env_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        flat_obs, flat_actions = obs[:-1].reshape(T * B, -1), tensors["actions"].reshape(T * B, -1)
        prox_logp, weights, is_stats = self._proximal(fragments, flat_obs, flat_actions, tensors["logp"])
        batch = Batch(
            obs=flat_obs,
            actions=flat_actions,
            logp=prox_logp,
            advantages=adv.reshape(-1),
            returns=returns.reshape(-1),
            values=values.reshape(-1),
            weights=weights,
        )
        # A non-finite loss must never reach the weights: restore the pre-update state, re-raise.
        saved = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict()))
        ent_coef = entropy_coef(self.cfg.ppo, env_steps)
        try:
            stats = ppo_update(self.model, self.optimizer, batch, self.cfg.ppo, self.beta, self.generator, self.graphs,
                               ent_coef, self.mirror)
        except FloatingPointError:
            self.model.load_state_dict(saved[0])
            self.optimizer.load_state_dict(saved[1])
            raise
        if self.mirror is not None:  # the std is state-independent: make it the same for both legs
            log_std = self.model.log_std.data
            log_std.copy_(0.5 * (log_std + log_std[self.mirror.act_perm]))
        if self.cfg.model.min_std > 0:  # a projection after the step: the loss is left as it is
            self.model.log_std.data.clamp_(min=math.log(self.cfg.model.min_std))
        beta_used = self.beta
        if self.cfg.ppo.loss == "penalty":
            self.beta = adapt_beta(self.beta, stats["approx_kl"], self.cfg.ppo.kl_target)
        if self.cfg.ppo.lr_schedule == "adaptive":
            self.adaptive_lr = adapt_lr(self.adaptive_lr, stats["approx_kl"], self.cfg.ppo.lr_kl_target)
        if self.cfg.ppo.lr_schedule == "plateau":  # from the next update on
            drop = self.plateau.observe(env_steps, T * B, np.concatenate([f.episodes.returns for f in fragments]))
            if drop is not None:
                log.info("training return %.2f over the last %s env steps, %.2f over the %s before: a rise under "
                         "%.0f%%, so the learning rate goes from %.3g to %.3g (drop %d of at most %d)",
                         drop.latest_mean, f"{self.cfg.ppo.lr_plateau_window:,}", drop.earlier_mean,
                         f"{self.cfg.ppo.lr_plateau_window:,}", 100 * self.cfg.ppo.lr_plateau_min_gain, lr,
                         self.learning_rate(env_steps), drop.drops, self.cfg.ppo.lr_plateau_max_drops)
        with torch.no_grad():
            ev = explained_variance(values.reshape(-1), returns.reshape(-1))
        self.normalizer.update(raw_obs)
        self._sync_normalizer()
        self.version += 1
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t2 = time.perf_counter()
        stats.update(
            explained_variance=ev, lr=lr, lr_drops=float(self.plateau.drops), kl_beta=beta_used, ent_coef=ent_coef,
            batch_size=float(T * B),
            reward_multiplier=reward_multiplier, **is_stats,
            time_gae=t1 - t0, time_update=t2 - t1,
            learner_samples_per_s=T * B / max(t2 - t0, 1e-9),
        )
        return stats

    def _proximal(self, fragments: list[Trajectory], obs: torch.Tensor, actions: torch.Tensor,
                  behaviour_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Log-probs the update clips against [N], the importance weights pi_prox / pi_behaviour [N]
        (truncated at ppo.max_is_weight when that is set) and their diagnostics: the fraction of
        samples from an older version, the largest weight before truncation, and the fraction of
        samples whose weight was truncated.

        On-policy fragments (made by the current version): the behaviour log-probs, weight 1, i.e.
        plain PPO. Older fragments (async mode): the current policy's log-probs, and the weight
        that keeps the gradient unbiased (decoupled PPO, see `ppo_loss`). Clipping against the
        stale behaviour policy instead had clipped 40-60% of the biped's samples before the first
        gradient step, so the unclipped entropy bonus drove the policy's entropy up.
        obs [N, obs_dim] and actions [N, act_dim] flattened time-major from [T, B], behaviour_logp [T, B].
        """
        stale_columns, col = [], 0  # (first env column, width) of each fragment from an older version
        for f in fragments:
            width = f.logp.shape[1]
            if f.policy_version != self.version:
                stale_columns.append((col, width))
            col += width
        # From the fragments' versions, so no device read; true also when decoupled is off.
        stats = {"stale_fraction": sum(w for _, w in stale_columns) / behaviour_logp.shape[1],
                 "is_weight_max": 1.0, "is_weight_capped": 0.0}
        logp = behaviour_logp.reshape(-1)
        if not self.cfg.ppo.decoupled or not stale_columns:
            return logp, torch.ones_like(logp), stats
        stale = torch.zeros_like(behaviour_logp, dtype=torch.bool)
        for col, width in stale_columns:
            stale[:, col : col + width] = True
        logp, stale = logp.clone(), stale.reshape(-1)
        with torch.no_grad():
            logp[stale] = self.model.evaluate(obs[stale], actions[stale])[0]
        weights = (logp - behaviour_logp.reshape(-1)).exp()
        stats["is_weight_max"] = float(weights.max())
        cap = self.cfg.ppo.max_is_weight
        if cap > 0:
            stats["is_weight_capped"] = float((weights > cap).float().mean())
            weights = weights.clamp(max=cap)
        return logp, weights, stats

    def gpu_memory_bytes(self) -> int | None:
        return int(torch.cuda.memory_allocated(self.device)) if self.device.type == "cuda" else None

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "normalizer": self.normalizer.state_dict(),
            "return_stats": self.return_stats.state_dict(),
            "beta": self.beta,
            "adaptive_lr": self.adaptive_lr,
            "lr_plateau": self.plateau.state_dict(),
            "version": self.version,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(_flatten_optimizer_state(state["optimizer"]))
        self.normalizer.load_state_dict(state["normalizer"])
        if "return_stats" in state:  # checkpoints from before reward_norm have none
            self.return_stats.load_state_dict(state["return_stats"])
        self.beta = float(state["beta"])
        self.adaptive_lr = float(state.get("adaptive_lr", self.adaptive_lr))  # older checkpoints: none
        if "lr_plateau" in state:  # older checkpoints: none (they had no 'plateau' schedule)
            self.plateau.load_state_dict(state["lr_plateau"])
        self.version = int(state["version"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
