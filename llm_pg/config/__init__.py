"""The configuration: one dataclass per section, read from YAML with dotted overrides, checked in one line.

    schema.py      TrainConfig and its sections (model, data, generation, reward, ..., hub), load_config
    algorithms.py  the sections of the update: algorithm, critic, ppo (the clip ppo and grpo share), grpo, kl
    aliases.py     old key names read as their new ones (grpo.epsilon -> ppo.clip_eps, ...), kept for one release
    yaml_input.py  how YAML text and override values become typed fields
    resume.py      what --resume may change: the keys each command reads, which of them a run can continue with
    pipeline.py    the rlhf: section
    dpo.py         the dpo: section (`llm-pg dpo`)

Hands on a TrainConfig to every command. Whole-config checks that consult the stages' own tables live in
llm_pg/checks/, above the stages (load_config calls them late: the one upward import).
"""

from llm_pg.config.schema import (  # noqa: F401
                                  AlgorithmConfig,
                                  CriticConfig,
                                  DataConfig,
                                  DPOConfig,
                                  EvaluationConfig,
                                  GenerationConfig,
                                  GRPOConfig,
                                  HubConfig,
                                  KLConfig,
                                  LoRAConfig,
                                  ModelConfig,
                                  PPOConfig,
                                  RewardConfig,
                                  RewardModelConfig,
                                  SFTConfig,
                                  TrainConfig,
                                  TrainingConfig,
                                  config_from_dict,
                                  load_config,
)
