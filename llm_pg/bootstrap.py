"""Paired bootstrap: is system B's metric different from system A's on the same samples, and by how much?

Koehn (2004), "Statistical significance tests for machine translation evaluation"
(https://aclanthology.org/W04-3250):

    draw R index vectors i_r of n samples with replacement (the same i_r for both systems: paired)
    d_r = m_B(i_r) - m_A(i_r)                        # the corpus metric recomputed on the resample
    e_r = d_r - mean_r(d_r) + d                      # centred on the observed difference d = m_B - m_A
    95 % CI of the difference = the 2.5th and 97.5th percentiles of e_r
    p = min(1, 2 (1 + min(#{e_r <= 0}, #{e_r >= 0})) / (R + 1))       # two-sided

Koehn's test asks in how many resamples B beats A; the two-sided p-value above doubles the share of resamples on
the losing side (+1 so that p > 0), which makes it agree with the interval: p < 0.05 when the 95 % interval
excludes 0. Centring removes the resampling bias of metrics that are not sample means: a resample repeats
samples, which lowers distinct-n (a repeated completion adds n-grams but no new ones) so far that the raw
interval can miss the observed difference; for means it moves the interval by a fraction of its width. Resamples are drawn as sacrebleu's `--paired-bs` draws them (same generator and seed), so its
resampled corpus scores are the ones computed here. (sacrebleu's p-value centres |d_r| instead, the Moses
variant; it can disagree with the interval near the boundary, which would make the report contradict itself.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from llm_pg.errors import LlmPgError
from llm_pg.eval_metrics import CorpusStatistics

SEED = 12345  # sacrebleu's default, so its paired bootstrap draws the same resamples


@dataclass
class Difference:
    """B minus A for one metric, with its paired-bootstrap 95 % interval and p-value."""

    metric: str
    a: float
    b: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float

    def to_dict(self) -> dict:
        return asdict(self)


def resample_indices(n: int, num_resamples: int, seed: int = SEED) -> np.ndarray:
    """(R, n) indices drawn with replacement, exactly as sacrebleu draws them."""
    return np.random.default_rng(seed).choice(n, size=(num_resamples, n), replace=True)


def resampled_scores(score, indices: np.ndarray) -> np.ndarray:
    """(R,) the corpus metric `score(indices)` on each resample (row) of indices (R, n)."""
    return np.array([score(row) for row in indices])


def paired_bootstrap(a: CorpusStatistics, b: CorpusStatistics, num_resamples: int = 1000, seed: int = SEED,
                     confidence: float = 0.95) -> list[Difference]:
    """Every metric present in both A and B, compared on the same resamples of the n paired samples."""
    if a.size != b.size:
        raise LlmPgError(f"paired bootstrap: the systems have {a.size} and {b.size} samples; they must score the "
                         "same prompts in the same order")
    indices = resample_indices(a.size, num_resamples, seed)  # (R, n)
    everything = np.arange(a.size)
    tail = (1.0 - confidence) / 2 * 100
    results = []
    for name in (k for k in a.statistics if k in b.statistics):
        score_a, score_b = a.statistics[name], b.statistics[name]
        observed = score_b(everything) - score_a(everything)
        d = resampled_scores(score_b, indices) - resampled_scores(score_a, indices)  # (R,)
        d = d - d.mean() + observed  # centred on the observed difference
        losing_side = min(int(np.sum(d <= 0)), int(np.sum(d >= 0)))
        p = 2 * (1 + losing_side) / (num_resamples + 1)
        low, high = np.percentile(d, [tail, 100 - tail])
        results.append(Difference(name, score_a(everything), score_b(everything), observed, float(low),
                                  float(high), min(p, 1.0)))
    return results
