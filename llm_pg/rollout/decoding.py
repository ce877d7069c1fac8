"""The decoding loop behind rollout.sample: one forward per new token with the KV cache, nothing else.

Hugging Face `generate()` does the same work plus, on every token, input preparation, logits-processor and
stopping-criteria plumbing, a `torch.multinomial` over the whole vocabulary and, to give us log-probs, a copy of
every step's logits (N, T, V). On small models that bookkeeping is a large share of a step. Here each token costs
one forward, one log-softmax and one draw by inverse CDF: one uniform number per row looked up in the cumulative
probabilities (float64), a sample exact to ~1e-12 and, on a CPU, far cheaper than multinomial or Gumbel noise
over V tokens.

Shapes: N sequences, P prompt tokens (left-padded), T generated tokens, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper
from transformers.generation.stopping_criteria import StopStringCriteria

from llm_pg.errors import ConfigError
from llm_pg.models.calls import cache_argument, positions, returned_cache
from llm_pg.models.sharding import any_process, generation_lockstep
from llm_pg.rollout.kv_cache import reserve

STOP_STRING_CONTEXT = 8  # prompt tokens a stop string may start in (it must end inside the completion)


@dataclass
class Decoded:
    tokens: torch.Tensor  # (N, T) sampled tokens; pad after a row has ended (EOS or stop string)
    logprobs: torch.Tensor  # (N, T) log softmax(logits / temperature)[token], before top-k/top-p; junk after the end
    ends: torch.Tensor  # (N,) index of the token at which each row ended (EOS or stop string); T if none: truncated


def inverse_cdf_sample(probs: torch.Tensor) -> torch.Tensor:
    """(N,) one exact sample per row of probs (N, V): the first v with F(v) > u, u ~ U[0, F(V-1)).

    The cumulative sum is taken in float64: in float32 its spacing near 1 (6e-8) would round away tokens of
    smaller probability and distort the rest by ~3e-4 in total variation at V = 49k. Scaling u by the row's total
    keeps the remaining error from favouring the last token; a token of probability 0 (cut by top-k/top-p) has
    F(v) = F(v-1) and is never drawn.
    """
    cdf = probs.double().cumsum(-1)  # (N, V)
    u = torch.rand(probs.shape[0], 1, device=probs.device, dtype=cdf.dtype) * cdf[:, -1:]  # (N, 1)
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp(max=probs.shape[1] - 1)


def step_ended(tokens: list[torch.Tensor], context: torch.Tensor, eos: torch.Tensor,
               stop: StopStringCriteria | None) -> torch.Tensor:
    """(N,) whether the latest of `tokens` (each (N,)) ends its row: an EOS, or the token that completes a stop string.

    HF's StopStringCriteria matches token strings (a special token's text counts) and only stop strings that end
    inside the latest token; `context` (N, C), the prompt tokens a stop string may start in, is put in front.
    """
    ended = torch.isin(tokens[-1], eos)
    if stop is not None:
        # the criterion reads only the last maximum_token_len tokens: no need to stack the whole completion
        recent = torch.stack(tokens[-stop.maximum_token_len:], 1)
        ended |= stop(torch.cat([context, recent], 1), None)
    return ended


def tail_warpers(top_k: int, top_p: float) -> list:
    """HF's top-k / top-p warpers, as configured (0 and 1.0: off). They only cut the tail of the distribution
    sampled from; the log-probs recorded stay those of the whole softmax(logits / temperature)."""
    warpers = []
    if top_k > 0:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


def draw(logp: torch.Tensor, warpers: list) -> torch.Tensor:
    """(N,) one sampled token per row of logp (N, V), after the warpers have cut the distribution's tail."""
    for warp in warpers:
        logp = warp(None, logp)
    return inverse_cdf_sample(logp.exp())


def stop_criteria(tokenizer, stop_strings: list[str] | None) -> StopStringCriteria | None:
    """HF's StopStringCriteria for generation.stop_strings (None without any); one line when the tokenizer cannot
    produce one of them (transformers raises a ValueError from deep inside)."""
    if not stop_strings:
        return None
    try:
        return StopStringCriteria(tokenizer, stop_strings)
    except ValueError as e:
        raise ConfigError(f"generation.stop_strings: {stop_strings} cannot be matched by the tokenizer of "
                          f"model.name_or_path ({str(e).strip().splitlines()[0][:120]}); remove the string or choose "
                          "another model") from None


@torch.no_grad()
def decode(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, max_new_tokens: int, eos_ids: list[int],
           pad_id: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, greedy: bool = False,
           cache=None, tokenizer=None, stop_strings: list[str] | None = None, logits_to_keep: bool = True) -> Decoded:
    """Sample up to max_new_tokens after each prompt (N, P); stops once every row has ended.

    A row ends at the first token that is an EOS or completes a stop string (HF's StopStringCriteria on the token
    strings, so a special token's text counts, and a stop string may start in the last STOP_STRING_CONTEXT prompt
    tokens). `Decoded.ends` records that token: the one place where a completion ends is decided.

    `cache` may already hold the KV of prompt_ids[:, :-1] (the shared prompt pass); then only the last prompt
    token is run. Position ids count real tokens, as in generate(), so left padding does not shift them.
    """
    N, P = prompt_ids.shape
    device = prompt_ids.device
    warpers = [] if greedy else tail_warpers(top_k, top_p)
    stop = stop_criteria(tokenizer, stop_strings)
    eos = torch.tensor(eos_ids, dtype=torch.long, device=device)
    mask = prompt_mask
    position = positions(mask)  # (N, P)
    start = P - 1 if cache is not None else 0
    inputs = {"input_ids": prompt_ids[:, start:], "position_ids": position[:, start:]}
    extra = {"logits_to_keep": 1} if logits_to_keep and cache is None else {}
    position = position[:, -1:]  # (N, 1)
    tokens, logprobs = [], []
    running = torch.ones(N, dtype=torch.bool, device=device)  # (N,) not yet ended
    ends = torch.full((N,), max_new_tokens, dtype=torch.long, device=device)  # (N,) set when a row ends
    cache_arg = cache_argument(model)  # `cache`, or `past_key_values` before transformers 5.x
    lockstep = generation_lockstep(model)  # ZeRO-3/FSDP: forwards are collective, all processes step until all end
    for t in range(max_new_tokens):
        out = model(**inputs, attention_mask=mask, use_cache=True, **{cache_arg: cache}, **extra)
        cache, extra = returned_cache(out), {}
        if t == 0:  # from now on each step writes its position in place (kv_cache.py) instead of copying the cache
            cache = reserve(cache, max_new_tokens - 1)
        logits = out.logits[:, -1].float() / (1.0 if greedy else temperature)  # (N, V)
        logp = torch.log_softmax(logits, -1)  # (N, V): the policy's distribution
        token = logits.argmax(-1) if greedy else draw(logp, warpers)  # (N,)
        token = torch.where(running, token, torch.full_like(token, pad_id))  # rows that ended get pad
        tokens.append(token)
        logprobs.append(logp.gather(-1, token[:, None])[:, 0])  # of the token kept, so ids and log-probs agree
        ended = step_ended(tokens, prompt_ids[:, -STOP_STRING_CONTEXT:], eos, stop)
        ends = torch.where(running & ended, t, ends)  # rows that ended before keep their end (their pad may be EOS)
        running &= ~ended
        if t == max_new_tokens - 1 or not (any_process(running.any()) if lockstep else running.any()):
            break
        mask = torch.cat([mask, mask.new_ones(N, 1)], 1)
        position = position + 1
        inputs = {"input_ids": token[:, None], "position_ids": position}
    # a row still running ran all max_new_tokens steps, so its end, max_new_tokens, is T: truncated
    return Decoded(torch.stack(tokens, 1), torch.stack(logprobs, 1), ends)
