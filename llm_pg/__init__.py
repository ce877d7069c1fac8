"""llm_pg: fine-tune small Hugging Face causal LMs with policy-gradient RL (REINFORCE with classic baselines).

Public API: `load_config`, `TrainConfig`, `train`, `train_reward_model`, `train_dpo`, `run_pipeline`,
`evaluate_examples`, `corpus_scores`.
They are imported lazily so that `llm-pg --help` and config errors answer without loading torch.

The package, ground first (each folder's __init__ says what it holds and what it hands on):
    algorithms/, config/   pure math and pure data
    data/, models/, rollout/, rewards/, runs/   the stages' inputs and the run folder
    evaluation/, reporting/   held-out scores, reports, the Hub
    training/   the RL loop (rollout -> rewards -> advantages -> loss -> update), SFT, reward-model training, DPO
    pipelines/   `llm-pg rlhf`
    checks/ (whole-config checks), cli.py, errors.py
"""

import importlib.abc
import importlib.util
import sys
import types
import warnings
from importlib import import_module

__version__ = "0.1.0"
_API = {"TrainConfig": "llm_pg.config.schema", "load_config": "llm_pg.config.schema", "train": "llm_pg.training.rl",
        "train_sft": "llm_pg.training.sft", "train_reward_model": "llm_pg.training.reward_model",
        "train_dpo": "llm_pg.training.dpo",
        "run_pipeline": "llm_pg.pipelines.rlhf", "evaluate_examples": "llm_pg.evaluation.heldout",
        "corpus_scores": "llm_pg.evaluation.heldout"}
__all__ = list(_API)

# Modules of llm_pg 0.1's flat layout -> where they live now. `import llm_pg.training.rl` (and `from llm_pg.training.rl
# import train`) still works, with a DeprecationWarning, until the next release; new code imports the new path.
MOVED = {
    "advantages": "algorithms.advantages", "losses": "algorithms.losses", "kl_control": "algorithms.kl",
    "rm_loss": "algorithms.preference_loss", "config_input": "config.yaml_input", "resume_config": "config.resume",
    "rlhf_config": "config.pipeline", "config_checks": "checks.validate", "demo_data": "data.demo", "chat": "data.chat",
    "preference_data": "data.preferences", "policy": "models.policy", "lora": "models.lora",
    "value_head": "models.value_head", "memory": "models.memory", "precision": "models.precision",
    "model_calls": "models.calls", "distributed": "models.sharding", "rm_model": "models.reward_model",
    "rewards.hf": "models.locate", "rewards.model": "rewards.mix", "decoding": "rollout.decoding", "hf_decoding": "rollout.hf_decoding",
    "reference": "rollout.reference", "run_folder": "runs.folder", "checkpoint": "runs.checkpoint",
    "tracking": "runs.tracking", "trainer": "training.rl", "scoring": "training.scoring", "update": "training.update",
    "dynamic_sampling": "training.dynamic_sampling", "run_end": "training.run_end", "sft": "training.sft",
    "rm_train": "training.reward_model", "eval_metrics": "evaluation.metrics", "meaning": "evaluation.meaning",
    "bootstrap": "evaluation.bootstrap", "periodic_eval": "evaluation.periodic",
    "rm_eval": "evaluation.preference_accuracy", "evaluation_cli": "evaluation.commands", "report": "reporting.report",
    "plots": "reporting.plots", "hub": "reporting.hub", "rlhf": "pipelines.rlhf", "rlhf_data": "pipelines.rlhf_data",
    "rlhf_compare": "pipelines.rlhf_statistics", "rlhf_report": "pipelines.rlhf_evaluate",
}
# Old modules whose names went to two places: the alias looks in the first, then in the second.
SPLIT = {"resume_config": "runs.resume", "rm_model": "training.reward_model", "rm_eval": "reporting.rm_report"}
# Old modules whose name is now a package: the package hands on the old module's names (same deprecation).
MOVED_INTO_PACKAGE = {"algorithms": "algorithms.registry", "data": "data.prompts", "rollout": "rollout.sampling",
                      "evaluation": "evaluation.heldout"}


def moved_attribute(package: str, name: str):
    """`from llm_pg.<package> import <name>` of a name that the old module <package>.py held."""
    if package in MOVED_INTO_PACKAGE and not name.startswith("__"):
        module = import_module(f"llm_pg.{MOVED_INTO_PACKAGE[package]}")
        if hasattr(module, name):
            warnings.warn(f"llm_pg.{package}.{name} moved to llm_pg.{MOVED_INTO_PACKAGE[package]}.{name}; the old "
                          "path goes in the next release", DeprecationWarning, stacklevel=3)
            return getattr(module, name)
    raise AttributeError(f"module 'llm_pg.{package}' has no attribute {name!r}")


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers `import llm_pg.<old>` with a module that hands on every name of the new one."""

    def find_spec(self, fullname, path=None, target=None):
        old = fullname.removeprefix("llm_pg.")
        if fullname.startswith("llm_pg.") and old in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        new = f"llm_pg.{MOVED[spec.name.removeprefix('llm_pg.')]}"
        warnings.warn(f"{spec.name} moved to {new}; the old path goes in the next release", DeprecationWarning,
                      stacklevel=2)
        alias = types.ModuleType(spec.name, f"Moved to {new}.")
        homes = [new] + ([f"llm_pg.{SPLIT[spec.name.removeprefix('llm_pg.')]}"]
                         if spec.name.removeprefix("llm_pg.") in SPLIT else [])

        def moved_name(name):
            for home in homes:
                module = import_module(home)
                if hasattr(module, name):
                    return getattr(module, name)
            raise AttributeError(f"module {spec.name!r} (moved to {new}) has no attribute {name!r}")

        alias.__getattr__ = moved_name
        alias.__dir__ = lambda: sorted({n for home in homes for n in dir(import_module(home))})
        return alias

    def exec_module(self, module):
        pass


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())


def __getattr__(name):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'llm_pg' has no attribute {name!r}")
