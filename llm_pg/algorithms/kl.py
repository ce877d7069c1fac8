"""The KL coefficient beta: fixed, or adapted towards a target KL (Ziegler et al. 2019, "Fine-Tuning Language
Models from Human Preferences", section 2.2).  Its state is checkpointed with the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm_pg.algorithms.losses import KL_ESTIMATORS

KL_MODES = ("reward", "loss")
# The one estimator whose gradient is right in each mode (tests/test_exact_gradients.py proves both and refutes the
# other pairs): in the reward, k1's score-function gradient is exactly grad KL(pi || pi_ref) over sequences (E[k3]
# is KL too, but the score function drops E[grad k3], a bias); in the loss, k1's expected gradient is 0
# (E_pi[grad log pi] = 0) while k3's is grad of sum_t KL(pi_ref(.|s_t) || pi(.|s_t)) at the visited states.
SOUND_KL_ESTIMATOR = {"reward": "k1", "loss": "k3"}


@dataclass(frozen=True)
class KLPenalty:
    """beta * KL to the frozen reference, and where it acts (kl.mode), decided here once for a step.

    in the reward: r_t <- r_t - beta * KL_t (scoring.py);  in the loss: L <- L + beta * sum_t KL_t (update.py).
    KL_t is the kl.estimator on the sampled tokens (losses.KL_ESTIMATORS).
    """

    coef: float  # beta for this step (fixed, or the adaptive controller's value)
    estimator: str  # k1 or k3
    in_loss: bool  # kl.mode == "loss"

    @classmethod
    def from_config(cls, kl_config, coef: float) -> "KLPenalty":
        """From the kl: section; estimator 'auto' is the sound one for the mode."""
        estimator = SOUND_KL_ESTIMATOR[kl_config.mode] if kl_config.estimator == "auto" else kl_config.estimator
        return cls(coef, estimator, kl_config.mode == "loss")

    def per_token(self, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """KL_t (N, T) of the policy's log-probs to the reference's on the sampled tokens."""
        return KL_ESTIMATORS[self.estimator](logprobs, ref_logprobs, mask)


class KLController:
    """beta <- beta * (1 + e * n / horizon),  e = clip(KL / target - 1, -0.2, 0.2)  (adaptive);  beta fixed otherwise.

    KL is the step's mean per-sequence KL (nats, summed over tokens) and n the number of sequences in the step:
    above the target beta grows, below it shrinks, by at most 20 % per `horizon` sequences.
    """

    def __init__(self, coef: float, target: float | None = None, horizon: int = 10000):
        self.value, self.target, self.horizon = coef, target, horizon

    def update(self, kl: float, num_sequences: int) -> float:
        if self.target:
            error = min(max(kl / self.target - 1, -0.2), 0.2)
            self.value *= 1 + error * num_sequences / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value, self.target, self.horizon = state["value"], state["target"], state["horizon"]
