"""The scoring stage: rewards of a rollout, the KL to the reference, then advantages and returns.

    rollout (rollout.py) -> reward_rollout -> RolloutRewards -> score_rollout -> ScoredRollout -> update.py

`reward_rollout` runs the reward model (rewards/); `score_rollout` adds the per-token KL (kl_control.KLPenalty)
and hands the token rewards to advantages.advantages_and_returns. `step_metrics` reads a step's numbers off the
scored rollout and the update's statistics. Shapes: B prompts, K samples per prompt, N = B*K, T completion tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from llm_pg.algorithms import advantages as adv
from llm_pg.algorithms.kl import KLPenalty
from llm_pg.algorithms.registry import get_algorithm
from llm_pg.models.sharding import gathered_for_generation
from llm_pg.rewards import RewardMix, reward_inputs
from llm_pg.rewards.control import CONTROL_STREAM, apply_control
from llm_pg.rewards.token_credit import CompletionTokens
from llm_pg.rollout.reference import Reference
from llm_pg.rollout.rows import RowBatch, per_row
from llm_pg.rollout.sampling import Rollout, sample
from llm_pg.runs.rng import derived_seed

Gather = Callable[[torch.Tensor], torch.Tensor]  # joins all processes' values (accelerator.gather)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@dataclass
class RolloutRewards(RowBatch):
    """The reward model's verdict on a rollout's N completions (rows as the rollout's; `per_row`: rollout/rows.py)."""

    rewards: torch.Tensor = per_row("rows")  # (N,) task reward R of each completion (mixed, normalized, clipped)
    components: dict[str, list[float]] = per_row("columns")  # reward component -> (N,) unweighted values
    # (N, T) r_t: R on the last token, or the exact per-token credit summing to R
    token_rewards: torch.Tensor = per_row("right", pad=0.0)


@dataclass
class ScoredRollout:
    """A rollout with everything the update needs."""

    rollout: Rollout
    rewards: torch.Tensor  # (N,) task reward of each completion
    components: dict[str, list[float]]  # reward component -> (N,) values
    kl: torch.Tensor  # (N, T) per-token KL estimate to the reference (zeros without one)
    ref_logprobs: torch.Tensor | None  # (N, T) log pi_ref(a_t|s_t), when there is a reference
    returns: torch.Tensor  # (N, T) the critic's targets (G_t without a critic)
    advantages: torch.Tensor  # (N, T)
    kl_penalty: KLPenalty | None = None  # beta, the estimator and where the KL acts; None without a reference


@torch.no_grad()
def reward_rollout(rollout: Rollout, batch, reward_mix: RewardMix, tokenizer, per_token: bool,
                   stop_strings: list[str], gather: Gather = _identity) -> RolloutRewards:
    """Score the rollout's completions (the running normalization, when on, grows by every process's batch)."""
    mask = rollout.completion_mask
    prompts, references, columns = reward_inputs(batch, rollout.group_size)
    tokens = CompletionTokens(tokenizer, rollout.completion_ids, mask, stop_strings)
    scored = reward_mix.reward_batch(prompts, rollout.completions, references, columns,
                                tokens=tokens if per_token else None,
                                gather=lambda raw: gather(raw.to(mask.device)),  # normalize over all processes
                                lengths=rollout.lengths.tolist())
    rewards = torch.tensor(scored.rewards, dtype=torch.float32, device=mask.device)  # (N,)
    token_rewards = adv.terminal_rewards(rewards, mask) if scored.token_rewards is None else \
        scored.token_rewards.to(device=mask.device, dtype=torch.float32)  # (N, T): per-token credit sums to R
    return RolloutRewards(rewards, scored.components, token_rewards)


def control_arm_rewards(rewards: RolloutRewards, mask: torch.Tensor, kind: str, where: tuple[int, int, int],
                        gather: Gather, process_index: int) -> RolloutRewards:
    """With reward.control (a control arm, rewards/control.py): the completions' rewards replaced by the control's,
    the whole reward on the last token; else `rewards` as they are. `where` = (training.seed, step, sampling round)
    seeds the control's own generator, so the sampling streams stay the real run's."""
    if kind == "none":
        return rewards
    draws = torch.Generator().manual_seed(derived_seed(where[0], CONTROL_STREAM, *where[1:]))
    control = apply_control(rewards.rewards, kind, draws, gather, process_index)  # (N,)
    return dataclasses.replace(rewards, rewards=control, token_rewards=adv.terminal_rewards(control, mask))


@torch.no_grad()
def greedy_rewards(accelerator, model, tokenizer, batch, generation, reward_mix: RewardMix) -> torch.Tensor:
    """(B,) reward of each prompt's greedy decode: the self-critical baseline (Rennie et al. 2017).

    Scored without updating the reward's running statistics, after the step's samples have updated them.
    """
    with gathered_for_generation(accelerator, model) as policy, accelerator.autocast():  # ZeRO-3/FSDP: whole weights
        greedy = sample(policy, tokenizer, [e.prompt_ids for e in batch], generation, greedy=True)
    prompts, references, columns = reward_inputs(batch, 1)
    values = reward_mix.reward_batch(prompts, greedy.completions, references, columns, update=False,
                                lengths=greedy.lengths.tolist()).rewards
    return torch.tensor(values, dtype=torch.float32, device=greedy.completion_ids.device)


@torch.no_grad()
def score_rollout(config, rollout: Rollout, rewards: RolloutRewards, reference: Reference | None,
                  kl_penalty: KLPenalty | None, baseline: adv.BaselineInputs, uses_critic: bool) -> ScoredRollout:
    """KL to the reference (into the token rewards when kl.mode is reward), then advantages and returns."""
    mask, token_rewards = rollout.completion_mask, rewards.token_rewards
    kl, ref_logprobs = torch.zeros_like(token_rewards), None
    if reference is not None:
        ref_logprobs = reference.logprobs(rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, mask,
                                          temperature=config.generation.temperature, group_size=rollout.group_size)
        kl = kl_penalty.per_token(rollout.logprobs, ref_logprobs, mask)
        if not kl_penalty.in_loss:
            token_rewards = token_rewards - kl_penalty.coef * kl  # r_t <- r_t - beta * KL_t
    advantages, returns = get_algorithm(config).advantages(config, token_rewards, mask, baseline,
                                                          rollout.values if uses_critic else None)
    return ScoredRollout(rollout, rewards.rewards, rewards.components, kl, ref_logprobs, returns, advantages,
                         kl_penalty if reference is not None else None)


def completion_rows(scored: ScoredRollout, batch) -> list[dict]:
    """The step's completions as table rows {prompt, completion, references, reward} (evaluation.log_completions)."""
    prompts, references, _ = reward_inputs(batch, scored.rollout.group_size)
    return [{"prompt": p, "completion": c, "references": list(r), "reward": float(v)}
            for p, c, r, v in zip(prompts, scored.rollout.completions, references, scored.rewards.tolist())]


def step_metrics(scored: ScoredRollout, update: dict, lr: float, seconds: dict, gather: Gather = _identity) -> dict:
    """The step's metrics over all processes' completions (`gather` joins them)."""
    r, mask = scored.rollout, scored.rollout.completion_mask
    columns = {"reward": scored.rewards, "kl": scored.kl.sum(1), "length": r.lengths.float(),
               "truncated": r.truncated.float(), "advantage": scored.advantages.sum(1),
               **{f"reward/{k}": torch.tensor(v, device=mask.device) for k, v in scored.components.items()}}
    every = dict(zip(columns, gather(torch.stack(list(columns.values()), 1)).unbind(1)))  # name -> (N * processes,)
    n = every["reward"].shape[0]
    critic = {}
    if r.values is not None:  # how much of the returns' variance the critic explains, over every process's tokens
        tokens = adv.all_sum(mask.sum().float(), gather).clamp(min=1)
        critic = {"value/explained_variance": adv.explained_variance(r.values, scored.returns, mask, gather),
                  "value/mean": (adv.all_sum((r.values * mask).sum(), gather) / tokens).item()}
    kl_coef = scored.kl_penalty.coef if scored.kl_penalty is not None else 0.0
    # a component's mean over the samples it applies to (NaN: a TRL function's None), as TRL's nanmean; a step where
    # it applies to none logs no value for it
    components = {f"reward/{k}": every[f"reward/{k}"].nanmean().item() for k in scored.components
                  if not every[f"reward/{k}"].isnan().all()}
    return {
        "reward/mean": every["reward"].mean().item(), "reward/std": every["reward"].std().item() if n > 1 else 0.0,
        **components,
        **update, **critic, "policy/kl": every["kl"].mean().item(), "kl/coef": kl_coef,
        "advantage/mean": (every["advantage"].sum() / every["length"].sum().clamp(min=1)).item(),
        "completion/length": every["length"].mean().item(),
        "completion/truncated_frac": every["truncated"].mean().item(),
        "train/lr": lr, "time/sample_s": seconds["sample"], "time/update_s": seconds["update"],
        "time/step_s": seconds["step"], "speed/completions_per_s": n / seconds["step"],
    }


def zero_update_reason(config, metrics: dict) -> str | None:
    """Why a step's update could not change the policy (its policy gradient is exactly 0), or None when it could.

    The reasons, in the order they are checked: no completion token is in the loss (every completion cut at
    max_new_tokens and masked); dynamic sampling found no group whose rewards differ; every reward of the step is
    the same value (a TRL reward's None counts 0); every prompt group's K rewards are equal, so every
    group-relative advantage is 0."""
    if metrics.get("policy/grad_norm", 1.0) != 0.0 or metrics.get("train/skipped_update"):
        return None
    a, g = config.algorithm, config.generation
    if a.mask_truncated_completions and metrics.get("completion/truncated_frac") == 1.0:
        return (f"every completion was cut at generation.max_new_tokens={g.max_new_tokens} and "
                "algorithm.mask_truncated_completions takes cut completions out of the loss; raise "
                "generation.max_new_tokens or set algorithm.mask_truncated_completions: false")
    if a.dynamic_sampling and metrics.get("dynamic_sampling/filled_groups", 0) > 0:
        return (f"algorithm.dynamic_sampling found no prompt group whose {g.num_samples} rewards differ in "
                f"{1 + a.dynamic_sampling_max_rounds} rounds, so every group-relative advantage was 0; check that "
                "the reward can tell completions apart")
    if metrics.get("reward/std") == 0.0:
        return (f"every completion's reward was {metrics['reward/mean']:.4g} (a reward function's None counts 0), so "
                "every advantage was 0; check that the reward can tell completions apart")
    return (f"every prompt group's {g.num_samples} rewards were equal, so every group-relative advantage was 0; "
            "check that the reward can tell completions apart, or raise generation.num_samples")
