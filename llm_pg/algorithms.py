"""The algorithms: each is a small entry saying how advantages are formed and which policy loss is trained.

    reinforce     A_t = G_t - b (algorithm.baseline);             L = -log pi(a_t|s_t) A_t             one pass
    actor_critic  A_t = GAE(lambda) of delta_t = r_t + gamma V(s_t+1) - V(s_t);  same L + value loss   one pass
    ppo           A_t from the baseline or the critic (ppo.use_critic); clipped ratio loss     epochs x minibatches

The trainer calls `advantages_and_returns` and `Algorithm.policy_loss`, and never branches on the name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from llm_pg import advantages as adv
from llm_pg.config import TrainConfig
from llm_pg.losses import ppo_clip_loss, reinforce_loss

PolicyLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, TrainConfig],
                      tuple[torch.Tensor, dict[str, torch.Tensor]]]


def _reinforce_loss(logprobs, old_logprobs, advantages, mask, config):
    """Summed -log pi(a_t|s_t) A_t (the caller divides by the step's normalizer)."""
    return reinforce_loss(logprobs, advantages, mask, "sum"), {}


def _ppo_loss(logprobs, old_logprobs, advantages, mask, config):
    p = config.ppo
    loss, stats = ppo_clip_loss(logprobs, old_logprobs, advantages, mask, p.clip_eps, p.dual_clip, "sum")
    return loss, {"ppo/clip_frac": stats["clip_frac"], "ppo/approx_kl": stats["approx_kl"]}


@dataclass(frozen=True)
class Algorithm:
    policy_loss: PolicyLoss  # (logprobs, old_logprobs, advantages, mask, config) -> (summed loss, stats)
    uses_critic: Callable[[TrainConfig], bool]  # a value head on the policy, GAE advantages, a value loss
    epochs: Callable[[TrainConfig], int] = lambda c: 1
    minibatches: Callable[[TrainConfig], int] = lambda c: 1
    exact_old_logprobs: bool = False  # recompute log pi_old with the update's own forward pass (ratio exactly 1)


ALGORITHMS: dict[str, Algorithm] = {
    "reinforce": Algorithm(_reinforce_loss, uses_critic=lambda c: False),
    "actor_critic": Algorithm(_reinforce_loss, uses_critic=lambda c: True),
    "ppo": Algorithm(_ppo_loss, uses_critic=lambda c: c.ppo.use_critic, epochs=lambda c: c.ppo.epochs,
                     minibatches=lambda c: c.ppo.num_minibatches, exact_old_logprobs=True),
}


def get_algorithm(config: TrainConfig) -> Algorithm:
    return ALGORITHMS[config.algorithm.name]


def advantages_and_returns(config: TrainConfig, token_rewards: torch.Tensor, mask: torch.Tensor,
                           values: torch.Tensor | None, baseline: Callable[[torch.Tensor], torch.Tensor]
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(A_t, the critic's targets R_t), each (N, T).

    With a critic: GAE(lambda) over the rollout's values, R_t = A_t + V(s_t).  Without: A_t = G_t - b, where
    `baseline` maps each sequence's G_0 (N,) to b (N,), and R_t = G_t.
    """
    a = config.algorithm
    if get_algorithm(config).uses_critic(config):
        advantages, returns = adv.gae_advantages(token_rewards, values, mask, a.gamma, config.critic.gae_lambda)
        return (adv.whiten(advantages, mask) if a.whiten_advantages else advantages), returns
    returns = adv.discounted_returns(token_rewards, mask, a.gamma)  # (N, T)
    advantages = adv.reinforce_advantages(returns, baseline(returns[:, 0]), mask, a.whiten_advantages)
    return advantages, returns
