"""Actor-Critic and PPO math against slow reference loops and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from llm_pg.algorithms import advantages as adv
from llm_pg.algorithms.kl import KLController
from llm_pg.algorithms.losses import kl_k1, kl_k3, ppo_clip_loss, value_loss


def random_batch(seed: int, N: int = 5, T: int = 7):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([T, 1, 4, 0, 6][:N])  # full, one token, partial, empty, partial
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    rewards = torch.randn(N, T, generator=g) * mask
    values = torch.randn(N, T, generator=g) * mask
    return rewards, values, mask, lengths


def slow_gae(rewards, values, lengths, gamma, lam):
    """Per sequence, per token, straight from the definitions."""
    N, T = rewards.shape
    A, R = torch.zeros(N, T), torch.zeros(N, T)
    for i in range(N):
        L = int(lengths[i])
        deltas = []
        for t in range(L):
            v_next = values[i, t + 1].item() if t + 1 < L else 0.0
            deltas.append(rewards[i, t].item() + gamma * v_next - values[i, t].item())
        for t in range(L):
            A[i, t] = sum((gamma * lam) ** (k - t) * deltas[k] for k in range(t, L))
            R[i, t] = A[i, t] + values[i, t]
    return A, R


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("gamma,lam", [(1.0, 0.0), (0.9, 0.0), (1.0, 1.0), (0.95, 0.9), (0.8, 0.5)])
def test_gae_and_td0_equal_slow_loops(seed, gamma, lam):
    rewards, values, mask, lengths = random_batch(seed)
    A, R = adv.gae_advantages(rewards, values, mask, gamma, lam)
    A_ref, R_ref = slow_gae(rewards, values, lengths, gamma, lam)
    torch.testing.assert_close(A, A_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(R, R_ref, atol=1e-5, rtol=1e-5)
    if lam == 0.0:  # TD(0): the advantage is the TD error itself
        torch.testing.assert_close(A, adv.td_errors(rewards, values, mask, gamma), atol=1e-6, rtol=1e-6)


def test_gae_with_lambda_one_is_the_monte_carlo_return_minus_the_value():
    rewards, values, mask, _ = random_batch(3)
    A, R = adv.gae_advantages(rewards, values, mask, 0.9, 1.0)
    G = adv.discounted_returns(rewards, mask, 0.9)
    torch.testing.assert_close(A, (G - values) * mask, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(R, G, atol=1e-5, rtol=1e-5)


def test_td_errors_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.25, 0.75]])
    mask = torch.ones(1, 3)
    # delta_0 = 0 + 0.9*0.25 - 0.5; delta_1 = 0 + 0.9*0.75 - 0.25; delta_2 = 1 + 0 - 0.75 (the episode ends)
    expected = torch.tensor([[0.225 - 0.5, 0.675 - 0.25, 0.25]])
    torch.testing.assert_close(adv.td_errors(rewards, values, mask, 0.9), expected)


def test_value_loss_exact_values():
    values = torch.tensor([[1.0, 2.0, 9.0]], requires_grad=True)
    old = torch.tensor([[0.5, 2.5, 0.0]])
    returns = torch.tensor([[2.0, 2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # unclipped: 0.5 * ((1-2)^2 + (2-2)^2) = 0.5 per 1 sequence
    assert value_loss(values, old, returns, mask, 0.0, "sequence_mean").item() == pytest.approx(0.5)
    # clip 0.2: token 0 clipped value 0.7 -> (0.7-2)^2 = 1.69 > 1; token 1 clipped 2.3 -> 0.09 > 0
    assert value_loss(values, old, returns, mask, 0.2, "sum").item() == pytest.approx(0.5 * (1.69 + 0.09))
    assert value_loss(values, old, returns, mask, 0.2, "token_mean").item() == pytest.approx(0.5 * 1.78 / 2)


def test_ppo_clip_loss_exact_values_and_dual_clip():
    old = torch.zeros(1, 4)
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 1.1, 4.0]])).requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, -2.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, stats = ppo_clip_loss(logprobs, old, advantages, mask, clip_eps=0.2, reduction="sum")
    # per token -min(rA, clip(r)A): -1.2 (clipped above), -0.5 (r < 1-eps with A > 0: unclipped r counts),
    # -min(-2.2, -2.2) = 2.2, -min(-4, -1.2) = 4
    assert loss.item() == pytest.approx(-1.2 - 0.5 + 2.2 + 4.0)
    assert stats["clip_frac"].item() == pytest.approx(3 / 4)  # 1.5, 0.5 and 4.0 lie outside [0.8, 1.2]
    r = torch.tensor([1.5, 0.5, 1.1, 4.0])
    assert stats["approx_kl"].item() == pytest.approx(((r - 1) - r.log()).mean().item())
    dual, _ = ppo_clip_loss(logprobs, old, advantages, mask, clip_eps=0.2, dual_clip=3.0, reduction="sum")
    assert dual.item() == pytest.approx(-1.2 - 0.5 + 2.2 + 3.0)  # the last token's loss capped at -3 * A = 3
    loss.backward()
    assert logprobs.grad[0, 0] == 0  # clipped: no gradient pushes the ratio further


def test_ppo_ratio_one_equals_the_reinforce_gradient():
    logprobs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    advantages = torch.tensor([[0.5, -1.0]])
    loss, _ = ppo_clip_loss(logprobs, logprobs.detach(), advantages, torch.ones(1, 2), 0.2, reduction="sum")
    loss.backward()
    torch.testing.assert_close(logprobs.grad, -advantages)  # d/dlogp of -r A at r = 1 is -A


def test_kl_k3_exact_and_nonnegative():
    logprobs, ref = torch.tensor([[-1.0, -2.0, -0.5]]), torch.tensor([[-1.5, -1.0, -0.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    expected = [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0, 0.0]
    torch.testing.assert_close(kl_k3(logprobs, ref, mask), torch.tensor([expected]))
    assert (kl_k3(torch.randn(50, 9), torch.randn(50, 9), torch.ones(50, 9)) >= 0).all()
    torch.testing.assert_close(kl_k1(logprobs, ref, mask), torch.tensor([[0.5, -1.0, 0.0]]))


def test_adaptive_kl_moves_the_coefficient_the_right_way():
    fixed = KLController(0.1)
    assert fixed.update(100.0, 16) == 0.1
    up = KLController(0.1, target=6.0, horizon=100)
    assert up.update(12.0, 16) == pytest.approx(0.1 * (1 + 0.2 * 16 / 100))  # error clipped to +0.2
    down = KLController(0.1, target=6.0, horizon=100)
    assert down.update(5.4, 16) == pytest.approx(0.1 * (1 - 0.1 * 16 / 100))  # error 5.4/6 - 1 = -0.1
    assert down.update(0.0, 16) == pytest.approx(0.1 * (1 - 0.1 * 0.16) * (1 - 0.2 * 0.16))  # clipped at -0.2
    restored = KLController(1.0)
    restored.load_state_dict(down.state_dict())
    assert restored.update(12.0, 16) == down.update(12.0, 16)
