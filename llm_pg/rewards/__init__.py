"""Rewards: score a batch of completions, `reward(prompts, completions, references, **columns) -> list[float]`.

Modules: spec (the config's component types and options, checked without loading anything), metrics (BLEU,
chrF/chrF++, ROUGE-1/2/L/Lsum), classifier, embedding, custom (callables, evaluate modules), shaping (length and
repetition penalties, running normalization), token_credit (exact per-token credit), model (RewardModel: the
weighted mix). `REWARDS` holds the reference metrics with their default options, ready to call.
"""

from llm_pg.rewards.custom import load_callable
from llm_pg.rewards.metrics import METRIC_TYPES, build_metric
from llm_pg.rewards.model import RewardBatch, RewardError, RewardModel
from llm_pg.rewards.spec import OPTIONS, TYPES, check_reward_config

REWARDS = {name: build_metric(name) for name in METRIC_TYPES}


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


__all__ = ["REWARDS", "OPTIONS", "TYPES", "RewardBatch", "RewardError", "RewardModel", "check_reward_config",
           "load_callable", "reward_inputs"]
