"""A single-file PPO in the style of CleanRL's continuous-action script, for comparison runs.

Written for this benchmark (not copied): the same algorithm and the defaults CleanRL documents
for MuJoCo tasks: one env, 2048-step rollouts, 10 epochs of 32 minibatches, lr 3e-4 annealed,
gamma 0.99, GAE lambda 0.95, clip 0.2, value clip, no entropy bonus, grad-norm 0.5,
observation and reward normalisation through Gymnasium wrappers, 64x64 tanh networks.

    python benchmarks/peers/cleanrl_style_ppo.py --env Walker2d-v5 --total-steps 100000
prints one JSON line: {"steps": ..., "seconds": ..., "last_returns": [...]}.
`train` also returns the trained policy as a function of a raw observation (deterministic: the
mean action, on observations normalised with the statistics training ended with).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from torch import nn


def layer(i: int, o: int, gain: float = np.sqrt(2)) -> nn.Linear:
    lin = nn.Linear(i, o)
    nn.init.orthogonal_(lin.weight, gain)
    nn.init.zeros_(lin.bias)
    return lin


class Agent(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int) -> None:
        super().__init__()
        self.critic = nn.Sequential(layer(obs_dim, 64), nn.Tanh(), layer(64, 64), nn.Tanh(), layer(64, 1, 1.0))
        self.actor = nn.Sequential(layer(obs_dim, 64), nn.Tanh(), layer(64, 64), nn.Tanh(), layer(64, act_dim, 0.01))
        self.logstd = nn.Parameter(torch.zeros(1, act_dim))

    def act(self, x: torch.Tensor, a: torch.Tensor | None = None):
        mean = self.actor(x)
        dist = torch.distributions.Normal(mean, self.logstd.expand_as(mean).exp())
        if a is None:
            a = dist.sample()
        return a, dist.log_prob(a).sum(1), dist.entropy().sum(1), self.critic(x).squeeze(1)


def make_env(env_id: str, gamma: float) -> gym.vector.VectorEnv:
    def thunk() -> gym.Env:
        env = gym.make(env_id)
        env = gym.wrappers.FlattenObservation(env)
        env = gym.wrappers.RecordEpisodeStatistics(env)
        env = gym.wrappers.ClipAction(env)
        env = gym.wrappers.NormalizeObservation(env)
        env = gym.wrappers.TransformObservation(env, lambda o: np.clip(o, -10, 10), env.observation_space)
        env = gym.wrappers.NormalizeReward(env, gamma=gamma)
        return gym.wrappers.TransformReward(env, lambda r: float(np.clip(r, -10, 10)))

    return gym.vector.SyncVectorEnv([thunk], autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)


def train(env_id: str, total_steps: int, seed: int = 1) -> tuple[dict, Callable[[np.ndarray], np.ndarray]]:
    num_steps, epochs, minibatches = 2048, 10, 32
    gamma, lam, clip, lr, max_grad = 0.99, 0.95, 0.2, 3e-4, 0.5
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    envs = make_env(env_id, gamma)
    obs_dim = envs.single_observation_space.shape[0]
    act_dim = envs.single_action_space.shape[0]
    agent = Agent(obs_dim, act_dim)
    opt = torch.optim.Adam(agent.parameters(), lr=lr, eps=1e-5)
    obs_buf = torch.zeros(num_steps, 1, obs_dim)
    act_buf = torch.zeros(num_steps, 1, act_dim)
    logp_buf, rew_buf, done_buf, val_buf = (torch.zeros(num_steps, 1) for _ in range(4))
    returns_seen: list[float] = []
    episodes: list[list[float]] = []  # [env steps when it finished, return, 1]
    start = time.perf_counter()
    next_obs = torch.tensor(envs.reset(seed=seed)[0], dtype=torch.float32)
    next_done = torch.zeros(1)
    iterations = total_steps // num_steps
    steps = 0
    for it in range(iterations):
        opt.param_groups[0]["lr"] = lr * (1.0 - it / iterations)
        for t in range(num_steps):
            steps += 1
            obs_buf[t], done_buf[t] = next_obs, next_done
            with torch.no_grad():
                a, logp, _, v = agent.act(next_obs)
            act_buf[t], logp_buf[t], val_buf[t] = a, logp, v
            o, r, term, trunc, info = envs.step(a.numpy())
            rew_buf[t] = torch.tensor(r, dtype=torch.float32)
            next_obs = torch.tensor(o, dtype=torch.float32)
            next_done = torch.tensor(np.logical_or(term, trunc), dtype=torch.float32)
            if "episode" in info:
                for i in np.flatnonzero(info["_episode"]):
                    returns_seen.append(float(info["episode"]["r"][i]))
                    episodes.append([steps, returns_seen[-1], 1])
        with torch.no_grad():
            next_v = agent.act(next_obs)[3]
            adv = torch.zeros_like(rew_buf)
            last = torch.zeros(1)
            for t in reversed(range(num_steps)):
                nonterminal = 1.0 - (next_done if t == num_steps - 1 else done_buf[t + 1])
                nv = next_v if t == num_steps - 1 else val_buf[t + 1]
                delta = rew_buf[t] + gamma * nv * nonterminal - val_buf[t]
                last = delta + gamma * lam * nonterminal * last
                adv[t] = last
            ret = adv + val_buf
        b_obs, b_act = obs_buf.reshape(-1, obs_dim), act_buf.reshape(-1, act_dim)
        b_logp, b_adv, b_ret, b_val = logp_buf.reshape(-1), adv.reshape(-1), ret.reshape(-1), val_buf.reshape(-1)
        size = num_steps // minibatches
        for _ in range(epochs):
            perm = torch.randperm(num_steps)
            for k in range(minibatches):
                mb = perm[k * size : (k + 1) * size]
                _, new_logp, ent, v = agent.act(b_obs[mb], b_act[mb])
                ratio = (new_logp - b_logp[mb]).exp()
                a_mb = (b_adv[mb] - b_adv[mb].mean()) / (b_adv[mb].std() + 1e-8)
                pg = torch.max(-a_mb * ratio, -a_mb * ratio.clamp(1 - clip, 1 + clip)).mean()
                v_clip = b_val[mb] + (v - b_val[mb]).clamp(-clip, clip)
                vl = 0.5 * torch.max((v - b_ret[mb]) ** 2, (v_clip - b_ret[mb]) ** 2).mean()
                loss = pg + 0.5 * vl
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), max_grad)
                opt.step()
    result = {"steps": steps, "seconds": time.perf_counter() - start, "last_returns": returns_seen[-20:],
              "episodes": episodes}
    rms = envs.envs[0].get_wrapper_attr("obs_rms")  # NormalizeObservation's running statistics
    mean, std = rms.mean.astype(np.float32), np.sqrt(rms.var + 1e-8).astype(np.float32)

    def act(obs: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(np.clip((obs - mean) / std, -10, 10), dtype=torch.float32)[None]
        with torch.no_grad():
            return agent.actor(x)[0].numpy()

    return result, act


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--env", default="Walker2d-v5")
    p.add_argument("--total-steps", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    print(json.dumps(train(a.env, a.total_steps, a.seed)[0]))
