"""The reference policy pi_ref: the frozen starting policy that the KL penalty (and perplexity) is measured against.

It is one of
  - a frozen copy of the starting model, on the policy's device or on kl.reference_device (e.g. the CPU, which frees
    the accelerator of a second model at the cost of a slower reference pass); or
  - with LoRA, the policy itself with its adapters disabled: W x instead of W x + (alpha / r) B A x is exactly the
    starting model, and no second model is held.
Either way `Reference.logprobs` takes and returns tensors on the caller's device.

Shapes: N sequences, P prompt tokens, T completion tokens.
"""

from __future__ import annotations

import copy
import logging
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from llm_pg.config.schema import TrainConfig
from llm_pg.errors import ConfigError
from llm_pg.models.lora import is_lora
from llm_pg.models.policy import load_policy
from llm_pg.rollout.sampling import completion_logprobs

logger = logging.getLogger(__name__)


@dataclass
class Reference:
    """pi_ref: a frozen model (adapters_off False), or the LoRA policy scored with its adapters disabled."""

    model: nn.Module
    adapters_off: bool = False
    logits_chunk_tokens: int = 0  # training.logits_chunk_tokens: > 0 scores without the (N, T, V) logits

    @torch.no_grad()
    def logprobs(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, completion_ids: torch.Tensor,
                 completion_mask: torch.Tensor, temperature: float = 1.0, group_size: int = 1) -> torch.Tensor:
        """log pi_ref(a_t|s_t) (N, T), 0 where masked, on completion_ids' device (the model runs on its own)."""
        device = next(self.model.parameters()).device
        inputs = [t.to(device) for t in (prompt_ids, prompt_mask, completion_ids, completion_mask)]  # (N, P), (N, T)
        with self.model.disable_adapter() if self.adapters_off else nullcontext():
            logprobs, _ = completion_logprobs(self.model, *inputs, temperature=temperature, group_size=group_size,
                                              logits_chunk_tokens=self.logits_chunk_tokens)
        return logprobs.to(completion_ids.device)


def as_reference(model: nn.Module | Reference) -> Reference:
    """A Reference as is; a plain model as a frozen reference."""
    return model if isinstance(model, Reference) else Reference(model)


def load_reference(config: TrainConfig, policy: nn.Module, resumed: bool, device: torch.device) -> Reference:
    """The KL reference of a run: the starting policy (reloaded from config.model when `resumed`, since the policy
    has moved), on kl.reference_device; or the LoRA policy with its adapters off."""
    if is_lora(policy):
        if config.kl.reference_device != "same":
            logger.warning("kl.reference_device=%s is unused with LoRA: the reference is the policy with its adapters "
                           "off, not a second model", config.kl.reference_device)
        return Reference(policy, adapters_off=True, logits_chunk_tokens=config.training.logits_chunk_tokens)
    model = (load_policy(config.model) if resumed else copy.deepcopy(policy)).eval().requires_grad_(False)
    place = device if config.kl.reference_device == "same" else torch.device(config.kl.reference_device)
    try:
        model.to(place)
    except (RuntimeError, AssertionError) as e:  # e.g. cuda:1 on a machine with one GPU, or torch without CUDA
        raise ConfigError(f"kl.reference_device: cannot place the reference model on {place}: "
                          f"{str(e).strip().splitlines()[0]}") from None
    return Reference(model, logits_chunk_tokens=config.training.logits_chunk_tokens)
