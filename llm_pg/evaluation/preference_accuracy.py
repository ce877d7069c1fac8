"""Held-out evaluation of a reward model: pairwise accuracy with a bootstrap 95 % interval, the mean margin, and
the two baselines a skeptic checks first (the longer answer wins; the shorter answer wins).

    accuracy  = mean_pairs 1[r_c > r_r]   (ties count 1/2)
    margin    = mean_pairs (r_c - r_r)
    longer    = mean_pairs 1[len(chosen) > len(rejected)]   (characters; equal lengths count 1/2); shorter = 1 - longer

Statistics valid at every number of pairs P (docs/reward_model.md):
- each accuracy: Wilson's score interval (inside [0, 1], never of zero width: one pair gives [0, 0.79] around 0),
  and the exact two-sided sign test of accuracy = 0.5 over the untied pairs (its smallest p is 2 / 2^P);
- `vs_<baseline>`: the reward model's accuracy minus the baseline's, with a paired-bootstrap interval (R resamples
  of the pairs, centred as llm_pg/evaluation/bootstrap.py centres it, cut to [-1, 1]) and the p-value of the paired sign-flip
  test (exact when 2^P <= R). "Beats the baseline" means p < 0.05 and that interval lies above 0.
With fewer than bootstrap.MIN_UNITS pairs the result carries a warning: no outcome can be significant.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from llm_pg.algorithms.preference_loss import pairwise_correct
from llm_pg.data.preferences import PreferencePair
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
    return result


def plot_training(folder: Path) -> Path | None:
    """plots/rm_training.png: the Bradley-Terry loss and the batch accuracy over the steps (rm_metrics.jsonl)."""
    from llm_pg.reporting.plots import plot_lines

    log = folder / "rm_metrics.jsonl"
    if not log.is_file():
        return None
    rows = []
    for line in log.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a torn last line
            continue
    (folder / "plots").mkdir(exist_ok=True)
    return plot_lines(rows, {"rm/loss": "Bradley-Terry loss", "rm/accuracy": "batch pairwise accuracy"},
                      "Reward model training", "value", folder / "plots" / "rm_training.png")


def write_report(folder: Path, result: dict, train_seconds: float | None = None) -> Path:
    """<folder>/eval.json and a short report.md."""
    (folder / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
    row = "| {} | {:.3f} | [{:.3f}, {:.3f}] | {:.3g} |"
    lines = [f"# Reward model: held-out pairs ({result['pairs']})", "",
             "| system | accuracy | 95 % interval | p (vs 0.5) |", "|---|---|---|---|",
             row.format("reward model", result["accuracy"], *result["ci"], result["p_value"])]
    for name, b in result["baselines"].items():
        lines.append(row.format(f"{name} answer wins", b["accuracy"], *b["ci"], b["p_value"]))
    lines += ["", f"Mean margin r_chosen - r_rejected: {result['mean_margin']:.3f}.", ""]
    for name in result["baselines"]:
        d = result[f"vs_{name}"]
        lines.append(f"- reward model minus '{name} answer wins': {d['difference']:+.3f}, 95 % interval "
                     f"[{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}], p = {d['p_value']:.3g}")
    if train_seconds is not None:
        lines += ["", f"Training time: {train_seconds:.0f} s."]
    plot = plot_training(folder)
    if plot is not None:
        lines += ["", f"![training]({plot.relative_to(folder)})"]
    if result.get("warning"):
        lines += ["", f"⚠️ **Too few pairs**: {result['warning']}."]
    lines += ["", "Accuracy: Wilson score interval, exact sign test against 0.5. Differences: paired bootstrap over "
                  f"{result['resamples']} resamples of the pairs, paired sign-flip test (docs/reward_model.md)."]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    return folder / "report.md"
