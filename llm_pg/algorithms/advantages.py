"""Returns, baselines and advantages for REINFORCE and Actor-Critic: pure tensor functions.

The scoring stage (scoring.py) calls `advantages_and_returns` once per rollout; the baseline of REINFORCE is
chosen by name from `BASELINES`, next to the functions that compute it.

Shapes: N = B*K sequences (prompt-major, K samples per prompt), T completion tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


def terminal_rewards(sequence_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place each sequence's reward on its last real token: r_t = R if t is the last token else 0.

    sequence_rewards (N,), mask (N, T) -> (N, T). A completion with no tokens gets no reward (nothing to credit).
    """
    last = (mask.sum(1) - 1).clamp(min=0)  # (N,)
    r = torch.zeros(mask.shape, dtype=sequence_rewards.dtype, device=mask.device)
    r[torch.arange(mask.shape[0], device=mask.device), last] = sequence_rewards
    return r * mask


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = sum_{t' >= t} gamma^(t'-t) r_t'  over the masked tokens.  rewards, mask (N, T) -> (N, T)."""
    rewards = rewards * mask
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])  # (N,)
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns * mask


def equal_groups(values: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B, 1) bool: the prompt groups whose K values are all equal.  values (N,) prompt-major."""
    grouped = values.view(-1, group_size)  # (B, K)
    return (grouped.max(1, keepdim=True).values == grouped.min(1, keepdim=True).values)


def leave_one_out_baseline(sequence_returns: torch.Tensor, num_samples: int) -> torch.Tensor:
    """b_i = mean of the other K-1 samples' returns of the same prompt (RLOO, Ahmadian et al. 2024).

    A group of K equal returns gets b_i = G_i exactly (the float sum / (K-1) can miss it by an ulp), so its
    advantage is exactly 0: dynamic sampling drops such groups on that ground.  sequence_returns (N,) prompt-major
    -> (N,)
    """
    grouped = sequence_returns.view(-1, num_samples)  # (B, K)
    others = (grouped.sum(1, keepdim=True) - grouped) / (num_samples - 1)  # (B, K)
    return torch.where(equal_groups(sequence_returns, num_samples), grouped, others).view(-1)


class MovingAverageBaseline:
    """b <- decay * b + (1 - decay) * mean(R) over earlier batches. Its state is checkpointed.

    The first batch has no earlier batches: each sequence's b is then the mean of the batch's *other* sequences
    (leave-one-out over the whole batch), a baseline independent of the sequence itself, so the gradient stays
    unbiased (the batch's own mean, which includes the sequence, shrank it by (N-1)/N).
    """

    def __init__(self, decay: float, value: float | None = None):
        self.decay, self.value = decay, value

    def __call__(self, sequence_returns: torch.Tensor, batch_sum: float | None = None,
                 batch_count: int | None = None) -> torch.Tensor:
        """b (N,) for this batch from earlier batches; then this batch's mean joins the average.

        batch_sum, batch_count: of all processes' returns (default: this batch's), so every process agrees.
        """
        total = sequence_returns.sum().item() if batch_sum is None else batch_sum
        count = sequence_returns.numel() if batch_count is None else batch_count
        mean = total / count
        if self.value is None:  # first batch: the others' mean (0 for a batch of one)
            b = (total - sequence_returns) / (count - 1) if count > 1 else torch.zeros_like(sequence_returns)
            self.value = mean
        else:
            b = torch.full_like(sequence_returns, self.value)
            self.value = self.decay * self.value + (1 - self.decay) * mean
        return b

    def state_dict(self) -> dict:
        return {"decay": self.decay, "value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.value = state["decay"], state["value"]


@dataclass
class BaselineInputs:
    """What the baselines may read besides each sequence's return G_0 (only the chosen one reads its part)."""

    group_size: int  # K samples per prompt (rows are prompt-major)
    moving_average: MovingAverageBaseline | None = None  # its state, for baseline=moving_average
    greedy_rewards: torch.Tensor | None = None  # (B,) reward of each prompt's greedy decode, for baseline=greedy
    gather: Callable[[torch.Tensor], torch.Tensor] = lambda x: x  # joins all processes' values


def _moving_average(returns0: torch.Tensor, inputs: BaselineInputs) -> torch.Tensor:
    # every process steps the average with the sum and count of all processes' returns, so they agree
    count = all_sum(torch.tensor(returns0.numel(), device=returns0.device), inputs.gather).item()
    return inputs.moving_average(returns0, all_sum(returns0.sum(), inputs.gather).item(), int(count))


def _greedy(returns0: torch.Tensor, inputs: BaselineInputs) -> torch.Tensor:
    # self-critical (Rennie et al. 2017): the reward of the greedy decode of the same prompt
    return inputs.greedy_rewards.to(returns0).repeat_interleave(inputs.group_size)


# b (N,) for each sequence from its G_0 (N,): algorithm.baseline picks one.
BASELINES: dict[str, Callable[[torch.Tensor, BaselineInputs], torch.Tensor]] = {
    "none": lambda returns0, inputs: torch.zeros_like(returns0),
    "moving_average": _moving_average,
    "leave_one_out": lambda returns0, inputs: leave_one_out_baseline(returns0, inputs.group_size),
    "greedy": _greedy,
}


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def all_sum(x: torch.Tensor, gather: Callable[[torch.Tensor], torch.Tensor] = _identity) -> torch.Tensor:
    """A scalar summed over all processes (`gather` joins them, e.g. accelerator.gather); x itself with one."""
    return gather(x.reshape(1)).sum(0)


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8,
           gather: Callable[[torch.Tensor], torch.Tensor] = _identity) -> torch.Tensor:
    """(x - mean) / std over the masked entries of every process (two passes); masked-out entries stay 0."""
    n = all_sum(mask.sum(), gather).clamp(min=1)
    mean = all_sum((values * mask).sum(), gather) / n
    var = all_sum((((values - mean) * mask) ** 2).sum(), gather) / (n - 1).clamp(min=1)
    return (values - mean) / (var.sqrt() + eps) * mask


def reinforce_advantages(returns: torch.Tensor, baseline: torch.Tensor, mask: torch.Tensor,
                         whiten_advantages: bool = False,
                         gather: Callable[[torch.Tensor], torch.Tensor] = _identity) -> torch.Tensor:
    """A_t = G_t - b  (one baseline value per sequence).  returns, mask (N, T), baseline (N,) -> (N, T)."""
    advantages = (returns - baseline[:, None]) * mask
    return whiten(advantages, mask, gather=gather) if whiten_advantages else advantages


def td_errors(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """delta_t = r_t + gamma * V(s_{t+1}) - V(s_t), with V = 0 after the last real token (the episode ends there).

    rewards, values, mask (N, T) -> (N, T); values are constants (the critic's estimates at rollout time).
    A completion cut at max_new_tokens also ends there: its reward sits on its last token, nothing follows.
    """
    values = values * mask
    next_values = torch.cat([values[:, 1:] * mask[:, 1:], torch.zeros_like(values[:, :1])], 1)  # (N, T)
    return (rewards + gamma * next_values - values) * mask


def gae_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                   lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(lambda) (Schulman et al. 2016): A_t = sum_l (gamma*lambda)^l delta_{t+l};  returns R_t = A_t + V(s_t).

    lambda = 0 gives the TD(0) error delta_t; lambda = 1 gives the Monte-Carlo return G_t - V(s_t).
    rewards, values, mask (N, T) -> (advantages (N, T), returns (N, T)); the critic regresses on the returns.
    """
    deltas = td_errors(rewards, values, mask, gamma)
    advantages = torch.zeros_like(deltas)
    running = torch.zeros_like(deltas[:, 0])  # (N,)
    for t in reversed(range(deltas.shape[1])):
        running = deltas[:, t] + gamma * lam * running * mask[:, t]
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def _masked_variance(x: torch.Tensor, mask: torch.Tensor, n: torch.Tensor, gather) -> torch.Tensor:
    mean = all_sum((x * mask).sum(), gather) / n
    return all_sum((((x - mean) * mask) ** 2).sum(), gather) / (n - 1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       gather: Callable[[torch.Tensor], torch.Tensor] = _identity) -> float:
    """1 - Var(R - V) / Var(R) over the masked tokens of every process: 1 is a perfect critic, 0 no better than a
    constant; NaN when the returns do not vary.  values, returns, mask (N, T)."""
    mask = mask.to(returns.dtype)
    n = all_sum(mask.sum(), gather)
    if n < 2:
        return float("nan")
    var_returns = _masked_variance(returns, mask, n, gather)
    if var_returns == 0:
        return float("nan")
    return (1 - _masked_variance(returns - values, mask, n, gather) / var_returns).item()


def advantages_and_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float, whiten_advantages: bool,
                           baseline: str, baseline_inputs: BaselineInputs, values: torch.Tensor | None = None,
                           gae_lambda: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(A_t, the critic's targets R_t), each (N, T).

    With a critic (`values` given): GAE(lambda) over the rollout's values, R_t = A_t + V(s_t).  Without: A_t =
    G_t - b with b = BASELINES[baseline](G_0), and R_t = G_t.  Whitening uses the statistics of the whole step
    (every process's tokens, joined by baseline_inputs.gather).  token_rewards, mask, values (N, T).
    """
    gather = baseline_inputs.gather
    if values is not None:
        advantages, returns = gae_advantages(token_rewards, values, mask, gamma, gae_lambda)
        return (whiten(advantages, mask, gather=gather) if whiten_advantages else advantages), returns
    returns = discounted_returns(token_rewards, mask, gamma)  # (N, T)
    b = BASELINES[baseline](returns[:, 0], baseline_inputs)  # (N,)
    return reinforce_advantages(returns, b, mask, whiten_advantages, gather), returns


GRPO_SCALES = ("group", "batch", "none")  # grpo.scale_rewards (TRL's scale_rewards)
GRPO_EPS = 1e-4  # TRL's epsilon in (r - mean) / (std + eps)


def group_scaled_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = GRPO_EPS,
                            gather: Callable[[torch.Tensor], torch.Tensor] = _identity) -> torch.Tensor:
    """GRPO's advantage (Shao et al. 2024, DeepSeekMath eq. 3 of section 4.1.2): A_i = (R_i - mean_g R) / (s + eps).

    mean_g: the mean of the K rewards of the sample's own prompt group (rows are prompt-major).  s by `scale`
    (TRL's scale_rewards): group = the unbiased std (torch.std, divisor K-1) of those K rewards; batch = the
    unbiased std of every reward of the step, over all processes (`gather` joins them); none = 1 with no eps
    (Dr. GRPO, Liu et al. 2025: the division by the std biases the objective towards prompts that are nearly
    always solved or failed).  A group of identical rewards gets A = 0 exactly.  rewards (N,) -> (N,).
    """
    grouped = rewards.view(-1, group_size)  # (B, K)
    # a group of equal rewards gets exactly 0 (its float mean can miss the value by an ulp): dynamic sampling
    # drops such groups on that ground
    centered = torch.where(equal_groups(rewards, group_size), 0.0, grouped - grouped.mean(1, keepdim=True)).view(-1)
    if scale == "none":
        return centered
    if scale == "group":
        std = grouped.std(1).repeat_interleave(group_size)  # (N,)
    elif scale == "batch":
        n = all_sum(torch.tensor(float(rewards.numel()), dtype=rewards.dtype, device=rewards.device), gather)
        mean = all_sum(rewards.sum(), gather) / n
        std = (all_sum(((rewards - mean) ** 2).sum(), gather) / (n - 1).clamp(min=1)).sqrt()
    else:
        raise ValueError(f"unknown scale_rewards '{scale}'")
    return centered / (std + eps)


def grpo_advantages_and_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float, scale: str,
                                group_size: int, gather: Callable[[torch.Tensor], torch.Tensor] = _identity
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(A_t, G_t), each (N, T): every token of completion i gets its sequence's A_i = group_scaled_advantages of
    R_i = G_0 (the completion's return; the sum of its token rewards when gamma = 1).  token_rewards, mask (N, T)."""
    returns = discounted_returns(token_rewards, mask, gamma)  # (N, T)
    a = group_scaled_advantages(returns[:, 0], group_size, scale, gather=gather)  # (N,)
    return a[:, None] * mask, returns
