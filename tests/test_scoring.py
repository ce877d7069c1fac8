"""The scoring stage (llm_pg/training/scoring.py) and the baselines beside the advantages (llm_pg/algorithms/advantages.py)."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import tiny_config
from llm_pg.algorithms import advantages as adv
from llm_pg.training.rl import train


def test_each_baseline_by_hand():
    returns0 = torch.tensor([1.0, 3.0, 2.0, 6.0])  # two prompts, K = 2
    average = adv.MovingAverageBaseline(0.5, value=1.5)
    inputs = adv.BaselineInputs(group_size=2, moving_average=average, greedy_rewards=torch.tensor([0.25, 4.0]))
    assert adv.BASELINES["none"](returns0, inputs).tolist() == [0, 0, 0, 0]
    assert adv.BASELINES["leave_one_out"](returns0, inputs).tolist() == [3.0, 1.0, 6.0, 2.0]
    assert adv.BASELINES["greedy"](returns0, inputs).tolist() == [0.25, 0.25, 4.0, 4.0]
    assert adv.BASELINES["moving_average"](returns0, inputs).tolist() == [1.5] * 4  # earlier batches only
    assert average.value == 0.5 * 1.5 + 0.5 * 3.0  # then this batch's mean (3.0) enters the average


def test_advantages_and_returns_with_a_baseline_and_with_a_critic():
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    rewards = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 4.0]])
    inputs = adv.BaselineInputs(group_size=2)
    A, G = adv.advantages_and_returns(rewards, mask, 1.0, False, "leave_one_out", inputs)
    assert G.tolist() == [[2, 2, 0], [4, 4, 4]]
    assert A.tolist() == [[-2, -2, 0], [2, 2, 2]]  # G - the other sample's G_0
    values = torch.tensor([[1.0, 1.5, 0.0], [0.5, 1.0, 3.0]])
    A, R = adv.advantages_and_returns(rewards, mask, 1.0, False, "leave_one_out", inputs, values=values,
                                      gae_lambda=1.0)
    assert A.tolist() == [[1.0, 0.5, 0.0], [3.5, 3.0, 1.0]]  # lambda = 1: G_t - V(s_t); the baseline is unused
    assert R.tolist() == G.tolist()


@pytest.mark.parametrize("baseline", ["greedy", "leave_one_out"])
def test_completions_table_holds_exactly_the_sampled_completions(baseline, tiny_model_dir, tiny_data_file,
                                                                 tmp_path):
    """The table is fed from the scored rollout: the greedy decodes of the self-critical baseline are not rows."""
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{
        "algorithm.baseline": baseline, "evaluation.log_completions_every": 1, "training.max_steps": 2})
    train(config)
    rows = [json.loads(line) for line in (tmp_path / "completions.jsonl").read_text().splitlines()]
    N = config.training.prompts_per_step * config.generation.num_samples
    assert [r["step"] for r in rows] == [1] * N + [2] * N
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for step in (1, 2):  # the rows' rewards are the step's rewards
        rewards = [r["reward"] for r in rows if r["step"] == step]
        assert sum(rewards) / N == pytest.approx(metrics[step - 1]["reward/mean"], abs=1e-6)
