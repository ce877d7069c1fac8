"""Reward-model maths by hand: the Bradley-Terry loss (margin, centring), pairwise accuracy, the length baselines
and the intervals and p-values of llm_pg/evaluation/preference_accuracy.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llm_pg.data.preferences import PreferencePair
from llm_pg.evaluation.preference_accuracy import evaluate_pairs, length_correct
from llm_pg.algorithms.preference_loss import bradley_terry_loss, pairwise_accuracy, pairwise_correct

R_CHOSEN = torch.tensor([2.0, 0.0, -1.0])
R_REJECTED = torch.tensor([1.0, 0.0, 1.0])  # differences 1, 0, -2


def softplus(x: float) -> float:  # -log sigma(d) = log(1 + e^-d) = softplus(-d)
    return math.log1p(math.exp(x))


def test_bradley_terry_loss_by_hand():
    # -log sigma(1) = log(1 + e^-1) = 0.3132617, -log sigma(0) = log 2 = 0.6931472, -log sigma(-2) = 2.1269280
    assert softplus(-1) == pytest.approx(0.3132617, abs=1e-7)
    expected = (0.3132617 + 0.6931472 + 2.1269280) / 3
    assert bradley_terry_loss(R_CHOSEN, R_REJECTED).item() == pytest.approx(expected, abs=1e-6)


def test_margin_is_subtracted_from_each_pairs_difference():
    margin = torch.tensor([0.5, 0.0, 1.0])  # differences become 0.5, 0, -3
    expected = (softplus(-0.5) + math.log(2) + softplus(3)) / 3
    assert bradley_terry_loss(R_CHOSEN, R_REJECTED, margin).item() == pytest.approx(expected, abs=1e-6)


def test_centering_term_adds_coef_times_mean_squared_sum():
    # (r_c + r_r)^2 = 9, 0, 0 -> mean 3; coef 0.01 adds 0.03
    plain = bradley_terry_loss(R_CHOSEN, R_REJECTED).item()
    assert bradley_terry_loss(R_CHOSEN, R_REJECTED, center_coef=0.01).item() == pytest.approx(plain + 0.03, abs=1e-6)


def test_gradient_is_sigma_minus_one_over_pairs():
    """d/dr_c [-log sigma(r_c - r_r)] / P = -(1 - sigma(r_c - r_r)) / P; the rejected side gets the opposite."""
    r_c, r_r = R_CHOSEN.clone().requires_grad_(), R_REJECTED.clone().requires_grad_()
    bradley_terry_loss(r_c, r_r).backward()
    expected = torch.tensor([-(1 - 1 / (1 + math.exp(-d))) / 3 for d in (1.0, 0.0, -2.0)])
    torch.testing.assert_close(r_c.grad, expected)
    torch.testing.assert_close(r_r.grad, -expected)


def test_loss_is_finite_for_huge_differences():
    loss = bradley_terry_loss(torch.tensor([0.0]), torch.tensor([200.0]))  # log(sigmoid(-200)) would be -inf
    assert loss.item() == pytest.approx(200.0)


def test_pairwise_accuracy_counts_ties_half():
    assert pairwise_correct(R_CHOSEN, R_REJECTED).tolist() == [1.0, 0.5, 0.0]
    assert pairwise_accuracy(R_CHOSEN, R_REJECTED) == pytest.approx(0.5)
    assert pairwise_accuracy(torch.tensor([1.0, 2.0, 3.0, 0.0]), torch.tensor([0.0, 1.0, 5.0, -1.0])) == 0.75


def _pair(chosen: str, rejected: str) -> PreferencePair:
    return PreferencePair([{"role": "user", "content": "q"}], chosen, rejected)


def test_length_baselines_by_hand():
    pairs = [_pair("long answer", "no"), _pair("ok", "a longer one"), _pair("same", "size")]
    assert length_correct(pairs).tolist() == [1.0, 0.0, 0.5]
    result = evaluate_pairs([1.0, 1.0, 1.0], [0.0, 0.0, 2.0], pairs, resamples=50)
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["baselines"]["longer"]["accuracy"] == pytest.approx(0.5)
    assert result["baselines"]["shorter"]["accuracy"] == pytest.approx(0.5)
    assert result["mean_margin"] == pytest.approx((1 + 1 - 1) / 3)
    assert result["vs_longer"]["difference"] == pytest.approx(2 / 3 - 0.5)


def test_intervals_are_wilson_for_accuracy_and_a_slow_percentile_bootstrap_for_differences():
    """The accuracy's interval is Wilson's score interval (by hand below) and its p the exact sign test; the
    difference to a baseline has the bootstrap interval whose ends, with 1000 resamples, are the 25th smallest and
    largest resampled differences (centred on the observed one), recomputed here by a plain loop."""
    from llm_pg.evaluation.bootstrap import resample_indices

    rng = np.random.default_rng(0)
    n = 200
    r_c, r_r = rng.normal(0.3, 1, n).tolist(), rng.normal(0, 1, n).tolist()
    pairs = [_pair("x" * int(rng.integers(1, 9)), "y" * int(rng.integers(1, 9))) for _ in range(n)]
    result = evaluate_pairs(r_c, r_r, pairs, resamples=1000)
    correct = [1.0 if c > r else 0.0 for c, r in zip(r_c, r_r)]
    k = sum(correct)
    p, z = k / n, 1.959963984540054
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert result["accuracy"] == pytest.approx(p)
    assert result["ci"] == pytest.approx([(centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)])
    tail = sum(math.comb(n, i) for i in range(int(min(k, n - k)) + 1))
    assert result["p_value"] == pytest.approx(min(1.0, 2 * tail / 2 ** n))
    longer = length_correct(pairs)
    d = np.array(correct) - longer
    observed = d.mean()
    diffs = sorted(sum(d[i] for i in row) / n for row in resample_indices(n, 1000))
    shift = observed - sum(diffs) / len(diffs)  # centring on the observed difference
    assert result["vs_longer"]["difference"] == pytest.approx(observed)
    assert result["vs_longer"]["ci"][0] == pytest.approx(diffs[24] + shift, abs=1e-9)
    assert result["vs_longer"]["ci"][1] == pytest.approx(diffs[975] + shift, abs=1e-9)
