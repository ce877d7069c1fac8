"""Whole-config checks, above the stages whose tables they read (each allowed value is named where it is used).

    validate.py  validate(config): every section's values and their combinations, one ConfigError line naming
                 the field and the fix; check_pipeline for `llm-pg rlhf`, check_dpo for `llm-pg dpo`
    numbers.py   validate_numbers(config): each number finite and in its range (run first: NaN passes `x <= 0`)
    limits.py    validate_limits(config, specs): settings that load but cannot work; training_warnings
    reward_model.py  check_rm_config(config.rm): the rm section's own checks (`llm-pg rm`, the pipeline's stages)

config/schema.load_config calls validate() late (the one upward import of the package: the checks read the
algorithms', rewards' and models' own tables, which import the config schema). Hands on the checked TrainConfig.
"""

from llm_pg.checks.validate import check_dpo, check_pipeline, validate  # noqa: F401
