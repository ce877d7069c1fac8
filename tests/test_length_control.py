"""Gains at matched length (llm_pg/evaluation/length_control.py) and reward-model accuracy by length stratum,
checked against hand computation and numpy's least squares."""

import numpy as np
import pytest

from llm_pg.data.preferences import PreferencePair
from llm_pg.evaluation.length_control import regression_gain, strata_edges, stratified_gain
from llm_pg.evaluation.preference_accuracy import evaluate_pairs
from llm_pg.pipelines.rlhf_statistics import PolicySamples, compare, markdown
from llm_pg.reporting.rm_report import write_rm_report


def _lengths(rng, P, K):
    return rng.integers(3, 30, size=(P, K)).astype(float)


def test_an_exact_linear_score_gives_the_indicator_coefficient_and_a_zero_width_interval():
    rng = np.random.default_rng(0)
    la, lb = _lengths(rng, 8, 3), _lengths(rng, 8, 3) - 2.0
    sa, sb = 2 + 0.5 * la, 2 + 0.5 * lb + 0.3
    r = regression_gain(sa, la, sb, lb, resamples=200)
    assert r["value"] == pytest.approx(0.3, abs=1e-9)
    assert r["ci"] == pytest.approx([0.3, 0.3], abs=1e-9)


def test_the_regression_is_numpys_least_squares_on_the_pooled_completions():
    rng = np.random.default_rng(1)
    la, lb = _lengths(rng, 10, 4), _lengths(rng, 10, 4)
    sa, sb = rng.normal(size=(10, 4)), rng.normal(size=(10, 4)) + 0.2
    x = np.column_stack([np.ones(80), np.concatenate([la.ravel(), lb.ravel()]), np.repeat([0.0, 1.0], 40)])
    beta = np.linalg.lstsq(x, np.concatenate([sa.ravel(), sb.ravel()]), rcond=None)[0]
    r = regression_gain(sa, la, sb, lb, resamples=300)
    assert r["value"] == pytest.approx(beta[2], abs=1e-9)
    assert r["ci"][0] <= r["value"] <= r["ci"][1]
    # the raw gain splits exactly into c and the common slope times the length change
    raw = sb.mean() - sa.mean()
    assert raw == pytest.approx(beta[2] + beta[1] * (lb.mean() - la.mean()), abs=1e-9)


def test_a_gain_that_is_all_length_is_zero_at_matched_length_but_not_raw():
    rng = np.random.default_rng(2)
    la = rng.choice([5.0, 10.0, 15.0, 20.0], size=(12, 4), p=[0.1, 0.2, 0.3, 0.4])
    lb = rng.choice([5.0, 10.0, 15.0, 20.0], size=(12, 4), p=[0.4, 0.3, 0.2, 0.1])  # B writes shorter answers
    sa, sb = -0.1 * la, -0.1 * lb  # the score only rewards brevity
    assert sb.mean() - sa.mean() > 0.3
    assert regression_gain(sa, la, sb, lb, resamples=200)["value"] == pytest.approx(0.0, abs=1e-9)
    strat = stratified_gain(sa, la, sb, lb, resamples=200)
    assert strat["value"] == pytest.approx(0.0, abs=1e-12)  # one length per stratum: no gain within any
    assert strat["strata"] == 4 and strat["strata_used"] == 4 and strat["share_used"] == 1.0  # one per length


def test_the_stratified_gain_by_hand():
    la, lb = np.array([[1.0, 2.0, 3.0, 4.0, 6.0]]), np.array([[1.0, 1.0, 5.0, 6.0, 6.0]])
    sa, sb = np.array([[0.0, 1.0, 2.0, 3.0, 5.0]]), np.array([[1.0, 2.0, 4.0, 6.0, 7.0]])
    edges = strata_edges(np.concatenate([la, lb], 1))  # pooled 1,1,1,2,3,4,5,6,6,6: quartiles (linear) below
    assert edges.tolist() == [1.25, 3.5, 5.75]
    # L<=1.25: A {0}, B {1, 2} (weight 3); 1.25<L<=3.5: A {1, 2}, B none (unused); 3.5<L<=5.75: A {3}, B {4}
    # (weight 2); L>5.75: A {5}, B {6, 7} (weight 3)
    expected = (3 * (1.5 - 0.0) + 2 * (4.0 - 3.0) + 3 * (6.5 - 5.0)) / 8
    r = stratified_gain(sa, la, sb, lb, resamples=50)
    assert r["value"] == pytest.approx(expected, abs=1e-12)
    assert r["strata_used"] == 3 and r["share_used"] == pytest.approx(8 / 10)
    # at most 4 distinct lengths: one stratum per length
    assert strata_edges(np.array([[3.0, 9.0, 3.0, 5.0]])).tolist() == [3.0, 5.0]


def test_one_length_everywhere_has_no_regression_and_a_stratified_gain_equal_to_the_raw_one():
    la = lb = np.full((5, 2), 7.0)
    sa, sb = np.arange(10.0).reshape(5, 2), np.arange(10.0).reshape(5, 2) + 0.25
    assert regression_gain(sa, la, sb, lb, resamples=50) is None
    assert stratified_gain(sa, la, sb, lb, resamples=50)["value"] == pytest.approx(0.25)


def test_the_rlhf_comparison_reports_the_gains_at_matched_length():
    rng = np.random.default_rng(3)
    la, lb = _lengths(rng, 12, 2), _lengths(rng, 12, 2)
    sft = PolicySamples(proxy=0.1 * la, gold=-0.05 * la, lengths=la)
    rl = PolicySamples(proxy=0.1 * lb + 0.2, gold=-0.05 * lb + 0.4, lengths=lb, kl=np.ones((12, 2)))
    result = compare(sft, rl, resamples=100)
    assert result["gold"]["matched_length"]["regression"]["value"] == pytest.approx(0.4, abs=1e-9)
    assert result["proxy"]["matched_length"]["regression"]["value"] == pytest.approx(0.2, abs=1e-9)
    text = markdown(result)
    assert "Gain at matched length" in text and "| gold |" in text and "+0.400 [+0.400, +0.400]" in text


def _pair(chosen: str, rejected: str) -> PreferencePair:
    return PreferencePair(prompt=[{"role": "user", "content": "q"}], chosen=chosen, rejected=rejected)


def test_reward_model_accuracy_where_the_chosen_answer_is_longer_and_where_it_is_shorter(tmp_path):
    # a reward model that prefers the shorter answer: right on every chosen-shorter pair, wrong on chosen-longer ones
    pairs = [_pair("a long answer", "no"), _pair("a longer answer", "ok"), _pair("yes", "a long refusal"),
             _pair("no", "a long reply"), _pair("sure", "fine"), _pair("x", "yy")]
    r_chosen = [-float(len(p.chosen)) for p in pairs]
    r_rejected = [-float(len(p.rejected)) for p in pairs]
    result = evaluate_pairs(r_chosen, r_rejected, pairs, resamples=50)
    by = result["by_length"]
    assert by["chosen_longer"]["pairs"] == 2 and by["chosen_longer"]["accuracy"] == 0.0
    assert by["chosen_shorter"]["pairs"] == 3 and by["chosen_shorter"]["accuracy"] == 1.0  # "sure"/"fine": equal
    assert by["balanced"] == 0.5
    report = write_rm_report(tmp_path, result).read_text()
    assert "chosen answer longer (2 pairs) | 0.000" in report and "length-balanced accuracy" in report
