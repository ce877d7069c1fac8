"""The run report: report.md and report.html in the run folder, with PNG plots in <run>/plots/.

Built only from the run's files (config.yaml, metrics.jsonl, eval_before/eval_after .json + .jsonl, best/best.json,
the latest checkpoint's trainer state), so `llm-pg report RUN_DIR` rebuilds it at any time. The report is a list
of blocks rendered twice: as markdown (relative image links, for the Hub model card and GitHub) and as a
self-contained HTML page (images inlined) to open in a browser.
"""

from __future__ import annotations

import base64
import html
import json
import re
from dataclasses import dataclass
from pathlib import Path

from llm_pg.errors import LlmPgError
from llm_pg.evaluation.bootstrap import (
    Difference,
    compare_generations,
    significant,
    too_few,
)
from llm_pg.evaluation.generations import load_generations
from llm_pg.evaluation.metrics import LOWER_IS_BETTER, ordered_names
from llm_pg.runs.folder import KINDS, run_kind

PLOTS_DIR = "plots"


class ReportError(LlmPgError):
    """A folder that is not a run folder."""


@dataclass
class Cell:
    """A table cell: short text, and optionally the full text (HTML shows it when the row is opened)."""

    text: str
    full: str | None = None


def _read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl; a torn last line (a kill mid-write) is dropped, damage elsewhere is an error."""
    if not path.is_file():
        return []
    from llm_pg.runs.tracking import read_metrics_lines

    lines = [line for line in path.read_bytes().decode("utf-8", errors="replace").splitlines() if line.strip()]
    rows = read_metrics_lines(path)
    if len(rows) < len(lines) - 1 or (len(rows) == len(lines) - 1 and _parses(lines[-1])):
        raise ReportError(f"report: {path} is damaged (a line before the last is not a JSON object with a 'step'); "
                          "delete the damaged lines, or continue the run with --resume, which repairs the log")
    return rows


def _parses(line: str) -> bool:
    try:
        row = json.loads(line)
    except ValueError:
        return False
    return isinstance(row, dict) and isinstance(row.get("step"), int)


def _eval_scores(run_dir: Path, name: str) -> dict | None:
    path = run_dir / f"{name}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())["scores"]
    except (ValueError, KeyError, TypeError):
        raise ReportError(f"report: {path} is damaged (not the JSON that evaluation writes); delete it or "
                          f"evaluate again with llm-pg eval --output {path}") from None


def _evaluator_state(run_dir: Path) -> dict:
    """The evaluation history saved with the latest checkpoint (older checkpoints kept it among the results)."""
    from llm_pg.runs.checkpoint import latest_checkpoint

    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        return {}
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return state.get("evaluator") or state.get("results", {}).get("evaluator", {})


def _num_prompts(run_dir: Path, scores: dict) -> int:
    """The prompts of eval_after.json (its settings; older files: every sample counted as a prompt)."""
    try:
        return int(json.loads((run_dir / "eval_after.json").read_text())["settings"]["num_prompts"])
    except (OSError, ValueError, KeyError, TypeError):
        return int(scores.get("num_samples", 0))


def compare_runs(run_dir: Path, resamples: int) -> list[Difference] | None:
    """Paired bootstrap of eval_after vs eval_before (None when either is missing or they are not paired)."""
    if not ((run_dir / "eval_before.jsonl").is_file() and (run_dir / "eval_after.jsonl").is_file()):
        return None
    before, after = load_generations(run_dir / "eval_before.jsonl"), load_generations(run_dir / "eval_after.jsonl")
    if [(g.id, g.sample) for g in before] != [(g.id, g.sample) for g in after]:
        return None
    return compare_generations(before, after, resamples)  # K samples of a prompt are resampled together


def clean_prompt(prompt: str) -> str:
    """The prompt without chat-template markup (<|im_start|>user ...), for display."""
    text = re.sub(r"<\|[^|>]*\|>|</?s>", " ", prompt)
    text = re.sub(r"^\s*(system|user|assistant)\s*$", "", text, flags=re.M)
    return text.strip()


def _short(text: str, limit: int = 160) -> Cell:
    flat = " ".join(text.split())
    return Cell(flat if len(flat) <= limit else flat[:limit - 1] + "…", text if len(flat) > limit else None)


def _fmt(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def _selected_policy(run_dir: Path) -> dict:
    """final/selected.json: which policy final/ holds ({} for runs before it was written)."""
    path = run_dir / "final" / "selected.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _results_table(before: dict, after: dict, differences: list[Difference] | None,
                   last: dict | None = None) -> tuple[list, list]:
    """metric | before | after | change | CI | p, and the last policy's score when final/ is the best one."""
    by_name = {d.metric: d for d in differences or []}
    names = ordered_names(k for k in after if k in before and isinstance(after[k], (int, float))
                          and k != "num_samples")
    headers = ["metric", "before", "after", "change", "95 % CI", "p"] + (["last policy"] if last else [])
    rows = []
    for name in names:
        d = by_name.get(name)
        arrow = "↓ better" if name in LOWER_IS_BETTER else ""
        change = after[name] - before[name]
        star = "**" if d is not None and significant(d) else ""
        rows.append([Cell(f"{name} {arrow}".strip()), Cell(_fmt(before[name])), Cell(_fmt(after[name])),
                     Cell(f"{star}{change:+.4f}{star}"),
                     Cell(f"[{d.ci_low:+.4f}, {d.ci_high:+.4f}]" if d else "–"),
                     Cell(f"{d.p_value:.3f}" if d else "–")]
                    + ([Cell(_fmt(last[name]) if name in last else "–")] if last else []))
    return headers, rows


def _samples_table(run_dir: Path, limit: int) -> tuple[list, list] | None:
    after = load_generations(run_dir / "eval_after.jsonl") if (run_dir / "eval_after.jsonl").is_file() else []
    before = load_generations(run_dir / "eval_before.jsonl") if (run_dir / "eval_before.jsonl").is_file() else []
    main = after or before
    if not main or limit == 0:
        return None
    before_by = {(g.id, g.sample): g for g in before}
    rows = []
    for g in [g for g in main if g.sample == 0][:limit]:
        b = before_by.get((g.id, g.sample)) if after else g
        row = [_short(clean_prompt(g.prompt)), _short((g.references or [""])[0], 200)]
        row.append(_short(b.completion, 200) if b else Cell("–"))
        if after:
            row.append(_short(g.completion, 200))
        rows.append(row)
    return ["prompt", "reference", "before", "after"][:len(rows[0])], rows


def reward_components(config) -> list:
    """The checked reward components (rewards.spec.ComponentSpec) of a run's TrainConfig: a component written
    `{type: bleu}` or `{function: f.py:g}` has no `name` key, and its name defaults as in training."""
    from llm_pg.rewards.spec import check_reward_config

    return check_reward_config(config.reward)


def load_run_config(run_dir: Path):
    """The run's saved config.yaml, read and checked as `--config` reads it; a damaged one is one ReportError."""
    from llm_pg.config.schema import load_config
    from llm_pg.errors import ConfigError

    path = run_dir / "config.yaml"
    try:
        return load_config(path)
    except ConfigError as e:
        raise ReportError(f"report: {path} is damaged ({e}); restore it (config_history.jsonl holds every config "
                          "the run started with)") from None


@dataclass
class _RunRecords:
    """What a report reads from a run folder, read once."""
    run_dir: Path
    config: object  # the run's TrainConfig
    rows: list[dict]  # metrics.jsonl
    before: dict  # eval_before.json scores ({} when not measured)
    after: dict
    plot_dir: Path

    @property
    def train_rows(self) -> list[dict]:
        return [r for r in self.rows if "reward/mean" in r]

    @property
    def final_step(self) -> int:
        return max((r["step"] for r in self.rows), default=0)


def build_blocks(run_dir: Path) -> list[tuple]:
    """The report's content as blocks: ('h1'|'h2'|'p', text), ('table', headers, rows), ('img', path, alt),
    ('code', text)."""
    plot_dir = run_dir / PLOTS_DIR
    plot_dir.mkdir(exist_ok=True)
    for old in plot_dir.glob("*.png"):  # a rebuilt report shows only the plots of the current files
        old.unlink()
    run = _RunRecords(run_dir, load_run_config(run_dir), _read_metrics(run_dir / "metrics.jsonl"),
                      _eval_scores(run_dir, "eval_before"), _eval_scores(run_dir, "eval_after"), plot_dir)
    config, a = run.config, run.config.algorithm
    blocks: list[tuple] = [("h1", f"Training report: {run_dir.resolve().name}"), ("p", (
        f"Policy `{config.model.name_or_path}` trained with {a.name} "
        f"(baseline `{a.baseline}`) for {run.final_step} steps of {config.training.prompts_per_step} "
        f"prompts × {config.generation.num_samples} samples; reward: "
        + ", ".join(f"{c.weight} × {c.name}" for c in reward_components(config)) + "."))]
    blocks += _heldout_blocks(run) + _curve_blocks(run) + _validation_blocks(run)
    samples = _samples_table(run_dir, config.evaluation.report_samples)
    if samples:
        blocks += [("h2", "Samples from the test split"), ("table", *samples)]
    blocks += [("h2", "Configuration"), ("code", (run_dir / "config.yaml").read_text())]
    return blocks


def _heldout_blocks(run: _RunRecords) -> list[tuple]:
    """The test split before and after training, with the selected policy and the changes' intervals."""
    from llm_pg.reporting import plots
    run_dir, before, after, e = run.run_dir, run.before, run.after, run.config.evaluation
    blocks: list[tuple] = [("h2", "Held-out test split: before and after training")]
    differences = compare_runs(run_dir, e.bootstrap_resamples) if before and after else None
    last, selected = _eval_scores(run_dir, "eval_last"), _selected_policy(run_dir)
    if selected.get("policy") == "best":
        blocks.append(("p", f"*After* is the policy that validation chose (`evaluation.final_policy: best`): "
                            f"step {selected['step']} of {selected['last_step']}, validation {selected['metric']} = "
                            f"{selected['value']:.4f}; `final/` holds it. " + (
                                "The last step's policy is that best one." if selected["step"] == selected["last_step"]
                                else f"The *last policy* column scores step {selected['last_step']}'s policy the "
                                     "same way (`eval_last.json`).")))
    if before and after:
        decoding = "sampled" if e.do_sample else "greedy"
        blocks.append(("p", f"{after['num_samples']} completions ({decoding}) of the test split. Change = after − "
                            f"before; 95 % interval: paired bootstrap over prompts ({e.bootstrap_resamples} "
                            "resamples); p: paired randomization test over prompts (exact for few prompts); **bold** "
                            "when p < 0.05 and the interval excludes 0. Perplexity is per token under the "
                            "reference model (`evaluation.reference_model`)."))
        warning = too_few(_num_prompts(run_dir, after))
        if warning:
            blocks.append(("p", f"⚠️ **Too few test prompts**: {warning}."))
        blocks.append(("table", *_results_table(before, after, differences, last)))
        blocks.append(("p", f"BLEU: `{after.get('bleu_signature', '')}`; chrF: `{after.get('chrf_signature', '')}`"
                            " (scores divided by 100)."))
        if differences and (path := plots.plot_changes(differences, LOWER_IS_BETTER, run.plot_dir / "changes.png")):
            blocks.append(("img", path, "change of each metric with its confidence interval"))
    else:
        blocks.append(("p", "Not measured: set `evaluation.before_training: true` and `evaluation.after_training: "
                            "true` to compare the policy before and after training on the test split."))
    return blocks


def _curve_blocks(run: _RunRecords) -> list[tuple]:
    """The training curves: reward, held-out metrics, KL, entropy, value loss, explained variance, length."""
    from llm_pg.reporting import plots
    train_rows, plot_dir, config = run.train_rows, run.plot_dir, run.config
    blocks: list[tuple] = [("h2", "Training curves")]
    metric = config.evaluation.metric
    components = {f"reward/{c.name}": c.name for c in reward_components(config)}
    figures = [
        plots.plot_lines(train_rows, {"reward/mean": "reward (weighted sum)",
                                      **(components if len(components) > 1 else {})},
                         "Training reward", "reward", plot_dir / "reward.png", band=("reward/mean", "reward/std")),
        plots.plot_heldout(run.rows, list(dict.fromkeys([metric, "reward", "rougeL", "bleu", "chrf"])), run.before,
                           run.after, run.final_step, plot_dir / "heldout.png"),
        plots.plot_lines(train_rows, {"policy/kl": "KL(π ‖ π_ref)"}, "KL to the reference policy", "nats / sequence",
                         plot_dir / "kl.png"),
        plots.plot_lines(train_rows, {"policy/entropy": "entropy"}, "Policy entropy",
                         "nats (per algorithm.loss_reduction)", plot_dir / "entropy.png"),
        plots.plot_lines(train_rows, {"loss/value": "value loss"}, "Value loss", "loss", plot_dir / "value_loss.png"),
        plots.plot_lines(train_rows, {"value/explained_variance": "explained variance"}, "Value head: explained "
                         "variance", "1 − Var(G − V) / Var(G)", plot_dir / "explained_variance.png"),
        plots.plot_lines(train_rows, {"completion/length": "tokens"}, "Completion length", "tokens",
                         plot_dir / "length.png"),
    ]
    return blocks + [("img", path, path.stem.replace("_", " ")) for path in figures if path is not None]


def _validation_blocks(run: _RunRecords) -> list[tuple]:
    """Validation during training: the best policy kept in best/ and a reward-hacking warning."""
    run_dir, e = run.run_dir, run.config.evaluation
    blocks: list[tuple] = []
    history = _evaluator_state(run_dir)
    best_file = run_dir / "best" / "best.json"
    if best_file.is_file() or history.get("hacking_warned"):
        blocks.append(("h2", "Validation during training"))
    if best_file.is_file():
        best = json.loads(best_file.read_text())
        blocks.append(("p", f"Best validation {best['metric']} = {best['value']:.4f} at step {best['step']}; "
                            "that policy is in `best/`."))
    if history.get("hacking_warned"):
        watched = history.get("hacking_metric", e.metric)
        blocks.append(("p", "⚠️ **Possible reward hacking**: the training reward rose while the validation "
                            f"{watched} fell for {e.hacking_patience} evaluations in a row. Read the samples."))
    return blocks


def _md_cell(cell: Cell) -> str:
    return cell.text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[tuple], run_dir: Path) -> str:
    out = []
    for kind, *parts in blocks:
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + parts[0])
        elif kind == "p":
            out.append(parts[0])
        elif kind == "table":
            headers, rows = parts
            out.append("\n".join(["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
                                 + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]))
        elif kind == "img":
            out.append(f"![{parts[1]}]({parts[0].relative_to(run_dir).as_posix()})")
        elif kind == "code":
            out.append(f"```yaml\n{parts[0].rstrip()}\n```")
    return "\n\n".join(out) + "\n"


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}h1{border-bottom:2px solid #1f77b4;padding-bottom:.2em}h2{margin-top:1.6em;color:#1f4e79}
table{border-collapse:collapse;margin:1em 0;font-size:.92em}th,td{border:1px solid #ddd;padding:.35em .6em;
vertical-align:top;text-align:left}th{background:#f3f6fa}tr:nth-child(even){background:#fafafa}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(480px,1fr));gap:.8em}.plots img{width:100%;
border:1px solid #eee}code{background:#f3f3f3;padding:0 .2em}pre{background:#f6f8fa;padding:1em;overflow:auto;
font-size:.85em}details summary{cursor:pointer}"""


def _inline(text: str) -> str:
    """Markdown's **bold** and `code` in an escaped paragraph."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _html_cell(cell: Cell) -> str:
    if cell.full is None:
        return _inline(cell.text)
    return f"<details><summary>{html.escape(cell.text)}</summary><pre>{html.escape(cell.full)}</pre></details>"


def render_html(blocks: list[tuple], title: str) -> str:
    out, images = [], []

    def flush():
        if images:
            out.append('<div class="plots">' + "".join(images) + "</div>")
            images.clear()

    for kind, *parts in blocks:
        if kind == "img":
            data = base64.b64encode(parts[0].read_bytes()).decode()
            images.append(f'<img src="data:image/png;base64,{data}" alt="{html.escape(parts[1])}">')
            continue
        flush()
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{_inline(parts[0])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline(parts[0])}</p>")
        elif kind == "table":
            headers, rows = parts
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in row) + "</tr>"
                                 for row in rows) + "</table>")
        elif kind == "code":
            out.append(f"<details><summary>config.yaml</summary><pre>{html.escape(parts[0])}</pre></details>")
    flush()
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(out) + "\n</body></html>\n")


def write_run_report(run_dir: str | Path) -> dict[str, Path]:
    """Write <run>/report.md, <run>/report.html and <run>/plots/*.png; returns their paths."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ReportError(f"{run_dir} is not a run folder (no config.yaml); give the training.output_dir of a run")
    kind = run_kind(run_dir)  # never over another command's report.md, nor a folder that merely holds a config.yaml
    if kind != "train":
        raise ReportError(f"{run_dir} holds {KINDS[kind] if kind else 'no llm-pg train run (no marker, no log)'}; "
                          "`llm-pg report` rebuilds the report of a train run: give the training.output_dir of one")
    blocks = build_blocks(run_dir)
    md, page = run_dir / "report.md", run_dir / "report.html"
    md.write_text(render_markdown(blocks, run_dir), encoding="utf-8")
    page.write_text(render_html(blocks, blocks[0][1]), encoding="utf-8")
    return {"markdown": md, "html": page, "plots": sorted((run_dir / PLOTS_DIR).glob("*.png"))}


write_report = write_run_report  # its name until 0.1 (three functions were called write_report); goes next release
