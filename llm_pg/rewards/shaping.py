"""Shaping terms and reward transforms: length and repetition penalties, clipping, running normalization."""

from __future__ import annotations

import math


class LengthPenalty:
    """-|n - target| / target with a target length, else -n; n counts words (or characters) of the completion."""

    def __init__(self, target: int | None = None, unit: str = "words"):
        self.target, self.unit = target, unit

    def __call__(self, prompts, completions, references, **columns) -> list[float]:
        lengths = [len(c.split()) if self.unit == "words" else len(c) for c in completions]
        if self.target is None:
            return [-float(n) for n in lengths]
        return [-abs(n - self.target) / self.target for n in lengths]


class RepetitionPenalty:
    """-(repeated word n-grams / word n-grams): 0 without repeats, towards -1 for a completion that loops."""

    def __init__(self, n: int = 3):
        self.n = n

    def __call__(self, prompts, completions, references, **columns) -> list[float]:
        values = []
        for c in completions:
            words = c.split()
            grams = [tuple(words[i:i + self.n]) for i in range(len(words) - self.n + 1)]
            values.append(-(len(grams) - len(set(grams))) / len(grams) if grams else 0.0)
        return values


class SoftOverlongPunishment:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), as TRL's get_soft_overlong_punishment:

        R_length(L) = 0                                  if L <= L_max - L_cache
                      ((L_max - L_cache) - L) / L_cache  if L_max - L_cache < L <= L_max
                      -1                                 if L > L_max

    L: the completion's length in tokens, its EOS / stop token included (rollout.lengths), given by the trainer as
    the `completion_lengths` column (held-out evaluation passes each generation's token count the same way).
    L_max = max_completion_len (usually generation.max_new_tokens), L_cache = soft_punish_cache: the ramp over the
    last L_cache tokens before the limit.  Where no token counts are known (a direct call), the value is 0.
    """

    needs_lengths = True  # RewardMix.score passes completion_lengths

    def __init__(self, max_completion_len: int, soft_punish_cache: int):
        self.max_len, self.cache = max_completion_len, soft_punish_cache

    def __call__(self, prompts, completions, references, completion_lengths=None, **columns) -> list[float]:
        if completion_lengths is None:
            return [0.0] * len(completions)
        return [self.value(int(n)) for n in completion_lengths]

    def value(self, length: int) -> float:
        start = self.max_len - self.cache  # the longest completion that is not punished
        if length <= start:
            return 0.0
        return (start - length) / self.cache if length <= self.max_len else -1.0


class RunningMeanStd:
    """Mean and standard deviation of every reward seen so far (Chan et al. 1979 parallel update of Welford's).

    R_norm = (R - mean) / sqrt(var + eps): the reward scale stays fixed while the policy improves, as in
    Ziegler et al. 2019 (https://arxiv.org/abs/1909.08593) and stable-baselines' VecNormalize. Checkpointed.
    """

    def __init__(self, eps: float = 1e-8):
        self.eps, self.count, self.mean, self.m2 = eps, 0, 0.0, 0.0

    def update(self, values: list[float]) -> None:
        n = len(values)
        if not n:
            return
        batch_mean = sum(values) / n
        batch_m2 = sum((v - batch_mean) ** 2 for v in values)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta ** 2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 1.0

    def scale(self) -> float:
        """1 / sqrt(var + eps): at most 1e4 when every reward so far was the same."""
        return 1.0 / math.sqrt((self.m2 / self.count if self.count else 1.0) + self.eps)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean, self.m2 = state["count"], state["mean"], state["m2"]
