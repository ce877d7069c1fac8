"""The `dpo:` section: `llm-pg dpo`, direct preference optimization of the policy on preference pairs
(llm_pg/training/dpo.py; the loss: llm_pg/algorithms/preference_loss.py dpo_loss).

The pairs are read as `llm-pg rm` reads them (rm.source, rm.format, rm.*_field, rm.train_split, rm.max_train_pairs),
and each prompt is rendered and cut as SFT and RL render and cut it (data.use_chat_template, data.system_prompt,
data.max_prompt_tokens), so the policy learns on the text it will later answer. Names follow TRL's DPOConfig where
it has one.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_pg.config.yaml_input import _f


@dataclass
class DPOConfig:
    beta: float = _f(0.1, "beta: the strength of the implicit KL to the reference (the start); the implicit reward is "
                          "beta * log(pi / ref). Smaller beta lets the policy move further (TRL's beta).")
    loss_type: str = _f("sigmoid", "sigmoid (DPO, Rafailov et al. 2023), ipo (Azar et al. 2023) or hinge (SLiC) "
                                   "(TRL's loss_type; the equations: docs/reward_model.md).")
    label_smoothing: float = _f(0.0, "eps in -(1 - eps) log sigma(h) - eps log sigma(-h): the assumed share of "
                                     "flipped labels (conservative DPO); loss_type=sigmoid only, 0 <= eps < 0.5.")
    learning_rate: float = _f(1e-6, "AdamW learning rate (constant; TRL's DPOConfig default).")
    max_steps: int = _f(100, "Optimizer steps.")
    batch_size: int = _f(8, "Pairs per optimizer step and process (2x this many sequences per forward pass; TRL's "
                            "per_device_train_batch_size).")
    max_completion_length: int = _f(256, "Answers keep their first N tokens (the end-of-answer token included); "
                                         "prompts are cut as RL cuts them, to their last data.max_prompt_tokens "
                                         "(TRL's max_completion_length).")
    output_dir: str = _f("runs/llm_pg_dpo", "Run folder: config.yaml, dpo_metrics.jsonl, final/ (the policy, "
                                            "safetensors, and tokenizer).")
