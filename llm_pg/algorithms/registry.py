"""The algorithms: each is a small entry saying how advantages are formed and which policy loss is trained.

    reinforce     A_t = G_t - b (algorithm.baseline);             L = -log pi(a_t|s_t) A_t             one pass
    actor_critic  A_t = GAE(lambda) of delta_t = r_t + gamma V(s_t+1) - V(s_t);  same L + value loss   one pass
    ppo           A_t from the baseline or the critic (ppo.use_critic); clipped ratio loss (ppo.clip_eps, ...)
                                                                  ppo.epochs x ppo.num_minibatches (default 2 x 2)
    grpo          A_i = (R_i - mean of its group) / (std + eps) (grpo.scale_rewards); the same clipped ratio loss
                  with the same ppo.* knobs (verl's view of GRPO)          on-policy by default (1 x 1, as TRL's)

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


def _clipped_ratio_loss(logprobs, old_logprobs, advantages, mask, config):
    """Summed -min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps_high) A_t), rho_t = pi / pi_old (ppo.clip_eps,
    ppo.clip_eps_high, ppo.dual_clip): ppo's loss and grpo's, whose advantages alone differ."""
    p = config.ppo
    loss, stats = ppo_clip_loss(logprobs, old_logprobs, advantages, mask, p.clip_eps, p.dual_clip, "sum",
                                clip_eps_high=p.clip_eps_high)
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
    # reads the ppo: section's epochs, num_minibatches and target_kl; its defaults for ppo.epochs and
    # ppo.num_minibatches when they are null (the one place that holds them)
    clipped_ratio: bool = False
    default_epochs: int = 1
    default_minibatches: int = 1
    exact_old_logprobs: bool = False  # recompute log pi_old with the update's own forward pass (ratio exactly 1)
    # (config, token_rewards (N, T), mask (N, T), BaselineInputs, values (N, T) or None) -> (A_t, R_t), each (N, T)
    advantages: Advantages = _baseline_or_critic_advantages

    reads_baseline: bool = True  # its advantages use algorithm.baseline when there is no critic
    # its advantages divide the returns by a statistic of the step's samples (grpo.scale_rewards group / batch)
    scales_returns: Callable[[object], bool] = lambda c: False

    def epochs(self, config) -> int:
        """Passes over each rollout: ppo.epochs, or this algorithm's default when it is null (1 without a clip)."""
        if not self.clipped_ratio:
            return 1
        return self.default_epochs if config.ppo.epochs is None else config.ppo.epochs

    def minibatches(self, config) -> int:
        """Optimizer steps per pass: ppo.num_minibatches, or this algorithm's default when it is null."""
        if not self.clipped_ratio:
            return 1
        return self.default_minibatches if config.ppo.num_minibatches is None else config.ppo.num_minibatches

    def target_kl(self, config) -> float:
        """Stop the epochs once their mean approx KL exceeds this (ppo.target_kl; 0: never)."""
        return config.ppo.target_kl if self.clipped_ratio else 0.0

    def uses_baseline(self, config) -> bool:
        """Advantages G_t - b with algorithm.baseline (else GAE over the critic's values, or the algorithm's own)."""
        return self.reads_baseline and not self.uses_critic(config)

    def zero_advantage_for_equal_returns(self, config) -> bool:
        """Whether a prompt group whose K returns G_0 are all equal gets A = 0 exactly on every token, given that
        every token's return is G_0 (gamma = 1, the reward on the last token): grpo centres each group (any
        scale), the leave-one-out baseline gives b = G_0; whitening, a critic and the other baselines do not."""
        if not self.reads_baseline:  # grpo: A_i = (G_i - mean of the group) / s
            return True
        return self.uses_baseline(config) and config.algorithm.baseline == "leave_one_out" \
            and not config.algorithm.whiten_advantages


ALGORITHMS: dict[str, Algorithm] = {
    "reinforce": Algorithm(_reinforce_loss, uses_critic=lambda c: False),
    "actor_critic": Algorithm(_reinforce_loss, uses_critic=lambda c: True),
    "ppo": Algorithm(_clipped_ratio_loss, uses_critic=lambda c: c.ppo.use_critic, clipped_ratio=True,
                     default_epochs=2, default_minibatches=2, exact_old_logprobs=True),
    # on-policy by default, as TRL's GRPO (num_iterations=1): the ratio is exactly 1 and the clip never acts
    "grpo": Algorithm(_clipped_ratio_loss, uses_critic=lambda c: False, clipped_ratio=True, exact_old_logprobs=True,
                      advantages=_grpo_advantages, reads_baseline=False,
                      scales_returns=lambda c: c.grpo.scale_rewards != "none"),
}


def get_algorithm(config) -> Algorithm:
    return ALGORITHMS[config.algorithm.name]


def kl_in_reward_problem(config) -> str | None:
    """Why beta * KL in the reward would not train beta * KL, or None.  grpo's scale_rewards divides each return,
    KL included, by a std of the samples: in a group whose task rewards are equal the advantages become unit-size
    KL noise whatever beta is (tests/test_objective_matrix.py measures it)."""
    if config.kl.coef > 0 and config.kl.mode == "reward" and get_algorithm(config).scales_returns(config):
        return (f"kl.mode: reward puts beta * KL into the returns, which grpo.scale_rewards={config.grpo.scale_rewards}"
                " divides by a std of the samples (beta then stops setting the KL's weight); use kl.mode: loss "
                "(TRL's beta) or grpo.scale_rewards: none")
    return None


def dynamic_sampling_problem(config) -> str | None:
    """Why algorithm.dynamic_sampling would drop groups whose advantages are not exactly 0, or None.

    It drops the groups whose K task rewards are equal; that leaves the gradient's direction unchanged only when
    such a group's advantage is exactly 0 on every token: every token's return must be R (gamma = 1, no per-token
    credit, no KL in the reward) and the algorithm must centre equal returns to exactly 0
    (Algorithm.zero_advantage_for_equal_returns).  tests/test_objective_matrix.py checks every accepted config.
    """
    a, algorithm = config.algorithm, get_algorithm(config)
    if not algorithm.zero_advantage_for_equal_returns(config):
        setting = "a critic" if algorithm.uses_critic(config) else "algorithm.whiten_advantages" \
            if a.whiten_advantages else f"algorithm.baseline={a.baseline}"
        why = f"with {setting} they are not; use algorithm.name: grpo, or algorithm.baseline: leave_one_out " \
              "without a critic or whitening"
    elif a.gamma != 1.0:
        why = "with algorithm.gamma < 1 a return depends on the completion's length; set algorithm.gamma: 1"
    elif config.reward.per_token:
        why = "with reward.per_token the token returns differ; set reward.per_token: false"
    elif config.kl.coef > 0 and config.kl.mode == "reward":
        why = "with kl.mode: reward each return carries its sample's KL; use kl.mode: loss"
    else:
        return None
    return f"algorithm.dynamic_sampling: drops groups of equal rewards as if their advantages were 0, but {why} " \
           "(or turn dynamic sampling off)"
