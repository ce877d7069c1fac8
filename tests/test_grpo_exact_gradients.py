"""GRPO in the exact-gradient matrix (method: tests/test_exact_gradients.py, whose machinery this reuses).

Dr. GRPO (grpo.scale_rewards: none) takes A_i = R_i - mean of the group, the sample itself included. That is
(K-1)/K times the leave-one-out advantage R_i - mean of the others, so its expected gradient is exactly
(K-1)/K * grad J: the task reward's gradient, scaled by a constant; with loss_reduction fixed_token_mean it is
further divided by the constant max_new_tokens.  So
    E[grad L] = -c * grad J,   c = (K-1)/K  (sequence_mean),   c = (K-1)/(K * T_max)  (fixed_token_mean).
GRPO's division by the group's std, and the sequence_token_mean reduction (dividing by each sample's own
length), depend on the samples: they follow no constant multiple of grad J (measured below, documented in
docs/algorithms.md).

    python -m pytest -q tests/test_grpo_exact_gradients.py
"""

from __future__ import annotations

import pytest

from test_exact_gradients import (COSINE_MIN, RELATIVE_ERROR_MAX, Case, accelerator, config_for,  # noqa: F401
                                  cosine_and_relative_error, expected_loss_gradient, objective_gradient,
                                  reward_table, setup)
from enumeration import all_completions

DR_GRPO = {"algorithm.name": "grpo", "grpo.scale_rewards": "none"}
SCALED_CASES = {  # name -> (case, c)
    "dr_grpo,K=2,T=1": (Case(overrides=DR_GRPO), 1 / 2),
    "dr_grpo,K=3,T=1": (Case(K=3, overrides=DR_GRPO), 2 / 3),
    "dr_grpo,K=2,T=2": (Case(T=2, overrides=DR_GRPO), 1 / 2),
    "dr_grpo,fixed_token_mean,K=2,T=2": (Case(T=2, overrides={**DR_GRPO, "algorithm.loss_reduction":
                                                              "fixed_token_mean"}), 1 / 4),
    "dr_grpo,fixed_token_mean,B=2,accumulation=4,T=1": (Case(B=2, overrides={
        **DR_GRPO, "algorithm.loss_reduction": "fixed_token_mean", "training.gradient_accumulation_steps": 4}), 1 / 2),
}


def measure_scaled(config, setup, case: Case, c: float) -> tuple[float, float, float]:
    """(cosine, relative error, ||grad J||) of E[grad L] against -c * grad J."""
    rewards = reward_table(case.B, len(all_completions(case.T)))
    objective = c * objective_gradient(config, setup, rewards, case.T, prompts=case.B)
    expected, total = expected_loss_gradient(config, setup, case, rewards)
    assert abs(total - 1.0) < 1e-6
    return (*cosine_and_relative_error(expected, objective), objective.norm().item())


@pytest.mark.parametrize("name", list(SCALED_CASES))
def test_dr_grpo_follows_a_constant_multiple_of_the_task_reward_gradient(name, setup):
    case, c = SCALED_CASES[name]
    cosine, relative_error, norm = measure_scaled(config_for(case), setup, case, c)
    print(f"cosine {cosine:.7f}  relative error {relative_error:.2e}  |grad J| {norm:.3g}")
    assert norm > 1e-3
    assert cosine >= COSINE_MIN and relative_error <= RELATIVE_ERROR_MAX
    # and not the unscaled gradient: against -grad J the relative error is exactly 1 - c
    _, unscaled_error, _ = measure_scaled(config_for(case), setup, case, 1.0)
    assert unscaled_error == pytest.approx(1 - c, abs=1e-4)


BIASED = {  # (case, c): the best constant would not rescue them (the direction itself differs)
    "grpo,scale=group,B=2,K=2,T=1": (Case(B=2, overrides={"algorithm.name": "grpo", "grpo.scale_rewards": "group"}),
                                     1.0),
    "dr_grpo,sequence_token_mean,K=2,T=2": (Case(T=2, overrides={**DR_GRPO, "algorithm.loss_reduction":
                                                                 "sequence_token_mean"}), 1 / 2),
}


@pytest.mark.parametrize("name", list(BIASED))
def test_std_scaling_and_per_sequence_token_mean_are_biased(name, setup):
    """Dividing by the group's own std, or by each completion's own length, weighs samples by a random factor:
    E[grad L] leaves the direction of grad J (docs/algorithms.md quotes these cosines)."""
    case, c = BIASED[name]
    cosine, relative_error, _ = measure_scaled(config_for(case), setup, case, c)
    print(f"cosine {cosine:.5f}  relative error {relative_error:.3f}")
    assert cosine < 0.99
