"""Exact per-token credit for decomposable metrics: r_t = M(prefix <= t) - M(prefix < t).

The prefix after token t is the text the completion would have if it ended there: the first t+1 completion tokens
decoded, cut at a stop string and stripped, exactly as rollout.decode_completions builds the completion. The
rewards telescope: sum_t r_t = M(whole completion) - M(nothing before the first token) with M(.) of the empty
"before" defined as 0, so each row sums to the sentence score. Tokens that do not change the text (EOS, a space
that strip removes, half of a multi-byte character) get 0; a token that completes a word gets the score it adds.

Shapes: N completions, T completion tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads only when credit is computed: checking a config must stay fast
    import torch


@dataclass
class CompletionTokens:
    """What per-token credit needs from the rollout: the sampled tokens and how to turn them into text."""

    tokenizer: object
    completion_ids: torch.Tensor  # (N, T)
    completion_mask: torch.Tensor  # (N, T) 1 up to and including the last real token
    stop_strings: list[str]


def clean_completion(text: str, stop_strings: list[str]) -> str:
    """As rollout.decode_completions: cut at the first stop string, strip whitespace."""
    for s in stop_strings:
        text = text.split(s)[0]
    return text.strip()


def prefix_texts(tokens: CompletionTokens) -> list[list[str]]:
    """For each completion, the text after each of its L real tokens: L strings, the last one the completion."""
    lengths = tokens.completion_mask.sum(1).tolist()
    rows = tokens.completion_ids.tolist()
    texts = []
    for row, length in zip(rows, lengths):
        decoded = tokens.tokenizer.batch_decode([row[:t + 1] for t in range(int(length))], skip_special_tokens=True)
        texts.append([clean_completion(d, tokens.stop_strings) for d in decoded])
    return texts


def differences(prefix_scores: list[float]) -> list[float]:
    """r_t = M_t - M_{t-1} with M_{-1} = 0, so that sum_t r_t = M_{L-1}."""
    return [score - previous for score, previous in zip(prefix_scores, [0.0] + prefix_scores[:-1])]


def to_tensor(rows: list[list[float]], shape: tuple[int, int]) -> torch.Tensor:
    """Ragged per-token rows -> (N, T) float64, zero after each row's end."""
    import torch

    out = torch.zeros(shape, dtype=torch.float64)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.float64)
    return out
