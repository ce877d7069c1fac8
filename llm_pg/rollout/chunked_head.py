"""Token scores from the LM head in chunks: log pi(a_t|s_t) and H(pi(.|s_t)) without the (N, T, V) logits.

The full path (sampling.completion_outputs with logits_chunk_tokens 0) asks the model for the logits of every completion
position, (N, T, V) floats (V = 49152 for SmolLM2: 196 kB a token), and log_softmax, exp and the entropy's product
each make another tensor of that size, all kept for the backward pass. Here the model runs with its LM head
skipped (it returns an empty (N, L, 0) tensor), the head's input h (N, L, H) is kept instead, and

    log pi(.|s_t) = log_softmax(W h_t / temperature)        (V,) for each completion token t

is computed `chunk` completion tokens at a time, each chunk under torch.utils.checkpoint (non-reentrant): the
backward pass recomputes one chunk's logits instead of keeping every chunk's, so the logits held at once are
(chunk, V), for one more LM-head matmul per token in the backward pass. Positions after a completion's end are
never scored (they are 0, as the full path's are after its mask).

Exactness, on the CPU in float32 (tests/test_chunked_scores.py): not bit for bit. The LM head's matmul rounds
differently for another number of rows, and its weight's gradient (the embeddings' too when tied) is summed chunk
by chunk instead of in one matmul. Log-probs and entropies equal the full path's within 1e-5, values exactly (the
same h), every weight's gradient within 1e-5 of its norm. Hence opt-in (training.logits_chunk_tokens, default 0).

Only for models whose logits are exactly lm_head(h): architectures that scale or cap the logits after the head
(Gemma's final_logit_softcapping, Cohere's logit_scale, Granite's logits_scaling, Falcon-H1's lm_head_multiplier)
keep the full path (`chunkable`), as does a model that never calls its head module (completion_outputs then finds
nothing recorded and uses the logits the model made).
Shapes: N sequences, L positions run, T completion tokens, H hidden, V vocabulary, M scored tokens.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from llm_pg.models.memory import transformers_model

# config fields of architectures whose forward changes the logits after the LM head
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier")


def chunkable(model: nn.Module) -> bool:
    """Whether the model's logits are exactly its LM head applied to the head's input (no scale or cap after it)."""
    base = transformers_model(model)
    config = getattr(base, "config", None)
    transformed = any(getattr(config, name, None) not in (None, 1, 1.0) for name in LOGIT_TRANSFORMS)
    return base.get_output_embeddings() is not None and not transformed


@dataclass
class SkippedHead:
    """The LM head's own forward, the inputs (N, L, H) it was called with, and the autocast it met there."""

    compute: Callable[[torch.Tensor], torch.Tensor]
    inputs: list[torch.Tensor] = field(default_factory=list)
    autocast: tuple[str, bool, torch.dtype] | None = None  # (device type, enabled, dtype)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """W h (n, V), in the precision the model's own forward would have given (mixed precision included)."""
        device_type, enabled, dtype = self.autocast
        with torch.autocast(device_type, dtype=dtype, enabled=enabled):
            return self.compute(hidden)


def _autocast_state(device_type: str) -> tuple[str, bool, torch.dtype]:
    """(device type, whether autocast is on there, its dtype) now."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    if device_type == "cpu":
        return device_type, torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
    return device_type, torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()


@contextmanager
def lm_head_skipped(model: nn.Module):
    """Inside the block the model's LM head returns an empty (..., 0) tensor and records its inputs instead.

    Its forward is replaced on the instance, so the module's hooks (the value head's capture, accelerate's) still
    run around it; the instance attribute, if the module had one (accelerate's hooks set one), comes back after.
    """
    head = transformers_model(model).get_output_embeddings()
    own = vars(head).get("forward")
    skipped = SkippedHead(compute=head.forward)

    def record(hidden: torch.Tensor) -> torch.Tensor:
        skipped.inputs.append(hidden)
        skipped.autocast = _autocast_state(hidden.device.type)
        return hidden.new_empty(*hidden.shape[:-1], 0)

    head.forward = record
    try:
        yield skipped
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


def _chunk_outputs(head: SkippedHead, temperature: float, with_entropy: bool, entropy_grad: bool,
                  hidden: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """hidden (n, H), actions (n,) -> (log pi(a|s) (n,), H(pi(.|s)) (n,) or None): completion_outputs' full-path math."""
    logp = F.log_softmax(head.logits(hidden).float() / temperature, -1)  # (n, V)
    logprobs = logp.gather(-1, actions[:, None]).squeeze(-1)  # (n,)
    if not with_entropy:
        return logprobs, None
    lp = logp if entropy_grad else logp.detach()  # H = -sum_v p log p; detached unless an entropy bonus is trained
    return logprobs, -(lp.exp() * lp).sum(-1)


def chunked_outputs(head: SkippedHead, states: torch.Tensor, completion_ids: torch.Tensor,
                   completion_mask: torch.Tensor, chunk: int, temperature: float = 1.0, with_entropy: bool = False,
                   entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log pi(a_t|s_t), H(pi(.|s_t)) or None), each (N, T) and 0 where masked, `chunk` tokens at a time.

    states (N, T, H): the LM head's input at the positions that predict completion_ids (N, T).
    """
    selected = completion_mask.bool()  # (N, T)
    hidden, actions = states[selected], completion_ids[selected]  # (M, H), (M,): the completion tokens only
    keep_graph = torch.is_grad_enabled()
    logprobs, entropies = [], []
    for start in range(0, hidden.shape[0], chunk):
        args = (head, temperature, with_entropy, entropy_grad, hidden[start:start + chunk],
                actions[start:start + chunk])
        lp, h = checkpoint(_chunk_outputs, *args, use_reentrant=False) if keep_graph else _chunk_outputs(*args)
        logprobs.append(lp)
        entropies.append(h)
    zeros = torch.zeros(selected.shape, dtype=torch.float32, device=states.device)  # (N, T)
    if not logprobs:  # no completion token at all
        return zeros, zeros.clone() if with_entropy else None
    logprob = zeros.masked_scatter(selected, torch.cat(logprobs))
    entropy = zeros.masked_scatter(selected, torch.cat(entropies)) if with_entropy else None
    return logprob, entropy
