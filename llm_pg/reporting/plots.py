"""The report's PNG plots (matplotlib, Agg backend: no display needed).

Each function takes the run's metric rows and writes one figure, or returns None when its keys are absent
(a run without a value head has no value-loss plot; one without a KL reference no KL plot).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never opens a window
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

BLUE, ORANGE, GREEN, RED, GREY = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#7f7f7f"
STYLE = {"figure.dpi": 110, "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True,
         "grid.alpha": 0.3, "font.size": 10, "axes.titleweight": "bold", "axes.titlesize": 12}


def ema(values: list[float], alpha: float) -> list[float]:
    """Exponential moving average, as TensorBoard's smoothing slider: s_t = alpha s_{t-1} + (1 - alpha) x_t,
    debiased at the start so the curve does not begin at zero."""
    out, s = [], 0.0
    for t, x in enumerate(values, 1):
        s = alpha * s + (1 - alpha) * x
        out.append(s / (1 - alpha ** t))
    return out


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric over the rows that hold it (finite values only)."""
    points = [(r["step"], r[key]) for r in rows if key in r and isinstance(r[key], (int, float))
              and math.isfinite(r[key])]
    return [p[0] for p in points], [p[1] for p in points]


def _curve(ax, steps, values, label, color, smooth=True):
    """Raw values faint, their moving average bold (raw only when there are few points)."""
    few = len(values) < 8
    ax.plot(steps, values, color=color, alpha=1.0 if few or not smooth else 0.3, lw=1.2,
            marker="o" if few else None, ms=4, label=label if few or not smooth else None)
    if smooth and not few:
        ax.plot(steps, ema(values, 0.8 if len(values) < 100 else 0.95), color=color, lw=2.2, label=label)


def _save(fig, path: Path) -> Path:
    for ax in fig.axes:
        if ax.get_xlabel() == "training step":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_lines(rows: list[dict], keys: dict[str, str], title: str, ylabel: str, path: Path,
               band: tuple[str, str] | None = None, note: str | None = None) -> Path | None:
    """One figure with a curve per present key ({metric key: legend label}); None when none is present
    (or when every value is 0, e.g. policy/kl without a reference model)."""
    present = {k: v for k, v in keys.items() if any(x != 0 for x in series(rows, k)[1])}
    if not present:
        return None
    colors = [BLUE, ORANGE, GREEN, RED, "#9467bd", "#8c564b"]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 3.6))
        for (key, label), color in zip(present.items(), colors):
            steps, values = series(rows, key)
            if band and key == band[0]:  # mean +- std over the step's completions
                _, spread = series(rows, band[1])
                if len(spread) == len(values):
                    ax.fill_between(steps, [m - s for m, s in zip(values, spread)],
                                    [m + s for m, s in zip(values, spread)], color=color, alpha=0.1, lw=0,
                                    label="± 1 std over the step's completions")
            _curve(ax, steps, values, label, color)
        ax.set(title=title, xlabel="training step", ylabel=ylabel)
        if note:
            ax.annotate(note, (0.01, 0.02), xycoords="axes fraction", fontsize=8, color=GREY)
        ax.legend(frameon=False, fontsize=8)
        return _save(fig, path)


def plot_heldout(rows: list[dict], metrics: list[str], before: dict | None, after: dict | None,
                 final_step: int, path: Path) -> Path | None:
    """Validation metrics over training steps, with the test split's before (step 0) and after scores; None (no
    plot) when the run logged no validation evaluation (evaluation.eval_every = 0): the changes plot shows the
    before/after scores already, and a panel of two points is not a curve."""
    if not any(key.startswith("eval/") for row in rows for key in row):
        return None
    shown, seen = [], []
    for m in metrics:  # a metric identical to one already shown (reward = rougeL) is left out
        values = series(rows, f"eval/{m}")[1] + [s[m] for s in (before, after) if s and m in s]
        if values and values not in seen:
            shown.append(m)
            seen.append(values)
    shown = shown[:3]
    if not shown:
        return None
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.6), squeeze=False)
        for ax, metric in zip(axes[0], shown):
            steps, values = series(rows, f"eval/{metric}")
            if steps:
                ax.plot(steps, values, color=BLUE, lw=2, marker="o", ms=4, label="validation split")
                best = (min if metric in ("perplexity", "repeated_3gram_rate") else max)(zip(values, steps))
                ax.scatter([best[1]], [best[0]], s=130, facecolors="none", edgecolors=GREEN, lw=2, zorder=3,
                           label=f"best (step {best[1]})")
            for name, scores, x, color in (("test, before", before, 0, GREY), ("test, after", after, final_step,
                                                                                RED)):
                if scores and metric in scores:
                    ax.scatter([x], [scores[metric]], marker="D", s=45, color=color, zorder=4, label=name)
            ax.set(title=metric, xlabel="training step")
            ax.legend(frameon=False, fontsize=8)
        fig.suptitle("Held-out metrics", fontweight="bold")
        return _save(fig, path)


def plot_changes(differences: list, lower_is_better: set[str], path: Path) -> Path | None:
    """After minus before for every metric on a 0-1 scale, with its 95 % bootstrap interval; green = a
    significant improvement, red = a significant regression, grey = not significant (p >= 0.05)."""
    shown = [d for d in differences if d.metric not in ("perplexity", "length_tokens", "length_words")]
    if not shown:
        return None
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.4, 0.42 * len(shown) + 1.3))
        for y, d in enumerate(reversed(shown)):
            better = (d.difference < 0) if d.metric in lower_is_better else (d.difference > 0)
            color = GREY if d.p_value >= 0.05 else GREEN if better else RED
            spread = [[max(0.0, d.difference - d.ci_low)], [max(0.0, d.ci_high - d.difference)]]  # never < 0
            ax.errorbar(d.difference, y, xerr=spread, fmt="o",
                        color=color, ecolor=color, elinewidth=2.2, capsize=4, ms=6)
            ax.annotate(f"{d.difference:+.3f}", (d.ci_high, y), xytext=(6, -3), textcoords="offset points",
                        fontsize=8, color=color)
        ax.axvline(0, color="black", lw=1)
        ax.set_yticks(range(len(shown)), [d.metric for d in reversed(shown)])
        ax.set(title="After − before training, test split",
               xlabel="change, with its 95 % paired-bootstrap interval\n"
                      "green: better, red: worse (p < 0.05); grey: not significant")
        ax.grid(axis="y", alpha=0)
        ax.margins(x=0.25)
        return _save(fig, path)
