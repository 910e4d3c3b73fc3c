"""Generalised Advantage Estimation, keeping termination and truncation apart."""

from __future__ import annotations

import torch


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(gamma, lambda) over a time-major batch.

    Args:
        rewards:     [T, B] r_t.
        values:      [T, B] V(s_t).
        next_values: [T, B] V of the state after step t: V(obs[t+1]) while the episode goes
                     on, V(the episode's last observation) where it was truncated at t (any
                     value where it was terminated: it is ignored).
        terminated:  [T, B] bool, true end of the episode at t: no bootstrap.
        truncated:   [T, B] bool, time limit at t: bootstrap from next_values, but do not carry
                     the advantage across into the next episode.
    Returns:
        advantages [T, B] and returns (advantages + values) [T, B].

    delta_t = r_t + gamma * (1 - term_t) * next_v_t - v_t
    A_t     = delta_t + gamma * lam * (1 - term_t) * (1 - trunc_t) * A_{t+1}
    """
    not_term = 1.0 - terminated.to(values.dtype)
    cont = not_term * (1.0 - truncated.to(values.dtype))
    deltas = rewards + gamma * not_term * next_values - values
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = deltas[t] + gamma * lam * cont[t] * running
        advantages[t] = running
    return advantages, advantages + values
