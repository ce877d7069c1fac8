"""The sections that choose and shape the policy update: algorithm, critic, ppo (the clipped-ratio knobs that ppo and
grpo share), grpo (its own advantage scaling) and kl. Re-exported by llm_pg.config.schema and llm_pg.config.

Old names of the clipped-ratio knobs (grpo.epsilon, grpo.epsilon_high, grpo.num_iterations) are read by
llm_pg/config/aliases.py, kept for one release.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_pg.config.yaml_input import _f


@dataclass
class AlgorithmConfig:
    name: str = _f("reinforce", "reinforce (Monte-Carlo returns minus a baseline), actor_critic (a value head on the "
                   "policy; TD(0) or GAE(lambda) advantages), ppo (clipped updates, several epochs per rollout) or "
                   "grpo (group-normalized advantages, grpo.scale_rewards; the same clipped ratio, ppo.*).")
    baseline: str = _f("leave_one_out", "Baseline of reinforce (and of ppo without a critic): none, moving_average, "
                       "leave_one_out or greedy.")
    gamma: float = _f(1.0, "Discount over per-token rewards when forming returns G_t and TD errors.")
    moving_average_decay: float = _f(0.9, "b <- decay * b + (1 - decay) * mean reward, for baseline=moving_average.")
    whiten_advantages: bool = _f(False, "Normalize advantages to mean 0, std 1 over the step's tokens.")
    entropy_coef: float = _f(0.0, "Entropy bonus coefficient.")
    loss_reduction: str = _f("sequence_mean", "sequence_mean: sum over tokens, mean over sequences (the REINFORCE "
                             "estimator); token_mean: mean over all the step's completion tokens (DAPO, TRL "
                             "loss_type=dapo); sequence_token_mean: mean over sequences of each one's token mean "
                             "(original GRPO, TRL loss_type=grpo); fixed_token_mean: sum over tokens / "
                             "(generation.max_new_tokens * sequences) (Dr. GRPO, TRL loss_type=dr_grpo). "
                             "docs/algorithms.md says what each does to long and short completions.")
    mask_truncated_completions: bool = _f(False, "Completions cut at generation.max_new_tokens (no EOS or stop "
                                          "string) get no gradient; they still count in their group's advantages "
                                          "(DAPO's overlong filtering, TRL mask_truncated_completions).")
    dynamic_sampling: bool = _f(False, "Drop prompt groups whose K rewards are all equal (zero advantage) and sample "
                                "fresh prompts to refill the batch (DAPO, Yu et al. 2025; verl filter_groups). "
                                "Accepted only where such groups' advantages are exactly 0: grpo, or baseline "
                                "leave_one_out without a critic or whitening; gamma 1, no per-token credit, no KL "
                                "in the reward (docs/algorithms.md).")
    dynamic_sampling_max_rounds: int = _f(2, "Extra sampling rounds of training.prompts_per_step prompts per step at "
                                          "most; a batch still short after them is filled with dropped groups.")


@dataclass
class CriticConfig:
    learning_rate: float = _f(1e-4, "beta: the value head's own learning rate (its own optimizer parameter group). "
                              "Adam moves V by up to beta * |h|_1 per step (|h|_1 is about 600 for SmolLM2-135M).")
    gae_lambda: float = _f(1.0, "lambda of GAE: 0 = the TD(0) error r_t + gamma V(s_t+1) - V(s_t), 1 = Monte-Carlo "
                           "return minus V(s_t).")
    detach_trunk: bool = _f(True, "Stop the critic's gradient at the head, so only the policy loss moves the shared "
                            "trunk.")
    loss_coef: float = _f(1.0, "Weight of the value loss 0.5 (V - R)^2 in the total loss.")
    value_clip: float = _f(0.0, "Clip V - V_old to +-value_clip in the value loss (0 = off).")
    warmup_steps: int = _f(0, "Steps that train only the critic before the actor moves.")


@dataclass
class PPOConfig:
    """The clipped-ratio update that ppo and grpo share (verl's view: grpo is this loss with group advantages)."""

    epochs: int | None = _f(None, "Passes over each rollout (TRL's GRPO num_iterations, 'mu' in the GRPO paper); "
                            "null = the algorithm's default: 2 for ppo, 1 for grpo (on-policy: the ratio pi / pi_old "
                            "is exactly 1 and the clip never acts, as TRL's GRPO). Old name: grpo.num_iterations.")
    num_minibatches: int | None = _f(None, "Optimizer steps per epoch; each takes B*k / num_minibatches sequences "
                                     "(a prompt's k samples stay together); null = the algorithm's default: 2 for "
                                     "ppo, 1 for grpo.")
    clip_eps: float = _f(0.2, "Lower clip: the ratio pi / pi_old is clipped to [1 - clip_eps, 1 + clip_eps_high] "
                         "(TRL epsilon, verl clip_ratio_low). Old name: grpo.epsilon.")
    clip_eps_high: float | None = _f(None, "Upper clip (clip-higher, DAPO: 0.28; TRL epsilon_high, verl "
                                     "clip_ratio_high); null = clip_eps. Old name: grpo.epsilon_high.")
    dual_clip: float = _f(0.0, "Dual clip c > 1 caps the loss of negative advantages at -c A (0 = off).")
    target_kl: float = _f(0.0, "Stop the epochs early once the mean approx KL(pi_old || pi) per token exceeds this "
                          "(0 = never).")
    use_critic: bool = _f(False, "ppo only: advantages from a value head (GAE, see critic.*) instead of "
                                 "algorithm.baseline.")


@dataclass
class GRPOConfig:
    """What only grpo reads: how the group advantages are scaled (its clip and epochs are the ppo: section's)."""

    scale_rewards: str = _f("group", "A = (R - mean of the prompt's group) / (std + 1e-4) with the unbiased std of: "
                            "group (its K rewards), batch (every reward of the step, all processes), or none: no "
                            "division (Dr. GRPO). Same name and meaning as TRL's scale_rewards.")


@dataclass
class KLConfig:
    coef: float = _f(0.0, "beta: weight of the KL to the frozen starting policy (0 = no reference loaded).")
    estimator: str = _f("auto", "Per-token KL estimator: k1 = log pi - log pi_ref, or k3 = r - 1 - log r, "
                        "r = pi_ref / pi; auto = the one whose gradient is right for kl.mode (k1 in the reward, k3 "
                        "in the loss; the other pairs are refused, docs/algorithms.md).")
    mode: str = _f("reward", "reward: subtract beta * KL_t from each token's reward (follows KL(pi || pi_ref) of whole "
                   "completions); loss: add beta * sum_t KL_t to the loss (follows KL(pi_ref || pi) per visited "
                   "state; TRL's GRPO beta). grpo with scale_rewards group/batch needs loss: the std would divide "
                   "beta * KL too.")
    reference_device: str = _f("same", "Device of the frozen reference model: same (the policy's), cpu, cuda:1, ...; "
                                       "frees the policy's device of a second model. Unused with LoRA (no second "
                                       "model).")
    target: float | None = _f(None, "Adaptive coefficient: steer the mean per-sequence KL towards this (None = "
                              "fixed coefficient).")
    horizon: int = _f(10000, "Adaptive coefficient: sequences over which beta may change by at most 20 %.")
