"""The `rlhf:` section: what only the SFT -> reward model -> RL (and DPO) pipeline (`llm-pg rlhf`,
llm_pg/pipelines/rlhf.py) needs.

Everything else comes from the sections the stages already read: model, data (rendering), generation, sft, rm
(the preference pairs and the proxy reward model), training, kl, algorithm, evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_pg.config.yaml_input import _f


@dataclass
class PipelineConfig:
    output_dir: str = _f("runs/rlhf", "Pipeline folder: data/ (prepared records and the two halves of the pairs), "
                                      "sft/, rm_proxy/, rm_gold/, rl/ (the RL run), dpo/ (with rlhf.dpo), compare/, "
                                      "comparison.json, report.md. Each stage writes its folder's DONE marker last.")
    validation_pairs: int = _f(50, "Training pairs set aside (seeded by training.seed) as validation prompts for "
                                   "periodic evaluation; no stage trains on them.")
    gold_base_model: str = _f("", "Base of the gold reward model ('' = rm.base_model): trained like the proxy "
                                  "(the rm section) on the other half of the training pairs; RL never optimizes it.")
    dpo: bool = _f(False, "Also train a DPO policy from the SFT policy (the dpo section) on the proxy reward model's "
                          "half of the pairs, the preference data RL learns through the proxy, into dpo/; the "
                          "comparison evaluates it against SFT as it evaluates RL (docs/reward_model.md).")
    compare_samples: int = _f(2, "Completions sampled per test prompt from each policy (at generation.temperature, "
                                 "max generation.max_new_tokens) for the final comparison.")
