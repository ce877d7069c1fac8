"""The rm section's own checks (`llm-pg rm`, the pipeline's reward-model stages), apart from the trainer in
llm_pg/training/reward_model.py (which hands them on): `llm-pg rm` runs them before it imports the trainer."""

from __future__ import annotations

from llm_pg.config.schema import RewardModelConfig
from llm_pg.data.preferences import FORMATS
from llm_pg.errors import ConfigError

SCHEDULES = ("constant", "linear", "cosine")


def check_rm_config(cfg: RewardModelConfig) -> None:
    """One-line ConfigErrors for settings that would fail late."""
    if not cfg.source:
        raise ConfigError("rm.source: name the preference pairs (a folder of <split>.jsonl files or a .jsonl file)")
    for name in ("batch_size", "eval_batch_size", "max_length", "bootstrap_resamples"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"rm.{name}: must be >= 1, got {getattr(cfg, name)}")
    if cfg.max_steps < 0 or cfg.epochs <= 0 or cfg.learning_rate <= 0 or cfg.center_coef < 0:
        raise ConfigError("rm: max_steps >= 0, epochs > 0, learning_rate > 0 and center_coef >= 0 are required")
    if cfg.lr_scheduler not in SCHEDULES:
        raise ConfigError(f"rm.lr_scheduler: '{cfg.lr_scheduler}' is not one of {list(SCHEDULES)}")
    if cfg.warmup_steps > 0 and cfg.lr_scheduler == "constant":  # transformers' constant schedule has no warm-up
        raise ConfigError("rm.warmup_steps: has no effect with rm.lr_scheduler=constant; choose linear or cosine, or "
                          "set warmup_steps to 0")
    if cfg.format not in FORMATS:
        raise ConfigError(f"rm.format: '{cfg.format}' is not one of {list(FORMATS)}")
    if not 0 < cfg.eval_fraction < 1:
        raise ConfigError(f"rm.eval_fraction: must be in (0, 1), got {cfg.eval_fraction}")
    if cfg.length_covariate and not cfg.length_covariate_lr > 0:
        raise ConfigError(f"rm.length_covariate_lr: must be > 0, got {cfg.length_covariate_lr}")
