"""scripts/demo_floor.py: its FLOP count is torch's own count of the model's matrix products, its batches are the
evaluation's, and a step is its parts added up."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from demo_floor import eval_decode_steps, eval_flops, train_step_flops  # noqa: E402
from bench_roofline import forward_flops  # noqa: E402


@pytest.fixture(scope="module")
def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                         attn_implementation="eager")  # attention as matrix products, which the counter counts
    return LlamaForCausalLM(config).eval()


def test_a_decoding_step_counts_what_torch_counts(llama):
    """One token after a 9-token prompt (its cache): projections, MLP, LM head and attention over 10 keys."""
    from llm_pg.models.calls import cache_kwargs, returned_cache

    ids = torch.randint(0, 101, (1, 10))
    with torch.no_grad():
        cache = returned_cache(llama(ids[:, :9], use_cache=True))
        with FlopCounterMode(display=False) as counter:
            llama(ids[:, 9:], use_cache=True, **cache_kwargs(llama, cache))
    assert counter.get_total_flops() == forward_flops(llama.config, 1, 10, 1)


def test_a_prompt_pass_counts_the_weights_exactly_and_attention_within_its_causal_half(llama):
    """The model computes the whole T x T score matrix; the floor counts the causal half (mean context (T + 1) / 2)."""
    T = 12
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        llama(torch.randint(0, 101, (1, T)))  # logits at every position
    cfg = llama.config
    weights = forward_flops(cfg, T, 0, T)
    attention_full = 4 * cfg.num_hidden_layers * cfg.hidden_size * T * T
    assert counter.get_total_flops() == weights + attention_full
    assert forward_flops(cfg, T, (T + 1) / 2, T) == weights + attention_full * (T + 1) / (2 * T)


def test_evaluation_batches_are_sorted_by_prompt_length_and_last_as_their_longest_row():
    # prompts by length: rows 1 (1 token), 3 (2), 2 (3), 0 (5); batches of 2: {1, 3} -> 7 steps, {2, 0} -> 4 steps
    assert eval_decode_steps([5, 1, 3, 2], [4, 7, 1, 2], batch_size=2) == 11
    assert eval_decode_steps([5, 1, 3, 2], [4, 7, 1, 2], batch_size=4) == 7
    assert eval_decode_steps([5, 1, 3, 2], [4, 7, 1, 2], batch_size=1) == 14


def test_an_evaluation_and_a_training_step_are_their_passes_added_up(llama):
    cfg, f = llama.config, forward_flops
    P, C = 20, 6
    assert eval_flops(cfg, [P], [C]) == f(cfg, P, P / 2, 1) + f(cfg, C, P + C / 2, C) + f(cfg, P + C, (P + C) / 2,
                                                                                          C + 1)
    rollout = 2 * f(cfg, P, P / 2, 0) + 8 * f(cfg, C, P + C / 2, C)  # 2 prompts once, 2 x 4 completions
    sampling = 2 * f(cfg, P, P / 2, 1) + 8 * f(cfg, C, P + C / 2, C)
    assert train_step_flops(cfg, P, prompts=2, samples=4, C=C) == pytest.approx(sampling + 4 * rollout, rel=1e-12)
