"""The numbers and names of a config, each in its range (checks/validate.py calls this first: NaN passes every
`x <= 0` check): 0 or a negative value never silently means 'off'. Every check is a (failed, message) pair whose
message names the field and the fix."""

from __future__ import annotations

import dataclasses
import math
import string

from llm_pg.data.tasks import MAX_SEED, SPLIT_STRIDE, is_task_source, task_name
from llm_pg.errors import ConfigError


def raise_first(checks: list[tuple[bool, str]]) -> None:
    """A ConfigError with the message of the first check that failed."""
    for failed, message in checks:
        if failed:
            raise ConfigError(message)


def _non_finite(node, prefix: str = "") -> tuple[str, float] | None:
    """The first float field (or list element) that is NaN or infinite, as (dotted key, value)."""
    for f in dataclasses.fields(node):
        value, key = getattr(node, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            found = _non_finite(value, f"{key}.")
            if found:
                return found
        for i, v in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(v, float) and not math.isfinite(v):
                return (f"{key}[{i}]" if isinstance(value, list) else key), v
    return None


def validate_numbers(config) -> None:
    """Every number has a finite value in its range; 0 or a negative value never silently means 'off'."""
    found = _non_finite(config)
    if found:
        raise ConfigError(f"{found[0]}: must be a finite number, got {found[1]}")
    raise_first(_training_number_checks(config))
    raise_first(_data_number_checks(config.data))
    raise_first(_other_number_checks(config))
    _validate_template(config.data.prompt_template)


def _training_number_checks(config) -> list[tuple[bool, str]]:
    """(failed, message) of training's and sft's numbers and names."""
    t = config.training
    return [
        (t.log_every < 1, "training.log_every: must be >= 1 (1 = every step)"),
        (t.save_every < 0, "training.save_every: must be >= 0 (0 = only at the end)"),
        (t.keep_checkpoints < 1, "training.keep_checkpoints: must be >= 1 (how many of the newest are kept)"),
        (t.max_bad_updates < 1, "training.max_bad_updates: must be >= 1"),
        (t.logits_chunk_tokens < 0, "training.logits_chunk_tokens: must be >= 0 (0 = the whole batch's logits at "
                                    "once)"),
        (t.max_grad_norm < 0, "training.max_grad_norm: must be >= 0 (0 = no clipping)"),
        (t.weight_decay < 0, "training.weight_decay: must be >= 0"),
        (t.warmup_steps < 0, "training.warmup_steps: must be >= 0"),
        (not 0 <= t.num_threads <= 1024, "training.num_threads: must lie in [0, 1024] (0 = cores / processes)"),
        (not 0 <= t.seed < 2**32, "training.seed: must lie in [0, 2**32)"),
        (len(t.adam_betas) != 2 or not all(0 <= b < 1 for b in t.adam_betas),
         f"training.adam_betas: give two numbers in [0, 1), e.g. [0.9, 0.999], got {t.adam_betas}"),
        (not t.output_dir.strip(), "training.output_dir: must not be empty; name the run folder, e.g. runs/my_run"),
        (not config.sft.output_dir.strip(), "sft.output_dir: must not be empty; name a folder, e.g. runs/sft"),
        (t.warmup_steps > 0 and t.lr_scheduler == "constant", "training.warmup_steps: has no effect with "
         "training.lr_scheduler=constant; choose linear or cosine, or set warmup_steps to 0"),
    ]


def _data_number_checks(d) -> list[tuple[bool, str]]:
    """(failed, message) of the data section's numbers and its task source."""
    return [
        (d.max_prompt_tokens < 1, "data.max_prompt_tokens: must be >= 1 (longer prompts keep their last tokens)"),
        (any(f < 0 for f in d.split_fractions), f"data.split_fractions: fractions must be >= 0, got "
                                                f"{d.split_fractions}"),
        (len(d.task_sizes) != 3 or not all(isinstance(n, int) and 1 <= n < SPLIT_STRIDE // 10 for n in d.task_sizes),
         f"data.task_sizes: give three sizes (train, validation, test), each in [1, {SPLIT_STRIDE // 10}), got "
         f"{d.task_sizes}"),
        (not 0 <= d.task_seed < MAX_SEED, f"data.task_seed: must lie in [0, {MAX_SEED}) (every split's seeds stay "
                                          "below 2**32)"),
        (is_task_source(d.source) and not task_name(d.source).strip(),
         "data.source: name the task after 'reasoning_gym:', e.g. reasoning_gym:chain_sum"),
        (d.max_train_samples is not None and d.max_train_samples < 1, "data.max_train_samples: must be >= 1 (or "
                                                                      "null for all)"),
        (d.max_eval_samples is not None and d.max_eval_samples < 1, "data.max_eval_samples: must be >= 1 (or null "
                                                                    "for all)"),
        (d.max_prompt_field_chars is not None and d.max_prompt_field_chars < 1,
         "data.max_prompt_field_chars: must be >= 1 (or null for no cut)"),
    ]


def _other_number_checks(config) -> list[tuple[bool, str]]:
    """(failed, message) of the numbers of generation, the update's sections and evaluation."""
    g, e = config.generation, config.evaluation
    return [
        (g.top_k < 0, "generation.top_k: must be >= 0 (0 = off)"),
        (not all(g.stop_strings), "generation.stop_strings: an empty string would end every completion at once; "
                                  "remove it"),
        (not 0 <= config.algorithm.moving_average_decay <= 1, "algorithm.moving_average_decay: must lie in [0, 1]"),
        (config.critic.loss_coef < 0, "critic.loss_coef: must be >= 0"),
        (config.critic.warmup_steps < 0, "critic.warmup_steps: must be >= 0"),
        (config.ppo.target_kl < 0, "ppo.target_kl: must be >= 0 (0 = never stop early)"),
        (config.ppo.num_minibatches is not None and config.ppo.num_minibatches < 1,
         "ppo.num_minibatches: must be >= 1 (or null for the algorithm's default)"),
        (e.max_new_tokens is not None and e.max_new_tokens < 1, "evaluation.max_new_tokens: must be >= 1 (or null "
                                                                "for generation.max_new_tokens)"),
        (_missing_local_path(e.reference_model), f"evaluation.reference_model: '{e.reference_model}' not found (no "
                                                 "such folder); give a model folder or Hub id, 'start' or 'none'"),
        (e.meaning_encoder != "auto" and (e.before_training or e.after_training or e.eval_every > 0) and
         _missing_local_path(e.meaning_encoder),
         f"evaluation.meaning_encoder: '{e.meaning_encoder}' not found (no such folder); give an encoder folder, "
         "'pypi:<package>', 'auto' or 'none'"),
    ]


def _missing_local_path(name: str) -> bool:
    """A model given as a local path (./x, /x, ~/x, a/b/c) that does not exist; Hub ids are checked when loaded."""
    import os

    if name in ("start", "none") or not name:
        return False
    local = name.startswith((".", "/", "~")) or name.count("/") > 1
    return local and not os.path.exists(os.path.expanduser(name))


def _validate_template(template: str) -> None:
    """data.prompt_template is filled with str.format_map: every placeholder must name a record field."""
    literal = "write a literal brace as {{ or }}"
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise ConfigError(f"data.prompt_template: {e} in {template!r}; {literal}") from None
    for name in names:
        if name == "" or name.split(".")[0].split("[")[0].isdigit():
            raise ConfigError(f"data.prompt_template: placeholder {{{name}}} has no field name; name a record "
                              f"field, e.g. {{prompt}}, or {literal}")
        if "." in name or "[" in name:  # {prompt.upper} would insert '<built-in method upper ...>'
            raise ConfigError(f"data.prompt_template: placeholder {{{name}}} reads an attribute or an index; write "
                              f"{{field}} with a record field's name, or {literal}")
