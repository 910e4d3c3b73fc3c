"""The PPO loss (clip and adaptive-KL penalty) as pure functions, and the epoch/minibatch update."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from actors.policy import ActorCritic
from learner.config import PPOConfig

if TYPE_CHECKING:
    from learner.cuda_graph import GraphCache


@dataclass(frozen=True)
class Batch:
    """A flat PPO batch on the learner's device; N = T * B (or the sum over fragments)."""

    obs: torch.Tensor  # [N, obs_dim] raw observations
    actions: torch.Tensor  # [N, act_dim]
    logp: torch.Tensor  # [N] log-probs under the proximal policy: what the ratio is clipped against
    advantages: torch.Tensor  # [N]
    returns: torch.Tensor  # [N] value targets
    values: torch.Tensor  # [N] values before the update (for the clipped value loss)
    weights: torch.Tensor  # [N] pi_prox / pi_behaviour: 1 where the behaviour policy is the proximal one

    def __len__(self) -> int:
        return int(self.obs.shape[0])

    def take(self, idx: torch.Tensor) -> Batch:
        """The rows `idx` (a copy)."""
        return Batch(*(getattr(self, f)[idx] for f in _FIELDS))

    def slice(self, start: int, stop: int) -> Batch:
        """Rows start:stop (views, no copy)."""
        return Batch(*(getattr(self, f)[start:stop] for f in _FIELDS))


_FIELDS = ("obs", "actions", "logp", "advantages", "returns", "values", "weights")


@dataclass(frozen=True)
class Mirror:
    """An env's left-right mirror symmetry as index/sign vectors on the learner's device:
    mirror(x)[..., i] = x[..., perm[i]] * sign[i] (actors.envs.mirror_maps)."""

    obs_perm: torch.Tensor  # [obs_dim] int64
    obs_sign: torch.Tensor  # [obs_dim] float32, +-1
    act_perm: torch.Tensor  # [act_dim] int64
    act_sign: torch.Tensor  # [act_dim] float32, +-1


def mirror_loss(model: ActorCritic, obs: torch.Tensor, mirror: Mirror, mean: torch.Tensor | None = None
                ) -> torch.Tensor:
    """Mean over rows and action dimensions of (mu(mirror s) - mirror mu(s))^2 for raw
    observations `obs` [M, obs_dim]: 0 exactly when the policy's mean is mirror-equivariant.
    `mean` [M, act_dim] is mu(s) where the caller has it already (ppo_update, from
    `evaluate_with_mean`); otherwise it is computed here."""
    if mean is None:
        mean = model.pi(model.normalize(obs))
    mirrored = model.pi(model.normalize(obs[:, mirror.obs_perm] * mirror.obs_sign))
    return ((mirrored - mean[:, mirror.act_perm] * mirror.act_sign) ** 2).mean()


@dataclass(frozen=True)
class LossOut:
    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor  # the low-variance estimator E[(r - 1) - log r]
    clipfrac: torch.Tensor  # fraction of samples where |r - 1| > clip_coef
    mirror_loss: torch.Tensor | None = None  # ppo_update's mirror_loss term (before its weight), where used


def ppo_loss(
    new_logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor,
    cfg: PPOConfig,
    beta: float | torch.Tensor = 0.0,
    weights: torch.Tensor | None = None,
    ent_coef: float | torch.Tensor | None = None,
) -> LossOut:
    """PPO loss for one minibatch; every tensor argument is [M].

    clip:    L_pi = E[w max(-A r, -A clip(r, 1 - eps, 1 + eps))]
    penalty: L_pi = E[-w A r] + beta * KL(old || new)  (KL by the approx_kl estimator)
    Value:   0.5 * E[(V - R)^2], or with clip_vloss the max of that and the clipped version.
    Total:   L_pi + vf_coef * L_v - ent_coef * E[entropy].
    r = pi_new / pi_old with `old_logp` the proximal policy's log-prob. `weights` w = pi_old /
    pi_behaviour (default 1) is for samples an older policy collected: decoupled PPO (Hilton et
    al. 2021, "Batch size-invariance for policy optimization"), whose gradient equals PPO's
    against the behaviour policy while the clip and the KL stay centred on the policy being
    updated. Advantages are used as given (normalise them before calling when cfg.norm_adv).
    `ent_coef` (default cfg.ent_coef) is the bonus weight for this update (ppo.ent_decay_steps).
    """
    log_ratio = new_logp - old_logp
    ratio = log_ratio.exp()
    approx_kl = ((ratio - 1) - log_ratio).mean()
    clipfrac = ((ratio - 1.0).abs() > cfg.clip_coef).float().mean()
    if cfg.loss == "clip":
        unclipped = -advantages * ratio
        clipped = -advantages * torch.clamp(ratio, 1 - cfg.clip_coef, 1 + cfg.clip_coef)
        per_sample = torch.max(unclipped, clipped)
    else:
        per_sample = -advantages * ratio
    policy_loss = (per_sample if weights is None else per_sample * weights).mean()
    if cfg.loss == "penalty":
        policy_loss = policy_loss + beta * approx_kl
    if cfg.clip_vloss:
        v_clipped = old_values + torch.clamp(new_values - old_values, -cfg.clip_coef, cfg.clip_coef)
        value_loss = 0.5 * torch.max((new_values - returns) ** 2, (v_clipped - returns) ** 2).mean()
    else:
        value_loss = 0.5 * ((new_values - returns) ** 2).mean()
    ent = entropy.mean()
    loss = policy_loss + cfg.vf_coef * value_loss - (cfg.ent_coef if ent_coef is None else ent_coef) * ent
    return LossOut(loss, policy_loss, value_loss, ent, approx_kl, clipfrac)


def entropy_coef(cfg: PPOConfig, env_steps: int) -> float:
    """The entropy bonus weight after `env_steps` env steps: cfg.ent_coef, lowered linearly to 0
    over cfg.ent_decay_steps when that is > 0."""
    if cfg.ent_decay_steps <= 0:
        return cfg.ent_coef
    return cfg.ent_coef * max(0.0, 1.0 - env_steps / cfg.ent_decay_steps)


def adapt_beta(beta: float, kl: float, kl_target: float) -> float:
    """Adaptive KL coefficient (Schulman et al. 2017, sec. 4): double beta when the KL of the
    update overshot 1.5x the target, halve it when it undershot target / 1.5."""
    if kl > 1.5 * kl_target:
        return beta * 2.0
    if kl < kl_target / 1.5:
        return beta / 2.0
    return beta


LR_BOUNDS = (1e-6, 1e-2)
"""Where lr_schedule 'adaptive' keeps the learning rate."""


def adapt_lr(lr: float, kl: float, kl_target: float, bounds: tuple[float, float] = LR_BOUNDS) -> float:
    """KL-steered learning rate: divide by 1.5 when the update's approx KL overshot 2x the
    target, multiply by 1.5 when it stayed under half of it, otherwise keep; within `bounds`.
    A band-and-factor rule like `adapt_beta`'s, applied to the step size instead of a penalty
    (the schedule legged-locomotion PPO trainers commonly use)."""
    if kl > 2.0 * kl_target:
        lr /= 1.5
    elif kl < kl_target / 2.0:
        lr *= 1.5
    return min(max(lr, bounds[0]), bounds[1])


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var[target - pred] / Var[target] (nan when the target is constant)."""
    var = target.var()
    return float("nan") if var == 0 else float(1 - (target - pred).var() / var)


def ppo_update(
    model: ActorCritic,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    cfg: PPOConfig,
    beta: float,
    generator: torch.Generator,
    graphs: GraphCache | None = None,
    ent_coef: float | None = None,
    mirror: Mirror | None = None,
) -> dict[str, float]:
    """Run cfg.epochs of shuffled minibatches over `batch`; returns the mean diagnostics and
    `epochs`, how many epochs ran.

    With `graphs` (CUDA only), each minibatch's forward, loss and backward are one CUDA graph
    replay (learner/cuda_graph.py); the arithmetic is the same as the eager path's.
    `ent_coef` (default cfg.ent_coef) is this update's entropy bonus weight. With `mirror` (eager
    path only), cfg.mirror_coef x `mirror_loss` is added to each minibatch's loss.

    Stops early if cfg.target_kl > 0 and the KL passes it. Raises
    FloatingPointError (and leaves the weights as they were at the last good step) if a loss
    is not finite.

    Diagnostics are summed on the device and read once at the end (not seven host syncs per
    minibatch; with target_kl > 0, one more per epoch for the KL check); each epoch's shuffle is
    one gather, its minibatches are slices.
    """
    n = len(batch)
    size = n // cfg.minibatches
    params = [p for group in optimizer.param_groups for p in group["params"]]  # what it steps
    sums = torch.zeros(len(_STAT_NAMES), device=batch.obs.device)
    no_mirror = torch.zeros((), device=batch.obs.device)
    count = 0
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=generator, device="cpu").to(batch.obs.device)
        shuffled = batch.take(perm)
        kl_before = sums[_KL].clone()  # this epoch's mean KL is derived from the running sum
        for k in range(cfg.minibatches):
            mb = shuffled.slice(k * size, (k + 1) * size)
            if graphs is not None:  # forward, loss and backward in one replay; checked before the step
                out = graphs.get(size).run(mb, beta, cfg.ent_coef if ent_coef is None else ent_coef)
                _check_finite(out)
            else:
                adv = mb.advantages
                if cfg.norm_adv and len(adv) > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                new_logp, entropy, new_values, mean = model.evaluate_with_mean(mb.obs, mb.actions)
                out = ppo_loss(new_logp, mb.logp, adv, new_values, mb.values, mb.returns, entropy, cfg, beta,
                               mb.weights, ent_coef)
                if mirror is not None:
                    sym = mirror_loss(model, mb.obs, mirror, mean)
                    out = replace(out, loss=out.loss + cfg.mirror_coef * sym, mirror_loss=sym)
                _check_finite(out)
                optimizer.zero_grad(set_to_none=False)  # in place: keeps flat gradient views attached
                out.loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(params, cfg.max_grad_norm, foreach=True)
            optimizer.step()
            with torch.no_grad():
                sums += torch.stack([out.loss, out.policy_loss, out.value_loss, out.entropy, out.approx_kl,
                                     out.clipfrac, grad_norm,
                                     no_mirror if out.mirror_loss is None else out.mirror_loss]).detach()
            count += 1
        if cfg.target_kl > 0 and float(sums[_KL] - kl_before) / cfg.minibatches > cfg.target_kl:
            break
    means = (sums / count).tolist()
    # epochs: where target_kl stopped the update (cfg.epochs when it did not), so a run's records
    # show what an update cost at each learning rate
    return dict(zip(_STAT_NAMES, means, strict=True)) | {"epochs": float(count // cfg.minibatches)}


def _check_finite(out: LossOut) -> None:
    """Raise FloatingPointError before a non-finite loss can reach the weights (one host read)."""
    if not torch.isfinite(out.loss):
        raise FloatingPointError(f"non-finite PPO loss {out.loss.item()} (policy {out.policy_loss.item()}, "
                                 f"value {out.value_loss.item()})")


_STAT_NAMES = ("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac", "grad_norm", "mirror_loss")
_KL = _STAT_NAMES.index("approx_kl")
