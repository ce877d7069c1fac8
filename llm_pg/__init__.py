"""llm_pg: fine-tune small Hugging Face causal LMs with policy-gradient RL (REINFORCE with classic baselines)."""

from llm_pg.config import TrainConfig, load_config
from llm_pg.evaluation import corpus_scores, evaluate_examples
from llm_pg.trainer import train

__all__ = ["TrainConfig", "load_config", "train", "evaluate_examples", "corpus_scores"]
__version__ = "0.1.0"
