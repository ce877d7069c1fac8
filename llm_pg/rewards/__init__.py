"""Rewards: score a batch of completions, `reward(prompts, completions, references, **columns) -> list[float]`.

Modules: spec (the config's component types and options, checked without loading anything), metrics (BLEU,
chrF/chrF++, ROUGE-1/2/L/Lsum), classifier, embedding, custom (callables, evaluate modules), shaping (length and
repetition penalties, running normalization), token_credit (exact per-token credit), verifier (answers checked by rule, and their
format), mix (RewardMix: the weighted mix of the components, with shaping and normalization), control (a control arm's reward: the batch's rewards as noise or permuted). `REWARDS` holds the
reference metrics with their default options, ready to call.
"""

from importlib import import_module

# Names handed on, each imported from its module on first use: checking a config (rewards.spec) must not import
# sacrebleu, rouge-score or torch, and REWARDS builds every reference metric only when someone asks for it.
_LAZY = {"load_callable": "custom", "RewardBatch": "mix", "RewardError": "mix", "RewardMix": "mix",
         "RewardModel": "mix", "OPTIONS": "spec", "TYPES": "spec", "check_reward_config": "spec"}


def __getattr__(name):
    if name == "REWARDS":  # the reference metrics with their default options, ready to call
        metrics = import_module("llm_pg.rewards.metrics")
        globals()["REWARDS"] = {n: metrics.build_metric(n) for n in metrics.METRIC_TYPES}
        return globals()["REWARDS"]
    if name in _LAZY:
        return getattr(import_module(f"llm_pg.rewards.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'llm_pg.rewards' has no attribute {name!r}")


def reward_inputs(examples, num_samples: int) -> tuple[list[str], list[list[str]], dict[str, list]]:
    """(prompts, references, columns) of N = B*K completions, each example repeated K times (prompt-major).

    columns: every other field of the records, one list of N values per field (a field missing from a record is
    None there).
    """
    prompts = [e.prompt for e in examples for _ in range(num_samples)]
    references = [e.references for e in examples for _ in range(num_samples)]
    names = sorted({k for e in examples for k in (getattr(e, "columns", None) or {})})
    columns = {k: [(e.columns or {}).get(k) for e in examples for _ in range(num_samples)] for k in names}
    return prompts, references, columns


__all__ = ["REWARDS", "OPTIONS", "TYPES", "RewardBatch", "RewardError", "RewardMix", "check_reward_config",
           "load_callable", "reward_inputs"]
