"""Run bookkeeping: thread count, the resolved config, metrics to metrics.jsonl and Accelerate trackers, and the
table of training completions (completions.jsonl)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
import yaml

logger = logging.getLogger(__name__)


def set_threads(num_threads: int, num_processes: int) -> int:
    """Threads per process: oversubscribed cores make small models many times slower."""
    n = num_threads or max(1, (os.cpu_count() or 1) // num_processes)
    torch.set_num_threads(n)
    return n


def fused_adam(device: torch.device) -> bool:
    """AdamW's fused kernel where torch has one: one pass over all weights instead of a Python loop per tensor
    (a 135M model's step: 0.05 s, docs/benchmarks.md, instead of 0.26 s for the per-tensor loop)."""
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    return device.type == "cuda" or (device.type == "cpu" and (major, minor) >= (2, 4))  # CPU kernel: torch 2.4


def save_config(config, path: Path) -> None:
    """The resolved config, the one source of truth for the run; `--config` can read it back."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    os.replace(tmp, path)


def read_metrics_lines(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl; a line that a kill or power loss cut off (or any line that is not a JSON
    object with a step) is dropped with a warning, since the step it describes runs again from the checkpoint."""
    rows, dropped = [], 0
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
        elif line.strip():
            dropped += 1
    if dropped:
        logger.warning("%s: dropped %d damaged line(s) (a write cut off by a kill or power loss)", path, dropped)
    return rows


class MetricsLogger:
    """Appends one JSON line per logged step (main process only) and forwards to the configured trackers."""

    def __init__(self, path: Path, accelerator, config, start_step: int = 0):
        """On resume (start_step > 0) lines logged after the checkpoint are dropped: those steps run again."""
        self.accelerator, self.file = accelerator, None
        if accelerator.is_main_process:
            kept = []
            if start_step and path.exists():
                kept = [json.dumps(row) for row in read_metrics_lines(path) if row["step"] <= start_step]
            elif path.exists():
                path.unlink()  # a fresh run in an old folder starts a fresh log
            tmp = path.with_suffix(".tmp")  # the repaired log replaces the old one whole, or not at all
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)
            self.file = open(path, "a", encoding="utf-8")
        if config.training.report_to:
            flat = {f"{section}.{k}": (v if isinstance(v, (int, float, str, bool)) else str(v))
                    for section, values in config.to_dict().items() for k, v in values.items()}
            accelerator.init_trackers("llm_pg", config=flat)

    def log(self, step: int, metrics: dict, every: int = 1) -> dict:
        metrics = {k: float(v) for k, v in metrics.items()}
        if self.file is not None and (step % every == 0 or step == 1):
            self.file.write(json.dumps({"step": step, **metrics}) + "\n")
            self.file.flush()
            self.accelerator.log(metrics, step=step)
        return metrics

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


COMPLETIONS_FILE = "completions.jsonl"


def log_table(accelerator, name: str, columns: list[str], rows: list[list], step: int) -> None:
    """A table to every tracker: W&B as a wandb.Table, TensorBoard as a markdown table in its Text tab."""
    for tracker in accelerator.trackers:
        if hasattr(tracker, "log_table"):
            tracker.log_table(name, columns=columns, data=rows, step=step)
        elif tracker.name == "tensorboard":
            cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
            tracker.tracker.add_text(name, "\n".join(lines), global_step=step)
            tracker.tracker.flush()


class CompletionsLog:
    """Every `every` steps, that step's sampled completions (prompt, completion, references, reward) to
    <run_dir>/completions.jsonl and the trackers; this process's rows, written by the main process."""

    def __init__(self, run_dir: Path, accelerator, every: int, start_step: int = 0):
        """On resume (start_step > 0) the lines of later steps are dropped: those steps run again."""
        self.path, self.accelerator, self.every = Path(run_dir) / COMPLETIONS_FILE, accelerator, every
        if accelerator.is_main_process:
            kept = []
            if start_step and self.path.exists():  # a torn last line (a kill mid-write) is dropped
                kept = [row for row in read_metrics_lines(self.path) if row["step"] <= start_step]
            self.path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept),
                                 encoding="utf-8")

    def add(self, step: int, rows: list[dict]) -> None:
        if step % self.every or not self.accelerator.is_main_process:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({"step": step, **row}, ensure_ascii=False) + "\n")
        log_table(self.accelerator, "completions", ["prompt", "completion", "reward"],
                  [[r["prompt"], r["completion"], r["reward"]] for r in rows], step)
