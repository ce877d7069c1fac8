"""llm_pg's own calls into a causal LM's forward, written for every transformers version and model class.

transformers 5.x renamed the KV-cache argument and output field `past_key_values` to `cache`: the old argument
raises a FutureWarning and goes away in 5.40. Older releases, and remote-code models, know only `past_key_values`.
So the argument name (and whether `logits_to_keep` exists) is read from the forward signature of the transformers
model inside any DDP / peft wrapper, once per class: the wrappers' own forwards take **kwargs and pass them on.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

from llm_pg.models.memory import transformers_model


@functools.lru_cache(maxsize=None)
def forward_parameters(model_class: type) -> frozenset[str]:
    """The names `model_class.forward` declares (the deprecation decorators keep the wrapped signature)."""
    return frozenset(inspect.signature(model_class.forward).parameters)


def _parameters(model: nn.Module) -> frozenset[str]:
    return forward_parameters(type(transformers_model(model)))


def accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether the model can skip the LM head on positions we do not need."""
    return "logits_to_keep" in _parameters(model)


def cache_argument(model: nn.Module) -> str:
    """The forward's KV-cache argument: `cache` where it is declared, else the older `past_key_values`."""
    return "cache" if "cache" in _parameters(model) else "past_key_values"


def cache_kwargs(model: nn.Module, cache) -> dict:
    """{cache_argument(model): cache}, to pass as **kwargs to the model's forward."""
    return {cache_argument(model): cache}


def returned_cache(output):
    """The KV cache a forward returned: the `cache` field where the output class has one, else `past_key_values`.

    Reading `past_key_values` of an output that has `cache` would log a deprecation warning, so the field is
    chosen from the output's declared fields, not by trying both.
    """
    fields = getattr(output, "__dataclass_fields__", {})
    return getattr(output, "cache" if "cache" in fields else "past_key_values", None)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids (N, L) counted over real tokens, as generate() does: left padding does not shift them."""
    return (attention_mask.cumsum(1) - 1).clamp(min=0)
