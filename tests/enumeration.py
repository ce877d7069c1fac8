"""Exact enumeration on a tiny policy: every completion, every joint outcome of a step's samples, their probabilities.

Used by tests/test_exact_gradients.py. A completion has at most T = 2 new tokens over a vocabulary of V = 4 with
EOS = 1, so there are C = V completions for T = 1 and C = 1 + (V-1)V = 13 for T = 2 ([EOS], or two tokens, the
second of which may be EOS or not: truncated). Shapes: B prompts, K samples per prompt, N = B*K rows, C
completions, T completion tokens, P prompt tokens, V vocabulary.

Two halves that share nothing but the weights:
  * `Policy` / `state_logprobs`: pi(.|s) by plain forward passes over the *unpadded* prompt plus prefix, with
    autograd, for the analytic objective J(theta) (built in the test module);
  * `CompletionTable` / `joint_rollout`: the rows our pipeline sees (left-padded prompts, right-padded
    completions, masks, rollout log-probs from `llm_pg.rollout.sampling.completion_outputs`), assembled into one `Rollout` per
    joint outcome of the N samples.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llm_pg.rollout.sampling import Rollout, pad_left, completion_outputs

V, PAD, EOS = 4, 0, 1  # pad is also a real token (id 0): only the masks say which is which
PROMPTS = [[3, 2, 0], [2, 3]]  # prompt b (real tokens); the second is left-padded next to the first


def build_policy(seed: int = 0, weight_std: float = 0.5):
    """A 1-layer LlamaForCausalLM (hidden 16, 2 heads) whose matrices are redrawn with a large std, so that
    pi(.|s) is far from uniform (logits of a few nats) and differs between states."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16,
                         bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    perturb_matrices(model, weight_std, seed, replace=True)
    return model.eval()


def perturb_matrices(model, std: float, seed: int, replace: bool = False):
    """Add N(0, std^2) noise to every weight matrix (or redraw it, `replace`); norms' gains stay as they are."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                noise = torch.randn(p.shape, generator=g) * std
                p.copy_(noise if replace else p + noise)
    return model


def reference_of(policy, std: float = 0.3, seed: int = 1):
    """pi_ref: a frozen copy of the policy with perturbed weights (so KL(pi || pi_ref) > 0 and has a gradient)."""
    return perturb_matrices(copy.deepcopy(policy), std, seed).eval().requires_grad_(False)


def all_completions(T: int) -> list[tuple[int, ...]]:
    """Every completion of at most T tokens that ends at its first EOS: T = 1 -> (y,); T = 2 -> (EOS,) or (a, b)."""
    if T == 1:
        return [(y,) for y in range(V)]
    assert T == 2
    return [(EOS,)] + [(a, b) for a in range(V) if a != EOS for b in range(V)]


@dataclass
class StateLogprobs:
    """log pi(.|s) at every state a completion of at most 2 tokens can reach, for one prompt x."""

    first: torch.Tensor  # (V,) log pi(.|x)
    second: torch.Tensor | None  # (V, V) row a = log pi(.|x, a) for a != EOS (the EOS row is unused); None if T = 1

    def sequence(self, y: tuple[int, ...]) -> torch.Tensor:
        """log pi(y|x) = sum_t log pi(y_t | x, y_<t)."""
        return self.first[y[0]] + (self.second[y[0], y[1]] if len(y) == 2 else 0.0)

    def running_prefixes(self) -> list[int]:
        """First tokens after which the completion goes on (not EOS): the states s_1 = (x, a)."""
        return [] if self.second is None else [a for a in range(V) if a != EOS]


def state_logprobs(model, prompt: list[int], T: int, temperature: float) -> StateLogprobs:
    """log softmax(logits / temperature) at every state, from one forward pass over x + [a] for each first token a
    (no padding, positions 0..P), differentiable w.r.t. the model's weights."""
    x = torch.tensor(prompt)
    rows = torch.stack([torch.cat([x, torch.tensor([a])]) for a in range(V)]) if T == 2 else x[None]  # (V|1, P+T-1)
    logits = model(input_ids=rows).logits.float() / temperature  # (V|1, P+T-1, V)
    if T == 1:
        return StateLogprobs(F.log_softmax(logits[0, -1], -1), None)
    return StateLogprobs(F.log_softmax(logits[0, -2], -1), F.log_softmax(logits[:, -1], -1))  # (V,), (V, V)


def completion_logprobs(states: StateLogprobs, completions: list[tuple[int, ...]]) -> torch.Tensor:
    """(C,) log pi(y|x) of every completion."""
    return torch.stack([states.sequence(y) for y in completions])


@dataclass
class CompletionTable:
    """Every (prompt b, completion c) row as the pipeline holds it; a joint outcome picks N of them."""

    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P)
    completion_ids: torch.Tensor  # (B, C, T) right-padded with PAD after EOS
    completion_mask: torch.Tensor  # (B, C, T) 1 up to and including EOS
    logprobs: torch.Tensor  # (B, C, T) rollout log pi(a_t|s_t) from completion_outputs, 0 where masked
    truncated: torch.Tensor  # (B, C) no EOS within T tokens
    values: torch.Tensor | None = None  # (B, C, T) V(s_t) for the critic, 0 where masked


def completion_table(model, prompts: list[list[int]], completions: list[tuple[int, ...]], T: int,
                     temperature: float) -> CompletionTable:
    """Pad every completion, and score it with `llm_pg.rollout.sampling.completion_outputs` (the rollout's log-probs)."""
    B, C = len(prompts), len(completions)
    prompt_ids, prompt_mask = pad_left(prompts, PAD)  # (B, P)
    ids = torch.tensor([list(y) + [PAD] * (T - len(y)) for y in completions])  # (C, T)
    mask = torch.tensor([[1] * len(y) + [0] * (T - len(y)) for y in completions])  # (C, T)
    truncated = torch.tensor([EOS not in y for y in completions])  # (C,)
    with torch.no_grad():
        scores = completion_outputs(model, prompt_ids.repeat_interleave(C, 0), prompt_mask.repeat_interleave(C, 0),
                                    ids.repeat(B, 1), mask.repeat(B, 1), temperature=temperature)
    return CompletionTable(prompt_ids, prompt_mask, ids.expand(B, C, T), mask.expand(B, C, T),
                           scores.logprobs.view(B, C, T), truncated.expand(B, C))


def joint_outcomes(B: int, K: int, C: int):
    """Every joint outcome of the N = B*K samples (prompt-major): tuples of N completion indices."""
    return itertools.product(range(C), repeat=B * K)


def joint_rollout(table: CompletionTable, joint: tuple[int, ...], K: int) -> Rollout:
    """The Rollout of one joint outcome, as `llm_pg.rollout.sampling.sample` would have returned it."""
    B = table.prompt_ids.shape[0]
    group = torch.arange(B).repeat_interleave(K)  # (N,)
    c = torch.tensor(joint)  # (N,)
    return Rollout(
        prompt_ids=table.prompt_ids[group], prompt_mask=table.prompt_mask[group],
        completion_ids=table.completion_ids[group, c], completion_mask=table.completion_mask[group, c],
        logprobs=table.logprobs[group, c], truncated=table.truncated[group, c],
        completions=[f"completion {i}" for i in joint], group=group,
        values=None if table.values is None else table.values[group, c], group_size=K)
