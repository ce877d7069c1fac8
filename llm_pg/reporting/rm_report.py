"""`llm-pg rm`'s report: <rm.output_dir>/eval.json, eval_scores.jsonl (each held-out pair's two scores, for paired
comparisons of reward models: scripts/compare_reward_models.py), and a short report.md with the held-out accuracy
of the reward model and of the length baselines (llm_pg/evaluation/preference_accuracy.py), the differences
between them, and the training curves (plots/rm_training.png).
"""

from __future__ import annotations

import json
from pathlib import Path


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


def write_rm_report(folder: Path, result: dict, train_seconds: float | None = None,
                    pair_scores: list[dict] | None = None) -> Path:
    """<folder>/eval.json, eval_scores.jsonl (when `pair_scores` is given) and a short report.md."""
    (folder / "eval.json").write_text(json.dumps(result, indent=1) + "\n")
    if pair_scores is not None:
        (folder / "eval_scores.jsonl").write_text("".join(json.dumps(row) + "\n" for row in pair_scores))
    row = "| {} | {:.3f} | [{:.3f}, {:.3f}] | {:.3g} |"
    lines = [f"# Reward model: held-out pairs ({result['pairs']})", "",
             "| system | accuracy | 95 % interval | p (vs 0.5) |", "|---|---|---|---|",
             row.format("reward model", result["accuracy"], *result["ci"], result["p_value"])]
    for name, b in result["baselines"].items():
        lines.append(row.format(f"{name} answer wins", b["accuracy"], *b["ci"], b["p_value"]))
    lines += _by_length_rows(result.get("by_length"), row)
    lines += ["", f"Mean margin r_chosen - r_rejected: {result['mean_margin']:.3f}.", ""]
    if result.get("length_beta") is not None:
        lines += [f"Trained with a length covariate (rm.length_covariate): r = q + β·L, β = "
                  f"{result['length_beta']:+.3f} per 100 characters of answer; the model above is q alone.", ""]
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


def _by_length_rows(by_length: dict | None, row: str) -> list[str]:
    """The reward model's accuracy where the chosen answer is the longer one and where it is the shorter one."""
    if not by_length:
        return []
    lines = []
    for name, label in (("chosen_longer", "reward model, chosen answer longer"),
                        ("chosen_shorter", "reward model, chosen answer shorter")):
        part = by_length.get(name)
        if part is not None:
            lines.append(row.format(f"{label} ({part['pairs']} pairs)", part["accuracy"], *part["ci"],
                                    part["p_value"]))
    if by_length.get("balanced") is not None:
        lines.append(f"| length-balanced accuracy (mean of the two) | {by_length['balanced']:.3f} | | |")
    return lines
