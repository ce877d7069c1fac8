"""The comparison's numbers and report: each arm against the start and against each control, per seed and across.

Within a seed (one held-out test split, the same prompts for every arm) an arm is compared with the start (its own
eval_before) and with a control arm's eval_after by the paired bootstrap over prompts of evaluation/bootstrap.py:
the difference of the corpus metric, its 95 % interval and the randomization p-value. Across seeds each seed's
difference is one value and the interval is Student's t over the seeds (n - 1 degrees of freedom): it says how far
the mean over seeds would move with other seeds, which the within-seed interval cannot say. The verdict on a
metric reads the across-seed interval ("distinguishable from <control>" when it excludes 0); with one seed only
the within-seed interval exists, and the verdict says that it is all there is. An arm of the user's own
(`--arm`, e.g. bf16 or another algorithm) is also compared with the `config` arm the same way (`vs_config`): the
question "does this setting change what is learned?" that decides, e.g., a precision default.

Written into the comparison folder: compare.json (every number), report.md and report.html, and plots/ with the
validation curves (mean over seeds, band from the lowest to the highest seed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from llm_pg.evaluation.bootstrap import Difference, compare_generations, t_interval
from llm_pg.evaluation.generations import load_generations
from llm_pg.evaluation.metrics import LOWER_IS_BETTER, ordered_names
from llm_pg.reporting.report import Cell, render_html, render_markdown

NO_DIRECTION = {"length_tokens", "length_words"}  # a change, neither better nor worse: the verdict says which way


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.4f}"


def _interval(low: float | None, high: float | None) -> str:
    return "n/a" if low is None else f"[{low:+.4f}, {high:+.4f}]"


def _scores(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.json").read_text())["scores"]


def _differences(a_folder: Path, a_name: str, b_folder: Path, resamples: int) -> dict[str, Difference]:
    """{metric: b's eval_after minus a's `a_name`} by the paired bootstrap over the prompts of one test split."""
    a = load_generations(a_folder / f"{a_name}.jsonl")
    b = load_generations(b_folder / "eval_after.jsonl")
    if [(g.id, g.sample) for g in a] != [(g.id, g.sample) for g in b]:
        raise ValueError(f"{a_folder} and {b_folder} were not evaluated on the same prompts")
    return {d.metric: d for d in compare_generations(a, b, resamples)}


def across(per_seed: list[Difference]) -> dict:
    """The per-seed differences and their mean with its t interval across seeds (low, high None for one seed)."""
    mean, low, high = t_interval([d.difference for d in per_seed])
    low, high = (None, None) if math.isnan(low) else (low, high)
    return {"per_seed": [d.to_dict() for d in per_seed], "mean": mean, "low": low, "high": high}


def verdict(metric: str, summary: dict, control: str) -> str:
    """One line: is the arm's difference to `control` on `metric` distinguishable from 0, and which way?"""
    seeds = summary["per_seed"]
    if len(seeds) > 1:
        low, high, how = summary["low"], summary["high"], f"t interval over {len(seeds)} seeds"
    else:
        low, high, how = seeds[0]["ci_low"], seeds[0]["ci_high"], "one seed: the within-seed bootstrap interval only"
    if low > 0 or high < 0:
        if metric in NO_DIRECTION:
            return f"distinguishable from {control}: {'higher' if low > 0 else 'lower'} ({how})"
        better = (high < 0) if metric in LOWER_IS_BETTER else (low > 0)
        return f"distinguishable from {control}: {'better' if better else 'worse'} ({how})"
    return f"not distinguishable from {control} ({how})"


def summarize(plan, root: Path, resamples: int) -> dict:
    """compare.json's content: per arm, its scores and its differences to the start and to each control."""
    controls = [a for a in plan.arms if a.control]
    result = {"plan": plan.to_dict(), "arms": {}}
    for arm in plan.arms:
        folders = [plan.folder(root, arm, s) for s in plan.seeds]
        vs_start = [_differences(f, "eval_before", f, resamples) for f in folders]
        entry = {"after": [_scores(f, "eval_after") for f in folders], "vs_start": {}, "vs_control": {}}
        for metric in ordered_names(vs_start[0]):
            entry["vs_start"][metric] = across([d[metric] for d in vs_start])
        for control in controls if not arm.control else []:
            entry["vs_control"][control.name] = _against(plan, root, control, folders, resamples)
        if not arm.control and arm.name != "config":
            entry["vs_config"] = _against(plan, root, plan.arms[0], folders, resamples)
        result["arms"][arm.name] = entry
    return result


def _against(plan, root: Path, other, folders: list[Path], resamples: int) -> dict:
    """{metric: across-seed summary and verdict} of the arm's eval_after (its `folders`, one per seed) minus
    `other`'s eval_after, seed by seed."""
    per_seed = [_differences(plan.folder(root, other, s), "eval_after", f, resamples)
                for s, f in zip(plan.seeds, folders)]
    table = {}
    for metric in ordered_names(per_seed[0]):
        summary = across([d[metric] for d in per_seed])
        table[metric] = {**summary, "verdict": verdict(metric, summary, other.name)}
    return table


def _metric_rows(summary: dict, key: str, control: str | None = None) -> list[list[Cell]]:
    """One row per arm and metric of entry[key] (vs_start, vs_config) or entry[key][control] (vs_control)."""
    rows = []
    for arm, entry in summary["arms"].items():
        table = entry.get(key, {}) if control is None else entry[key].get(control, {})
        for metric, s in table.items():
            seeds = ", ".join(_fmt(d["difference"]) for d in s["per_seed"])
            rows.append([Cell(arm), Cell(metric), Cell(seeds), Cell(_fmt(s["mean"])),
                         Cell(_interval(s["low"], s["high"]))] + ([Cell(s["verdict"])] if "verdict" in s else []))
    return rows


def build_blocks(summary: dict, plots: list[Path]) -> list[tuple]:
    plan = summary["plan"]
    seeds = plan["seeds"]
    blocks = [("h1", "llm-pg compare"),
              ("p", f"Config `{plan['config']}` with {' '.join(plan['overrides']) or 'no overrides'}; arms "
                    + ", ".join(f"**{a['name']}** ({' '.join(a['overrides']) or 'the config'})" for a in plan["arms"])
                    + f"; seeds {', '.join(map(str, seeds))}. Every arm sees the same prompts in the same order "
                      "and samples with the same random streams while its policy is the start's."),
              ("h2", "Change from the start (held-out test split, eval_after - eval_before)"),
              ("p", "Per seed: the paired-bootstrap difference; mean over seeds with its Student-t 95 % interval "
                    "(n/a with one seed)."),
              ("table", ["arm", "metric", "per seed", "mean", "95 % interval across seeds"],
               _metric_rows(summary, "vs_start"))]
    controls = [a["name"] for a in plan["arms"] if a["control"]]
    for control in controls:
        blocks += [("h2", f"Against the control {control} (eval_after of the arm - eval_after of {control})"),
                   ("table", ["arm", "metric", "per seed", "mean", "95 % interval across seeds", "verdict"],
                    _metric_rows(summary, "vs_control", control))]
    if not controls:
        blocks.append(("p", "No control arm was run (--controls none): nothing here says the reward caused a "
                            "change."))
    if any("vs_config" in entry for entry in summary["arms"].values()):
        blocks += [("h2", "Against the config (eval_after of the arm - eval_after of config): does the arm's setting "
                          "change what is learned?"),
                   ("table", ["arm", "metric", "per seed", "mean", "95 % interval across seeds", "verdict"],
                    _metric_rows(summary, "vs_config"))]
    blocks += [("img", p, p.stem) for p in plots]
    return blocks


def plot_validation(plan, root: Path) -> list[Path]:
    """One figure per validation metric: each arm's mean over seeds, shaded from its lowest to highest seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, dict[str, dict[int, list[float]]]] = {}  # metric -> arm -> step -> values over seeds
    for arm in plan.arms:
        for seed in plan.seeds:
            path = plan.folder(root, arm, seed) / "metrics.jsonl"
            for row in map(json.loads, path.read_text().splitlines()):
                for key, value in row.items():
                    if key.startswith("eval/") and isinstance(value, (int, float)):
                        curves.setdefault(key[5:], {}).setdefault(arm.name, {}).setdefault(row["step"], []).append(
                            value)
    paths = []
    (root / "plots").mkdir(exist_ok=True)
    for metric in ordered_names(curves)[:4]:
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        for arm, by_step in curves[metric].items():
            steps = sorted(by_step)
            values = [by_step[s] for s in steps]
            ax.plot(steps, [sum(v) / len(v) for v in values], marker="o", ms=3, label=arm)
            ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], alpha=0.15, lw=0)
        ax.set(title=f"validation {metric}: mean over seeds, band = lowest to highest seed", xlabel="training step")
        ax.legend(frameon=False, fontsize=8)
        path = root / "plots" / f"validation_{metric}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        paths.append(path)
    return paths


def write_comparison(plan, root: Path, resamples: int = 1000) -> dict:
    """compare.json, report.md, report.html and plots/ in the comparison folder; returns the summary."""
    summary = summarize(plan, root, resamples)
    (root / "compare.json").write_text(json.dumps(summary, indent=1) + "\n")
    blocks = build_blocks(summary, plot_validation(plan, root))
    (root / "report.md").write_text(render_markdown(blocks, root), encoding="utf-8")
    (root / "report.html").write_text(render_html(blocks, "llm-pg compare"), encoding="utf-8")
    return summary
