"""Dynamic sampling (DAPO, Yu et al. 2025, section 3.2; verl `algorithm.filter_groups`): keep only informative groups.

A prompt group whose K rewards are all equal has zero group-relative advantage, so it adds nothing to the
gradient but still dilutes the batch.  With `algorithm.dynamic_sampling`, such groups are dropped and fresh prompts
are sampled in rounds of training.prompts_per_step until the batch holds B informative groups, for at most
`algorithm.dynamic_sampling_max_rounds` extra rounds; a batch still short is filled with dropped groups, so the
update always sees B groups (its micro-batches and minibatches stay as configured).

Several processes: every process takes the same number of rounds (one more while any process is short), so the
prompt sampler and the collective calls of generation stay in step.

The training loop drives a `GroupFilter`; without dynamic sampling it takes exactly one round and passes it on:

    groups = GroupFilter.from_config(config.algorithm, global_sum)
    while groups.wants_another_round():
        groups.add(examples, rollout, rewards)          # one round: B prompts, their rollout and its rewards
    examples, rollout, rewards, stats = groups.result(pad_id)  # B groups: Rollout.select_rows / concat

Shapes: B prompts, K samples per prompt, N = B*K, P prompt tokens (left-padded), T completion tokens.
"""

from __future__ import annotations

from typing import Callable

import torch

from llm_pg.algorithms.advantages import equal_groups
from llm_pg.rollout.sampling import Rollout
from llm_pg.training.scoring import RolloutRewards

GlobalSum = Callable[[int], int]  # the sum of an int over all processes (an all-reduce); identity on one process


def _one_process(x: int) -> int:
    return x


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) bool: the prompt groups whose K rewards are not all equal.  rewards (N,) prompt-major."""
    return ~equal_groups(rewards, group_size)[:, 0]


class GroupFilter:
    """The step's batch of B prompt groups, gathered from sampling rounds the training loop takes one by one.

    With `enabled`, rounds are taken until every process holds B informative groups, for at most 1 + max_rounds
    rounds (`global_sum` is the all-reduce that keeps processes in step; it is called after every round, and by
    `result`). Without, exactly one round, passed on as it is.
    """

    def __init__(self, enabled: bool, max_rounds: int, global_sum: GlobalSum = _one_process):
        self.enabled, self.max_rounds, self.global_sum = enabled, max_rounds, global_sum
        self.rounds: list[tuple[list, Rollout, RolloutRewards]] = []  # (B examples, their rollout, its rewards)
        self.kept: list[tuple[int, int]] = []  # (round, group) of the informative groups, in sampling order
        self.dropped: list[tuple[int, int]] = []  # the same for the groups whose K rewards are equal

    @classmethod
    def from_config(cls, algorithm, global_sum: GlobalSum = _one_process) -> GroupFilter:
        """algorithm.dynamic_sampling and algorithm.dynamic_sampling_max_rounds of an AlgorithmConfig."""
        return cls(algorithm.dynamic_sampling, algorithm.dynamic_sampling_max_rounds, global_sum)

    @property
    def rounds_taken(self) -> int:
        return len(self.rounds)

    @property
    def B(self) -> int:  # prompts per round, which the batch keeps
        return len(self.rounds[0][0])

    def wants_another_round(self) -> bool:
        """Whether the loop must sample another round: the first one always; with dynamic sampling another while
        any process is short of B informative groups and the cap allows (the same answer on every process)."""
        if not self.rounds:
            return True
        if not self.enabled:
            return False
        short = self.global_sum(max(self.B - len(self.kept), 0))  # every process calls it after every round
        return short > 0 and len(self.rounds) < 1 + self.max_rounds

    def add(self, examples: list, rollout: Rollout, rewards: RolloutRewards) -> None:
        """One round: B examples, their rollout (B*K rows, prompt-major) and its rewards."""
        i = len(self.rounds)
        self.rounds.append((examples, rollout, rewards))
        if self.enabled:
            for g, ok in enumerate(informative_groups(rewards.rewards, rollout.group_size).tolist()):
                (self.kept if ok else self.dropped).append((i, g))

    def result(self, pad_id: int) -> tuple[list, Rollout, RolloutRewards, dict]:
        """(examples, rollout, rewards, stats) of the batch: B groups, informative ones first, then dropped ones to
        fill it, rows by round. Stats, summed over processes: dynamic_sampling/dropped_groups (groups with equal
        rewards, of every round), dynamic_sampling/extra_rollouts (completions sampled beyond B*K) and
        dynamic_sampling/filled_groups (dropped groups that had to fill the batch); none without dynamic sampling."""
        if not self.enabled:
            return (*self.rounds[0], {})
        chosen = (self.kept + self.dropped)[:self.B]
        examples, rollouts, rewards = [], [], []
        for i, (round_examples, rollout, round_rewards) in enumerate(self.rounds):  # the rows' order: by round
            groups = [g for j, g in chosen if j == i]
            if groups:
                rows = rollout.group_rows(groups)
                rollouts.append(rollout.select_rows(rows))
                rewards.append(round_rewards.select_rows(rows))
                examples += [round_examples[g] for g in groups]
        rollout = Rollout.concat(rollouts, pad_id)
        K = rollout.group_size
        stats = {"dynamic_sampling/dropped_groups": self.global_sum(len(self.dropped)),
                 "dynamic_sampling/extra_rollouts": self.global_sum((len(self.rounds) - 1) * self.B * K),
                 "dynamic_sampling/filled_groups": self.global_sum(max(self.B - len(self.kept), 0))}
        return examples, rollout, RolloutRewards.concat(rewards), {k: float(v) for k, v in stats.items()}
