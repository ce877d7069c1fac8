"""Rewards: score a batch of completions against references.

Every reward has one signature, `fn(prompts, completions, references) -> list[float]`, scaled to [0, 1] for the
reference metrics. `RewardModel` mixes the configured components by weight and reports each one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import sacrebleu
from rouge_score import rouge_scorer

from llm_pg.errors import ConfigError

RewardFn = Callable[[Sequence[str], Sequence[str], Sequence[Sequence[str]]], list[float]]


def sentence_bleu(prompts, completions, references) -> list[float]:
    """Sentence BLEU / 100 (sacrebleu, 'exp' smoothing, 13a tokenizer), against all references of each sample."""
    return [sacrebleu.sentence_bleu(c, list(refs)).score / 100.0 for c, refs in zip(completions, references)]


_SCORERS: dict[str, rouge_scorer.RougeScorer] = {}


def _rouge(kind: str) -> RewardFn:
    def score(prompts, completions, references) -> list[float]:
        """ROUGE F1 (rouge-score, Porter stemmer); with several references, the best one counts."""
        scorer = _SCORERS.setdefault(kind, rouge_scorer.RougeScorer([kind], use_stemmer=True))
        return [scorer.score_multi(list(refs), c)[kind].fmeasure for c, refs in zip(completions, references)]

    score.__name__ = kind
    return score


REWARDS: dict[str, RewardFn] = {
    "bleu": sentence_bleu,
    "rouge1": _rouge("rouge1"),
    "rouge2": _rouge("rouge2"),
    "rougeL": _rouge("rougeL"),
}


@dataclass
class RewardModel:
    """A weighted sum of named reward components."""

    components: list[tuple[str, float, RewardFn]]

    @classmethod
    def from_config(cls, components: list[dict]) -> "RewardModel":
        built = []
        for i, spec in enumerate(components):
            unknown = set(spec) - {"name", "weight"}
            if unknown:
                raise ConfigError(f"reward.components[{i}]: unknown option(s) {sorted(unknown)}")
            built.append((spec["name"], float(spec.get("weight", 1.0)), REWARDS[spec["name"]]))
        return cls(built)

    def __call__(self, prompts, completions, references) -> tuple[list[float], dict[str, list[float]]]:
        """-> (total reward per sample, {component name: per-sample values})."""
        parts = {name: fn(prompts, completions, references) for name, _, fn in self.components}
        total = [sum(w * parts[name][i] for name, w, _ in self.components) for i in range(len(completions))]
        for i, r in enumerate(total):
            if not math.isfinite(r):
                raise ValueError(f"reward: sample {i} got a non-finite reward {r}; check the reward components")
        return total, parts
