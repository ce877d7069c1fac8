"""Held-out metrics: per-sample values and corpus scores, each corpus score a function of a set of sample indices.

Writing every corpus metric as `score(indices)` over per-sample sufficient statistics makes one object serve the
corpus score (all indices) and the paired bootstrap (resampled indices, llm_pg/evaluation/bootstrap.py):

| metric | per sample | corpus score |
|---|---|---|
| bleu, chrf | sacrebleu n-gram statistics | sacrebleu's score of the summed statistics / 100 |
| rouge1/2/L/Lsum, reward, length_*, repeated_3gram_rate, truncated_rate, empty_rate | the value | mean |
| distinct1, distinct2 | the completion's word n-grams | unique n-grams / all n-grams, over all completions |
| embedding_similarity, bertscore_f1 | the value (llm_pg/evaluation/meaning.py, a sentence encoder) | mean |
| perplexity | (sum log p under the reference model, tokens) | exp(-sum log p / sum tokens), per token |

Everything is in [0, 1] except the lengths (>= 0), perplexity (>= 1), the metrics of meaning (cosines, [-1, 1])
and the reward (any number): METRIC_RANGES, which cut the intervals of differences (llm_pg/evaluation/bootstrap.py).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF

# Metric names in the order reports show them; the reward's components appear as reward_<name> after reward.
METRICS = ("reward", "bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum", "embedding_similarity", "bertscore_f1",
           "perplexity", "length_tokens",
           "length_words", "distinct1", "distinct2", "repeated_3gram_rate")
LOWER_IS_BETTER = {"perplexity", "repeated_3gram_rate"}
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
REFERENCE_METRICS = ("bleu", "chrf", *ROUGE_TYPES)  # left out when the data has no references (prompt-only)
# [low, high] each metric can take; a metric not listed (reward, reward_<name>) can take any value
METRIC_RANGES = {**{name: (0.0, 1.0) for name in ("bleu", "chrf", *ROUGE_TYPES, "distinct1", "distinct2",
                                                  "repeated_3gram_rate", "truncated_rate", "empty_rate")},
                 "embedding_similarity": (-1.0, 1.0), "bertscore_f1": (-1.0, 1.0), "perplexity": (1.0, math.inf),
                 "length_tokens": (0.0, math.inf), "length_words": (0.0, math.inf)}
# metrics with a value per sample (Generation.metrics), which pass@k and mean@n can read; the others are corpus
# scores (bleu, chrf, distinct-n) or not kept per sample (length_tokens)
CORPUS_ONLY_METRICS = ("bleu", "chrf", "distinct1", "distinct2", "length_tokens")


def difference_range(metric: str) -> tuple[float, float]:
    """[low, high] of B - A for a metric in [lo, hi]: [lo - hi, hi - lo]."""
    lo, hi = METRIC_RANGES.get(metric, (-math.inf, math.inf))
    return (lo - hi, hi - lo) if math.isfinite(hi - lo) else (-math.inf, math.inf)


@dataclass
class Generation:
    """One scored completion: what `llm-pg eval` writes per line of its JSONL file."""

    id: str  # the example's id
    sample: int  # which of the prompt's completions (0 .. num_samples - 1)
    prompt: str
    references: list[str]
    completion: str
    metrics: dict[str, float] = field(default_factory=dict)  # per-sample values (see text_metrics)
    tokens: int = 0  # completion tokens (EOS / stop token included)
    ref_logprob: float | None = None  # sum of log p(token) under the reference model, for perplexity
    columns: dict = field(default_factory=dict)  # the example's other fields, for the reward (not written to JSONL)


def words(text: str) -> list[str]:
    return text.lower().split()


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def repeated_ngram_rate(text: str, n: int = 3) -> float:
    """Share of the completion's word n-grams that already occurred earlier in it (0 = no repetition loop)."""
    grams = ngrams(words(text), n)
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


@functools.cache
def _rouge() -> rouge_scorer.RougeScorer:
    """Built on first use, not at import: its constructor logs through absl, which configures the root logger when
    it has no handler yet, so importing llm_pg would set up the logging of the program that imports it."""
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def text_metrics(completion: str, references: list[str]) -> dict[str, float]:
    """Per-sample ROUGE F1 (Porter stemmer, best reference), length in words and repeated 3-gram rate.

    rougeLsum splits summaries into sentences on newlines, as rouge-score expects. Without references
    (prompt-only data) there is no ROUGE.
    """
    rouge = _rouge().score_multi(list(references), completion) if references else {}
    return {**{k: rouge[k].fmeasure for k in rouge}, "length_words": float(len(completion.split())),
            "repeated_3gram_rate": repeated_ngram_rate(completion)}


def _reference_streams(references: list[list[str]]) -> list[list[str]]:
    """sacrebleu wants one stream per reference position; samples with fewer references repeat their first one
    (a duplicate reference changes neither the clipped n-gram counts nor the closest reference length)."""
    width = max(len(r) for r in references)
    return [[refs[i] if i < len(refs) else refs[0] for refs in references] for i in range(width)]


def _sacrebleu_statistic(metric, completions: list[str], references: list[list[str]]) -> Callable:
    stats = np.array(metric._extract_corpus_statistics(completions, _reference_streams(references)), dtype=float)

    def score(indices: np.ndarray) -> float:  # the same computation as sacrebleu's own paired bootstrap
        return metric._compute_score_from_stats(stats[indices].sum(0).tolist()).score / 100.0

    return score


def _mean_statistic(values: list[float]) -> Callable:
    array = np.asarray(values, dtype=float)
    return lambda indices: float(array[indices].mean())


def _distinct_statistic(completions: list[str], n: int) -> Callable:
    grams = [set(ngrams(words(c), n)) for c in completions]
    totals = np.array([max(len(words(c)) - n + 1, 0) for c in completions])

    def score(indices: np.ndarray) -> float:
        total = totals[indices].sum()
        return 0.0 if total == 0 else len(set().union(*(grams[i] for i in np.unique(indices)))) / float(total)

    return score


def _perplexity_statistic(generations: list[Generation]) -> Callable:
    logprob = np.array([g.ref_logprob for g in generations], dtype=float)
    tokens = np.array([g.tokens for g in generations], dtype=float)
    return lambda indices: float(math.exp(-logprob[indices].sum() / max(tokens[indices].sum(), 1.0)))


@dataclass
class CorpusStatistics:
    """Each metric as `score(indices) -> float`; `scores()` evaluates them on every sample."""

    statistics: dict[str, Callable[[np.ndarray], float]]
    size: int
    signatures: dict[str, str]

    def scores(self) -> dict[str, float]:
        everything = np.arange(self.size)
        return {name: fn(everything) for name, fn in self.statistics.items()}


def corpus_statistics(generations: list[Generation]) -> CorpusStatistics:
    """The corpus statistics of scored generations (rewards and perplexity only when every sample has them; BLEU
    and chrF only when every sample has references)."""
    completions = [g.completion for g in generations]
    references = [g.references for g in generations]
    bleu, chrf = BLEU(), CHRF()
    stats: dict[str, Callable] = {}
    if all(references):  # prompt-only data: no corpus BLEU / chrF
        stats = {"bleu": _sacrebleu_statistic(bleu, completions, references),
                 "chrf": _sacrebleu_statistic(chrf, completions, references)}
    per_sample_keys = [k for k in generations[0].metrics if all(k in g.metrics for g in generations)]
    for key in per_sample_keys:
        stats[key] = _mean_statistic([g.metrics[key] for g in generations])
    stats["length_tokens"] = _mean_statistic([g.tokens for g in generations])
    stats["distinct1"] = _distinct_statistic(completions, 1)
    stats["distinct2"] = _distinct_statistic(completions, 2)
    if all(g.ref_logprob is not None for g in generations):
        stats["perplexity"] = _perplexity_statistic(generations)
    ordered = {k: stats[k] for k in ordered_names(stats)}
    signatures = {name: str(metric.get_signature()) if name in stats else "" for name, metric in
                  (("bleu", bleu), ("chrf", chrf))}  # sacrebleu has a signature only once it has scored
    return CorpusStatistics(ordered, len(generations), signatures)


def ordered_names(names) -> list[str]:
    """METRICS order, reward components right after reward, anything else at the end."""
    names = list(names)
    rank = {name: i for i, name in enumerate(METRICS)}
    return sorted(names, key=lambda n: (rank.get(n, rank["reward"] + 0.5 if n.startswith("reward_") else 99), n))


def corpus_scores(completions: list[str], references: list[list[str]]) -> dict:
    """The reference-based and text metrics of plain completions (no reward, no perplexity), with signatures."""
    generations = [Generation(str(i), 0, "", list(refs), c, text_metrics(c, refs))
                   for i, (c, refs) in enumerate(zip(completions, references))]
    stats = corpus_statistics(generations)
    stats.statistics.pop("length_tokens")  # no tokenizer here
    return {**stats.scores(), "num_samples": len(completions), "bleu_signature": stats.signatures["bleu"],
            "chrf_signature": stats.signatures["chrf"]}
