"""DAPO's reward shaping and batch filter: soft overlong punishment (exact values, through the reward model with
the rollout's token counts, config checks) and dynamic sampling (the group filter and the refilled batch)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

from llm_pg.config.schema import RewardConfig
from llm_pg.errors import ConfigError
from llm_pg.rewards import RewardMix, check_reward_config
from llm_pg.rewards.shaping import SoftOverlongPunishment
from llm_pg.rollout.rows import PAD_ID, RowBatch, per_row
from llm_pg.rollout.sampling import Rollout
from llm_pg.training.dynamic_sampling import GroupFilter, informative_groups
from llm_pg.training.scoring import RolloutRewards


def test_soft_overlong_punishment_exact_values():
    """L_max = 10, L_cache = 4: 0 up to 6 tokens, then -1/4, -2/4, -3/4, -1 at 7..10, -1 beyond (DAPO eq. 13)."""
    f = SoftOverlongPunishment(max_completion_len=10, soft_punish_cache=4)
    lengths = [0, 5, 6, 7, 8, 9, 10, 11, 30]
    assert f([""] * 9, [""] * 9, [[]] * 9, completion_lengths=lengths) == [0, 0, 0, -0.25, -0.5, -0.75, -1, -1, -1]
    assert f([""], [""], [[]]) == [0.0]  # no token counts (held-out evaluation scores text): no punishment


def test_soft_overlong_reaches_the_reward_model_with_token_lengths():
    config = RewardConfig(components=[{"name": "overlong", "type": "soft_overlong_punishment", "weight": 0.5,
                                       "max_completion_len": 6, "soft_punish_cache": 2}])
    model = RewardMix.from_config(config)
    batch = model.reward_batch(["p"] * 3, ["a", "b", "c"], [["r"]] * 3, {}, lengths=[4, 5, 6])
    assert batch.components["overlong"] == [0.0, -0.5, -1.0]
    assert batch.rewards == [0.0, -0.25, -0.5]  # weight 0.5


@pytest.mark.parametrize("component, needle", [
    ({"type": "soft_overlong_punishment", "max_completion_len": 4, "soft_punish_cache": 8}, "soft_punish_cache"),
    ({"type": "soft_overlong_punishment", "soft_punish_cache": 8}, "max_completion_len: required"),
    ({"type": "soft_overlong_punishment", "max_completion_len": 4, "soft_punish_cache": 0}, "must be >= 1"),
])
def test_soft_overlong_bad_options_are_one_line_errors(component, needle):
    with pytest.raises(ConfigError, match=needle):
        check_reward_config(RewardConfig(components=[component]))


def test_reward_rollout_passes_the_completion_token_counts(tiny_model_dir, tiny_data_file, tmp_path):
    """Through the trainer's scoring stage: the component sees rollout.lengths (EOS included)."""
    from helpers import tiny_config
    from llm_pg.training.scoring import reward_rollout
    from llm_pg.training.rl import _sample_round, setup_run

    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{
        "training.prompts_per_step": 4, "generation.num_samples": 4, "reward.components": [
        {"name": "overlong", "type": "soft_overlong_punishment", "max_completion_len": 6, "soft_punish_cache": 3}]})
    run = setup_run(config)
    batch, rollout, rewards = _sample_round(config, run)
    expected = [SoftOverlongPunishment(6, 3).value(n) for n in rollout.lengths.tolist()]
    assert rewards.components["overlong"] == expected
    assert len(set(expected)) > 1  # the tiny policy's completions have several lengths
    again = reward_rollout(rollout, batch, run.reward_mix, run.tokenizer, False, [])
    assert again.rewards.tolist() == pytest.approx(expected)


# --- dynamic sampling --------------------------------------------------------------------------------------------

def test_informative_groups():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.3, 0.3, 0.3, 0.3001])
    assert informative_groups(rewards, 2).tolist() == [False, True, False, True]
    assert informative_groups(rewards, 4).tolist() == [True, True]


def fake_round(rewards: list[float], K: int, P: int, T: int, tag: int) -> tuple[list, Rollout, RolloutRewards]:
    """A rollout of len(rewards)/K prompts whose every tensor entry names its round and row (tag*100 + row)."""
    N = len(rewards)
    ids = torch.tensor([[tag * 100 + i] for i in range(N)])
    rollout = Rollout(prompt_ids=ids.repeat(1, P), prompt_mask=torch.ones(N, P, dtype=torch.long),
                      completion_ids=ids.repeat(1, T), completion_mask=torch.ones(N, T, dtype=torch.long),
                      logprobs=ids.repeat(1, T).float(), truncated=torch.zeros(N, dtype=torch.bool),
                      completions=[f"{tag}-{i}" for i in range(N)], group=torch.arange(N // K).repeat_interleave(K),
                      group_size=K)
    r = torch.tensor(rewards, dtype=torch.float32)
    return ([f"prompt{tag}-{g}" for g in range(N // K)], rollout,
            RolloutRewards(r, {"x": rewards}, torch.zeros(N, T) + r[:, None]))


def test_select_and_concat_keep_rows_aligned_and_repad():
    a = fake_round([0.0, 1.0, 2.0, 3.0], K=2, P=2, T=3, tag=1)
    b = fake_round([4.0, 5.0], K=2, P=4, T=1, tag=2)
    b[1].truncated[:] = True
    rows = a[1].group_rows([1])
    assert rows.tolist() == [2, 3]
    rollout = Rollout.concat([a[1].select_rows(rows), b[1]], pad_id=-1)
    rewards = RolloutRewards.concat([a[2].select_rows(rows), b[2]])
    assert rollout.completions == ["1-2", "1-3", "2-0", "2-1"]
    assert rewards.rewards.tolist() == [2.0, 3.0, 4.0, 5.0] and rewards.components["x"] == [2.0, 3.0, 4.0, 5.0]
    assert rollout.group.tolist() == [0, 0, 1, 1] and rollout.group_size == 2
    assert rollout.prompt_ids.tolist()[0] == [-1, -1, 102, 102]  # prompts re-padded on the left
    assert rollout.prompt_mask.tolist()[0] == [0, 0, 1, 1]
    assert rollout.completion_ids.tolist()[2] == [200, -1, -1]  # completions on the right
    assert rollout.completion_mask.tolist()[2] == [1, 0, 0]
    assert rollout.logprobs.tolist()[2] == [200.0, 0.0, 0.0]
    assert rollout.truncated.tolist() == [False, False, True, True]
    assert rollout.values is None
    assert rewards.token_rewards.tolist()[3] == [5.0, 0.0, 0.0]


def test_select_rows_takes_groups_in_the_order_asked_and_renumbers_them():
    _, rollout, rewards = fake_round([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], K=2, P=1, T=2, tag=3)
    rollout.values = rollout.logprobs + 0.5
    rows = rollout.group_rows([2, 0])
    picked, picked_rewards = rollout.select_rows(rows), rewards.select_rows(rows)
    assert picked.completions == ["3-4", "3-5", "3-0", "3-1"]
    assert picked.group.tolist() == [0, 0, 1, 1]  # group 2 is now prompt 0 of the batch
    assert picked.values[:, 0].tolist() == [304.5, 305.5, 300.5, 301.5]
    assert picked_rewards.rewards.tolist() == [4.0, 5.0, 0.0, 1.0] == picked_rewards.components["x"]
    wide = Rollout.concat([picked, dataclasses.replace(picked, values=torch.ones(4, 3))], pad_id=0)
    assert wide.values.tolist()[0] == [304.5, 304.5, 0.0] and wide.values.tolist()[4] == [1.0, 1.0, 1.0]
    assert wide.group.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="Rollout.values: None in some parts only"):
        Rollout.concat([picked, dataclasses.replace(picked, values=None)], pad_id=0)
    with pytest.raises(ValueError, match="Rollout.group_size: differs"):
        Rollout.concat([picked, dataclasses.replace(picked, group_size=4)], pad_id=0)
    with pytest.raises(ValueError, match="Rollout.prompt_ids: pads with the tokenizer's pad id"):
        Rollout.concat([picked, picked])


@pytest.mark.parametrize("rows", [[1, 2], [0, 1, 2], [0, 1, 0, 1], [2, 3, 1, 0]])
def test_select_rows_refuses_rows_that_split_or_repeat_a_group(rows):
    """group_size stays K and `group` is renumbered by runs of equal prompts: rows [1, 2] of K = 2 (halves of two
    prompts) would be read as one prompt's K rows, [0, 1, 2] would end in a prompt of one row, [0, 1, 0, 1] would be
    one prompt of 2K rows, [2, 3, 1, 0] a prompt's rows out of order. Rewards have no per-group field: any rows do."""
    _, rollout, rewards = fake_round([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], K=2, P=1, T=2, tag=4)
    message = f"Rollout.select_rows: rows {rows} are not whole groups of group_size 2"
    with pytest.raises(ValueError, match=re.escape(message)):
        rollout.select_rows(torch.tensor(rows))
    assert rewards.select_rows(torch.tensor(rows)).rewards.tolist() == [float(r) for r in rows]  # no group field


def test_a_new_field_is_selected_and_joined_by_its_rule_alone():
    """What issue 25 asks: adding a field to a batch means declaring it (with its rule) and nothing else."""

    @dataclasses.dataclass
    class Batch(RowBatch):
        ids: torch.Tensor = per_row("left", pad=PAD_ID)
        notes: list = per_row("list")

    @dataclasses.dataclass
    class Forgotten(RowBatch):
        ids: torch.Tensor = per_row("rows")
        notes: list = dataclasses.field(default_factory=list)

    one = Batch(torch.tensor([[1, 2], [3, 4]]), ["a", "b"])
    two = Batch(torch.tensor([[5]]), ["c"])
    joined = Batch.concat([one.select_rows(torch.tensor([1])), two], pad_id=9)
    assert joined.ids.tolist() == [[3, 4], [9, 5]] and joined.notes == ["b", "c"]
    with pytest.raises(TypeError, match=r"Forgotten.notes has no row rule: declare it with per_row"):
        Forgotten(torch.tensor([1])).select_rows(torch.tensor([0]))


def drive(rounds, max_rounds: int, global_sum=lambda x: x, enabled: bool = True):
    """The training loop's use of GroupFilter (rl.train_step), with the given rounds."""
    groups = GroupFilter(enabled, max_rounds, global_sum)
    while groups.wants_another_round():
        groups.add(*next(rounds))
    return groups.result(pad_id=0)


def test_group_filter_refills_with_informative_groups_and_counts():
    rounds = iter([fake_round([1, 1, 0, 1, 2, 2], 2, 1, 1, 0),  # groups: equal, informative, equal
                   fake_round([0, 0, 3, 4, 5, 5], 2, 1, 1, 1),  # equal, informative, equal
                   fake_round([7, 8, 0, 0, 1, 1], 2, 1, 1, 2),  # informative, equal, equal: 3 found
                   fake_round([9, 9, 9, 9, 9, 9], 2, 1, 1, 3)])  # never sampled
    examples, rollout, rewards, stats = drive(rounds, max_rounds=5)
    assert examples == ["prompt0-1", "prompt1-1", "prompt2-0"]
    assert rollout.completions == ["0-2", "0-3", "1-2", "1-3", "2-0", "2-1"]
    assert rewards.rewards.tolist() == [0, 1, 3, 4, 7, 8]
    assert rollout.group.tolist() == [0, 0, 1, 1, 2, 2]
    assert stats == {"dynamic_sampling/dropped_groups": 6.0, "dynamic_sampling/extra_rollouts": 12.0,
                     "dynamic_sampling/filled_groups": 0.0}
    assert next(rounds)[0] == ["prompt3-0", "prompt3-1", "prompt3-2"]


def test_group_filter_stops_at_the_cap_and_fills_with_dropped_groups():
    rounds = iter([fake_round([1, 1, 0, 1], 2, 1, 1, 0), fake_round([2, 2, 3, 3], 2, 1, 1, 1),
                   fake_round([4, 5, 6, 7], 2, 1, 1, 2)])
    calls = []
    examples, rollout, rewards, stats = drive(rounds, max_rounds=1, global_sum=lambda x: calls.append(x) or x)
    assert examples == ["prompt0-1", "prompt0-0"]  # the informative group, filled with the first dropped one
    assert rollout.completions == ["0-2", "0-3", "0-0", "0-1"]  # rows in the examples' order
    assert rewards.rewards.tolist() == [0, 1, 1, 1]
    assert stats["dynamic_sampling/filled_groups"] == 1.0 and stats["dynamic_sampling/dropped_groups"] == 3.0
    assert stats["dynamic_sampling/extra_rollouts"] == 4.0
    # one all-reduce after each of the 2 rounds (the last one too), then the three stats
    assert calls == [1, 1, 3, 4, 1]
    assert next(rounds)[0] == ["prompt2-0", "prompt2-1"]  # the cap: a third round was not sampled


def test_group_filter_takes_another_round_while_any_process_is_short():
    """global_sum stands for the all-reduce: this process is full, another is not, so both sample again."""
    rounds = iter([fake_round([0, 1], 2, 1, 1, 0), fake_round([5, 6], 2, 1, 1, 1)])
    other_short = iter([1, 0])
    calls = []

    def global_sum(x):
        calls.append(x)
        return x + next(other_short) if len(calls) <= 2 else x

    examples, _, _, stats = drive(rounds, max_rounds=3, global_sum=global_sum)
    assert examples == ["prompt0-0"]  # this process keeps its first informative group
    assert calls == [0, 0, 0, 2, 0]  # never short, it sampled a second round with the others; then the stats
    assert stats["dynamic_sampling/extra_rollouts"] == 2.0


def test_without_dynamic_sampling_exactly_one_round_passes_as_it_is():
    first = fake_round([1, 1, 0, 1], 2, 1, 1, 0)
    rounds = iter([first, fake_round([2, 2, 3, 3], 2, 1, 1, 1)])
    calls = []
    examples, rollout, rewards, stats = drive(rounds, max_rounds=2, global_sum=calls.append, enabled=False)
    assert (examples, rollout, rewards) == (first[0], first[1], first[2]) and rollout is first[1]
    assert stats == {} and calls == []  # no all-reduce: nothing to keep in step
    assert next(rounds)[0] == ["prompt1-0", "prompt1-1"]
