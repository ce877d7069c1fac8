"""Rollout: sample k completions per prompt with the KV cache, and score tokens under the policy.

Shapes: B prompts, K samples per prompt, N = B*K sequences, P prompt tokens (left-padded), T completion tokens,
V vocabulary. A token is an action; the prompt plus the tokens so far is the state.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from llm_pg.config.schema import GenerationConfig
from llm_pg.models.calls import accepts_logits_to_keep, cache_kwargs, positions, returned_cache
from llm_pg.models.memory import checkpointing_active
from llm_pg.models.value_head import captured_hidden_states, value_head_of
from llm_pg.rollout.chunked_head import chunkable, chunked_outputs, lm_head_skipped
from llm_pg.rollout.decoding import decode
from llm_pg.rollout.hf_decoding import backend_for, hf_decode
from llm_pg.rollout.rows import PAD_ID, RowBatch, per_row


@dataclass
class Rollout(RowBatch):
    """N = B*K sampled completions, rows prompt-major (the K samples of prompt b are rows b*K .. b*K+K-1).

    Each field's `per_row` rule (rollout/rows.py) says how `select_rows` and `concat` treat it: a new field states
    its rule here and needs no change anywhere else.
    """

    prompt_ids: torch.Tensor = per_row("left", pad=PAD_ID)  # (N, P) left-padded
    prompt_mask: torch.Tensor = per_row("left", pad=0)  # (N, P) 1 on real prompt tokens
    completion_ids: torch.Tensor = per_row("right", pad=PAD_ID)  # (N, T) padded on the right after the end
    completion_mask: torch.Tensor = per_row("right", pad=0)  # (N, T) 1 up to and including the EOS / stop token
    # (N, T) log pi(a_t | s_t) of the sampling policy (logits / temperature); 0 where masked
    logprobs: torch.Tensor = per_row("right", pad=0.0)
    truncated: torch.Tensor = per_row("rows")  # (N,) bool: hit max_new_tokens without EOS or a stop string
    completions: list[str] = per_row("list")  # (N,) decoded text, EOS and stop string removed
    group: torch.Tensor = per_row("index")  # (N,) index of the prompt in the batch (prompt-major: K rows per prompt)
    # (N, T) V(s_t) of the policy's value head while sampling; 0 where masked
    values: torch.Tensor | None = per_row("right", pad=0.0, default=None)
    group_size: int = per_row("shared", default=1)  # K: rows per prompt (every stage reads K here, not the config)

    def group_rows(self, groups: list[int]) -> torch.Tensor:
        """(len(groups) * K,) the rows of the given prompt groups, in that order: what `select_rows` takes to keep
        whole groups (it refuses rows that are not whole groups, each once: `group` and `group_size` would be wrong)."""
        K = self.group_size
        return torch.tensor([g * K + k for g in groups for k in range(K)], dtype=torch.long)

    def select_rows(self, rows: torch.Tensor) -> Rollout:
        """The batch of the given rows, which must be whole groups, each once (`group_rows`): `group_size` is K for
        every prompt and `group` is renumbered by runs of equal prompts, so rows that split or repeat a group would
        give a batch whose every later stage (advantages, rewards by prompt) reads the wrong K rows as one prompt."""
        K = self.group_size
        groups = (rows[::K] // K).tolist()
        if rows.numel() % K or len(set(groups)) != len(groups) or rows.tolist() != self.group_rows(groups).tolist():
            raise ValueError(f"Rollout.select_rows: rows {rows.tolist()} are not whole groups of group_size {K}, each "
                             "once (rows g*K .. g*K+K-1 of each group g, in order); build them with group_rows")
        return super().select_rows(rows)

    @property
    def lengths(self) -> torch.Tensor:  # (N,)
        return self.completion_mask.sum(1)


def _prompt_pass(model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, K: int):
    """Run B distinct prompts once -> (last-position logits repeated K times (N, 1, V), KV cache repeated K times).

    The repeat is differentiable, so gradients of the K samples sum into the one prompt pass.
    """
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions(prompt_mask),
                use_cache=True, logits_to_keep=1)
    cache = returned_cache(out)
    cache.batch_repeat_interleave(K)  # (B, ...) -> (N, ...)
    return out.logits[:, -1:].repeat_interleave(K, 0), cache


def pad_left(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists -> (ids, mask), both (N, P): generation continues from the right edge."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids, mask


def end_positions(completion_ids: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """(N,) index of the first EOS, else T (no end: truncated), for completions not from `decode` (which records
    its own ends, stop strings included).

    Built from the first EOS position, never from pad ids, so a real EOS is kept even when pad == eos.
    """
    N, T = completion_ids.shape
    is_end = torch.isin(completion_ids, torch.tensor(eos_ids, device=completion_ids.device))  # (N, T)
    return torch.where(is_end.any(1), is_end.int().argmax(1), torch.full((N,), T, device=completion_ids.device))


def mask_from_ends(ends: torch.Tensor, T: int) -> torch.Tensor:
    """(N, T) mask that is 1 for t <= end (the EOS / stop token is an action too)."""
    return (torch.arange(T, device=ends.device)[None, :] <= ends[:, None]).long()


def decode_completions(tokenizer: PreTrainedTokenizerBase, completion_ids: torch.Tensor, ends: torch.Tensor,
                       stop_strings: list[str]) -> list[str]:
    """(N,) texts of each row's tokens up to and including its end (N,), cut before the first stop string.

    Special tokens are skipped, so an EOS, or a stop string that is a special token's text, leaves no text. Only
    the completion's own text is searched: a stop string that started in the prompt leaves its completion part.
    """
    texts = []
    for row, end in zip(completion_ids.tolist(), ends.tolist()):
        text = tokenizer.decode(row[: end + 1], skip_special_tokens=True)
        for s in stop_strings:
            text = text.split(s)[0]
        texts.append(text.strip())
    return texts


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
    return sorted(ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()))


def _shared_prompt_cache(model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, K: int):
    """KV cache of each distinct prompt but its last token, computed once and repeated K times, or None.

    generate() then prefills only the last prompt token of each of the N rows instead of N whole prompts.
    """
    if prompt_ids.shape[1] < 2 or not accepts_logits_to_keep(model):
        return None
    return _prompt_pass(model, prompt_ids[:, :-1], prompt_mask[:, :-1], K)[1]


@torch.no_grad()
def sample(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[list[int]],
           config: GenerationConfig, num_samples: int | None = None, greedy: bool = False,
           max_new_tokens: int | None = None) -> Rollout:
    """K completions for each of B prompts, with the sampled tokens' log-probs from the decoding loop's logits.

    The policy is the distribution that sampled: softmax(logits / temperature) (top-k/top-p only cut its tail).
    Logits processors of the model's generation_config (repetition penalty, ...) are not applied: the policy
    that is trained must be the one that sampled. config.backend chooses llm_pg's loop or generate() (hf_decoding).
    """
    K = 1 if greedy else num_samples or config.num_samples
    device = next(model.parameters()).device
    group_ids, group_mask = (t.to(device) for t in pad_left(prompts, tokenizer.pad_token_id))  # (B, P)
    native = backend_for(model, config.backend) == "native"
    cache = _shared_prompt_cache(model, group_ids, group_mask, K) if K > 1 and native else None
    prompt_ids, prompt_mask = group_ids.repeat_interleave(K, 0), group_mask.repeat_interleave(K, 0)  # (N, P)
    args = (prompt_ids, prompt_mask, max_new_tokens or config.max_new_tokens, eos_token_ids(model, tokenizer),
            tokenizer.pad_token_id, config.temperature, config.top_k, config.top_p)
    options = {"greedy": greedy, "tokenizer": tokenizer, "stop_strings": config.stop_strings or None}
    head = None if greedy else value_head_of(model)
    with captured_hidden_states(model, enabled=head is not None) as hidden:  # one (N, L, H) per decoding step
        decoded = decode(model, *args, cache=cache, logits_to_keep=accepts_logits_to_keep(model), **options) \
            if native else hf_decode(model, *args, **options)
    completion_ids, ends = decoded.tokens, decoded.ends  # (N, T), (N,): where decoding ended each row
    T = completion_ids.shape[1]
    completion_mask = mask_from_ends(ends, T)  # the mask, the truncated flag and the text all follow `ends`
    logprobs = decoded.logprobs  # (N, T) under softmax(logits / temperature), before top-k / top-p
    values = None
    if head is not None:  # step t's last position is state s_t: the one whose logits chose token t
        values = head(torch.stack([h[:, -1] for h in hidden[:T]], 1)) * completion_mask  # (N, T)
    return Rollout(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
        completion_mask=completion_mask, logprobs=logprobs * completion_mask, truncated=ends >= T,
        completions=decode_completions(tokenizer, completion_ids, ends.clamp(max=T - 1), config.stop_strings),
        group=torch.arange(len(prompts), device=device).repeat_interleave(K), values=values, group_size=K)


def _prefix_shared_logits(model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                          completion_ids: torch.Tensor, completion_mask: torch.Tensor, K: int) -> torch.Tensor:
    """Logits (N, T, V) predicting each completion token, running each prompt once for its K samples.

    The B distinct prompts go through the model once; their KV cache is repeated K times (a differentiable
    repeat, so the K samples' gradients sum into the one prompt pass: the gradient is exact), then only the
    completion tokens run. The prompt dominates a step's compute, so this divides most of it by K.
    """
    T = completion_ids.shape[1]
    # rows are prompt-major, so every K-th row is a distinct prompt; first (N, 1, V) predicts token 0
    first, cache = _prompt_pass(model, prompt_ids[::K], prompt_mask[::K], K)
    if T == 1:
        return first
    attention_mask = torch.cat([prompt_mask, completion_mask], 1)[:, :-1]  # (N, P+T-1)
    position_ids = positions(attention_mask)[:, prompt_ids.shape[1]:]  # (N, T-1)
    rest = model(input_ids=completion_ids[:, :-1], attention_mask=attention_mask, position_ids=position_ids,
                 use_cache=True, **cache_kwargs(model, cache)).logits  # (N, T-1, V): predicts tokens 1..T-1
    return torch.cat([first, rest], 1)


def _full_logits(model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Logits (N, T, V) from one forward pass over prompt + completion (any causal LM)."""
    T = completion_ids.shape[1]
    input_ids = torch.cat([prompt_ids, completion_ids], 1)  # (N, P+T)
    attention_mask = torch.cat([prompt_mask, completion_mask], 1)  # (N, P+T)
    position_ids = positions(attention_mask)  # (N, P+T)
    extra = {"logits_to_keep": T + 1} if accepts_logits_to_keep(model) else {}
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False, **extra).logits
    return logits[:, -(T + 1):-1]  # (N, T, V): position P-1+t predicts completion token t


@dataclass
class CompletionOutputs:
    logprobs: torch.Tensor  # (N, T) log pi(a_t | s_t), 0 where masked
    entropy: torch.Tensor | None  # (N, T) H(pi(. | s_t)), when asked for
    values: torch.Tensor | None  # (N, T) V(s_t) of the value head, when asked for


def completion_outputs(model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 completion_ids: torch.Tensor, completion_mask: torch.Tensor, with_entropy: bool = False,
                 entropy_grad: bool = False, with_values: bool = False, temperature: float = 1.0,
                 group_size: int = 1, logits_chunk_tokens: int = 0) -> CompletionOutputs:
    """log pi(a_t|s_t), and optionally the entropy of pi(.|s_t) and V(s_t), each (N, T), in one forward pass.

    pi = softmax(logits / temperature): the same distribution that sampled the completion.
    Position ids come from the attention mask, as in generate(), so left padding does not shift positions.
    With group_size K > 1 (rows prompt-major, K per prompt) each prompt runs once and its cache is shared.
    V(s_t) is the value head on the hidden state whose logits give pi(.|s_t) (the LM head's input).
    logits_chunk_tokens > 0: the LM head runs that many completion tokens at a time after the model's trunk, so
    the (N, T, V) logits are never held (rollout/chunked_head.py; models that transform their logits after the
    head keep the full path).
    """
    head = value_head_of(model) if with_values else None
    # checkpointed layers drop the KV cache, which the shared prompt pass hands to the completion pass
    shared = group_size > 1 and accepts_logits_to_keep(model) and not checkpointing_active(model)
    chunked = logits_chunk_tokens > 0 and chunkable(model)
    with captured_hidden_states(model, enabled=head is not None) as hidden, \
            lm_head_skipped(model) if chunked else nullcontext() as skipped:
        if shared:
            logits = _prefix_shared_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                           group_size)
        else:
            logits = _full_logits(model, prompt_ids, prompt_mask, completion_ids, completion_mask)
    # a model that multiplies by its head's weight without calling the head module made its own logits: use them
    chunked = chunked and bool(skipped.inputs)
    T = completion_ids.shape[1]
    states = _head_inputs(skipped.inputs if chunked else hidden, T, group_size if shared else 1) \
        if chunked or head is not None else None  # (N, T, H)
    if chunked:
        logprobs, entropy = chunked_outputs(skipped, states, completion_ids, completion_mask, logits_chunk_tokens,
                                           temperature, with_entropy, entropy_grad)
    else:
        logprobs, entropy = _full_outputs(logits, completion_ids, completion_mask, temperature, with_entropy,
                                         entropy_grad)
    values = head(states) * completion_mask if head is not None else None  # (N, T)
    return CompletionOutputs(logprobs, entropy, values)


def _head_inputs(hidden: list[torch.Tensor], T: int, K: int) -> torch.Tensor:
    """The LM head's inputs (N, T, H) at the positions that predict the T completion tokens.

    K > 1 (the shared prompt pass): that pass's last position (B, 1, H), repeated K times, then the completion
    pass's (N, T-1, H); else the one pass's positions P-1 .. P+T-2 (whatever logits_to_keep kept before them).
    """
    if K > 1:
        return torch.cat([hidden[0][:, -1:].repeat_interleave(K, 0), *hidden[1:]], 1)
    return hidden[0][:, -(T + 1):-1]


def _full_outputs(logits: torch.Tensor, completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                 temperature: float, with_entropy: bool, entropy_grad: bool):
    """(log pi(a_t|s_t), H(pi(.|s_t)) or None), each (N, T), from the whole logits (N, T, V) at once."""
    logp = F.log_softmax(logits.float() / temperature, -1)  # (N, T, V)
    logprobs = logp.gather(-1, completion_ids[..., None]).squeeze(-1) * completion_mask  # (N, T)
    entropy = None
    if with_entropy:  # H(pi(.|s_t)) = -sum_v p log p; detached unless an entropy bonus is trained
        lp = logp if entropy_grad else logp.detach()
        entropy = -(lp.exp() * lp).sum(-1) * completion_mask  # (N, T)
    return logprobs, entropy


def completion_logprobs(model: PreTrainedModel, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                        completion_ids: torch.Tensor, completion_mask: torch.Tensor,
                        with_entropy: bool = False, entropy_grad: bool = False, temperature: float = 1.0,
                        group_size: int = 1, logits_chunk_tokens: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log pi(a_t|s_t), entropy of pi(.|s_t) or None), each (N, T): `completion_outputs` without values."""
    scores = completion_outputs(model, prompt_ids, prompt_mask, completion_ids, completion_mask, with_entropy,
                                entropy_grad, temperature=temperature, group_size=group_size,
                                logits_chunk_tokens=logits_chunk_tokens)
    return scores.logprobs, scores.entropy


score_tokens = completion_outputs  # its name in 0.1 ("score" meant three things); goes next release
