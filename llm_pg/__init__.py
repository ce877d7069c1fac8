"""llm_pg: fine-tune small Hugging Face causal LMs with policy-gradient RL (REINFORCE with classic baselines).

Public API: `load_config`, `TrainConfig`, `train`, `train_reward_model`, `run_pipeline`, `evaluate_examples`, `corpus_scores`.
They are imported lazily so that `llm-pg --help` and config errors answer without loading torch.
"""

from importlib import import_module

__version__ = "0.1.0"
_API = {"TrainConfig": "llm_pg.config", "load_config": "llm_pg.config", "train": "llm_pg.trainer",
        "train_reward_model": "llm_pg.rm_train", "run_pipeline": "llm_pg.rlhf",
        "evaluate_examples": "llm_pg.evaluation", "corpus_scores": "llm_pg.evaluation"}
__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'llm_pg' has no attribute {name!r}")
