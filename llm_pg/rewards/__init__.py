"""Rewards: score a batch of completions against references.

Every reward has one signature, `fn(prompts, completions, references) -> list[float]`, scaled to [0, 1] for the
reference metrics. `RewardModel` mixes the configured components by weight and reports each one.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import sacrebleu
from rouge_score import rouge_scorer

from llm_pg.errors import ConfigError, LlmPgError

RewardFn = Callable[[Sequence[str], Sequence[str], Sequence[Sequence[str]]], list[float]]


def sentence_bleu(prompts, completions, references) -> list[float]:
    """Sentence BLEU / 100 (sacrebleu, 'exp' smoothing, 13a tokenizer), against all references of each sample.

    Clipped to [0, 1]: sacrebleu scores an exact match 100.00000000000004 (exp of a sum of logs).
    """
    return [min(1.0, sacrebleu.sentence_bleu(c, list(refs)).score / 100.0) for c, refs in zip(completions, references)]


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


class RewardError(LlmPgError):
    """A reward that failed or returned a value that cannot be trained on."""


def load_callable(spec: str, key: str) -> RewardFn:
    """'package.module:function' or 'path/to/file.py:function'; imported only because the config names it."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key}: write it as 'package.module:function' or 'path/to/file.py:function', got '{spec}'")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser().resolve()
            if not path.is_file():
                raise FileNotFoundError(f"no such file {path}")
            spec_ = importlib.util.spec_from_file_location(f"llm_pg_user_reward_{path.stem}", path)
            module = importlib.util.module_from_spec(spec_)
            spec_.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        fn = getattr(module, attr)
    except Exception as e:  # any import-time failure of user code is reported the same way
        raise ConfigError(f"{key}: cannot import '{spec}' ({type(e).__name__}: {e})") from None
    if not callable(fn):
        raise ConfigError(f"{key}: '{spec}' is not callable")
    return fn


@dataclass
class RewardModel:
    """A weighted sum of named reward components."""

    components: list[tuple[str, float, RewardFn]]

    @classmethod
    def from_config(cls, components: list[dict]) -> "RewardModel":
        built = []
        for i, spec in enumerate(components):
            key = f"reward.components[{i}]"
            unknown = set(spec) - {"name", "weight", "function"}
            if unknown:
                raise ConfigError(f"{key}: unknown option(s) {sorted(unknown)}")
            fn = load_callable(spec["function"], f"{key}.function") if "function" in spec else REWARDS[spec["name"]]
            built.append((spec["name"], float(spec.get("weight", 1.0)), fn))
        return cls(built)

    def __call__(self, prompts, completions, references) -> tuple[list[float], dict[str, list[float]]]:
        """-> (total reward per sample, {component name: per-sample values})."""
        parts = {}
        for name, _, fn in self.components:
            try:
                values = [float(v) for v in fn(prompts, completions, references)]
            except Exception as e:  # user code: report which reward failed, in one line
                raise RewardError(f"reward '{name}' failed: {type(e).__name__}: {e}") from None
            if len(values) != len(completions):
                raise RewardError(f"reward '{name}' returned {len(values)} values for {len(completions)} completions")
            bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
            if bad is not None:
                raise RewardError(f"reward '{name}' returned {values[bad]} for sample {bad}; rewards must be finite")
            parts[name] = values
        total = [sum(w * parts[name][i] for name, w, _ in self.components) for i in range(len(completions))]
        return total, parts
