"""The GRPO family's pure functions against hand computation and slow loops: group-scaled advantages, the loss
reductions (and that micro-batches sum to the whole batch), clip-higher, truncation masks, soft overlong
punishment, and the group filter of dynamic sampling."""

from __future__ import annotations

import math

import pytest
import torch

from llm_pg.algorithms.advantages import group_scaled_advantages, grpo_advantages_and_returns
from llm_pg.algorithms.losses import (LOSS_REDUCTIONS, masked_reduce, ppo_clip_loss, reduction_normalizer, reduction_weights,
                           truncation_mask)


def slow_grpo(rewards: list[float], K: int, scale: str, eps: float = 1e-4) -> list[float]:
    """TRL's GRPOTrainer._generate_and_score_completions advantage, one sample at a time in plain Python."""
    out = []
    n = len(rewards)
    batch_mean = sum(rewards) / n
    batch_std = math.sqrt(sum((r - batch_mean) ** 2 for r in rewards) / (n - 1))
    for i, r in enumerate(rewards):
        group = rewards[(i // K) * K:(i // K + 1) * K]
        mean = sum(group) / K
        std = math.sqrt(sum((g - mean) ** 2 for g in group) / (K - 1))  # torch.std: unbiased
        if scale == "none":
            out.append(r - mean)
        else:
            out.append((r - mean) / ((std if scale == "group" else batch_std) + eps))
    return out


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("K", [2, 3, 4])
def test_group_scaled_advantages_match_a_slow_loop(scale, K):
    g = torch.Generator().manual_seed(K)
    rewards = torch.rand(4 * K, generator=g, dtype=torch.float64)
    rewards[:K] = 0.5  # one group of identical rewards
    got = group_scaled_advantages(rewards, K, scale)
    torch.testing.assert_close(got, torch.tensor(slow_grpo(rewards.tolist(), K, scale), dtype=torch.float64))
    assert got[:K].abs().max() == 0  # identical rewards: A = 0 exactly, whatever the scale


def test_group_scaled_advantages_hand_values_K2():
    rewards = torch.tensor([1.0, 0.0, 3.0, 3.0])
    # group 0: mean 0.5, unbiased std sqrt(((0.5)^2 + (0.5)^2) / 1) = sqrt(0.5); group 1: identical -> 0
    a = group_scaled_advantages(rewards, 2, "group")
    assert a.tolist() == pytest.approx([0.5 / (math.sqrt(0.5) + 1e-4), -0.5 / (math.sqrt(0.5) + 1e-4), 0.0, 0.0])
    assert group_scaled_advantages(rewards, 2, "none").tolist() == [0.5, -0.5, 0.0, 0.0]  # Dr. GRPO
    # batch: mean 7/4, unbiased var ((0.75^2 + 1.75^2 + 2 * 1.25^2) / 3) = 6.75 / 3 = 2.25, std 1.5
    assert group_scaled_advantages(rewards, 2, "batch").tolist() == pytest.approx(
        [0.5 / 1.5001, -0.5 / 1.5001, 0.0, 0.0])


def test_batch_scale_uses_every_process_rewards():
    """Two processes, each with its own groups: the batch std is that of all 8 rewards (the gather joins them)."""
    local, other = torch.tensor([1.0, 0.0, 2.0, 5.0]), torch.tensor([0.0, 0.0, 4.0, 1.0])
    mean = torch.cat([local, other]).mean()
    # what the other process contributes to each all_sum, in call order: its count, its sum, its squared deviations
    partner = iter([float(other.numel()), other.sum().item(), ((other - mean) ** 2).sum().item()])

    def gather(x):  # accelerator.gather of a (1,) tensor: this process's value, then the other's
        return torch.cat([x, torch.tensor([next(partner)], dtype=x.dtype)])

    whole = group_scaled_advantages(torch.cat([local, other]), 2, "batch")
    torch.testing.assert_close(group_scaled_advantages(local, 2, "batch", gather=gather), whole[:4])
    assert not torch.allclose(group_scaled_advantages(local, 2, "batch"), whole[:4])  # the local std differs


def test_grpo_advantage_sits_on_every_token_of_ragged_rows():
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]])  # lengths 3, 1, 2 and an empty row
    token_rewards = torch.zeros(4, 3)
    token_rewards[0, 2], token_rewards[1, 0], token_rewards[2, 1] = 1.0, 0.0, 2.0
    a, returns = grpo_advantages_and_returns(token_rewards, mask, 1.0, "none", 2)
    # groups (1.0, 0.0) and (2.0, 0.0): A = +-0.5 and +-1 on each real token, 0 past the end
    assert a.tolist() == [[0.5, 0.5, 0.5], [-0.5, 0, 0], [1.0, 1.0, 0], [0, 0, 0]]
    assert returns[:, 0].tolist() == [1.0, 0.0, 2.0, 0.0]


# --- loss reductions ---------------------------------------------------------------------------------------------

def slow_reduce(values: torch.Tensor, mask: torch.Tensor, reduction: str, T_max: int) -> float:
    N = values.shape[0]
    rows = [[values[i, t].item() for t in range(values.shape[1]) if mask[i, t]] for i in range(N)]
    if reduction == "sequence_mean":
        return sum(sum(r) for r in rows) / N
    if reduction == "token_mean":
        return sum(sum(r) for r in rows) / max(sum(len(r) for r in rows), 1)
    if reduction == "sequence_token_mean":
        return sum(sum(r) / len(r) for r in rows if r) / N
    return sum(sum(r) for r in rows) / (T_max * N)  # fixed_token_mean


@pytest.mark.parametrize("reduction", LOSS_REDUCTIONS)
def test_reductions_match_a_slow_loop_and_split_exactly(reduction):
    g = torch.Generator().manual_seed(0)
    values = torch.randn(6, 5, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 0, 0],
                         [1, 1, 1, 1, 0]])  # ragged, an empty row
    whole = masked_reduce(values, mask, reduction, max_new_tokens=5)
    assert whole.item() == pytest.approx(slow_reduce(values, mask, reduction, 5))
    # update.py: each micro-batch sums w_it l_it and divides by the whole step's Z
    Z = reduction_normalizer(reduction, 6, mask.sum().item(), 5)
    parts = sum((values[s] * reduction_weights(mask[s], reduction)).sum() / Z
                for s in (slice(0, 2), slice(2, 3), slice(3, 6)))
    assert parts.item() == pytest.approx(whole.item(), rel=1e-12)


def test_reductions_weigh_long_and_short_completions_as_documented():
    """One long (4 tokens) and one short (1 token) completion, every token's loss 1 (docs/algorithms.md)."""
    values, mask = torch.ones(2, 4), torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    per_row = {r: (values * reduction_weights(mask, r)).sum(1).tolist() for r in LOSS_REDUCTIONS}
    assert per_row["sequence_mean"] == [4, 1]  # the long one counts 4x: its every token weighs 1
    assert per_row["token_mean"] == [4, 1]  # the same weights, normalized by the 5 tokens
    assert per_row["sequence_token_mean"] == [1, 1]  # each sequence the same: a long one's tokens weigh 1/4
    assert masked_reduce(values, mask, "token_mean").item() == 1.0
    assert masked_reduce(values, mask, "sequence_mean").item() == 2.5
    assert masked_reduce(values, mask, "sequence_token_mean").item() == 1.0
    assert masked_reduce(values, mask, "fixed_token_mean", max_new_tokens=8).item() == 5 / 16
    with pytest.raises(ValueError, match="median"):
        masked_reduce(values, mask, "median")


def test_truncation_mask_zeroes_truncated_rows_only():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1]])
    truncated = torch.tensor([True, False, False])
    assert truncation_mask(mask, truncated).tolist() == [[0, 0, 0], [1, 1, 0], [1, 1, 1]]


def test_clip_higher_exact_values():
    old = torch.zeros(1, 4)
    logprobs = torch.log(torch.tensor([[1.25, 1.4, 0.7, 0.9]])).requires_grad_()
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, stats = ppo_clip_loss(logprobs, old, advantages, mask, 0.2, reduction="sum", clip_eps_high=0.28)
    # ratio clipped to [0.8, 1.28]: 1.25 stays (it would be clipped at 1.2 with eps 0.2), 1.4 -> 1.28;
    # A < 0: -min(-0.7, -0.8) = 0.8 (clipped below at 0.8), -min(-0.9, -0.9) = 0.9
    assert loss.item() == pytest.approx(-1.25 - 1.28 + 0.8 + 0.9)
    assert stats["clip_frac"].item() == pytest.approx(2 / 4)
    symmetric, _ = ppo_clip_loss(logprobs, old, advantages, mask, 0.2, reduction="sum")
    assert symmetric.item() == pytest.approx(-1.2 - 1.2 + 0.8 + 0.9)
    loss.backward()
    assert logprobs.grad[0, 0] != 0 and logprobs.grad[0, 1] == 0  # inside [0.8, 1.28] it still learns


def test_ppo_stats_count_weighted_tokens_once():
    """With sequence_token_mean the mask given to the loss holds weights 1/L; the stats still count tokens."""
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    logprobs = torch.log(torch.tensor([[2.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]))
    weights = reduction_weights(mask, "sequence_token_mean")  # 1/4 on the long row, 1 on the short one
    _, stats = ppo_clip_loss(logprobs, torch.zeros(2, 4), torch.ones(2, 4), weights, 0.2, reduction="sum")
    assert stats["clip_frac"].item() == pytest.approx(1 / 5)
