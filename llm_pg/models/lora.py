"""LoRA through peft: train low-rank adapters on a frozen policy (Hu et al. 2021, https://arxiv.org/abs/2106.09685).

Each targeted linear layer computes W x + (alpha / r) B A x; W stays frozen, only A (r x d_in) and B (d_out x r)
train, and B starts at zero, so the first policy is exactly the loaded model. The policy becomes a peft
`PeftModelForCausalLM`, which generates, scores and back-propagates like the model it wraps, so the rollout and
update stages do not change. What changes:
  - the KL reference is the same model with its adapters disabled (`llm_pg.rollout.reference`): no second copy in memory;
  - `save_pretrained` writes the adapter only (adapter_model.safetensors + adapter_config.json); a checkpoint is
    resumed as the configured base model plus that adapter; final/ can instead hold the merged model.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import warnings
from pathlib import Path

from torch import nn

from llm_pg.config.schema import LoRAConfig, ModelConfig
from llm_pg.errors import ConfigError, ModelLoadError
from llm_pg.models.policy import load_policy
from llm_pg.models.value_head import attach_value_head, value_head_of

logger = logging.getLogger(__name__)
ADAPTER_CONFIG = "adapter_config.json"


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError('model.lora.r > 0 needs peft: pip install "llm_pg[lora]" (or pip install peft)') from None
    return peft


def is_adapter_folder(path: str | Path) -> bool:
    """Whether a saved-model folder holds a LoRA adapter (and not a full model)."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def is_lora(model: nn.Module) -> bool:
    """Whether the policy (looking through a DDP wrapper) is a peft model."""
    peft = sys.modules.get("peft")  # a model cannot be a PeftModel unless peft was imported
    return peft is not None and isinstance(getattr(model, "module", model), peft.PeftModel)


def add_lora(model: nn.Module, config: LoRAConfig) -> nn.Module:
    """The model wrapped with fresh adapters; only the adapters require grad."""
    peft = _peft()
    spec = peft.LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                           target_modules=config.target_modules, task_type="CAUSAL_LM")
    try:
        with warnings.catch_warnings():  # peft probes transformers' deprecated `is_gradient_checkpointing`
            warnings.simplefilter("ignore", FutureWarning)
            return peft.get_peft_model(model, spec)
    except ValueError as e:  # e.g. no layer of that name
        raise ConfigError(f"model.lora.target_modules: {_first_line(e)}") from None


def load_adapter(model: nn.Module, folder: str | Path, trainable: bool = False) -> nn.Module:
    """The model wrapped with the adapter saved in `folder` (trainable: its weights require grad)."""
    peft = _peft()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return peft.PeftModel.from_pretrained(model, str(folder), is_trainable=trainable)
    except (OSError, ValueError, RuntimeError, KeyError) as e:  # no adapter there, or shapes of another base model
        raise ModelLoadError(f"{folder}: cannot load its LoRA adapter onto model.name_or_path: {_first_line(e)}") \
            from None


def load_trainable_policy(config: ModelConfig, saved: Path | None = None) -> nn.Module:
    """The policy to train: the configured model (with fresh adapters when model.lora.r > 0), or, resuming, the
    policy saved in `saved` (a full model, or the configured base model plus the adapter saved there)."""
    if saved is not None and is_adapter_folder(saved) != (config.lora.r > 0):
        holds = "a LoRA adapter" if is_adapter_folder(saved) else "a full model"
        raise ConfigError(f"model.lora.r: the checkpoint {saved} holds {holds}; resume with the run's own model.lora "
                          "settings (its config.yaml)")
    if config.lora.r == 0:
        return load_policy(config if saved is None else dataclasses.replace(config, name_or_path=str(saved),
                                                                             gguf_file=None))
    base = load_policy(config)
    return add_lora(base, config.lora) if saved is None else load_adapter(base, saved, trainable=True)


def load_saved_policy(config: ModelConfig, path: str) -> nn.Module:
    """A saved policy to evaluate: a model folder or Hub id, or an adapter folder on the configured base model."""
    if is_adapter_folder(path):
        return load_adapter(load_policy(config), path)
    return load_policy(config if path == config.name_or_path else dataclasses.replace(config, name_or_path=path,
                                                                                      gguf_file=None))


def save_weights(model: nn.Module, folder: Path, state_dict: dict | None = None) -> None:
    """model.save_pretrained in safetensors; for a LoRA policy that is the adapter alone.  `state_dict`: the whole
    weights when the model's own are sharded (distributed.full_state_dict)."""
    model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
    if is_lora(model):  # peft's placeholder model card; `llm-pg push` writes the real one
        (folder / "README.md").unlink(missing_ok=True)


def merge_lora(policy: nn.Module) -> nn.Module:
    """The plain transformers model with W <- W + (alpha / r) B A in every adapted layer, its value head kept.

    peft's merge_and_unload works in place (no second copy of the model in memory), so `policy` is spent: call
    this on its last use only.
    """
    head = value_head_of(policy)
    merged = getattr(policy, "module", policy).merge_and_unload()
    if head is not None:
        attach_value_head(merged, head.detach_trunk).load_state_dict(head.state_dict())
    return merged


def adapter_dropouts(model: nn.Module) -> list[nn.Module]:
    """The adapters' dropout layers (peft keeps them in `lora_dropout` dicts; an Identity when dropout is 0)."""
    return [m for name, m in model.named_modules() if isinstance(m, nn.Dropout) and ".lora_dropout." in name]


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
