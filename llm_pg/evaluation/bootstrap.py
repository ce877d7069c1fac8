"""Paired bootstrap: is system B's metric different from system A's on the same samples, and by how much?

Koehn (2004), "Statistical significance tests for machine translation evaluation"
(https://aclanthology.org/W04-3250):

    draw R index vectors i_r of n samples with replacement (the same i_r for both systems: paired)
    d_r = m_B(i_r) - m_A(i_r)                        # the corpus metric recomputed on the resample
    e_r = d_r - mean_r(d_r) + d                      # centred on the observed difference d = m_B - m_A
    L   = min(#{e_r <= 0}, #{e_r >= 0})              # resamples on the losing side
    p   = min(1, 2 (1 + L) / (R + 1))                # two-sided
    CI  = [e_(m+1), e_(R-m)]   (order statistics; m = the largest L with p < alpha = 1 - confidence)

Koehn's test asks in how many resamples B beats A; the two-sided p-value above doubles the share of resamples on
the losing side (+1 so that p > 0). The interval's ends are the order statistics that make it agree with p
exactly: p < 0.05 when, and only when, the 95 % interval excludes 0 (for R >= 40; with fewer resamples p never
falls below 0.05 and the interval is the resamples' range). With R = 1000 the ends are the 25th smallest and the
25th largest e_r, the usual 2.5th and 97.5th percentiles. Centring removes the resampling bias of metrics that
are not sample means: a resample repeats samples, which lowers distinct-n (a repeated completion adds n-grams but
no new ones) so far that the raw interval can miss the observed difference; for means it moves the interval by a
fraction of its width.

With K sampled completions per prompt (evaluation.do_sample, num_samples = K) the K rows of a prompt are not
independent: the resampled unit is the prompt, and each drawn prompt brings its K rows (rows are grouped by
prompt, K consecutive rows each, as evaluation.generate writes them). With K = 1 the resamples are drawn as
sacrebleu's `--paired-bs` draws them (same generator and seed), so its resampled corpus scores are the ones
computed here. (sacrebleu's p-value centres |d_r| instead, the Moses variant; it can disagree with the interval
near the boundary, which would make the report contradict itself.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from llm_pg.errors import LlmPgError
from llm_pg.evaluation.metrics import CorpusStatistics

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


def resample_indices(n: int, num_resamples: int, seed: int = SEED, group_size: int = 1) -> np.ndarray:
    """(R, n) row indices drawn with replacement, exactly as sacrebleu draws them for group_size 1; otherwise
    n / group_size prompts are drawn and each expands to its group_size consecutive rows."""
    if n % group_size:
        raise LlmPgError(f"paired bootstrap: {n} samples are not {group_size} samples for each prompt")
    prompts = np.random.default_rng(seed).choice(n // group_size, size=(num_resamples, n // group_size),
                                                 replace=True)  # (R, n / K)
    return (prompts[:, :, None] * group_size + np.arange(group_size)).reshape(num_resamples, n)  # (R, n)


def resampled_scores(score, indices: np.ndarray) -> np.ndarray:
    """(R,) the corpus metric `score(indices)` on each resample (row) of indices (R, n)."""
    return np.array([score(row) for row in indices])


def interval_and_p_value(e: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """(low, high, p) from the R centred resampled differences e (see the module docstring): the interval
    excludes 0 exactly when p < 1 - confidence."""
    R = len(e)
    losing_side = min(int(np.sum(e <= 0)), int(np.sum(e >= 0)))
    p = min(1.0, 2 * (1 + losing_side) / (R + 1))
    bound = round((1 - confidence) * (R + 1) / 2 - 1, 9)  # L < bound <=> p < alpha (rounded: 1 - 0.95 != 0.05)
    m = max(math.ceil(bound) - 1, 0)  # the largest such L
    ordered = np.sort(e)
    return float(ordered[m]), float(ordered[R - 1 - m]), p


def paired_bootstrap(a: CorpusStatistics, b: CorpusStatistics, num_resamples: int = 1000, seed: int = SEED,
                     confidence: float = 0.95, group_size: int = 1) -> list[Difference]:
    """Every metric present in both A and B, compared on the same resamples of the paired samples; group_size:
    the K samples per prompt (the resampled unit is the prompt)."""
    if a.size != b.size:
        raise LlmPgError(f"paired bootstrap: the systems have {a.size} and {b.size} samples; they must score the "
                         "same prompts in the same order")
    indices = resample_indices(a.size, num_resamples, seed, group_size)  # (R, n)
    everything = np.arange(a.size)
    results = []
    for name in (k for k in a.statistics if k in b.statistics):
        score_a, score_b = a.statistics[name], b.statistics[name]
        observed = score_b(everything) - score_a(everything)
        d = resampled_scores(score_b, indices) - resampled_scores(score_a, indices)  # (R,)
        e = d - d.mean() + observed  # centred on the observed difference
        low, high, p = interval_and_p_value(e, confidence)
        results.append(Difference(name, score_a(everything), score_b(everything), observed, low, high, p))
    return results


def samples_per_prompt(generations) -> int:
    """K: the samples per prompt of an evaluation's generations (Generation.sample counts 0..K-1 per prompt)."""
    return 1 + max((g.sample for g in generations), default=0)
