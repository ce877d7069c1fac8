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

p-values come from a paired randomization test, not from the bootstrap (`randomization_p_value`): the bootstrap
distribution of n observations is too narrow for small n (one pair gives R identical resamples and p = 2 / (R + 1),
a "significant" result from one observation), while the randomization test is exact at every n. Under the null
hypothesis that A and B are exchangeable on each prompt, trading a prompt's A and B outputs (all K samples of it)
leaves the distribution of the statistic unchanged (Fisher 1935; Noreen 1989; Riezler & Maxwell 2005,
https://aclanthology.org/W05-0908, sacrebleu's `--paired-ar`). For a mean metric the trade flips the sign of the
prompt's difference (the sign-flip test); for a corpus metric (BLEU, distinct-n) the metric is recomputed on the
traded corpora. With U prompts there are 2^U trades: all of them when 2^U <= R (exact p, at least 2 / 2^U: the
identity and the full trade always count), else R random ones, p = (1 + #{|t_r| >= |t|}) / (R + 1) (Phipson &
Smyth 2010), never below 1 / (R + 1) nor below the exact test's 2 / 2^U.

A difference is called significant (`significant`) when p < 0.05 and the bootstrap interval excludes 0, so that a
report never marks a difference whose interval holds 0. Intervals are cut to the range the difference can take
(`clip`): a [0, 1] metric's difference lies in [-1, 1]. With fewer than MIN_UNITS prompts no outcome can reach
p < 0.05 (2 / 2^5 = 0.0625), and `too_few` says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from llm_pg.errors import LlmPgError
from llm_pg.evaluation.metrics import CorpusStatistics, corpus_statistics, difference_range

SEED = 12345  # sacrebleu's default, so its paired bootstrap draws the same resamples
ALPHA = 0.05
# The exact two-sided randomization test of U paired units cannot give p below 2 / 2^U: below 6 units (2 / 2^5 =
# 0.0625) no outcome is significant at ALPHA, so nothing can be concluded from the comparison.
MIN_UNITS = 6


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


def clip(low: float, high: float, bounds: tuple[float, float]) -> tuple[float, float]:
    """The interval [low, high] cut to the range the quantity can take: the true value lies in that range, so the
    cut interval covers it whenever the uncut one does."""
    lo, hi = bounds
    return min(max(low, lo), hi), min(max(high, lo), hi)


def swap_patterns(units: int, num_permutations: int, seed: int = SEED) -> tuple[np.ndarray, bool]:
    """((M, U) bool: True where unit u's A and B trade places, exact): all 2^U patterns when 2^U <= R (exact),
    else R random ones."""
    if units < 63 and 2 ** units <= num_permutations:
        codes = np.arange(2 ** units)[:, None]  # (2^U, 1)
        return (codes >> np.arange(units)) & 1 == 1, True  # (2^U, U) every pattern once
    return np.random.default_rng(seed).integers(0, 2, size=(num_permutations, units)) == 1, False


def randomization_p_value(statistic, units: int, num_permutations: int = 1000, seed: int = SEED) -> float:
    """Two-sided p of the paired randomization test (see the module docstring).

    statistic: (M, U) bool swap patterns -> (M,) values of the statistic on the traded data; row 0 of the
    patterns is never special, the observed value is statistic(no swaps)."""
    if units == 0:
        return 1.0
    observed = abs(float(statistic(np.zeros((1, units), dtype=bool))[0]))
    swaps, exact = swap_patterns(units, num_permutations, seed)
    t = np.abs(statistic(swaps))  # (M,)
    as_extreme = int(np.sum(t >= observed - 1e-9 * max(1.0, observed)))  # ties count: floating noise is not a win
    if exact:
        return min(1.0, as_extreme / len(t))
    return min(1.0, max((1 + as_extreme) / (len(t) + 1), 2.0 / 2.0 ** units))


def sign_flip_p_value(d: np.ndarray, num_permutations: int = 1000, seed: int = SEED) -> float:
    """p of the sign-flip test of mean(d) = 0 for per-unit differences d (U,): the randomization test of a mean,
    t(s) = mean_u (1 - 2 s_u) d_u."""
    d = np.asarray(d, dtype=float)
    return randomization_p_value(lambda swaps: (np.where(swaps, -d, d)).mean(1), len(d), num_permutations, seed)


def sign_test_p_value(wins: int, losses: int) -> float:
    """Exact two-sided sign test of P(win) = 1/2 over the wins + losses untied pairs (ties carry no sign):
    p = min(1, 2 P(X <= min(wins, losses))), X ~ Binomial(wins + losses, 1/2); the sign-flip test of
    differences of equal size, computed exactly at every n."""
    m, k = wins + losses, min(wins, losses)
    if m == 0:
        return 1.0
    tail, term = 0, 1  # sum_{i <= k} C(m, i), exactly (Python integers)
    for i in range(k + 1):
        tail += term
        term = term * (m - i) // (i + 1)
    return min(1.0, 2 * tail / 2 ** m)


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson's score interval of a proportion (Wilson 1927; Newcombe 1998, method 3): inside [0, 1] at every n,
    never of zero width, and close to nominal coverage for small n where the bootstrap's is not.

        p = successes / n,  z = Phi^-1(1 - alpha / 2)
        (p + z^2 / 2n -+ z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n)

    successes may be fractional (a tie counted 1/2)."""
    if n == 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = successes / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))


# Student's t: the 0.975 quantile for 1..30 degrees of freedom (two-sided 95 %), from the standard tables.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """t(0.975, df): the table up to 30, then z + (z^3 + z) / (4 df), the first Cornish-Fisher term (error < 1e-3)."""
    if df < 1:
        raise ValueError("a t interval needs at least 2 values (1 degree of freedom)")
    if df <= len(T_975):
        return T_975[df - 1]
    z = NormalDist().inv_cdf(0.975)
    return z + (z ** 3 + z) / (4 * df)


def t_interval(values) -> tuple[float, float, float]:
    """(mean, low, high): the 95 % Student-t interval of the mean of n independent values (n - 1 degrees of
    freedom, the sample std with divisor n - 1); (mean, nan, nan) for one value. Across seeds, each seed's result is
    one value: the interval says how far the mean of seeds could move with other seeds, not how noisy one seed is."""
    x = np.asarray(list(values), dtype=np.float64)
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = t_quantile_975(x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half


def significant(d: Difference, alpha: float = ALPHA) -> bool:
    """p < alpha and the interval excludes 0: the two never disagree in a report."""
    return d.p_value < alpha and (d.ci_low > 0 or d.ci_high < 0)


def too_few(units: int, what: str = "paired prompts") -> str | None:
    """The warning for a comparison of fewer than MIN_UNITS paired units, else None."""
    if units >= MIN_UNITS:
        return None
    return (f"only {units} {what}: too few to conclude anything (the exact test's smallest p is 2 / 2^{units} = "
            f"{2 / 2 ** units:.3g}, so no result can be significant at p < {ALPHA}); use at least {MIN_UNITS}, and "
            "many more for a useful interval")


def _swapped_rows(swaps: np.ndarray, n: int, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices into the pooled corpus (A's n rows, then B's) of A and B after each swap pattern (M, n)."""
    rows = np.arange(n)
    traded = swaps[:, rows // group_size]  # (M, n): each prompt's K rows trade together
    return np.where(traded, n + rows, rows), np.where(traded, rows, n + rows)


def paired_bootstrap(a: CorpusStatistics, b: CorpusStatistics, pooled: CorpusStatistics,
                     num_resamples: int = 1000, seed: int = SEED, confidence: float = 0.95,
                     group_size: int = 1) -> list[Difference]:
    """Every metric present in A, B and pooled (the statistics of A's samples followed by B's), compared on the
    same resamples of the paired samples (the interval) and by the paired randomization test (the p-value);
    group_size: the K samples per prompt (the resampled and traded unit is the prompt)."""
    if a.size != b.size or pooled.size != 2 * a.size:
        raise LlmPgError(f"paired bootstrap: the systems have {a.size} and {b.size} samples; they must score the "
                         "same prompts in the same order")
    indices = resample_indices(a.size, num_resamples, seed, group_size)  # (R, n)
    everything = np.arange(a.size)
    results = []
    for name in (k for k in a.statistics if k in b.statistics and k in pooled.statistics):
        score_a, score_b, score = a.statistics[name], b.statistics[name], pooled.statistics[name]
        observed = score_b(everything) - score_a(everything)
        d = resampled_scores(score_b, indices) - resampled_scores(score_a, indices)  # (R,)
        e = d - d.mean() + observed  # centred on the observed difference
        low, high, _ = interval_and_p_value(e, confidence)
        # centring adds float noise: when every resample gives the observed difference, the order statistics can
        # miss it by one ulp (0.6666666666666666 for 0.6666666666666667), and an interval must hold its estimate
        low, high = min(low, observed), max(high, observed)
        lo, hi = difference_range(name)  # widened by the float noise of a score at its bound (BLEU 1 + 4e-16)
        low, high = clip(low, high, (min(lo, observed), max(hi, observed)))

        def traded(swaps, score=score):  # B - A on the corpora after trading the swapped prompts' outputs
            rows_a, rows_b = _swapped_rows(swaps, a.size, group_size)
            return resampled_scores(score, rows_b) - resampled_scores(score, rows_a)

        p = randomization_p_value(traded, a.size // group_size, num_resamples, seed)
        results.append(Difference(name, score_a(everything), score_b(everything), observed, low, high, p))
    return results


def compare_generations(a, b, num_resamples: int = 1000, seed: int = SEED) -> list[Difference]:
    """paired_bootstrap of two evaluations' generations (the same prompts and samples, in the same order)."""
    return paired_bootstrap(corpus_statistics(a), corpus_statistics(b), corpus_statistics(list(a) + list(b)),
                            num_resamples, seed, group_size=samples_per_prompt(a))


def samples_per_prompt(generations) -> int:
    """K: the samples per prompt of an evaluation's generations (Generation.sample counts 0..K-1 per prompt)."""
    return 1 + max((g.sample for g in generations), default=0)
