"""The two preference losses, as pure tensor functions: Bradley-Terry (a reward model's, with pairwise accuracy) and
DPO (the policy's own, below).  P pairs per batch.

Bradley & Terry (1952); as a reward-model loss: Christiano et al. 2017 (https://arxiv.org/abs/1706.03741),
Ouyang et al. 2022 (InstructGPT, eq. 1).  With reward r_c of the chosen and r_r of the rejected answer,

    p(chosen > rejected) = sigma(r_c - r_r)
    L_BT     = mean_pairs -log sigma(r_c - r_r - m)      m: per-pair margin (Llama 2, Touvron et al. 2023, eq. 2)
    L_center = coef * mean_pairs (r_c + r_r)^2           keeps rewards centred on 0 (Eisenstein et al. 2023;
                                                         TRL's RewardConfig.center_rewards_coefficient)

The BT loss only sees differences, so the reward's offset is free; the centring term pins it near 0 without
changing which answer wins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float = 0.0,
                       center_coef: float = 0.0) -> torch.Tensor:
    """mean -log sigma(r_c - r_r - m) + center_coef * mean (r_c + r_r)^2.  r_chosen, r_rejected, margin: (P,)."""
    delta = r_chosen - r_rejected - margin  # (P,)
    loss = -F.logsigmoid(delta).mean()  # logsigmoid: stable for large |delta|, unlike log(sigmoid(.))
    if center_coef:
        loss = loss + center_coef * ((r_chosen + r_rejected) ** 2).mean()
    return loss


def pairwise_correct(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """(P,) 1.0 where r_c > r_r, 0.5 for a tie (neither answer ranked higher), else 0.0."""
    return (r_chosen > r_rejected).float() + 0.5 * (r_chosen == r_rejected).float()


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """The share of pairs the rewards rank correctly (ties count half)."""
    return pairwise_correct(r_chosen, r_rejected).mean().item()


# ---- DPO: the policy is its own reward model ------------------------------------------------------------------
# Rafailov et al. 2023 (https://arxiv.org/abs/2305.18290): with the implicit reward r(x, y) = beta log pi(y|x) /
# pi_ref(y|x), the Bradley-Terry likelihood of the pairs is a loss on the policy itself. For P pairs, with the summed
# log-probs of the answer tokens of the chosen (c) and rejected (r) answer under the policy and the frozen reference,
#
#     h = beta [(log pi_c - log ref_c) - (log pi_r - log ref_r)]                    (P,)
#
# loss_type (TRL's DPOConfig.loss_type names):
#     sigmoid  -(1 - eps) log sigma(h) - eps log sigma(-h)   Rafailov et al. eq. 7; eps = label_smoothing > 0 is the
#                                                           conservative DPO of Mitchell 2023 (ericmitchell.ai/cdpo.pdf)
#     ipo      (h / beta - 1 / (2 beta))^2                    Azar et al. 2023 (https://arxiv.org/abs/2310.12036)
#                                                           eq. 17 with tau = beta, TRL's form; on the summed
#                                                           log-probs as given (TRL's trainer averages them over the
#                                                           answer's tokens for ipo first; this function does not:
#                                                           the paper's sequence log-likelihood)
#     hinge    max(0, 1 - h)                                  SLiC, Zhao et al. 2023 (https://arxiv.org/abs/2305.10425)


def _sigmoid_dpo(h: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    return -(1 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h)  # (P,)


def _ipo(h: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    return (h / beta - 1 / (2 * beta)) ** 2  # (P,)


def _hinge(h: torch.Tensor, beta: float, eps: float) -> torch.Tensor:
    return F.relu(1 - h)  # (P,)


DPO_LOSSES = {"sigmoid": _sigmoid_dpo, "ipo": _ipo, "hinge": _hinge}


def dpo_loss(logp_chosen: torch.Tensor, logp_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1, loss_type: str = "sigmoid",
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean loss, implicit reward of the chosen (P,), of the rejected (P,)); every input (P,), the equations above.

    The implicit rewards beta (log pi - log ref) are detached: TRL's rewards/chosen, rewards/rejected; their
    difference is rewards/margins and (chosen > rejected) rewards/accuracies."""
    reward_chosen = beta * (logp_chosen - ref_chosen)  # (P,)
    reward_rejected = beta * (logp_rejected - ref_rejected)  # (P,)
    h = reward_chosen - reward_rejected  # (P,)
    loss = DPO_LOSSES[loss_type](h, beta, label_smoothing).mean()
    return loss, reward_chosen.detach(), reward_rejected.detach()
