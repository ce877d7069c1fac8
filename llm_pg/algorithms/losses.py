"""Policy-gradient, PPO, value and KL losses: pure tensor functions.  Shapes: N sequences, T completion tokens."""

from __future__ import annotations

import torch

# algorithm.loss_reduction -> how the per-token losses l_it of a step are aggregated (TRL loss_type / verl
# loss_agg_mode in docs/algorithms.md).  Each is  L = sum_it w_it l_it / Z  with a per-token weight w_it that
# depends on its own row only and a normalizer Z of the whole step, so a caller that sums w_it l_it over
# micro-batches (and processes) and divides by the step's Z gets exactly the full batch's gradient.
#   sequence_mean        w = m,        Z = N              sum over tokens, mean over sequences (REINFORCE)
#   token_mean           w = m,        Z = sum_it m_it    mean over the step's tokens (DAPO, Yu et al. 2025)
#   sequence_token_mean  w = m / L_i,  Z = N              mean of each sequence's token mean (GRPO, Shao et al. 2024)
#   fixed_token_mean     w = m,        Z = T_max * N      sum over tokens / (max_new_tokens * N) (Dr. GRPO, Liu et
#                                                         al. 2025: no length normalization, a constant instead)
LOSS_REDUCTIONS = ("sequence_mean", "token_mean", "sequence_token_mean", "fixed_token_mean")


def reduction_weights(mask: torch.Tensor, reduction: str) -> torch.Tensor:
    """w_it of `reduction` (see LOSS_REDUCTIONS): m_it, or m_it / L_i for sequence_token_mean.  mask (N, T) -> (N, T).

    A row with no tokens (L_i = 0) has weight 0 everywhere.
    """
    if reduction == "sequence_token_mean":
        return mask / mask.sum(1, keepdim=True).clamp(min=1)
    return mask


def reduction_normalizer(reduction: str, sequences: float, tokens: float, max_new_tokens: int | None = None) -> float:
    """Z of `reduction` for a step of `sequences` rows holding `tokens` completion tokens (see LOSS_REDUCTIONS)."""
    if reduction in ("sequence_mean", "sequence_token_mean"):
        return sequences
    if reduction == "token_mean":
        return max(tokens, 1.0)
    if reduction == "fixed_token_mean":
        if max_new_tokens is None:
            raise ValueError("fixed_token_mean needs max_new_tokens")
        return max_new_tokens * sequences
    raise ValueError(f"unknown loss reduction '{reduction}'")


def masked_reduce(values: torch.Tensor, mask: torch.Tensor, reduction: str,
                  max_new_tokens: int | None = None) -> torch.Tensor:
    """sum_it w_it v_it / Z for a reduction of LOSS_REDUCTIONS (e.g. sequence_mean: (1/N) sum_i sum_t v_it;
    token_mean: sum_it v_it / sum_it m_it), or 'sum': sum_it m_it v_it.

    values, mask (N, T) -> ().  'sum' lets a caller split a batch into micro-batches and divide by the whole
    batch's normalizer, so gradient accumulation gives exactly the full batch's gradient.
    """
    if reduction == "sum":
        return (values * mask).sum()
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"unknown loss reduction '{reduction}'")
    weighted = (values * reduction_weights(mask, reduction)).sum()
    return weighted / reduction_normalizer(reduction, mask.shape[0], mask.sum().item(), max_new_tokens)


def truncation_mask(mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """m_it with the rows of completions cut at max_new_tokens zeroed: they get no gradient (DAPO, Yu et al. 2025,
    'overlong filtering'; TRL mask_truncated_completions).  mask (N, T), truncated (N,) bool -> (N, T)."""
    return mask * (~truncated).to(mask.dtype)[:, None]


def reinforce_loss(logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                   reduction: str = "sequence_mean") -> torch.Tensor:
    """L = -(1/N) sum_i sum_t log pi(a_t|s_t) * A_t, so that grad L = -grad J (Williams 1992).

    logprobs (N, T) with grad; advantages (N, T) treated as constants; mask (N, T).
    """
    return masked_reduce(-logprobs * advantages.detach(), mask, reduction)


def ppo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                  clip_eps: float, dual_clip: float = 0.0, reduction: str = "sequence_mean",
                  clip_eps_high: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip (Schulman et al. 2017): L = -min(rho_t A_t, clip(rho_t, 1-eps_low, 1+eps_high) A_t),
    rho_t = pi/pi_old, with eps_low = clip_eps and eps_high = clip_eps_high (None: clip_eps).

    Clip-higher (DAPO, Yu et al. 2025): eps_high > eps_low lets the probability of an unlikely token with A > 0
    grow further per update, which keeps the policy's entropy from collapsing.
    Dual clip (Ye et al. 2020), when dual_clip = c > 1: for A_t < 0 the loss is also capped at -c A_t, so a huge
    ratio on a bad action cannot blow up the update.  logprobs (N, T) with grad; old_logprobs, advantages (N, T);
    mask (N, T): 0/1, or the reduction's per-token weights (entries > 0 count as tokens in the stats).
    Returns (loss, {"clip_frac", "approx_kl"}): the share of tokens whose ratio was clipped, and
    k3 = E[(rho - 1) - log rho], the estimate of KL(pi_old || pi) used for early stopping.
    """
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    advantages = advantages.detach()
    log_ratio = logprobs - old_logprobs.detach()
    ratio = log_ratio.exp()
    clipped = ratio.clamp(1 - clip_eps, 1 + eps_high)
    loss = -torch.min(ratio * advantages, clipped * advantages)  # (N, T)
    if dual_clip > 1:
        loss = torch.where(advantages < 0, torch.min(loss, -dual_clip * advantages), loss)
    tokens = (mask > 0).to(ratio.dtype)  # (N, T)
    n = tokens.sum().clamp(min=1)
    with torch.no_grad():
        stats = {"clip_frac": (((ratio - clipped).abs() > 0).float() * tokens).sum() / n,
                 "approx_kl": (((ratio - 1) - log_ratio) * tokens).sum() / n}
    return masked_reduce(loss, mask, reduction), stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range: float = 0.0, reduction: str = "sequence_mean") -> torch.Tensor:
    """Critic regression: 0.5 (V(s_t) - R_t)^2; clipped (PPO2) when clip_range > 0:
    0.5 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2).  values (N, T) with grad; the rest constants.
    """
    returns = returns.detach()
    loss = (values - returns) ** 2
    if clip_range > 0:
        old_values = old_values.detach()
        clipped = old_values + (values - old_values).clamp(-clip_range, clip_range)
        loss = torch.max(loss, (clipped - returns) ** 2)
    return masked_reduce(0.5 * loss, mask, reduction)


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate log pi(a_t|s_t) - log pi_ref(a_t|s_t) on the sampled tokens (N, T).

    Its sum over a completion is an unbiased estimate of KL(pi || pi_ref) for that sequence
    (http://joschu.net/blog/kl-approx.html).
    """
    return (logprobs - ref_logprobs) * mask


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token k3 = (r - 1) - log r with r = pi_ref(a_t|s_t) / pi(a_t|s_t): its *value* is unbiased for
    KL(pi || pi_ref), never negative, lower variance than k1 (http://joschu.net/blog/kl-approx.html).
    Its *gradient* as a loss term, E_pi[grad k3] = -sum_a pi_ref(a|s) grad log pi(a|s), is grad KL(pi_ref || pi)
    at each visited state: the reverse direction (docs/algorithms.md).  (N, T) -> (N, T).
    """
    log_r = ref_logprobs - logprobs
    return (log_r.exp() - 1 - log_r) * mask


KL_ESTIMATORS = {"k1": kl_k1, "k3": kl_k3}


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor, reduction: str = "sequence_mean") -> torch.Tensor:
    """-c * H is added to the loss by the caller; this returns the reduced entropy H.  entropy, mask (N, T) -> ().

    Its gradient is that of the entropy of pi(.|s_t) at the visited states (their distribution held fixed), not of
    the entropy of whole completions (docs/algorithms.md).
    """
    return masked_reduce(entropy, mask, reduction)
