"""Memory options: gradient checkpointing, the modules that act differently in the update, and dtype warnings.

Gradient checkpointing (Chen et al. 2016, https://arxiv.org/abs/1604.06174) keeps only each decoder layer's input
in the forward pass and recomputes the layer in the backward pass: activation memory falls from one set per layer to
one layer's, for about one more forward pass of compute. Transformers checkpoints a layer only while that layer is in
training mode, but llm_pg keeps the policy in eval mode (no dropout: the update scores exactly the policy that
sampled). So checkpointing is switched on once, at setup, and `update_mode` puts only the checkpointed layers
themselves into training mode during the update; their submodules, where dropout lives, stay in eval mode.
Generation, the reference pass and evaluation run outside it, uncheckpointed and with their KV cache.

`release_freed_memory` hands the memory freed by a stage back to the operating system: glibc keeps freed blocks
below its mmap threshold (at most 32 MB) in its heaps, where the next stage's tensors fragment it, so a process's
resident memory grows step after step (docs/benchmarks.md measured 1.6-2.4 GB of it on the demo).
"""

from __future__ import annotations

import ctypes
import functools
import gc
import sys
from contextlib import contextmanager

from torch import nn

from llm_pg.errors import ConfigError
from llm_pg.models.lora import adapter_dropouts


def transformers_model(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP and peft wrappers."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Mark the policy's decoder layers for checkpointing (active only inside `update_mode`).

    Non-reentrant checkpointing (use_reentrant=False) back-propagates into parameters inside a layer whatever its
    inputs. The embeddings' output is also made to require grad, as transformers and peft do, so that frozen
    embeddings in front of LoRA adapters cannot silently stop the gradient (huggingface/trl#3089).
    """
    base = transformers_model(model)
    # transformers 5 renamed gradient_checkpointing_enable (now a deprecated alias) to activation_checkpointing_enable
    enable = getattr(base, "activation_checkpointing_enable", None) or base.gradient_checkpointing_enable
    try:
        enable({"use_reentrant": False})
    except ValueError:  # an architecture without checkpointable layers
        raise ConfigError(f"training.gradient_checkpointing: {type(base).__name__} does not support it; set it to "
                          "false") from None
    if not (getattr(base, "_require_grads_hooks", None) or getattr(base, "_require_grads_hook", None)):
        base.enable_input_require_grads()  # transformers < 5 adds this hook for its own PEFT integration only


def checkpointed_layers(model: nn.Module) -> list[nn.Module]:
    """The modules marked for checkpointing (read from their own attributes: peft wrappers forward getattr)."""
    return [m for m in getattr(model, "module", model).modules() if vars(m).get("gradient_checkpointing") is True]


def checkpointing_active(model: nn.Module) -> bool:
    """Whether a forward pass now would checkpoint (and so drop any KV cache it is given)."""
    return any(m.training for m in checkpointed_layers(model))


@contextmanager
def update_mode(model: nn.Module, dropout: bool = True):
    """Inside the block, training mode for the checkpointed decoder layers and (with `dropout`) the LoRA adapters'
    dropout only; the rest of the policy stays in eval mode. dropout=False: the update's forward passes without
    their randomness, for log pi_old (training/update.py exact_old_logprobs)."""
    modules = checkpointed_layers(model) + (adapter_dropouts(getattr(model, "module", model)) if dropout else [])
    before = [m.training for m in modules]
    for m in modules:
        m.training = True  # the flag alone, not train(): the layers' own submodules keep their dropout off
    try:
        yield
    finally:
        for m, training in zip(modules, before):
            m.training = training




@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's malloc_trim, or None (not Linux, or another C library: musl has none)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_freed_memory(collect: bool = False) -> bool:
    """Return the heap's free pages to the OS (malloc_trim(0): every arena, not only the top); True when it could.

    Called after the update, between its backward passes (micro-batches, PPO's minibatches and epochs) and after
    each evaluation: a few milliseconds, and pages touched again later are faulted back in once. `collect` first
    frees objects held only by reference cycles (a model just dropped).
    """
    if collect:
        gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
