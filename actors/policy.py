"""The actor-critic network, and a NumPy twin of its policy half for the rollout actors.

`ActorCritic` (torch) is what the learner trains: a Gaussian policy whose mean comes from an
MLP and whose log-std is a state-independent parameter, plus a separate value MLP. Observations
are normalised inside the network with the running mean/variance kept in buffers, so a saved
state dict is a complete policy.

`NumpyPolicy` runs the same policy math on CPU with NumPy: for the small batches an actor steps
(tens of envs) it is several times faster than a torch call, and it keeps torch out of the
rollout hot path. A test checks it agrees with `ActorCritic`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from actors.trajectory import Weights

OBS_CLIP = 10.0  # normalised observations are clipped to +-OBS_CLIP
LOG_2PI = math.log(2 * math.pi)


class _SigmoidTanhFn(torch.autograd.Function):
    """tanh(x) = 2 sigmoid(2x) - 1, with the backward written from the output: 1 - y^2."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = torch.sigmoid(x * 2.0).mul_(2.0).sub_(1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        return grad * (1.0 - y * y)


SIGMOID_TANH_MIN = 16384  # elements; below this Tanh uses torch.tanh (see Tanh)


class Tanh(nn.Module):
    """nn.Tanh, but for large CPU tensors computed through sigmoid: the CPU PyTorch wheel's tanh
    kernel runs at ~2.8 ns per element on this machine's AVX-512 path, ~8x its sigmoid (a
    512 x 128 activation: 185-220 us against 25 us), and tanh was ~20% of a biped PPO minibatch
    step. Below SIGMOID_TANH_MIN elements the autograd.Function's fixed cost (~20 us) is more
    than it saves, so small tensors (a 64-sample minibatch of a 64-wide net) use torch.tanh.
    No parameters, so state dicts are those of nn.Tanh."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Exported graphs (TorchScript trace, ONNX) always get the plain op. The tracing checks
        # come first so that a trace never sees the shape test (which it would warn about and
        # freeze as a constant).
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or x.is_cuda or x.numel() < SIGMOID_TANH_MIN:
            return torch.tanh(x)
        return _SigmoidTanhFn.apply(x)


def _mlp(sizes: list[int], out_gain: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        linear = nn.Linear(sizes[i], sizes[i + 1])
        last = i == len(sizes) - 2
        nn.init.orthogonal_(linear.weight, out_gain if last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(Tanh())
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """pi(a | s) = N(mu(s), diag(exp(log_std))^2) and V(s), on normalised observations."""

    obs_mean: torch.Tensor  # [obs_dim] buffer, set by the learner from its RunningMeanStd
    obs_var: torch.Tensor  # [obs_dim] buffer

    def __init__(self, obs_dim: int, act_dim: int, hidden: tuple[int, ...] = (64, 64), init_log_std: float = -0.5):
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.pi = _mlp([obs_dim, *hidden, act_dim], out_gain=0.01)
        self.v = _mlp([obs_dim, *hidden, 1], out_gain=1.0)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))
        self.register_buffer("obs_mean", torch.zeros(obs_dim, dtype=torch.float32))
        self.register_buffer("obs_var", torch.ones(obs_dim, dtype=torch.float32))

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        """[N, obs_dim] raw -> normalised and clipped."""
        z = (obs - self.obs_mean) / torch.sqrt(self.obs_var + 1e-8)
        return torch.clamp(z, -OBS_CLIP, OBS_CLIP)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """[N, obs_dim] raw observations -> [N] state values."""
        return self.v(self.normalize(obs)).squeeze(-1)

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Normal:
        mean = self.pi(self.normalize(obs))
        return torch.distributions.Normal(mean, self.log_std.exp().expand_as(mean))

    def evaluate(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log-prob [N], entropy [N] of `actions` [N, act_dim], and values [N].

        The Gaussian's formulas written out (what `distribution()` gives, checked by a test):
        one normalisation for both heads and no Distribution object, since per-op overhead is
        most of a small minibatch step on the CPU.
        """
        logp, entropy, values, _ = self.evaluate_with_mean(obs, actions)
        return logp, entropy, values

    def evaluate_with_mean(self, obs: torch.Tensor, actions: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`evaluate`'s log-prob [N], entropy [N] and values [N], plus the policy's mean action
        [N, act_dim] it computed on the way (the mirror loss needs it; one forward pass, not two)."""
        z = self.normalize(obs)
        mean = self.pi(z)
        log_std = self.log_std
        log_std_sum = log_std.sum()
        logp = (actions - mean).mul(torch.exp(-log_std)).pow(2).sum(-1).mul(-0.5) - (
            log_std_sum + 0.5 * LOG_2PI * self.act_dim)
        entropy = (log_std_sum + (0.5 + 0.5 * LOG_2PI) * self.act_dim).expand(obs.shape[0])
        return logp, entropy, self.v(z).squeeze(-1), mean

    def weights(self, version: int) -> Weights:
        """Snapshot the parameters and normaliser as CPU NumPy arrays."""
        state = {k: v.detach().to("cpu", copy=True).numpy() for k, v in self.state_dict().items()}
        return Weights(version, state)


class NumpyPolicy:
    """The policy half of an `ActorCritic`, evaluated with NumPy from a `Weights` snapshot."""

    def __init__(self, weights: Weights) -> None:
        s = weights.state
        self.version = weights.version
        self.obs_mean = s["obs_mean"].astype(np.float32)
        self.obs_inv_std = (1.0 / np.sqrt(s["obs_var"] + 1e-8)).astype(np.float32)
        self.layers: list[tuple[np.ndarray, np.ndarray]] = []
        i = 0
        while f"pi.{i}.weight" in s:
            self.layers.append((np.ascontiguousarray(s[f"pi.{i}.weight"].T), s[f"pi.{i}.bias"]))
            i += 2  # Linear, Tanh, Linear, ...
        self.log_std = s["log_std"].astype(np.float32)
        self.std = np.exp(self.log_std)
        self._logp_const = float(-self.log_std.sum() - 0.5 * LOG_2PI * self.log_std.size)

    def mean(self, obs: np.ndarray) -> np.ndarray:
        """[N, obs_dim] raw observations -> [N, act_dim] action means."""
        x = np.clip((obs - self.obs_mean) * self.obs_inv_std, -OBS_CLIP, OBS_CLIP)
        for k, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if k < len(self.layers) - 1:
                x = np.tanh(x)
        return x

    def act(self, obs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Sample actions [N, act_dim] and their log-probs [N] (float32)."""
        mean = self.mean(obs)
        noise = rng.standard_normal(mean.shape, dtype=np.float32)
        actions = mean + self.std * noise
        logp = self._logp_const - 0.5 * np.sum(noise * noise, axis=-1)
        return actions.astype(np.float32), logp.astype(np.float32)
