"""Dynamic sampling (DAPO, Yu et al. 2025, section 3.2; verl `algorithm.filter_groups`): keep only informative groups.

A prompt group whose K rewards are all equal has zero group-relative advantage, so it adds nothing to the
gradient but still dilutes the batch.  With `algorithm.dynamic_sampling`, such groups are dropped and fresh prompts
are sampled in rounds of training.prompts_per_step until the batch holds B informative groups, for at most
`algorithm.dynamic_sampling_max_rounds` extra rounds; a batch still short is filled with dropped groups, so the
update always sees B groups (its micro-batches and minibatches stay as configured).

Several processes: every process takes the same number of rounds (one more while any process is short), so the
prompt sampler and the collective calls of generation stay in step.

    sample_round (rollout + rewards of B prompts) -> informative_groups -> select_groups / concat -> B groups

Shapes: B prompts, K samples per prompt, N = B*K, P prompt tokens (left-padded), T completion tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from llm_pg.algorithms.advantages import equal_groups
from llm_pg.rollout.sampling import Rollout
from llm_pg.training.scoring import RolloutRewards

SampleRound = Callable[[], tuple[list, Rollout, RolloutRewards]]  # (B examples, their rollout, its rewards)


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) bool: the prompt groups whose K rewards are not all equal.  rewards (N,) prompt-major."""
    return ~equal_groups(rewards, group_size)[:, 0]


def _pad_cat(tensors: list[torch.Tensor], value: float, left: bool) -> torch.Tensor:
    """Concatenate (n_i, W_i) tensors along rows, padding each to the widest W (on the left or right)."""
    width = max(t.shape[1] for t in tensors)
    padded = []
    for t in tensors:
        pad = (width - t.shape[1], 0) if left else (0, width - t.shape[1])
        padded.append(torch.nn.functional.pad(t, pad, value=value))
    return torch.cat(padded)


def select_groups(rollout: Rollout, rewards: RolloutRewards, groups: list[int]
                  ) -> tuple[Rollout, RolloutRewards]:
    """The rows of the given prompt groups (in that order), regrouped as 0..len(groups)-1."""
    K = rollout.group_size
    rows = torch.tensor([g * K + k for g in groups for k in range(K)], dtype=torch.long)
    pick = rows.to(rollout.completion_ids.device)
    r = dataclasses.replace(
        rollout, prompt_ids=rollout.prompt_ids[pick], prompt_mask=rollout.prompt_mask[pick],
        completion_ids=rollout.completion_ids[pick], completion_mask=rollout.completion_mask[pick],
        logprobs=rollout.logprobs[pick], truncated=rollout.truncated[pick],
        completions=[rollout.completions[i] for i in rows.tolist()],
        group=torch.arange(len(groups), device=pick.device).repeat_interleave(K),
        values=rollout.values[pick] if rollout.values is not None else None)
    chosen = RolloutRewards(rewards.rewards[pick], {k: [v[i] for i in rows.tolist()]
                                                    for k, v in rewards.components.items()},
                            rewards.token_rewards[pick])
    return r, chosen


def concat(parts: list[tuple[Rollout, RolloutRewards]], pad_id: int) -> tuple[Rollout, RolloutRewards]:
    """One rollout (and its rewards) of several, prompts re-padded on the left, completions on the right."""
    rollouts, rewards = [p[0] for p in parts], [p[1] for p in parts]
    if len(parts) == 1:
        return parts[0]
    groups, offset = [], 0
    for r in rollouts:
        groups.append(r.group + offset)
        offset += r.completion_ids.shape[0] // r.group_size
    values = None if rollouts[0].values is None else _pad_cat([r.values for r in rollouts], 0.0, left=False)
    rollout = dataclasses.replace(
        rollouts[0], prompt_ids=_pad_cat([r.prompt_ids for r in rollouts], pad_id, left=True),
        prompt_mask=_pad_cat([r.prompt_mask for r in rollouts], 0, left=True),
        completion_ids=_pad_cat([r.completion_ids for r in rollouts], pad_id, left=False),
        completion_mask=_pad_cat([r.completion_mask for r in rollouts], 0, left=False),
        logprobs=_pad_cat([r.logprobs for r in rollouts], 0.0, left=False),
        truncated=torch.cat([r.truncated for r in rollouts]),
        completions=[c for r in rollouts for c in r.completions], group=torch.cat(groups), values=values)
    joined = RolloutRewards(torch.cat([w.rewards for w in rewards]),
                            {k: [v for w in rewards for v in w.components[k]] for k in rewards[0].components},
                            _pad_cat([w.token_rewards for w in rewards], 0.0, left=False))
    return rollout, joined


def dynamic_sample(sample_round: SampleRound, max_rounds: int, pad_id: int,
                   global_sum: Callable[[int], int] = lambda x: x) -> tuple[list, Rollout, RolloutRewards, dict]:
    """Sample rounds until B informative groups are found (at most 1 + max_rounds rounds); the batch of B groups
    (informative ones first, then dropped ones to fill it), and its stats summed over processes
    (`global_sum`): dynamic_sampling/dropped_groups (groups with equal rewards, of every round),
    dynamic_sampling/extra_rollouts (completions sampled beyond B*K) and dynamic_sampling/filled_groups (dropped
    groups that had to fill the batch)."""
    kept: list[tuple] = []  # (round, group index, example)
    dropped: list[tuple] = []
    rounds: list[tuple[Rollout, RolloutRewards]] = []
    B = None
    for i in range(1 + max_rounds):
        examples, rollout, rewards = sample_round()
        B = len(examples) if B is None else B
        rounds.append((rollout, rewards))
        for g, ok in enumerate(informative_groups(rewards.rewards, rollout.group_size).tolist()):
            (kept if ok else dropped).append((i, g, examples[g]))
        if global_sum(max(B - len(kept), 0)) == 0:  # every process has its B groups
            break
    chosen = (kept + dropped)[:B]
    parts = [select_groups(*rounds[i], [g for j, g, _ in chosen if j == i]) for i in range(len(rounds))]
    rollout, rewards = concat([p for p in parts if p[0].completion_ids.shape[0]], pad_id)
    examples = [e for i in range(len(rounds)) for j, _, e in chosen if j == i]  # the rows' order: by round
    K = rollout.group_size
    stats = {"dynamic_sampling/dropped_groups": global_sum(len(dropped)),
             "dynamic_sampling/extra_rollouts": global_sum((len(rounds) - 1) * B * K),
             "dynamic_sampling/filled_groups": global_sum(max(B - len(kept), 0))}
    return examples, rollout, rewards, {k: float(v) for k, v in stats.items()}


def sample_batch(config, sample_round: SampleRound, pad_id: int, global_sum: Callable[[int], int] = lambda x: x
                 ) -> tuple[list, Rollout, RolloutRewards, dict]:
    """One round, or dynamic sampling when algorithm.dynamic_sampling: (examples, rollout, rewards, stats)."""
    if not config.algorithm.dynamic_sampling:
        return (*sample_round(), {})
    return dynamic_sample(sample_round, config.algorithm.dynamic_sampling_max_rounds, pad_id, global_sum)
