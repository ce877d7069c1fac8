"""Exact values for returns, baselines, advantages and losses, against hand computation and slow loops."""

import math

import pytest
import torch

from llm_pg.algorithms import advantages as adv
from llm_pg.algorithms.losses import entropy_bonus, kl_k1, masked_reduce, reinforce_loss


def test_terminal_rewards_sit_on_the_last_real_token():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    r = adv.terminal_rewards(torch.tensor([0.5, -1.0, 2.0]), mask)
    assert r.tolist() == [[0.0, 0.0, 0.5, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]


def test_discounted_returns_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 2.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])  # the 5.0 is past the end and must not count
    g = adv.discounted_returns(rewards, mask, gamma=0.5)
    # G_2 = 2; G_1 = 0 + 0.5*2 = 1; G_0 = 1 + 0.5*1 = 1.5
    assert g.tolist() == [[1.5, 1.0, 2.0, 0.0]]


def test_discounted_returns_match_a_slow_loop():
    torch.manual_seed(0)
    rewards, gamma = torch.randn(5, 7), 0.9
    lengths = torch.tensor([7, 3, 1, 0, 5])
    mask = (torch.arange(7)[None] < lengths[:, None]).long()
    fast = adv.discounted_returns(rewards, mask, gamma)
    for i in range(5):
        for t in range(7):
            slow = sum(gamma ** (u - t) * rewards[i, u].item() for u in range(t, lengths[i].item()))
            assert fast[i, t].item() == pytest.approx(slow if t < lengths[i] else 0.0, abs=1e-5)


def test_terminal_reward_with_gamma_one_gives_every_token_the_sequence_reward():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    g = adv.discounted_returns(adv.terminal_rewards(torch.tensor([0.3, 0.7]), mask), mask, 1.0)
    assert torch.allclose(g, torch.tensor([[0.3, 0.3, 0.3], [0.7, 0.7, 0.0]]))


def test_leave_one_out_baseline_by_hand():
    # two prompts, K = 3 samples each
    returns = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    b = adv.leave_one_out_baseline(returns, 3)
    assert b.tolist() == [4.0, 3.5, 1.5, 1.5, 1.5, 0.0]


def test_leave_one_out_advantages_sum_to_zero_per_prompt_up_to_a_factor():
    # RLOO: A_i = R_i - mean_{j!=i} R_j = K/(K-1) (R_i - mean R): zero-sum within each prompt
    returns = torch.tensor([0.2, 0.9, 0.4, 0.1])
    a = returns - adv.leave_one_out_baseline(returns, 4)
    assert a.sum().item() == pytest.approx(0.0, abs=1e-6)
    assert a.tolist() == pytest.approx(((returns - returns.mean()) * 4 / 3).tolist(), abs=1e-6)


def test_moving_average_baseline_uses_past_batches_only():
    ma = adv.MovingAverageBaseline(decay=0.5)
    assert ma(torch.tensor([1.0, 3.0])).tolist() == [3.0, 1.0]  # first batch: the other sequences' mean
    assert ma(torch.tensor([6.0, 6.0])).tolist() == [2.0, 2.0]  # b from before this batch
    assert ma.value == pytest.approx(0.5 * 2.0 + 0.5 * 6.0)
    restored = adv.MovingAverageBaseline(decay=0.1)
    restored.load_state_dict(ma.state_dict())
    assert restored(torch.tensor([0.0])).tolist() == [4.0]
    assert adv.MovingAverageBaseline(0.9)(torch.tensor([5.0])).tolist() == [0.0]  # a first batch of one: no baseline
    across = adv.MovingAverageBaseline(0.9)  # another process held [2.0, 4.0]: the sums and counts are global
    assert across(torch.tensor([1.0, 3.0]), batch_sum=10.0, batch_count=4).tolist() == pytest.approx([3.0, 7 / 3])
    assert across.value == 2.5


def test_reinforce_advantages_and_whitening():
    returns = torch.tensor([[1.0, 1.0, 0.0], [3.0, 3.0, 3.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    a = adv.reinforce_advantages(returns, torch.tensor([0.5, 1.0]), mask)
    assert a.tolist() == [[0.5, 0.5, 0.0], [2.0, 2.0, 2.0]]
    w = adv.reinforce_advantages(returns, torch.tensor([0.5, 1.0]), mask, whiten_advantages=True)
    valid = w[mask.bool()]
    assert valid.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert valid.std().item() == pytest.approx(1.0, abs=1e-5)
    assert w[0, 2].item() == 0.0


def test_reinforce_loss_exact_value_and_gradient():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]], requires_grad=True)
    advantages = torch.tensor([[2.0, 2.0, 2.0], [-1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss = reinforce_loss(logprobs, advantages, mask, "sequence_mean")
    # -(1/2) [ (-1-2-3)*2 + (-0.5-0.5)*(-1) ] = -(1/2)(-12 + 1) = 5.5
    assert loss.item() == pytest.approx(5.5)
    loss.backward()
    assert logprobs.grad.tolist() == [[-1.0, -1.0, -1.0], [0.5, 0.5, 0.0]]  # -A/N on real tokens
    token = reinforce_loss(logprobs.detach(), advantages, mask, "token_mean")
    assert token.item() == pytest.approx(11 / 5)


def test_advantages_are_constants_in_the_loss():
    logprobs = torch.tensor([[-1.0]], requires_grad=True)
    advantages = torch.tensor([[3.0]], requires_grad=True)
    reinforce_loss(logprobs, advantages, torch.tensor([[1]])).backward()
    assert advantages.grad is None


def test_masked_reduce_sum_splits_exactly_into_micro_batches():
    torch.manual_seed(1)
    values, mask = torch.randn(6, 4), (torch.rand(6, 4) > 0.3).long()
    whole = masked_reduce(values, mask, "token_mean")
    parts = sum(masked_reduce(values[i:i + 2], mask[i:i + 2], "sum") for i in range(0, 6, 2)) / mask.sum()
    assert parts.item() == pytest.approx(whole.item(), abs=1e-6)
    with pytest.raises(ValueError):
        masked_reduce(values, mask, "median")


def test_kl_k1_and_entropy_bonus():
    lp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    assert kl_k1(lp, ref, torch.tensor([[1, 0]])).tolist() == [[0.5, 0.0]]
    p = torch.tensor([0.5, 0.25, 0.25])
    h = -(p * p.log()).sum()
    assert entropy_bonus(torch.tensor([[h, h]]), torch.tensor([[1, 1]]), "token_mean").item() == pytest.approx(
        1.5 * math.log(2))
