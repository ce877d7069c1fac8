"""Gains at matched length: how much of a policy's score gain is not explained by its answers' length.

A reward model that prefers short (or long) answers rewards a policy for changing length alone (Singhal et al. 2023,
"A Long Way to Go"; AlpacaEval's length-controlled win rate, Dubois et al. 2024). Two estimates of the gain of a
policy B over a policy A at matched length, over P prompts x K sampled completions each (scores s, lengths L):

    regression   s = a + b L + c 1[B]   least squares over all 2 P K completions; c is the gain at equal length
                 (a common linear score-length trend; the raw gain is c + b (mean L_B - mean L_A) exactly)
    stratified   the completions of both policies are cut into length strata (quartiles of the pooled lengths, or
                 one stratum per length when there are at most 4 lengths);
                 gain = sum_j w_j (mean_B,j s - mean_A,j s), w_j = the pooled share of stratum j, over the strata
                 that hold completions of both policies (post-stratification: no linearity assumed)

Intervals: the paired bootstrap over prompts of llm_pg/evaluation/bootstrap.py (a resample draws P prompts with
replacement, each with its 2K completions; the strata stay those of the observed data), centred on the observed
value; p is the bootstrap's two-sided p of "gain = 0". Both are cross-sectional: they remove what length explains
in these samples, not a causal effect of length.
"""

from __future__ import annotations

import numpy as np

from llm_pg.evaluation.bootstrap import SEED, interval_and_p_value, resample_indices

STRATA = 4  # length strata of the stratified estimate (quartiles of the pooled lengths)


def _interval(resampled: np.ndarray, observed: float) -> dict:
    """{value, ci, p_value} from the resampled estimates (R,), centred on the observed one (NaN resamples dropped)."""
    resampled = resampled[np.isfinite(resampled)]
    low, high, p = interval_and_p_value(resampled - resampled.mean() + observed)
    return {"value": observed, "ci": [low, high], "p_value": p}


def _regression_sums(a_scores, a_lengths, b_scores, b_lengths) -> np.ndarray:
    """(P, 3, 4) per-prompt sums X^T [X | s] of the design X = [1, L, 1[B]] over the prompt's 2K completions."""
    s = np.concatenate([a_scores, b_scores], 1).astype(float)  # (P, 2K)
    x = np.stack([np.ones_like(s), np.concatenate([a_lengths, b_lengths], 1).astype(float),
                  np.concatenate([np.zeros_like(a_scores), np.ones_like(b_scores)], 1).astype(float)], -1)  # (P, 2K, 3)
    xs = np.concatenate([x, s[..., None]], -1)  # (P, 2K, 4)
    return np.einsum("pki,pkj->pij", x, xs)  # (P, 3, 4)


def _solve_gain(sums: np.ndarray) -> np.ndarray:
    """c of the normal equations (X^T X) beta = X^T s, for sums (..., 3, 4); NaN where L does not vary (singular)."""
    xtx, xts = sums[..., :3], sums[..., 3]
    det = np.linalg.det(xtx)
    ok = np.abs(det) > 1e-9 * np.maximum(1.0, np.abs(xtx).max(axis=(-2, -1))) ** 3
    beta = np.full(xts.shape, np.nan)
    beta[ok] = np.linalg.solve(xtx[ok], xts[ok][..., None])[..., 0]
    return beta[..., 2]


def regression_gain(a_scores: np.ndarray, a_lengths: np.ndarray, b_scores: np.ndarray, b_lengths: np.ndarray,
                    resamples: int = 1000, seed: int = SEED) -> dict | None:
    """c of s = a + b L + c 1[B] (see the module docstring) with its bootstrap interval; None when every completion
    has the same length (no trend can be fitted). Arrays are (P, K)."""
    sums = _regression_sums(a_scores, a_lengths, b_scores, b_lengths)  # (P, 3, 4)
    observed = float(_solve_gain(sums.sum(0)))
    if not np.isfinite(observed):
        return None
    rows = resample_indices(len(sums), resamples, seed)  # (R, P)
    slope_free = _solve_gain(sums[rows].sum(1))  # (R,)
    return _interval(slope_free, observed)


def strata_edges(lengths: np.ndarray, strata: int = STRATA) -> np.ndarray:
    """Inner edges of the length strata (a stratum j holds edges[j-1] < L <= edges[j]): one stratum per length when
    the pooled lengths take at most `strata` values (exact matching), else their distinct inner quantiles."""
    values = np.unique(lengths.ravel().astype(float))
    if len(values) <= strata:
        return values[:-1]
    return np.unique(np.quantile(lengths.ravel().astype(float), np.arange(1, strata) / strata))


def _strata_sums(scores: np.ndarray, lengths: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(P, J, 2): per prompt and stratum, the sum of the scores and the number of completions."""
    stratum = np.searchsorted(edges, lengths, side="left")  # (P, K) in 0..J-1
    J = len(edges) + 1
    onehot = (stratum[..., None] == np.arange(J)).astype(float)  # (P, K, J)
    return np.stack([np.einsum("pk,pkj->pj", scores.astype(float), onehot), onehot.sum(1)], -1)


def _stratified(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The post-stratified gain of strata sums a, b (..., J, 2); NaN when no stratum holds both policies."""
    both = (a[..., 1] > 0) & (b[..., 1] > 0)  # (..., J)
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.where(both, b[..., 0] / b[..., 1] - a[..., 0] / a[..., 1], 0.0)
    weight = np.where(both, a[..., 1] + b[..., 1], 0.0)
    total = weight.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (weight * diff).sum(-1) / total, np.nan)


def stratified_gain(a_scores: np.ndarray, a_lengths: np.ndarray, b_scores: np.ndarray, b_lengths: np.ndarray,
                    resamples: int = 1000, seed: int = SEED, strata: int = STRATA) -> dict | None:
    """The post-stratified gain (see the module docstring) with its bootstrap interval and the strata used; None
    when no stratum holds completions of both policies. Arrays are (P, K)."""
    edges = strata_edges(np.concatenate([a_lengths, b_lengths], 1), strata)
    a, b = _strata_sums(a_scores, a_lengths, edges), _strata_sums(b_scores, b_lengths, edges)  # (P, J, 2)
    observed = float(_stratified(a.sum(0), b.sum(0)))
    if not np.isfinite(observed):
        return None
    rows = resample_indices(len(a), resamples, seed)  # (R, P)
    result = _interval(_stratified(a[rows].sum(1), b[rows].sum(1)), observed)
    shared = (a.sum(0)[:, 1] > 0) & (b.sum(0)[:, 1] > 0)
    return {**result, "edges": edges.tolist(), "strata_used": int(shared.sum()), "strata": len(edges) + 1,
            "share_used": float((a.sum(0)[shared, 1].sum() + b.sum(0)[shared, 1].sum())
                                / (a_scores.size + b_scores.size))}
