"""The `hf` generation backend: transformers' generate(), for causal LMs the native loop (decoding.py) cannot drive.

It returns what decoding.decode returns (`Decoded`: tokens, the log-probs of softmax(logits / temperature) before
top-k/top-p, each row's end), so the rest of the rollout does not know which backend sampled. generate() hands back
each step's raw logits (output_logits=True): the log-probs come from those, not from its processed scores, which
top-k/top-p have already cut. Where each row ended is replayed with decoding.step_ended, the native loop's rule.
The native loop is the default: it is cheaper per token (see decoding.py) and its draws are exact by inverse CDF.

Shapes: N sequences, P prompt tokens (left-padded), T generated tokens, V vocabulary.
"""

from __future__ import annotations

import functools
import logging
from contextlib import contextmanager

import torch
from torch import nn
from transformers import GenerationConfig as HFGenerationConfig
from transformers.generation.stopping_criteria import StopStringCriteria

from llm_pg.models.calls import forward_parameters
from llm_pg.models.memory import transformers_model
from llm_pg.models.sharding import generation_lockstep
from llm_pg.rollout.decoding import Decoded, step_ended

logger = logging.getLogger(__name__)


def native_unsupported(model_class: type) -> str | None:
    """Why the native loop cannot drive `model_class`, or None: it extends a KV cache one token at a time and
    passes position ids counted over real tokens, so the forward must take both."""
    parameters = forward_parameters(model_class)
    if getattr(model_class, "_is_stateful", False):
        return "its cache is a recurrent state, not a KV cache"
    if not {"cache", "past_key_values"} & parameters:
        return "its forward takes no KV cache"
    if "position_ids" not in parameters:
        return "its forward takes no position_ids"
    return None


@functools.lru_cache(maxsize=None)
def _backend_for(model_class: type, backend: str) -> str:
    """The backend that samples from `model_class`; cached per class, so a fallback is logged once."""
    reason = native_unsupported(model_class) if backend == "native" else None
    if reason is None:
        return backend
    logger.warning("generation.backend=native: %s cannot be decoded natively (%s); sampling with generate() "
                   "(generation.backend=hf) instead", model_class.__name__, reason)
    return "hf"


def backend_for(model: nn.Module, backend: str) -> str:
    """`backend` ("native" or "hf") for the model inside any DDP / peft wrapper, or "hf" where native cannot run."""
    return _backend_for(type(transformers_model(model)), backend)


@contextmanager
def _plain_generation_config(model: nn.Module):
    """The model's generation_config replaced by transformers' defaults for the block: generate() fills every field
    left unset from it, and its logits processors (repetition penalty, ...) would make the sampling distribution
    differ from softmax(logits / temperature), the policy that is trained."""
    base = transformers_model(model)
    saved, base.generation_config = base.generation_config, HFGenerationConfig()
    try:
        yield
    finally:
        base.generation_config = saved


def replay_ends(tokens: torch.Tensor, context: torch.Tensor, eos_ids: list[int],
                stop: StopStringCriteria | None) -> torch.Tensor:
    """(N,) index of the token at which each row of tokens (N, T) ended (EOS or stop string), else T.

    The same step-by-step rule as the native loop, so both backends end a row at the same token.
    """
    N, T = tokens.shape
    eos = torch.tensor(eos_ids, dtype=torch.long, device=tokens.device)
    columns = list(tokens.unbind(1))  # T tensors (N,)
    ends = torch.full((N,), T, dtype=torch.long, device=tokens.device)
    running = torch.ones(N, dtype=torch.bool, device=tokens.device)
    for t in range(T):
        ended = step_ended(columns[:t + 1], context, eos, stop)
        ends = torch.where(running & ended, t, ends)
        running &= ~ended
    return ends


@torch.no_grad()
def hf_decode(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int, eos_ids: list[int],
              pad_id: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
              tokenizer=None, stop_strings: list[str] | None = None) -> Decoded:
    """decoding.decode's contract through generate(): prompts (N, P) -> Decoded with tokens and log-probs (N, T)."""
    sampling = {} if greedy else {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    config = HFGenerationConfig(do_sample=not greedy, max_new_tokens=max_new_tokens, eos_token_id=eos_ids or None,
                                pad_token_id=pad_id, stop_strings=stop_strings or None, output_logits=True,
                                return_dict_in_generate=True, **sampling)
    generator = getattr(model, "module", model)  # DDP has no generate(); peft's passes through to the model
    with _plain_generation_config(model):
        out = generator.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config,
                                 tokenizer=tokenizer, synced_gpus=generation_lockstep(model))
    tokens = out.sequences[:, prompt_ids.shape[1]:]  # (N, T) pad after each row's end
    logits = torch.stack(out.logits[:tokens.shape[1]], 1).float() / (1.0 if greedy else temperature)  # (N, T, V)
    logprobs = torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]  # (N, T)
    stop = StopStringCriteria(tokenizer, stop_strings) if stop_strings else None
    # generate()'s criterion saw the whole prompt in front of the completion: so does the replay
    return Decoded(tokens, logprobs, replay_ends(tokens, prompt_ids, eos_ids, stop))
