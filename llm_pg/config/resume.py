"""`--resume` with a config: continue the same run, or refuse in one line.

The config a run started with is kept in <run>/config_history.jsonl (one line per start or resume: the time, the
step it started from and the whole config as given), so `config.yaml` always describes the run that is going on
and the history shows every config that ran. A resumed config is compared with the last one:
- keys in SAFE_TO_CHANGE (when to log, save and evaluate, how long to run, memory and device settings) are applied
  and logged;
- any other change (model, data, algorithm, K, learning rate, reward, seed, ...) cannot continue the same run: the
  resume is refused with a line naming every changed key.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import yaml

from llm_pg.config.schema import TrainConfig
from llm_pg.errors import LlmPgError

logger = logging.getLogger(__name__)
HISTORY_FILE = "config_history.jsonl"
SAFE_TO_CHANGE = {
    "training.output_dir", "sft.output_dir",  # the folder is the one being resumed, wherever it was moved to
    "training.max_steps",  # only with lr_scheduler=constant: a decaying schedule is computed from max_steps
    "training.save_every", "training.keep_checkpoints", "training.log_every", "training.report_to",
    "training.num_threads", "training.save_final_model", "training.max_bad_updates",
    "training.gradient_checkpointing", "training.gradient_accumulation_steps",  # the same update, less memory
    "evaluation.before_training", "evaluation.after_training", "evaluation.batch_size", "evaluation.eval_every",
    "evaluation.validation_samples", "evaluation.log_completions_every", "evaluation.report_samples",
    "evaluation.bootstrap_resamples", "evaluation.hacking_patience", "evaluation.stop_on_hacking",
    "kl.reference_device", "hub.push", "hub.repo_id", "hub.private", "hub.revision", "hub.folder", "hub.base_model",
    "hub.datasets",
}

# Sections that `llm-pg train` never reads (`llm-pg rm` has its own run folder, `llm-pg rlhf` its own): any change
# to them, including their appearance in a run saved before they existed, continues the run.
NOT_READ_BY_TRAIN = ("rm.", "rlhf.")


class ResumeConfigError(LlmPgError):
    """A resumed config that cannot continue the run in the folder."""


def flatten(values: dict, prefix: str = "") -> dict:
    """{'training': {'max_steps': 3}} -> {'training.max_steps': 3} (reward components stay one value)."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and key != "components":
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_keys(old: dict, new: dict) -> dict[str, tuple]:
    """Dotted key -> (old, new) for every key whose value differs."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def saved_config(run_dir: Path) -> dict | None:
    """The config the run last ran with: the history's last entry, else config.yaml (runs from older versions)."""
    history = run_dir / HISTORY_FILE
    if history.is_file():
        for line in reversed(history.read_text(encoding="utf-8").splitlines()):
            try:
                return json.loads(line)["config"]
            except (ValueError, KeyError, TypeError):
                continue  # a torn line from a kill: the one before it
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        values = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        values = None
    if not isinstance(values, dict):
        raise ResumeConfigError(f"--resume: {path} is damaged, so the resumed config cannot be checked against the "
                                "run's; restore it from a backup, or start a new run with --overwrite or another "
                                "training.output_dir")
    return values


def check_resume(config: TrainConfig, run_dir: Path, checkpoint_step: int) -> dict[str, tuple]:
    """Refuse changes that cannot continue the run; return (and log) the safe ones, which then apply."""
    old = saved_config(run_dir)
    if old is None:
        return {}
    changes = changed_keys(old, config.to_dict())
    unsafe = {k: v for k, v in changes.items() if (k not in SAFE_TO_CHANGE and not k.startswith(NOT_READ_BY_TRAIN))
              or (k == "training.max_steps" and config.training.lr_scheduler != "constant")}
    if unsafe:
        listed = ", ".join(f"{k} ({_short(a)} -> {_short(b)})" for k, (a, b) in unsafe.items())
        raise ResumeConfigError(f"--resume: these settings differ from the run in {run_dir} and cannot continue it: "
                                f"{listed}; resume with the run's own settings ({run_dir / 'config.yaml'}), or start "
                                "a new run with --overwrite or another training.output_dir")
    if config.training.max_steps < checkpoint_step:
        raise ResumeConfigError(f"training.max_steps: {config.training.max_steps} is below the step the run is resumed "
                                f"from ({checkpoint_step}); set training.max_steps >= {checkpoint_step}")
    for key, (a, b) in changes.items():
        logger.info("--resume: %s changed from %s to %s", key, _short(a), _short(b))
    return changes


def record_start(config: TrainConfig, run_dir: Path, start_step: int) -> None:
    """Append this start's config to the history (before training, so a run that dies is listed too)."""
    entry = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "start_step": start_step,
             "config": config.to_dict()}
    path = run_dir / HISTORY_FILE
    torn = path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
    with open(path, "a", encoding="utf-8") as f:
        f.write(("\n" if torn else "") + json.dumps(entry) + "\n")  # after a torn line, on a line of its own
