"""Bradley-Terry reward-model loss and pairwise accuracy, as pure tensor functions.  P pairs per batch.

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
