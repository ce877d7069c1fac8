"""DPO's loss by hand (llm_pg/algorithms/preference_loss.py dpo_loss): each loss_type's value, the implicit rewards,
the gradient with respect to the policy's log-probs, and log 2 where the policy is its reference."""

from __future__ import annotations

import math

import pytest
import torch

from llm_pg.algorithms.preference_loss import DPO_LOSSES, dpo_loss

# two pairs: policy and reference log-probs of the chosen and rejected answers (summed over the answer's tokens)
PI_C, PI_R = [-3.0, -5.0], [-4.0, -2.0]
REF_C, REF_R = [-3.5, -4.0], [-3.0, -2.5]
BETA = 0.5
# h = beta [(pi_c - ref_c) - (pi_r - ref_r)]: pair 0: 0.5 (0.5 - (-1.0)) = 0.75; pair 1: 0.5 (-1.0 - 0.5) = -0.75
H = [0.75, -0.75]


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def run(loss_type: str, eps: float = 0.0, beta: float = BETA):
    pi_c = torch.tensor(PI_C, requires_grad=True)
    pi_r = torch.tensor(PI_R, requires_grad=True)
    loss, rc, rr = dpo_loss(pi_c, pi_r, torch.tensor(REF_C), torch.tensor(REF_R), beta, loss_type, eps)
    return loss, rc, rr, pi_c, pi_r


def test_the_implicit_rewards_are_beta_times_the_log_ratios_and_detached():
    _, rc, rr, _, _ = run("sigmoid")
    assert rc.tolist() == pytest.approx([0.5 * 0.5, 0.5 * -1.0])
    assert rr.tolist() == pytest.approx([0.5 * -1.0, 0.5 * 0.5])
    assert (rc - rr).tolist() == pytest.approx(H)  # rewards/margins is h
    assert not rc.requires_grad and not rr.requires_grad


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_sigmoid_is_the_label_smoothed_bradley_terry_loss_of_h(eps):
    loss, *_ = run("sigmoid", eps)
    by_hand = sum(-(1 - eps) * log_sigmoid(h) - eps * log_sigmoid(-h) for h in H) / 2
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)


def test_ipo_is_the_squared_distance_of_the_log_ratio_from_one_over_two_beta():
    loss, *_ = run("ipo")
    # h / beta = 1.5 and -1.5; 1 / (2 beta) = 1
    assert loss.item() == pytest.approx(((1.5 - 1.0) ** 2 + (-1.5 - 1.0) ** 2) / 2, rel=1e-6)


def test_hinge_is_relu_of_one_minus_h():
    loss, *_ = run("hinge")
    assert loss.item() == pytest.approx((max(0.0, 1 - 0.75) + max(0.0, 1 + 0.75)) / 2, rel=1e-6)


def test_sigmoid_gradient_matches_the_hand_formula():
    loss, _, _, pi_c, pi_r = run("sigmoid")
    loss.backward()
    # d/d log pi_c of -log sigma(h) / P = -beta sigma(-h) / P; the rejected side's sign is +
    assert pi_c.grad.tolist() == pytest.approx([-BETA * sigmoid(-h) / 2 for h in H], rel=1e-6)
    assert pi_r.grad.tolist() == pytest.approx([BETA * sigmoid(-h) / 2 for h in H], rel=1e-6)


def test_ipo_and_hinge_gradients_match_the_hand_formulas():
    loss, _, _, pi_c, _ = run("ipo")
    loss.backward()
    # d/d log pi_c of (h / beta - 1 / (2 beta))^2 / P = 2 (h / beta - 1 / (2 beta)) / P  (dh/dlog pi_c = beta)
    assert pi_c.grad.tolist() == pytest.approx([2 * (1.5 - 1.0) / 2, 2 * (-1.5 - 1.0) / 2], rel=1e-6)
    loss, _, _, pi_c, _ = run("hinge")
    loss.backward()
    # relu(1 - h): -beta / P where h < 1 (both pairs here)
    assert pi_c.grad.tolist() == pytest.approx([-BETA / 2, -BETA / 2], rel=1e-6)


def test_sigmoid_loss_is_log_2_where_the_policy_is_its_reference():
    logp = torch.tensor([-7.0, -1.5, -30.0])
    other = torch.tensor([-2.0, -9.0, -0.5])
    loss, rc, rr = dpo_loss(logp, other, logp.clone(), other.clone(), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2), rel=1e-7)
    assert rc.abs().max().item() == 0.0 and rr.abs().max().item() == 0.0


def test_every_loss_type_is_listed_once():
    assert sorted(DPO_LOSSES) == ["hinge", "ipo", "sigmoid"]
