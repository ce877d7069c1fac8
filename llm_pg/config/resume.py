"""What `--resume` may change: for each kind of run (`train`, `rm`), the config keys its command reads and which
of them a resumed run can continue with (RULES), and the comparison of two configs key by key.

A resumed config is compared with the last one the run ran with, over the keys that the command reads (RULES):
- keys in its `safe` set (when to log, save and evaluate, how long to run with a constant schedule, memory and
  device settings) are applied and logged;
- any other change (model, data, algorithm, K, learning rate, KL coefficient, reward, seed, ...) cannot continue
  the same run: the optimizer state, the schedule and the data position in the checkpoint belong to the old
  values. The resume is refused with a line naming every changed key;
- the data itself: a data source whose content changed since the run started (the same path, new pairs or
  prompts) is refused the same way, since the checkpoint's data position indexes the old records.

The run folder's side (the config history, the check itself, the record of every start) is llm_pg/runs/resume.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_pg.errors import LlmPgError

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

# Sections that `llm-pg train` never reads (`llm-pg rm`, `llm-pg dpo` and `llm-pg rlhf` have their own run folders):
# any change to them, including their appearance in a run saved before they existed, continues the run.
NOT_READ_BY_TRAIN = ("rm.", "dpo.", "rlhf.")


@dataclass(frozen=True)
class ResumeRules:
    """What one kind of run reads from the config, and which of it may change when the run is resumed."""

    field: str  # the run folder's key, named in the fix
    reads: tuple[str, ...] | None  # dotted keys or prefixes ("rm.") the command reads; None: all but `ignores`
    ignores: tuple[str, ...]
    safe: frozenset[str]
    max_steps: str  # safe to change only with a constant schedule (a decaying one is computed from it)
    schedule: str
    source: str  # the data source whose content is checked


RULES = {
    "train": ResumeRules("training.output_dir", None, NOT_READ_BY_TRAIN, frozenset(SAFE_TO_CHANGE),
                         "training.max_steps", "training.lr_scheduler", "data.source"),
    # rm reads its section, its base (rm.base_model, else model.name_or_path: compared as one value, rm.base) and
    # five training keys (the shared set-up's, training/setup.py); like train, it continues in the run's precision
    "rm": ResumeRules("rm.output_dir", ("rm.", "training.seed", "training.weight_decay", "training.max_grad_norm",
                                        "training.num_threads", "training.mixed_precision"), (),
                      frozenset({"rm.output_dir", "rm.save_every", "rm.keep_checkpoints", "rm.eval_batch_size",
                                 "rm.bootstrap_resamples", "rm.max_eval_pairs", "rm.max_steps",
                                 "training.num_threads"}),
                      "rm.max_steps", "rm.lr_scheduler", "rm.source"),
}


class ResumeConfigError(LlmPgError):
    """A resumed config that cannot continue the run in the folder."""

    def __init__(self, message: str, changes: dict | None = None):
        super().__init__(message)
        self.changes = changes or {}  # dotted key -> (old, new) of what cannot continue


def flatten(values: dict, prefix: str = "") -> dict:
    """{'training': {'max_steps': 3}} -> {'training.max_steps': 3} (reward components stay one value)."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and key != "components":
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten(flat: dict) -> dict:
    """{'training.max_steps': 3} -> {'training': {'max_steps': 3}}: the inverse of flatten."""
    values: dict = {}
    for key, value in flat.items():
        *sections, last = key.split(".")
        node = values
        for part in sections:
            node = node.setdefault(part, {})
        node[last] = value
    return values


def changed_keys(old: dict, new: dict) -> dict[str, tuple]:
    """Dotted key -> (old, new) for every key whose value differs."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
