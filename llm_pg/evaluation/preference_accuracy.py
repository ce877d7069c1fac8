"""Held-out evaluation of a reward model: pairwise accuracy with a 95 % interval and a p-value, the mean margin, and
the two baselines a skeptic checks first (the longer answer wins; the shorter answer wins).

    accuracy  = mean_pairs 1[r_c > r_r]   (ties count 1/2)
    margin    = mean_pairs (r_c - r_r)
    longer    = mean_pairs 1[len(chosen) > len(rejected)]   (characters; equal lengths count 1/2); shorter = 1 - longer
    by length the accuracy on the pairs whose chosen answer is the longer one, and on those where it is the shorter
              one (equal lengths in neither): a reward model that only prefers short answers scores near 0 on the
              first and near 1 on the second; their mean is the length-balanced accuracy

Statistics valid at every number of pairs P (docs/reward_model.md):
- each accuracy: Wilson's score interval (inside [0, 1], never of zero width: one pair gives [0, 0.79] around 0),
  and the exact two-sided sign test of accuracy = 0.5 over the untied pairs (its smallest p is 2 / 2^P);
- `vs_<baseline>`: the reward model's accuracy minus the baseline's, with a paired-bootstrap interval (R resamples
  of the pairs, centred as llm_pg/evaluation/bootstrap.py centres it, cut to [-1, 1]) and the p-value of the paired sign-flip
  test (exact when 2^P <= R). "Beats the baseline" means p < 0.05 and that interval lies above 0.
With fewer than bootstrap.MIN_UNITS pairs the result carries a warning: no outcome can be significant.

Two reward models on the same held-out pairs (`compare_reward_models`, scripts/compare_reward_models.py): each
one's accuracy overall and in each length stratum, and A - B with the paired bootstrap over the stratum's pairs and
the paired sign-flip test, from the per-pair scores each `llm-pg rm` writes (eval_scores.jsonl, `pair_rows`).
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import torch

from llm_pg.algorithms.preference_loss import pairwise_correct
from llm_pg.data.preferences import PreferencePair
from llm_pg.errors import LlmPgError
from llm_pg.evaluation.bootstrap import (
    clip,
    interval_and_p_value,
    resample_indices,
    sign_flip_p_value,
    sign_test_p_value,
    too_few,
    wilson_interval,
)

logger = logging.getLogger(__name__)


def length_correct(pairs: list[PreferencePair]) -> np.ndarray:
    """(P,) 1 where the chosen answer is the longer one, 0.5 for equal lengths, else 0."""
    return np.array([1.0 if len(p.chosen) > len(p.rejected) else 0.5 if len(p.chosen) == len(p.rejected) else 0.0
                     for p in pairs])


def _difference(correct: np.ndarray, indices: np.ndarray, baseline: np.ndarray) -> dict:
    """Mean of `correct` minus `baseline` (per-pair arrays in [0, 1]), its 95 % interval and sign-flip p-value."""
    d = correct - baseline  # (P,)
    observed = float(np.mean(d))
    resampled = d[indices].mean(axis=1)  # (R,) the difference on each resample
    low, high, _ = interval_and_p_value(resampled - resampled.mean() + observed)
    return {"difference": observed, "ci": list(clip(low, high, (-1.0, 1.0))),
            "p_value": sign_flip_p_value(d, len(indices))}


def accuracy_summary(correct: np.ndarray) -> dict:
    """{accuracy, ci (Wilson), p_value (exact sign test vs 0.5)} of per-pair correctness (P,) in {0, 1/2, 1}."""
    return {"accuracy": float(correct.mean()), "ci": list(wilson_interval(float(correct.sum()), len(correct))),
            "p_value": sign_test_p_value(int(np.sum(correct == 1.0)), int(np.sum(correct == 0.0)))}


def evaluate_pairs(r_chosen: list[float], r_rejected: list[float], pairs: list[PreferencePair],
                   resamples: int = 1000) -> dict:
    """Accuracy (interval), mean margin and the length baselines on held-out pairs (see the module docstring)."""
    rc, rr = torch.tensor(r_chosen), torch.tensor(r_rejected)
    model = pairwise_correct(rc, rr).numpy().astype(float)  # (P,)
    longer = length_correct(pairs)
    indices = resample_indices(len(pairs), resamples)  # (R, P), shared by every system: paired
    warning = too_few(len(pairs), "held-out pairs")
    if warning:
        logger.warning("reward model evaluation: %s", warning)
    result = {"pairs": len(pairs), "resamples": resamples, **accuracy_summary(model),
              "mean_margin": float((rc - rr).mean()), "baselines": {}, "warning": warning}
    for name, correct in (("longer", longer), ("shorter", 1.0 - longer)):
        result["baselines"][name] = accuracy_summary(correct)
        result[f"vs_{name}"] = _difference(model, indices, correct)
    result["by_length"] = accuracy_by_length(model, longer)
    return result


def accuracy_by_length(correct: np.ndarray, longer: np.ndarray) -> dict:
    """Accuracy (Wilson interval, sign test) on the pairs whose chosen answer is the longer one and on those where
    it is the shorter one, each with its number of pairs (None where there is none), and their mean
    (`balanced`: the accuracy a reward model would have if both kinds of pair were equally common)."""
    result: dict = {}
    for name, rows in (("chosen_longer", longer == 1.0), ("chosen_shorter", longer == 0.0)):
        result[name] = {"pairs": int(rows.sum()), **accuracy_summary(correct[rows])} if rows.any() else None
    both = result["chosen_longer"] and result["chosen_shorter"]
    result["balanced"] = (result["chosen_longer"]["accuracy"] + result["chosen_shorter"]["accuracy"]) / 2 \
        if both else None
    return result


def pair_digest(pair: PreferencePair) -> str:
    """A pair's identity (prompt, chosen, rejected): two score files are paired only where these agree."""
    text = json.dumps([pair.prompt, pair.chosen, pair.rejected], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pair_rows(r_chosen: list[float], r_rejected: list[float], pairs: list[PreferencePair]) -> list[dict]:
    """One row per held-out pair: its digest, both scores and both answers' lengths in characters."""
    return [{"pair": pair_digest(p), "r_chosen": c, "r_rejected": r, "chosen_chars": len(p.chosen),
             "rejected_chars": len(p.rejected)} for c, r, p in zip(r_chosen, r_rejected, pairs)]


def compare_reward_models(rows_a: list[dict], rows_b: list[dict], resamples: int = 1000) -> dict:
    """A against B on the same pairs: for `all` pairs and each length stratum (`chosen_longer`, `chosen_shorter`;
    equal lengths only in `all`), both accuracies (Wilson, sign test) and A - B with the paired-bootstrap
    interval over that stratum's pairs and the paired sign-flip p-value."""
    if [r["pair"] for r in rows_a] != [r["pair"] for r in rows_b]:
        raise LlmPgError("compare reward models: the two score files are not of the same held-out pairs in the same "
                         "order; evaluate both on the same rm.source, rm.eval_split and rm.max_eval_pairs")
    correct = [pairwise_correct(torch.tensor([r["r_chosen"] for r in rows], dtype=torch.float64),
                                torch.tensor([r["r_rejected"] for r in rows], dtype=torch.float64)).numpy()
               .astype(float) for rows in (rows_a, rows_b)]  # 2 x (P,)
    chosen, rejected = (np.array([r[k] for r in rows_a]) for k in ("chosen_chars", "rejected_chars"))
    result = {"pairs": len(rows_a), "resamples": resamples}
    for name, rows in (("all", np.ones(len(rows_a), bool)), ("chosen_longer", chosen > rejected),
                       ("chosen_shorter", chosen < rejected)):
        if not rows.any():
            result[name] = None
            continue
        a, b = correct[0][rows], correct[1][rows]
        result[name] = {"pairs": int(rows.sum()), "a": accuracy_summary(a), "b": accuracy_summary(b),
                        "a_minus_b": _difference(a, resample_indices(len(a), resamples), b)}
    return result
