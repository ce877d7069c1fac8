"""The algorithms: each is a small entry saying how advantages are formed and which policy loss is trained.

    reinforce     A_t = G_t - b (algorithm.baseline);             L = -log pi(a_t|s_t) A_t             one pass
    actor_critic  A_t = GAE(lambda) of delta_t = r_t + gamma V(s_t+1) - V(s_t);  same L + value loss   one pass
    ppo           A_t from the baseline or the critic (ppo.use_critic); clipped ratio loss     epochs x minibatches
    grpo          A_i = (R_i - mean of its group) / (std + eps) (grpo.scale_rewards); clipped ratio loss (grpo.epsilon,
                  grpo.epsilon_high)                                                          grpo.num_iterations

The stages ask their algorithm (scoring.py: a critic or a baseline? update.py: which loss, how many epochs and
minibatches?) and never branch on its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from llm_pg.algorithms import advantages as adv
from llm_pg.algorithms.losses import ppo_clip_loss, reinforce_loss

# `config` below is a config.TrainConfig; not imported, so that config validation can read ALGORITHMS without an
# import circle (config -> config_checks -> algorithms).

PolicyLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, object],
                      tuple[torch.Tensor, dict[str, torch.Tensor]]]


def _reinforce_loss(logprobs, old_logprobs, advantages, mask, config):
    """Summed -log pi(a_t|s_t) A_t (the caller divides by the step's normalizer)."""
    return reinforce_loss(logprobs, advantages, mask, "sum"), {}


def _ppo_loss(logprobs, old_logprobs, advantages, mask, config):
    p = config.ppo
    loss, stats = ppo_clip_loss(logprobs, old_logprobs, advantages, mask, p.clip_eps, p.dual_clip, "sum",
                                clip_eps_high=p.clip_eps_high)
    return loss, {"ppo/clip_frac": stats["clip_frac"], "ppo/approx_kl": stats["approx_kl"]}


def _grpo_loss(logprobs, old_logprobs, advantages, mask, config):
    g = config.grpo
    loss, stats = ppo_clip_loss(logprobs, old_logprobs, advantages, mask, g.epsilon, 0.0, "sum",
                                clip_eps_high=g.epsilon_high)
    return loss, {"ppo/clip_frac": stats["clip_frac"], "ppo/approx_kl": stats["approx_kl"]}


Advantages = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _baseline_or_critic_advantages(config, token_rewards, mask, baseline: adv.BaselineInputs, values):
    """G_t - b (algorithm.baseline) or GAE over the critic's values (values given), optionally whitened."""
    a = config.algorithm
    return adv.advantages_and_returns(token_rewards, mask, a.gamma, a.whiten_advantages, a.baseline, baseline,
                                      values=values, gae_lambda=config.critic.gae_lambda)


def _grpo_advantages(config, token_rewards, mask, baseline: adv.BaselineInputs, values):
    """(R_i - group mean) / (std + eps) on every token of completion i (grpo.scale_rewards picks the std)."""
    return adv.grpo_advantages_and_returns(token_rewards, mask, config.algorithm.gamma, config.grpo.scale_rewards,
                                           baseline.group_size, baseline.gather)


@dataclass(frozen=True)
class Algorithm:
    policy_loss: PolicyLoss  # (logprobs, old_logprobs, advantages, mask, config) -> (summed loss, stats)
    uses_critic: Callable[[object], bool]  # a value head on the policy, GAE advantages, a value loss
    epochs: Callable[[object], int] = lambda c: 1
    minibatches: Callable[[object], int] = lambda c: 1
    exact_old_logprobs: bool = False  # recompute log pi_old with the update's own forward pass (ratio exactly 1)
    # (config, token_rewards (N, T), mask (N, T), BaselineInputs, values (N, T) or None) -> (A_t, R_t), each (N, T)
    advantages: Advantages = _baseline_or_critic_advantages

    reads_baseline: bool = True  # its advantages use algorithm.baseline when there is no critic

    def uses_baseline(self, config) -> bool:
        """Advantages G_t - b with algorithm.baseline (else GAE over the critic's values, or the algorithm's own)."""
        return self.reads_baseline and not self.uses_critic(config)


ALGORITHMS: dict[str, Algorithm] = {
    "reinforce": Algorithm(_reinforce_loss, uses_critic=lambda c: False),
    "actor_critic": Algorithm(_reinforce_loss, uses_critic=lambda c: True),
    "ppo": Algorithm(_ppo_loss, uses_critic=lambda c: c.ppo.use_critic, epochs=lambda c: c.ppo.epochs,
                     minibatches=lambda c: c.ppo.num_minibatches, exact_old_logprobs=True),
    "grpo": Algorithm(_grpo_loss, uses_critic=lambda c: False, epochs=lambda c: c.grpo.num_iterations,
                      exact_old_logprobs=True, advantages=_grpo_advantages, reads_baseline=False),
}


def get_algorithm(config) -> Algorithm:
    return ALGORITHMS[config.algorithm.name]
