"""Policy-gradient losses: pure tensor functions.  Shapes: N sequences, T completion tokens."""

from __future__ import annotations

import torch


def masked_reduce(values: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    """sequence_mean: (1/N) sum_i sum_t v_it;  token_mean: sum_it v_it / sum_it m_it;  sum: sum_it v_it.

    values, mask (N, T) -> ().  'sum' lets a caller split a batch into micro-batches and divide by the whole
    batch's N or token count, so gradient accumulation gives exactly the full batch's gradient.
    """
    if reduction == "sum":
        return (values * mask).sum()
    if reduction == "sequence_mean":
        return (values * mask).sum() / mask.shape[0]
    if reduction == "token_mean":
        return (values * mask).sum() / mask.sum().clamp(min=1)
    raise ValueError(f"unknown loss reduction '{reduction}'")


def reinforce_loss(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                   reduction: str = "sequence_mean") -> torch.Tensor:
    """L = -(1/N) sum_i sum_t log pi(a_t|s_t) * A_t, so that grad L = -grad J (Williams 1992).

    logprobs (N, T) with grad; advantages (N, T) treated as constants; mask (N, T).
    """
    return masked_reduce(-logprobs * advantages.detach(), mask, reduction)


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate log pi(a_t|s_t) - log pi_ref(a_t|s_t) on the sampled tokens (N, T).

    Its sum over a completion is an unbiased estimate of KL(pi || pi_ref) for that sequence
    (http://joschu.net/blog/kl-approx.html).
    """
    return (logprobs - ref_logprobs) * mask


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor, reduction: str = "sequence_mean") -> torch.Tensor:
    """-c * H is added to the loss by the caller; this returns the reduced entropy H.  entropy, mask (N, T) -> ()."""
    return masked_reduce(entropy, mask, reduction)
