"""Sampled evaluation: pass@k (Chen et al. 2021's unbiased estimator) and mean@n, against hand-computed values,
a brute-force enumeration over subsets, and evaluate_split on the tiny model (with the greedy decode beside it)."""

from __future__ import annotations

import itertools
import json
from fractions import Fraction

import pytest

from helpers import assert_one_line_error, run_cli, tiny_config, write_config_yaml
from llm_pg.data.prompts import load_examples
from llm_pg.errors import ConfigError
from llm_pg.evaluation.metrics import Generation
from llm_pg.evaluation.heldout import evaluate_split, k_ladder, pass_at_k, sampled_scores
from llm_pg.models.policy import load_policy, load_tokenizer
from llm_pg.rewards import RewardMix


# ---------------------------------------------------------------------------------------------------- the estimator
@pytest.mark.parametrize("n, c, k, expected", [
    (5, 2, 1, 2 / 5),  # 1 - C(3,1)/C(5,1) = 1 - 3/5
    (5, 2, 2, 7 / 10),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (5, 2, 3, 9 / 10),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    (5, 2, 4, 1.0),  # n - c = 3 < k: every 4-subset holds a success
    (5, 0, 3, 0.0), (5, 5, 1, 1.0), (1, 1, 1, 1.0), (1, 0, 1, 0.0),
    (10, 1, 1, 0.1), (10, 1, 10, 1.0),
    (200, 3, 100, 1 - (100 * 99 * 98) / (200 * 199 * 198)),  # C(197,100)/C(200,100) = (100*99*98)/(200*199*198)
])
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_the_share_of_k_subsets_that_hold_a_success():
    """Brute force: every k-subset of n samples, c of which succeed, counted exactly."""
    for n in range(1, 8):
        for c in range(n + 1):
            successes = set(range(c))
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(range(n), k))
                hit = Fraction(sum(bool(successes & set(s)) for s in subsets), len(subsets))
                assert pass_at_k(n, c, k) == pytest.approx(float(hit), abs=1e-12), (n, c, k)


def test_pass_at_1_is_the_success_rate_and_pass_at_k_grows_with_k():
    for n, c in [(7, 3), (16, 5), (4, 1)]:
        assert pass_at_k(n, c, 1) == pytest.approx(c / n)
        values = [pass_at_k(n, c, k) for k in range(1, n + 1)]
        assert values == sorted(values) and values[-1] == 1.0


@pytest.mark.parametrize("n, c, k", [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)])
def test_pass_at_k_refuses_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass@k needs"):
        pass_at_k(n, c, k)


def test_k_ladder():
    assert k_ladder(1) == [1] and k_ladder(4) == [1, 2, 4] and k_ladder(6) == [1, 2, 4, 6]


def test_sampled_scores_hand_computed():
    rewards = {"a": [1.0, 0.0, 0.0, 0.7], "b": [0.0, 0.2, 0.0, 0.0]}
    generations = [Generation(pid, k, f"prompt {pid}", [], "x", {"reward": r})
                   for pid, values in rewards.items() for k, r in enumerate(values)]
    scores = sampled_scores(generations, "reward", threshold=0.5)
    assert scores["reward_mean@4"] == pytest.approx((1.7 / 4 + 0.2 / 4) / 2)
    assert scores["pass@1"] == pytest.approx((2 / 4 + 0) / 2)  # prompt a: c = 2 of 4; prompt b: c = 0
    assert scores["pass@2"] == pytest.approx((1 - 1 / 6 + 0) / 2)  # 1 - C(2,2)/C(4,2)
    assert scores["pass@4"] == pytest.approx(0.5)
    assert set(scores) == {"reward_mean@4", "pass@1", "pass@2", "pass@4"}
    assert set(sampled_scores(generations, "reward")) == {"reward_mean@4"}  # no threshold: no pass@k
    assert sampled_scores(generations, "reward_bleu", 0.5) == {}  # a metric the samples do not carry


# ------------------------------------------------------------------------------------------------ the config and run
def test_config_checks(tiny_model_dir, tiny_data_file, tmp_path):
    base = (tiny_model_dir, tiny_data_file, tmp_path)
    with pytest.raises(ConfigError, match="evaluation.success_threshold: pass@k is measured on samples"):
        tiny_config(*base, **{"evaluation.success_threshold": 0.5})
    with pytest.raises(ConfigError, match="evaluation.with_greedy: .* set evaluation.do_sample: true"):
        tiny_config(*base, **{"evaluation.with_greedy": True})
    with pytest.raises(ConfigError, match="evaluation.success_metric: 'accuracy' is not one of"):
        tiny_config(*base, **{"evaluation.success_metric": "accuracy"})
    with pytest.raises(ConfigError, match="evaluation.success_threshold: must be a finite number"):
        tiny_config(*base, **{"evaluation.do_sample": True, "evaluation.success_threshold": float("nan")})


def test_evaluate_split_reports_mean_at_n_pass_at_k_and_greedy(tiny_model_dir, tiny_data_file, tmp_path):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path / "run", **{
        "data.split_fractions": [0.5, 0.25, 0.25], "reward.components": [{"name": "length_penalty"}],
        "evaluation.do_sample": True, "evaluation.num_samples": 4, "evaluation.success_threshold": -2.0,
        "evaluation.with_greedy": True})
    tokenizer, model = load_tokenizer(config.model), load_policy(config.model)
    examples = load_examples(config.data, "test", tokenizer)
    reward = RewardMix.from_config(config.reward)  # -(words): success = at most 2 words
    scores, gens = evaluate_split(config, model, tokenizer, examples, reward, output=tmp_path / "e.json")
    lines = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert len(lines) == 4 * len(examples)  # the samples only: the greedy decode is not in the JSONL
    by_prompt = [[g["metrics"]["reward"] for g in lines[i:i + 4]] for i in range(0, len(lines), 4)]
    for k in (1, 2, 4):
        expected = sum(pass_at_k(4, sum(r >= -2.0 for r in v), k) for v in by_prompt) / len(by_prompt)
        assert scores[f"pass@{k}"] == pytest.approx(expected)
    assert scores["pass@1"] == pytest.approx(sum(r >= -2.0 for v in by_prompt for r in v) / len(lines))
    assert 0 < scores["pass@1"] < scores["pass@4"]  # the tiny policy sometimes succeeds, not always
    assert scores["reward_mean@4"] == pytest.approx(scores["reward"])
    greedy, _ = evaluate_split(tiny_config(tiny_model_dir, tiny_data_file, tmp_path / "g", **{
        "data.split_fractions": [0.5, 0.25, 0.25], "reward.components": [{"name": "length_penalty"}]}),
        model, tokenizer, examples, reward)
    assert scores["greedy_reward"] == pytest.approx(greedy["reward"])
    assert scores["greedy_rougeL"] == pytest.approx(greedy["rougeL"])
    assert "greedy_success" in scores and "greedy_num_samples" not in scores
    assert json.loads((tmp_path / "e.json").read_text())["scores"]["pass@4"] == pytest.approx(scores["pass@4"])


def test_llm_pg_eval_reports_pass_at_k_from_the_command_line(tiny_model_dir, tiny_data_file, tmp_path):
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "run", **{
        "data.split_fractions": [0.5, 0.25, 0.25], "reward.components": [{"name": "length_penalty"}]})
    result = run_cli("eval", "--model", tiny_model_dir, "--config", config, "--output", tmp_path / "e.json",
                     "evaluation.do_sample=true", "evaluation.num_samples=3", "evaluation.success_threshold=-2",
                     "evaluation.with_greedy=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    scores = json.loads((tmp_path / "e.json").read_text())["scores"]
    lines = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    groups = [[g["metrics"]["reward"] >= -2 for g in lines[i:i + 3]] for i in range(0, len(lines), 3)]
    for k in (1, 2, 3):
        assert scores[f"pass@{k}"] == pytest.approx(sum(pass_at_k(3, sum(v), k) for v in groups) / len(groups))
    assert {"reward_mean@3", "greedy_reward", "greedy_success"} <= set(scores)
    bad = run_cli("eval", "--model", tiny_model_dir, "--config", config, "evaluation.success_threshold=0.5",
                  cwd=tmp_path)
    assert_one_line_error(bad.stderr, "evaluation.success_threshold", "evaluation.do_sample: true")
