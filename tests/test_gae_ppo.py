"""GAE, the PPO loss, the normaliser and the NumPy policy against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from actors.policy import SIGMOID_TANH_MIN, ActorCritic, NumpyPolicy, Tanh
from actors.trajectory import Trajectory
from learner.config import PPOConfig
from learner.gae import compute_gae
from learner.learner import stack_fragments, values_and_bootstrap
from learner.normalizer import RunningMeanStd
from learner.ppo import LR_BOUNDS, Batch, adapt_beta, adapt_lr, entropy_coef, explained_variance, ppo_loss, ppo_update


def reference_gae(r, v, nv, term, trunc, gamma, lam):
    """Plain Python, one env and one step at a time."""
    T, B = len(r), len(r[0])
    adv = [[0.0] * B for _ in range(T)]
    for b in range(B):
        running = 0.0
        for t in reversed(range(T)):
            if term[t][b]:
                bootstrap, carry = 0.0, 0.0
            elif trunc[t][b]:
                bootstrap, carry = nv[t][b], 0.0
            else:
                bootstrap, carry = nv[t][b], running
            delta = r[t][b] + gamma * bootstrap - v[t][b]
            running = delta + gamma * lam * carry
            adv[t][b] = running
    return adv


def test_gae_matches_plain_python_reference() -> None:
    rng = np.random.default_rng(0)
    T, B = 13, 5
    r, v, nv = rng.normal(size=(3, T, B))
    term = rng.random((T, B)) < 0.15
    trunc = (rng.random((T, B)) < 0.15) & ~term
    assert term[1:-1].any() and trunc[1:-1].any()  # ends in the middle of fragments
    adv, ret = compute_gae(*(torch.tensor(x) for x in (r, v, nv, term, trunc)), gamma=0.97, lam=0.9)
    ref = np.array(reference_gae(r.tolist(), v.tolist(), nv.tolist(), term.tolist(), trunc.tolist(), 0.97, 0.9))
    np.testing.assert_allclose(adv.numpy(), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ret.numpy(), ref + v, rtol=1e-12)


def test_truncation_bootstraps_and_termination_does_not() -> None:
    r, v, nv = (torch.tensor([[x]]) for x in (1.0, 0.5, 2.0))
    no = torch.tensor([[False]])
    yes = torch.tensor([[True]])
    adv_term, _ = compute_gae(r, v, nv, yes, no, gamma=0.9, lam=0.95)
    adv_trunc, _ = compute_gae(r, v, nv, no, yes, gamma=0.9, lam=0.95)
    assert adv_term.item() == pytest.approx(1.0 - 0.5)
    assert adv_trunc.item() == pytest.approx(1.0 + 0.9 * 2.0 - 0.5)


def test_advantage_does_not_leak_across_episode_boundaries() -> None:
    # Two steps; the first ends the episode (either way): A_0 must not include A_1.
    r = torch.tensor([[0.0], [10.0]])
    v = torch.zeros(2, 1)
    nv = torch.ones(2, 1)
    for term0, trunc0 in ((True, False), (False, True)):
        term = torch.tensor([[term0], [False]])
        trunc = torch.tensor([[trunc0], [False]])
        adv, _ = compute_gae(r, v, nv, term, trunc, gamma=0.9, lam=1.0)
        assert adv[0, 0].item() == pytest.approx(0.0 if term0 else 0.9)


def test_truncated_steps_bootstrap_from_final_obs_value() -> None:
    torch.manual_seed(0)
    model = ActorCritic(3, 1)
    obs = torch.randn(4, 2, 3)
    truncated = torch.zeros(3, 2, dtype=torch.bool)
    truncated[1, 1] = truncated[2, 0] = True
    final_obs = torch.randn(2, 3)  # one row per truncation, in (t, b) order: (1, 1) then (2, 0)
    # A batched forward pass and a one-row pass sum in a different order, so float32
    # results differ by ~1e-7 absolute (seen on AVX-512 CPUs); that is far below the
    # gap between the two candidate bootstraps, which the first assertion checks.
    tol = {"rel": 1e-5, "abs": 1e-6}
    with torch.no_grad():
        values, next_values = values_and_bootstrap(model, obs, final_obs, truncated)
        v = lambda x: model.value(x[None]).item()  # noqa: E731
        assert abs(v(final_obs[0]) - v(obs[2, 1])) > 1e-3 and abs(v(final_obs[1]) - v(obs[3, 0])) > 1e-3
        assert next_values[1, 1].item() == pytest.approx(v(final_obs[0]), **tol)
        assert next_values[2, 0].item() == pytest.approx(v(final_obs[1]), **tol)
        assert next_values[1, 0].item() == pytest.approx(v(obs[2, 0]), **tol)
        assert next_values[2, 1].item() == pytest.approx(v(obs[3, 1]), **tol)
        assert values[0, 1].item() == pytest.approx(v(obs[0, 1]), **tol)
        _, no_trunc = values_and_bootstrap(model, obs, torch.zeros(0, 3), torch.zeros(3, 2, dtype=torch.bool))
        torch.testing.assert_close(no_trunc, model.value(obs[1:].reshape(-1, 3)).reshape(3, 2))


def test_stacked_fragments_keep_each_final_obs_with_its_truncated_step() -> None:
    """Reference: the dense [T, B, obs_dim] final observations of each fragment, concatenated
    along B and indexed by the stacked mask."""
    rng = np.random.default_rng(3)
    t, obs_dim = 6, 2
    dense, frags = [], []
    for b in (3, 1, 4):
        trunc = rng.random((t, b)) < 0.3
        trunc[2, 0] = True  # every fragment has a truncation at t = 2, so rows from all three interleave
        d = rng.normal(size=(t, b, obs_dim)).astype(np.float32)
        dense.append(d)
        frags.append(Trajectory(np.zeros((t + 1, b, obs_dim), np.float32), np.zeros((t, b, 1), np.float32),
                                np.zeros((t, b), np.float32), np.zeros((t, b), np.float32), np.zeros((t, b), bool),
                                trunc, d[trunc], 0, 0))
    data = stack_fragments(frags)
    expected = np.concatenate(dense, axis=1)[data["truncated"]]
    assert data["truncated"].shape == (t, 8) and data["final_obs"].shape == (int(data["truncated"].sum()), obs_dim)
    np.testing.assert_array_equal(data["final_obs"], expected)
    np.testing.assert_array_equal(stack_fragments(frags[1:2])["final_obs"], dense[1][frags[1].truncated])


def _loss(new_logp, old_logp, adv, cfg=None, beta=0.0, new_v=0.0, old_v=0.0, ret=0.0):
    cfg = cfg or PPOConfig()
    t = lambda x: torch.as_tensor(x, dtype=torch.float64).reshape(-1)  # noqa: E731
    n = len(t(new_logp))
    return ppo_loss(t(new_logp), t(old_logp), t(adv), t(new_v).expand(n), t(old_v).expand(n), t(ret).expand(n),
                    torch.zeros(n, dtype=torch.float64), cfg, beta)


def test_ratio_one_gives_zero_clipfrac_and_kl() -> None:
    out = _loss([-1.0, -2.0, 0.5], [-1.0, -2.0, 0.5], [1.0, -2.0, 4.0])
    assert out.clipfrac.item() == 0.0
    assert out.approx_kl.item() == 0.0
    assert out.policy_loss.item() == pytest.approx(-(1.0 - 2.0 + 4.0) / 3)


@pytest.mark.parametrize(
    ("adv", "ratio", "expected", "clipped"),
    [
        (1.0, 1.5, -1.2, True),  # positive advantage, ratio above 1+eps: clipped, no gradient
        (1.0, 0.5, -0.5, False),  # positive advantage, ratio below: unclipped
        (-1.0, 0.5, 0.8, True),  # negative advantage, ratio below 1-eps: clipped
        (-1.0, 1.5, 1.5, False),  # negative advantage, ratio above: unclipped
    ],
)
def test_clipping_engages_on_the_right_side(adv: float, ratio: float, expected: float, clipped: bool) -> None:
    new_logp = torch.tensor([np.log(ratio)], dtype=torch.float64, requires_grad=True)
    cfg = PPOConfig(clip_coef=0.2)
    out = ppo_loss(new_logp, torch.zeros(1, dtype=torch.float64), torch.tensor([adv], dtype=torch.float64),
                   torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), cfg)
    assert out.policy_loss.item() == pytest.approx(expected)
    assert out.clipfrac.item() == 1.0
    out.policy_loss.backward()
    assert (new_logp.grad.item() == 0.0) == clipped


def test_decoupled_weights_scale_the_surrogate_and_give_the_behaviour_gradient() -> None:
    """With weights w = pi_prox / pi_behaviour, each sample's policy term is w times PPO's term
    against the proximal policy, clipped on the proximal ratio; where it is not clipped its
    gradient equals the plain surrogate's against the behaviour policy, A * pi / pi_behaviour."""
    cfg = PPOConfig(clip_coef=0.2)
    behaviour = torch.tensor([-1.0, -2.0, -0.5, -1.5], dtype=torch.float64)
    prox = torch.tensor([-0.8, -2.3, -0.5, -1.0], dtype=torch.float64)
    new = torch.tensor([-0.7, -2.4, -0.2, -1.1], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 1.0, 0.5], dtype=torch.float64)
    w = (prox - behaviour).exp()
    z = torch.zeros(4, dtype=torch.float64)
    out = ppo_loss(new, prox, adv, z, z, z, z, cfg, 0.0, w)
    # By hand: proximal ratios e^0.1, e^-0.1, e^0.3 (clipped at 1.2 for A > 0), e^-0.1.
    r = np.exp([0.1, -0.1, 0.3, -0.1])
    terms = [max(-a * ri, -a * min(max(ri, 0.8), 1.2)) for a, ri in zip([1.0, -2.0, 1.0, 0.5], r, strict=True)]
    assert out.policy_loss.item() == pytest.approx(float(np.mean(np.array(terms) * w.numpy())))
    assert out.approx_kl.item() == pytest.approx(float(np.mean((r - 1) - np.log(r))))  # against prox
    assert out.clipfrac.item() == pytest.approx(0.25)
    out.policy_loss.backward()
    unclipped = torch.tensor([True, True, False, True])
    expected = -adv * (new.detach() - behaviour).exp() / 4
    torch.testing.assert_close(new.grad[unclipped], expected[unclipped])
    assert new.grad[2].item() == 0.0
    # All weights one is plain PPO, to the bit.
    plain = ppo_loss(new.detach(), prox, adv, z, z, z, z, cfg)
    ones = ppo_loss(new.detach(), prox, adv, z, z, z, z, cfg, 0.0, torch.ones(4, dtype=torch.float64))
    assert plain.policy_loss.item() == ones.policy_loss.item()


def test_learner_clips_stale_fragments_against_its_current_policy() -> None:
    """An on-policy fragment keeps its behaviour log-probs (weight exactly 1); a fragment from an
    older version gets the current policy's log-probs and weights pi_current / pi_behaviour."""
    from learner import config as C
    from learner.learner import Learner

    cfg = C.load(None, {"env.id": "Pendulum-v1", "ppo.epochs": 1, "ppo.minibatches": 2})
    learner = Learner(cfg, obs_dim=3, act_dim=1, device="cpu")
    t, b = 4, 2
    rng = np.random.default_rng(0)

    def frag(version: int) -> Trajectory:
        return Trajectory(rng.normal(size=(t + 1, b, 3)).astype(np.float32),
                          rng.normal(size=(t, b, 1)).astype(np.float32), rng.normal(-1, 0.1, (t, b)).astype(np.float32),
                          rng.normal(size=(t, b)).astype(np.float32), np.zeros((t, b), bool), np.zeros((t, b), bool),
                          np.zeros((0, 3), np.float32), version, 0)

    learner.update([frag(0)], env_steps=0)  # now at version 1, with a trained-on normaliser
    current, stale = frag(1), frag(0)
    frags = [current, stale]
    obs = torch.as_tensor(np.concatenate([f.obs[:-1] for f in frags], axis=1)).reshape(t * 2 * b, 3)
    actions = torch.as_tensor(np.concatenate([f.actions for f in frags], axis=1)).reshape(t * 2 * b, 1)
    behaviour = torch.as_tensor(np.concatenate([f.logp for f in frags], axis=1))
    logp, weights, diag = learner._proximal(frags, obs, actions, behaviour)
    logp, weights, behaviour = logp.reshape(t, 2 * b), weights.reshape(t, 2 * b), behaviour
    assert torch.equal(logp[:, :b], behaviour[:, :b]) and torch.equal(weights[:, :b], torch.ones(t, b))
    with torch.no_grad():
        dist = learner.model.distribution(obs)
        mine = dist.log_prob(actions).sum(-1).reshape(t, 2 * b)
    torch.testing.assert_close(logp[:, b:], mine[:, b:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights[:, b:], (mine[:, b:] - behaviour[:, b:]).exp(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(weights[:, b:], torch.ones(t, b))
    assert diag == {"stale_fraction": 0.5, "is_weight_max": pytest.approx(float(weights.max())),
                    "is_weight_capped": 0.0}
    # A cap truncates the stale weights above it, and only those; the proximal log-probs stay.
    cap = learner.cfg.ppo.max_is_weight = max(float(weights[:, b:].median()), 1.0)
    capped_logp, capped, diag = learner._proximal(frags, obs, actions, behaviour)
    capped = capped.reshape(t, 2 * b)
    assert torch.equal(capped_logp.reshape(t, 2 * b), logp)
    torch.testing.assert_close(capped, weights.clamp(max=cap))
    above = int((weights[:, b:] > cap).sum())
    assert above > 0 and diag["is_weight_capped"] == pytest.approx(above / (t * 2 * b))
    assert diag["is_weight_max"] == pytest.approx(float(weights.max()))  # before truncation
    learner.cfg.ppo.max_is_weight = 0.0
    learner.cfg.ppo.decoupled = False  # the plain variant clips everything against the behaviour policy
    plain_logp, plain_weights, diag = learner._proximal(frags, obs, actions, behaviour)
    assert torch.equal(plain_logp, behaviour.reshape(-1)) and torch.equal(plain_weights, torch.ones(t * 2 * b))
    assert diag == {"stale_fraction": 0.5, "is_weight_max": 1.0, "is_weight_capped": 0.0}  # still counted
    learner.cfg.ppo.decoupled = True
    stats = learner.update(frags, env_steps=16)  # and the update runs on the mixed batch
    assert all(np.isfinite(v) for v in stats.values()) and learner.version == 2


def _random_fragment(rng: np.random.Generator, act_dim: int, version: int = 0, t: int = 8, b: int = 4) -> Trajectory:
    """A [T = t, B = b] fragment of 3-d observations with no episode ends: behaviour log-prob -1
    everywhere, actions uniform in [-1, 1], normal observations and rewards."""
    return Trajectory(rng.normal(size=(t + 1, b, 3)).astype(np.float32),
                      rng.uniform(-1, 1, size=(t, b, act_dim)).astype(np.float32), np.full((t, b), -1.0, np.float32),
                      rng.normal(size=(t, b)).astype(np.float32), np.zeros((t, b), bool), np.zeros((t, b), bool),
                      np.zeros((0, 3), np.float32), version, 0)


def test_min_std_floors_the_policy_std_after_each_update() -> None:
    """model.min_std: a log-std below log(min_std) is raised to it by the update, one above it is
    left where the optimiser put it, and the actors' weights carry the floored value. Without
    the floor the same start stays below it."""
    from learner import config as C
    from learner.learner import Learner

    rng = np.random.default_rng(7)
    floor = 0.2
    overrides = {"env.id": "Pendulum-v1", "ppo.epochs": 1, "ppo.minibatches": 2, "model.init_log_std": -3.0}
    plain = Learner(C.load(None, overrides), obs_dim=3, act_dim=2, device="cpu")
    plain.update([_random_fragment(rng, act_dim=2)], env_steps=0)
    assert bool((plain.model.log_std < math.log(floor)).all())
    floored = Learner(C.load(None, {**overrides, "model.min_std": floor}), obs_dim=3, act_dim=2, device="cpu")
    with torch.no_grad():
        floored.model.log_std[1] = 0.0  # one dimension well above the floor
    floored.update([_random_fragment(rng, act_dim=2)], env_steps=0)
    log_std = floored.model.log_std.detach()
    assert log_std[0].item() == pytest.approx(math.log(floor))
    assert log_std[1].item() > math.log(floor) and log_std[1].item() != 0.0  # trained, not floored
    shipped = floored.weights().state["log_std"]
    np.testing.assert_array_equal(shipped, log_std.numpy())
    with pytest.raises(C.ConfigError, match="model.min_std"):
        C.validate(C.load(None, {"model.min_std": -0.1}))


def test_value_loss_clipping_by_hand() -> None:
    cfg = PPOConfig(clip_coef=0.2, clip_vloss=True)
    # new value 1.0 moved 1.0 from old 0.0; clipped to 0.2. Return 2.0: (1-2)^2=1, (0.2-2)^2=3.24.
    out = _loss([0.0], [0.0], [0.0], cfg, new_v=1.0, old_v=0.0, ret=2.0)
    assert out.value_loss.item() == pytest.approx(0.5 * 3.24)
    out = _loss([0.0], [0.0], [0.0], PPOConfig(clip_vloss=False), new_v=1.0, old_v=0.0, ret=2.0)
    assert out.value_loss.item() == pytest.approx(0.5)


def test_penalty_loss_and_beta_adaptation() -> None:
    cfg = PPOConfig(loss="penalty")
    ratio = np.array([1.1, 0.8])
    adv = np.array([2.0, -1.0])
    out = _loss(np.log(ratio), [0.0, 0.0], adv, cfg, beta=3.0)
    kl = np.mean((ratio - 1) - np.log(ratio))
    assert out.approx_kl.item() == pytest.approx(kl)
    assert out.policy_loss.item() == pytest.approx(np.mean(-adv * ratio) + 3.0 * kl)
    assert adapt_beta(1.0, kl=0.1, kl_target=0.01) == 2.0
    assert adapt_beta(1.0, kl=0.001, kl_target=0.01) == 0.5
    assert adapt_beta(1.0, kl=0.01, kl_target=0.01) == 1.0
    assert adapt_beta(1.0, kl=0.0149, kl_target=0.01) == 1.0


def test_entropy_bonus_decays_linearly_to_zero_over_ent_decay_steps() -> None:
    """ent_coef x max(0, 1 - steps / ent_decay_steps), worked out by hand; 0 keeps it constant."""
    cfg = PPOConfig(ent_coef=0.01, ent_decay_steps=1000)
    got = [entropy_coef(cfg, s) for s in (0, 250, 500, 999, 1000, 5000)]
    assert got == pytest.approx([0.01, 0.0075, 0.005, 0.00001, 0.0, 0.0])
    assert entropy_coef(PPOConfig(ent_coef=0.01), 10**9) == 0.01
    # The loss uses the weight it is given: total = policy + vf_coef * value - ent_coef * entropy.
    ent = torch.tensor([1.5, 2.5], dtype=torch.float64)  # mean 2
    z, adv = torch.zeros(2, dtype=torch.float64), torch.tensor([1.0, -1.0], dtype=torch.float64)
    ret = torch.tensor([1.0, 3.0], dtype=torch.float64)  # value loss 0.5 * mean(1, 9) = 2.5
    for given, weight in ((None, 0.01), (0.004, 0.004), (0.0, 0.0)):
        out = ppo_loss(z, z, adv, z, z, ret, ent, cfg, ent_coef=given)
        assert out.policy_loss.item() == 0.0 and out.value_loss.item() == pytest.approx(2.5)
        assert out.loss.item() == pytest.approx(0.5 * 2.5 - weight * 2.0)


def test_learner_lowers_the_entropy_bonus_with_env_steps() -> None:
    """The learner's update reports the bonus weight it used, from the env steps it is given, so
    a resumed run (which restores the step counter) picks the schedule up where it was."""
    from learner import config as C
    from learner.learner import Learner

    rng = np.random.default_rng(6)
    cfg = C.load(None, {"env.id": "Pendulum-v1", "ppo.epochs": 1, "ppo.minibatches": 2, "ppo.ent_coef": 0.02,
                        "ppo.ent_decay_steps": 400})
    learner = Learner(cfg, obs_dim=3, act_dim=1, device="cpu")
    used = [learner.update([_random_fragment(rng, 1, learner.version)], env_steps=s)["ent_coef"]
            for s in (0, 100, 300, 400, 800)]
    assert used == pytest.approx([0.02, 0.015, 0.005, 0.0, 0.0])


def test_linear_learning_rate_anneals_over_lr_decay_steps_else_the_budget() -> None:
    """lr x max(0, 1 - steps / horizon) with the horizon ppo.lr_decay_steps when set (here 1,000
    steps of a 100-step budget) and train.total_steps otherwise, worked out by hand; the rate
    the update reports is the one for the env steps it is given."""
    from learner import config as C
    from learner.learner import Learner

    base = {"env.id": "Pendulum-v1", "ppo.lr": 3e-4, "train.total_steps": 100}
    horizon = Learner(C.load(None, {**base, "ppo.lr_decay_steps": 1000}), obs_dim=3, act_dim=1, device="cpu")
    assert [horizon.learning_rate(s) for s in (0, 100, 250, 1000, 4000)] == pytest.approx(
        [3e-4, 2.7e-4, 2.25e-4, 0.0, 0.0])
    budget = Learner(C.load(None, base), obs_dim=3, act_dim=1, device="cpu")
    assert [budget.learning_rate(s) for s in (0, 25, 100)] == pytest.approx([3e-4, 2.25e-4, 0.0])
    rng = np.random.default_rng(7)
    assert horizon.update([_random_fragment(rng, 1, 0)], env_steps=500)["lr"] == pytest.approx(1.5e-4)
    with pytest.raises(C.ConfigError, match="^ppo.lr_decay_steps"):
        C.validate(C.load(None, {**base, "ppo.lr_decay_steps": -1}))


def test_step_learning_rate_drops_by_the_factor_at_each_milestone() -> None:
    """lr x factor^k, k the milestones at or below the env steps, worked out by hand for 3e-4,
    milestones 100 and 300 and a factor of 0.5; the update reports the rate of the steps it is
    given (those before its batch)."""
    from learner import config as C
    from learner.learner import Learner

    cfg = C.load(None, {"env.id": "Pendulum-v1", "ppo.lr": 3e-4, "ppo.lr_schedule": "step",
                        "ppo.lr_milestones": "100,300", "ppo.lr_step_factor": 0.5})
    C.validate(cfg)
    learner = Learner(cfg, obs_dim=3, act_dim=1, device="cpu")
    assert [learner.learning_rate(s) for s in (0, 99, 100, 299, 300, 10**9)] == pytest.approx(
        [3e-4, 3e-4, 1.5e-4, 1.5e-4, 7.5e-5, 7.5e-5])
    rng = np.random.default_rng(7)
    assert learner.update([_random_fragment(rng, 1, 0)], env_steps=99)["lr"] == pytest.approx(3e-4)
    assert learner.update([_random_fragment(rng, 1, 1)], env_steps=100)["lr"] == pytest.approx(1.5e-4)


def test_plateau_learning_rate_falls_when_the_training_return_stops_rising() -> None:
    """lr_schedule 'plateau' in the learner: fragments of 32 env steps whose one finished episode
    returns 10 every time, windows of 64 env steps. The comparison needs 128 steps (four updates,
    at env steps 0-96), finds 10 short of 10 x 1.5 and halves the rate from the fifth update on;
    the next one needs 128 fresh steps (updates at 128-224), halves it again from the update at
    256, and max_drops 2 ends it there. A learner restored from a checkpoint's state goes on alike."""
    import dataclasses

    from actors.trajectory import EpisodeStats
    from learner import config as C
    from learner.learner import Learner

    cfg = C.load(None, {"env.id": "Pendulum-v1", "ppo.epochs": 1, "ppo.minibatches": 2, "ppo.lr": 4e-4,
                        "ppo.lr_schedule": "plateau", "ppo.lr_plateau_window": 64, "ppo.lr_plateau_min_gain": 0.5,
                        "ppo.lr_plateau_max_drops": 2, "ppo.lr_step_factor": 0.5})
    C.validate(cfg)
    rng = np.random.default_rng(11)

    def frag(learner: Learner) -> Trajectory:
        episode = EpisodeStats(np.array([10.0]), np.array([5]), ("fell",))
        return dataclasses.replace(_random_fragment(rng, act_dim=1, version=learner.version), episodes=episode)

    learner = Learner(cfg, obs_dim=3, act_dim=1, device="cpu")
    stats = [learner.update([frag(learner)], env_steps=32 * i) for i in range(7)]
    restored = Learner(cfg, obs_dim=3, act_dim=1, device="cpu")
    restored.load_state_dict(learner.state_dict())
    stats += [learner.update([frag(learner)], env_steps=32 * i) for i in range(7, 12)]
    assert [s["lr"] for s in stats] == pytest.approx([4e-4] * 4 + [2e-4] * 4 + [1e-4] * 4)
    assert [s["lr_drops"] for s in stats] == [0.0] * 3 + [1.0] * 4 + [2.0] * 5  # counted after the update
    again = [restored.update([frag(restored)], env_steps=32 * i)["lr"] for i in range(7, 12)]
    assert again == pytest.approx([2e-4] + [1e-4] * 4)


def test_adaptive_learning_rate_rule() -> None:
    """lr / 1.5 above 2x the KL target, x 1.5 below half of it, unchanged inside the band and on
    its edges, and held within LR_BOUNDS."""
    assert adapt_lr(3e-4, kl=0.03, kl_target=0.01) == pytest.approx(2e-4)
    assert adapt_lr(3e-4, kl=0.004, kl_target=0.01) == pytest.approx(4.5e-4)
    for kl in (0.005, 0.01, 0.02):
        assert adapt_lr(3e-4, kl=kl, kl_target=0.01) == 3e-4
    assert adapt_lr(LR_BOUNDS[1], kl=0.0, kl_target=0.01) == LR_BOUNDS[1]
    assert adapt_lr(LR_BOUNDS[0] * 1.2, kl=1.0, kl_target=0.01) == LR_BOUNDS[0]


def test_learner_steers_its_learning_rate_by_kl_and_checkpoints_it() -> None:
    """lr_schedule 'adaptive': each update runs at the rate the previous updates' KL left (the
    stats report the rate used), and a restored learner continues from it. 'linear' and
    'constant' follow env steps only."""
    from learner import config as C
    from learner.learner import Learner

    rng = np.random.default_rng(5)

    def frag(version: int) -> Trajectory:
        return _random_fragment(rng, act_dim=1, version=version)

    # A KL target far above anything an update reaches: every update multiplies the rate by 1.5.
    cfg = C.load(None, {"env.id": "Pendulum-v1", "ppo.epochs": 1, "ppo.minibatches": 2, "ppo.lr": 1e-4,
                        "ppo.lr_schedule": "adaptive", "ppo.lr_kl_target": 10.0})
    learner = Learner(cfg, obs_dim=3, act_dim=1, device="cpu")
    used = [learner.update([frag(learner.version)], env_steps=0)["lr"] for _ in range(3)]
    assert used == pytest.approx([1e-4, 1.5e-4, 2.25e-4])
    restored = Learner(cfg, obs_dim=3, act_dim=1, device="cpu")
    restored.load_state_dict(learner.state_dict())
    assert restored.update([frag(restored.version)], env_steps=0)["lr"] == pytest.approx(3.375e-4)
    # A target far below every update's KL: the rate falls by 1.5 per update.
    learner.cfg.ppo.lr_kl_target = 1e-12
    assert [learner.update([frag(learner.version)], env_steps=0)["lr"] for _ in range(2)] == pytest.approx(
        [3.375e-4, 2.25e-4])
    for schedule, expected in (("linear", 1e-4 * 0.75), ("constant", 1e-4)):
        cfg = C.load(None, {"env.id": "Pendulum-v1", "ppo.epochs": 1, "ppo.minibatches": 2, "ppo.lr": 1e-4,
                            "ppo.lr_schedule": schedule, "train.total_steps": 1000, "ppo.lr_kl_target": 1e-12})
        fixed = Learner(cfg, obs_dim=3, act_dim=1, device="cpu")
        assert [fixed.update([frag(fixed.version)], env_steps=250)["lr"] for _ in range(2)] == pytest.approx(
            [expected] * 2)


def test_explained_variance() -> None:
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(y, y) == pytest.approx(1.0)
    assert explained_variance(torch.full((4,), 2.5), y) == pytest.approx(0.0)


def rewarded_batch(model: ActorCritic, obs: torch.Tensor) -> Batch:
    """Actions sampled from `model` at `obs`, with advantages that reward the first action
    dimension being high (returns = advantages + values)."""
    with torch.no_grad():
        dist = model.distribution(obs)
        actions = dist.sample()
        logp = dist.log_prob(actions).sum(-1)
        values = model.value(obs)
    adv = actions[:, 0] - actions[:, 0].mean()
    return Batch(obs, actions, logp, adv, adv + values, values, torch.ones(len(obs)))


def test_ppo_update_improves_the_surrogate_and_stays_finite() -> None:
    torch.manual_seed(0)
    model = ActorCritic(4, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    obs = torch.randn(256, 4)
    batch = rewarded_batch(model, obs)
    actions, logp, adv = batch.actions, batch.logp, batch.advantages
    cfg = PPOConfig(epochs=4, minibatches=4)
    stats = ppo_update(model, opt, batch, cfg, beta=0.0, generator=torch.Generator().manual_seed(0))
    assert all(np.isfinite(v) for v in stats.values())
    with torch.no_grad():
        new_logp = model.distribution(obs).log_prob(actions).sum(-1)
    assert ((new_logp - logp) * adv).mean() > 0  # likelihood moved towards positive advantages
    assert stats["clipfrac"] > 0


def test_running_mean_std_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    chunks = [rng.normal(3.0, 2.0, size=(n, 5)) for n in (1, 17, 200, 3)]
    rms = RunningMeanStd(5)
    for c in chunks:
        rms.update(c)
    every = np.concatenate(chunks)
    np.testing.assert_allclose(rms.mean, every.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(rms.var, every.var(axis=0), rtol=1e-10)
    assert rms.count == len(every)


def test_numpy_policy_matches_torch_policy() -> None:
    torch.manual_seed(3)
    model = ActorCritic(31, 6, hidden=(32, 16))
    model.obs_mean.copy_(torch.randn(31))
    model.obs_var.copy_(torch.rand(31) + 0.5)
    policy = NumpyPolicy(model.weights(version=7))
    assert policy.version == 7
    obs = np.random.default_rng(0).normal(size=(9, 31)).astype(np.float32) * 3
    with torch.no_grad():
        dist = model.distribution(torch.as_tensor(obs))
    np.testing.assert_allclose(policy.mean(obs), dist.mean.numpy(), rtol=1e-5, atol=1e-6)
    actions, logp = policy.act(obs, np.random.default_rng(0))
    with torch.no_grad():
        ref_logp = dist.log_prob(torch.as_tensor(actions)).sum(-1).numpy()
    np.testing.assert_allclose(logp, ref_logp, rtol=1e-5, atol=1e-5)


def test_evaluate_matches_torch_distributions() -> None:
    """The written-out Gaussian log-prob/entropy and the sigmoid-based tanh agree with
    torch.distributions.Normal and torch.tanh, values and gradients."""
    torch.manual_seed(4)
    model = ActorCritic(5, 3, hidden=(16, 8), init_log_std=-0.3)
    model.obs_mean.copy_(torch.randn(5))
    model.obs_var.copy_(torch.rand(5) + 0.5)
    obs, actions = torch.randn(11, 5) * 2, torch.randn(11, 3)
    logp, entropy, values = model.evaluate(obs, actions)
    dist = model.distribution(obs)
    torch.testing.assert_close(logp, dist.log_prob(actions).sum(-1))
    torch.testing.assert_close(entropy, dist.entropy().sum(-1))
    torch.testing.assert_close(values, model.value(obs))

    x = torch.linspace(-12, 12, SIGMOID_TANH_MIN + 1, dtype=torch.float32, requires_grad=True)  # sigmoid path
    ref = x.detach().clone().requires_grad_(True)
    y, y_ref = Tanh()(x), torch.tanh(ref)
    assert "SigmoidTanh" in type(y.grad_fn).__name__
    torch.testing.assert_close(y, y_ref, atol=2e-7, rtol=0)
    (y * torch.cos(x)).sum().backward()
    (y_ref * torch.cos(ref)).sum().backward()
    torch.testing.assert_close(x.grad, ref.grad, atol=1e-6, rtol=0)


def test_non_finite_loss_never_reaches_the_weights() -> None:
    """A batch whose loss overflows (finite but absurd rewards) leaves weights and optimiser
    exactly as they were and raises FloatingPointError for the trainer to count and skip."""
    from learner import config as C
    from learner.learner import Learner

    cfg = C.load(None, {"env.id": "Pendulum-v1", "ppo.epochs": 2, "ppo.minibatches": 2})
    learner = Learner(cfg, obs_dim=3, act_dim=1, device="cpu")
    t, b = 8, 2
    rng = np.random.default_rng(0)

    def frag(reward: float) -> Trajectory:
        return Trajectory(rng.normal(size=(t + 1, b, 3)).astype(np.float32), np.zeros((t, b, 1), np.float32),
                          np.zeros((t, b), np.float32), np.full((t, b), reward, np.float32),
                          np.zeros((t, b), bool), np.zeros((t, b), bool), np.zeros((0, 3), np.float32), 0, 0)

    learner.update([frag(1.0)], env_steps=0)  # a normal update first, so the optimiser has state
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    opt_before = [s["exp_avg"].clone() for s in learner.optimizer.state.values()]
    version = learner.version
    with pytest.raises(FloatingPointError, match="non-finite PPO loss"):
        learner.update([frag(1e38)], env_steps=16)
    for k, v in learner.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(opt_before, learner.optimizer.state.values(), strict=True))
    assert learner.version == version


def test_flat_parameters_train_like_separate_ones() -> None:
    """One flat buffer for Adam (learner.flatten_parameters) gives the same updates as Adam over
    the per-layer tensors, the module's state dict is unchanged, and an optimiser state saved
    per layer (older checkpoints) loads into the flat layout."""
    from learner.learner import _flatten_optimizer_state, flatten_parameters

    torch.manual_seed(5)
    ref = ActorCritic(4, 2, hidden=(8, 8))
    flat_model = ActorCritic(4, 2, hidden=(8, 8))
    flat_model.load_state_dict(ref.state_dict())
    flat = flatten_parameters(flat_model)
    assert flat.numel() == sum(p.numel() for p in ref.parameters())
    opt_ref = torch.optim.Adam(ref.parameters(), lr=1e-2, eps=1e-5)
    opt_flat = torch.optim.Adam([flat], lr=1e-2, eps=1e-5, fused=True)
    batch = rewarded_batch(ref, torch.randn(64, 4))
    cfg = PPOConfig(epochs=3, minibatches=4)
    s_ref = ppo_update(ref, opt_ref, batch, cfg, 0.0, torch.Generator().manual_seed(1))
    s_flat = ppo_update(flat_model, opt_flat, batch, cfg, 0.0, torch.Generator().manual_seed(1))
    assert s_flat == pytest.approx(s_ref, rel=1e-4, abs=1e-6)
    assert list(flat_model.state_dict()) == list(ref.state_dict())
    for (k, a), b in zip(ref.state_dict().items(), flat_model.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=k)
    # A per-layer Adam state (12 moments) becomes the flat one, in parameter order.
    converted = _flatten_optimizer_state(opt_ref.state_dict())
    opt_flat.load_state_dict(converted)
    torch.testing.assert_close(opt_flat.state[flat]["exp_avg"],
                               torch.cat([opt_ref.state[p]["exp_avg"].reshape(-1) for p in ref.parameters()]))


def test_target_kl_stops_after_the_epoch_that_passes_it() -> None:
    """With target_kl > 0 the update stops at the end of the first epoch whose mean KL exceeds
    it: counted in Adam steps (epochs x minibatches without it), and reported as `epochs`."""
    for target_kl, steps in ((0.0, 4 * 4), (1e-12, 4), (1e9, 4 * 4)):
        torch.manual_seed(0)
        model = ActorCritic(4, 2)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        batch = rewarded_batch(model, torch.randn(256, 4))
        stats = ppo_update(model, opt, batch, PPOConfig(epochs=4, minibatches=4, target_kl=target_kl), 0.0,
                           torch.Generator().manual_seed(0))
        assert all(int(s["step"]) == steps for s in opt.state.values()), target_kl
        assert stats["epochs"] == steps / 4, target_kl


def test_reward_norm_divides_by_the_std_of_discounted_returns_carried_across_fragments() -> None:
    """ppo.reward_norm: each env's discounted return runs on across its worker's fragments and
    restarts after an episode ends; rewards are divided by the std of every such return seen so
    far (checked against plain loops), and the statistics survive a checkpoint."""
    from learner import config as C
    from learner.learner import Learner

    gamma, t, b = 0.9, 3, 2
    cfg = C.load(None, {"env.id": "Pendulum-v1", "ppo.epochs": 1, "ppo.minibatches": 2, "ppo.gamma": gamma,
                        "ppo.reward_norm": True, "ppo.reward_scale": 2.0})
    learner = Learner(cfg, obs_dim=3, act_dim=1, device="cpu")
    rng = np.random.default_rng(4)

    def frag(worker: int, rewards: list[list[float]], ended: list[tuple[int, int]]) -> Trajectory:
        term = np.zeros((t, b), bool)
        for step, env in ended:
            term[step, env] = True
        return Trajectory(rng.normal(size=(t + 1, b, 3)).astype(np.float32),
                          rng.normal(size=(t, b, 1)).astype(np.float32), np.full((t, b), -1.0, np.float32),
                          np.array(rewards, np.float32), term, np.zeros((t, b), bool),
                          np.zeros((0, 3), np.float32), learner.version, worker)

    batches = [[frag(0, [[1, 2], [3, 4], [5, 6]], [(1, 0)]), frag(1, [[-1, 0], [0, 1], [2, 2]], [])],
               [frag(0, [[1, 1], [1, 1], [1, 1]], [(2, 1)])]]
    seen: list[float] = []
    running = {(w, e): 0.0 for w in (0, 1) for e in range(b)}
    for batch in batches:
        for f in batch:
            for e in range(b):
                for step in range(t):
                    g = running[(f.worker_id, e)] * gamma + float(f.rewards[step, e])
                    seen.append(g)
                    running[(f.worker_id, e)] = 0.0 if f.terminated[step, e] else g
        stats = learner.update(batch, env_steps=0)
        assert stats["reward_multiplier"] == pytest.approx(2.0 / np.sqrt(np.var(seen) + 1e-8), rel=1e-9)
    restored = Learner(cfg, obs_dim=3, act_dim=1, device="cpu")
    restored.load_state_dict(learner.state_dict())
    assert restored.return_stats.var[0] == learner.return_stats.var[0] and restored.return_stats.count == len(seen)
    off = Learner(C.load(None, {"env.id": "Pendulum-v1", "ppo.reward_scale": 2.0}), obs_dim=3, act_dim=1, device="cpu")
    assert off.reward_multiplier(batches[0]) == 2.0  # reward_norm off: the fixed scale only


def _biped_fragment(rng: np.random.Generator, t: int = 32, b: int = 4) -> Trajectory:
    return Trajectory(rng.normal(1.0, 2.0, size=(t + 1, b, 31)).astype(np.float32),
                      rng.uniform(-1, 1, size=(t, b, 6)).astype(np.float32), np.full((t, b), -5.0, np.float32),
                      rng.normal(size=(t, b)).astype(np.float32), np.zeros((t, b), bool), np.zeros((t, b), bool),
                      np.zeros((0, 31), np.float32), 0, 0)


def test_mirror_loss_by_hand_and_learnable() -> None:
    """mirror_loss is the mean of (mu(mirror s) - mirror mu(s))^2, computed here with the NumPy
    policy and the maps applied by index; minimising it alone drives it towards 0 (the MLP can be
    mirror-equivariant), and it is 0 for a policy whose mean does not depend on the state."""
    from actors.envs import mirror_maps
    from learner.ppo import Mirror, mirror_loss

    maps = mirror_maps("stride/BipedWalker-v0")
    assert maps is not None and mirror_maps("Pendulum-v1") is None
    (perm, sign), (aperm, asign) = maps
    mirror = Mirror(*(torch.as_tensor(a) for a in (perm, sign, aperm, asign)))
    torch.manual_seed(0)
    model = ActorCritic(31, 6, (32, 32))
    with torch.no_grad():
        model.pi[-1].weight.mul_(100.0)  # means of order 1 (the init's output gain is 0.01)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(64, 31)).astype(np.float32)
    pol = NumpyPolicy(model.weights(0))
    want = np.mean((pol.mean(obs[:, perm] * sign) - pol.mean(obs)[:, aperm] * asign) ** 2)
    got = mirror_loss(model, torch.as_tensor(obs), mirror)
    assert want > 0.01 and float(got) == pytest.approx(float(want), rel=1e-4)
    # ppo_update hands in the mean evaluate_with_mean computed: the same mean, the same loss
    actions = torch.as_tensor(rng.normal(size=(64, 6)).astype(np.float32))
    *terms, mean = model.evaluate_with_mean(torch.as_tensor(obs), actions)
    np.testing.assert_allclose(mean.detach().numpy(), pol.mean(obs), rtol=1e-5, atol=1e-6)
    for a, b in zip(terms, model.evaluate(torch.as_tensor(obs), actions), strict=True):
        assert torch.equal(a, b)
    assert float(mirror_loss(model, torch.as_tensor(obs), mirror, mean)) == float(got)
    opt = torch.optim.Adam(model.pi.parameters(), lr=1e-3)
    for _ in range(300):
        opt.zero_grad()
        mirror_loss(model, torch.as_tensor(obs), mirror).backward()
        opt.step()
    assert float(mirror_loss(model, torch.as_tensor(obs), mirror)) < 0.05 * float(want)
    with torch.no_grad():
        model.pi[-1].weight.zero_()
        model.pi[-1].bias.copy_(torch.as_tensor([0.3, -0.2, 0.1, 0.3, -0.2, 0.1]))  # the same for both legs
    assert float(mirror_loss(model, torch.as_tensor(obs), mirror)) == 0.0


def test_the_learner_adds_the_mirror_loss_and_symmetrises_its_normaliser() -> None:
    """ppo.mirror_coef > 0: the update reports the mirror loss and lowers it against the same
    update without the term; the normaliser is fed both images of every observation, so its
    statistics are mirror symmetric (zero mean on the negated entries, equal on the swapped
    pairs)."""
    from actors.envs.biped_sim import OBS_MIRROR
    from learner import config as C
    from learner.learner import Learner

    def update(coef: float) -> tuple[Learner, dict[str, float]]:
        cfg = C.load(None, {"ppo.mirror_coef": coef, "ppo.epochs": 10, "ppo.minibatches": 2, "ppo.target_kl": 0.0})
        learner = Learner(cfg, obs_dim=31, act_dim=6, device="cpu")
        with torch.no_grad():
            learner.model.pi[-1].weight.mul_(100.0)
        return learner, learner.update([_biped_fragment(np.random.default_rng(3))], env_steps=0)

    learner, stats = update(1.0)
    plain, plain_stats = update(0.0)
    assert plain_stats["mirror_loss"] == 0.0 and stats["mirror_loss"] > 0.0
    perm, sign = OBS_MIRROR
    from learner.ppo import mirror_loss

    obs = torch.as_tensor(np.random.default_rng(4).normal(size=(256, 31)).astype(np.float32))
    assert float(mirror_loss(learner.model, obs, learner.mirror)) < 0.5 * float(mirror_loss(plain.model, obs,
                                                                                                  learner.mirror))
    mean, var = learner.normalizer.mean, learner.normalizer.var
    negated, swapped = sign < 0, perm != np.arange(31)
    np.testing.assert_allclose(mean[negated], 0.0, atol=1e-6)
    assert np.abs(mean[~negated & ~swapped]).min() > 0.3  # the data's mean of ~1 is kept where nothing flips
    np.testing.assert_allclose(mean[swapped], mean[perm[swapped]], rtol=1e-6)
    np.testing.assert_allclose(var[swapped], var[perm[swapped]], rtol=1e-6)
    assert np.abs(plain.normalizer.mean[negated]).min() > 0.3  # without the term: the raw data's own
    # the std is tied across the legs: each joint's log-std equals the other leg's, as it moved
    aperm = learner.mirror.act_perm
    log_std, plain_log_std = learner.model.log_std.detach(), plain.model.log_std.detach()
    assert torch.equal(log_std, log_std[aperm])
    assert not torch.equal(plain_log_std, plain_log_std[aperm]) and not torch.allclose(log_std, torch.full((6,), -0.5))


def test_mirror_needs_an_env_with_a_known_symmetry() -> None:
    from learner import config as C

    C.validate(C.load(None, {"ppo.mirror_coef": 1.0}))  # the biped
    C.validate(C.load(None, {"ppo.mirror_coef": 1.0, "env.id": "actors.envs:stride/BipedWalker-v0"}))
    with pytest.raises(C.ConfigError, match=r"ppo.mirror_coef: needs an env whose left-right symmetry is known"):
        C.validate(C.load(None, {"ppo.mirror_coef": 1.0, "env.id": "Pendulum-v1"}))
    with pytest.raises(C.ConfigError, match=r"ppo.mirror_coef: must be a finite value >= 0"):
        C.validate(C.load(None, {"ppo.mirror_coef": -1.0}))
