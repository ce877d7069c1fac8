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
    length_penalty: float = _f(0.0, "Coefficient c of a length term in RL's reward (0 = none): R = proxy + c * "
                                    "LengthPenalty, -c |n - T| / T with n the answer's words and T the median "
                                    "(lower) word count of the chosen answers of the proxy half's training pairs "
                                    "(rl/DONE's summary records T). The compare stage's proxy and gold scores are "
                                    "unaffected (docs/reward_model.md, 'Choosing RL settings on validation').")
    choose: dict[str, list[str]] = _f({}, "Candidate RL settings, chosen on the validation prompts ({} = RL as "
                                          "configured): {name: [dotted overrides of RL-only keys, e.g. kl.coef=0.1, "
                                          "rlhf.length_penalty=1.0]}. Each trains from the SFT policy into "
                                          "rl/candidates/<name>/; the one with the highest gold gain over SFT at "
                                          "matched length on the validation prompts (ties: the first listed) becomes "
                                          "rl/final; rl/choice.json and comparison.json say which and why.")
    frontier_steps: list[int] = _f([], "Training steps at which the RL and DPO policies are also kept (rl/policies/, "
                                       "dpo/policies/) and evaluated by the compare stage like the final ones ([] = "
                                       "final policies only): the gold gain against KL to SFT of each method, and "
                                       "RL - DPO at matched KL (comparison.json 'frontier'). Each step costs one more "
                                       "sampling of the test prompts per method; changing it redoes rl, dpo and "
                                       "compare (docs/reward_model.md, 'The frontier').")
