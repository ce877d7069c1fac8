"""The KL coefficient beta: fixed, or adapted towards a target KL (Ziegler et al. 2019, "Fine-Tuning Language
Models from Human Preferences", section 2.2).  Its state is checkpointed with the run.
"""

from __future__ import annotations


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
