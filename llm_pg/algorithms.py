"""The algorithms: each is a small entry saying how advantages are formed and which policy loss is trained.

    reinforce     A_t = G_t - b (algorithm.baseline);             L = -log pi(a_t|s_t) A_t             one pass
    actor_critic  A_t = GAE(lambda) of delta_t = r_t + gamma V(s_t+1) - V(s_t);  same L + value loss   one pass
    ppo           A_t from the baseline or the critic (ppo.use_critic); clipped ratio loss     epochs x minibatches

The stages ask their algorithm (scoring.py: a critic or a baseline? update.py: which loss, how many epochs and
minibatches?) and never branch on its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from llm_pg.losses import ppo_clip_loss, reinforce_loss

# `config` below is a config.TrainConfig; not imported, so that config validation can read ALGORITHMS without an
# import circle (config -> config_checks -> algorithms).

PolicyLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, object],
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
    uses_critic: Callable[[object], bool]  # a value head on the policy, GAE advantages, a value loss
    epochs: Callable[[object], int] = lambda c: 1
    minibatches: Callable[[object], int] = lambda c: 1
    exact_old_logprobs: bool = False  # recompute log pi_old with the update's own forward pass (ratio exactly 1)

    def uses_baseline(self, config) -> bool:
        """Advantages G_t - b with algorithm.baseline (else GAE over the critic's values)."""
        return not self.uses_critic(config)


ALGORITHMS: dict[str, Algorithm] = {
    "reinforce": Algorithm(_reinforce_loss, uses_critic=lambda c: False),
    "actor_critic": Algorithm(_reinforce_loss, uses_critic=lambda c: True),
    "ppo": Algorithm(_ppo_loss, uses_critic=lambda c: c.ppo.use_critic, epochs=lambda c: c.ppo.epochs,
                     minibatches=lambda c: c.ppo.num_minibatches, exact_old_logprobs=True),
}


def get_algorithm(config) -> Algorithm:
    return ALGORITHMS[config.algorithm.name]
