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
from demo_floor import eval_decode_steps, eval_flops, rollout_flops, sampling_flops, train_step_flops  # noqa: E402
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


def test_the_floor_never_counts_more_than_sampling_and_scoring_really_do(tiny_model_dir):
    """torch's count of llm_pg's own sample() and completion_outputs() (the update's forward, the KL reference's)
    on the tiny Llama with eager attention, against the floor for the same prompts and completion lengths."""
    from transformers import AutoModelForCausalLM

    from llm_pg.config.schema import GenerationConfig
    from llm_pg.models.policy import load_tokenizer
    from llm_pg.config.schema import ModelConfig
    from llm_pg.rollout.sampling import completion_outputs, sample

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(tiny_model_dir)))
    torch.manual_seed(0)
    prompts = [torch.randint(5, 50, (9,)).tolist() for _ in range(2)]  # 2 prompts of 9 tokens, no padding
    with FlopCounterMode(display=False) as sampling:
        rollout = sample(model, tokenizer, prompts, GenerationConfig(max_new_tokens=6, temperature=1.0),
                         num_samples=3)
    with torch.no_grad(), FlopCounterMode(display=False) as scoring:
        completion_outputs(model, rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids,
                           rollout.completion_mask, group_size=3)
    C = rollout.lengths.double().mean().item()
    assert 0 < sampling_flops(model.config, 9, 2, 6, C) <= sampling.get_total_flops()
    assert 0 < rollout_flops(model.config, 9, 2, 6, C) <= scoring.get_total_flops()
    with torch.no_grad(), FlopCounterMode(display=False) as evaluation:  # greedy, then the perplexity pass
        greedy = sample(model, tokenizer, prompts, GenerationConfig(max_new_tokens=6), num_samples=1, greedy=True)
        completion_outputs(model, greedy.prompt_ids, greedy.prompt_mask, greedy.completion_ids, greedy.completion_mask)
    assert 0 < eval_flops(model.config, [9, 9], greedy.lengths.tolist()) <= evaluation.get_total_flops()
    if bool((rollout.lengths == 6).all()):  # every row ran all steps: the floor is the count up to attention's half
        assert rollout_flops(model.config, 9, 2, 6, C) == pytest.approx(scoring.get_total_flops(), rel=0.1)


def test_a_training_step_is_its_passes_added_up(llama):
    cfg = llama.config
    sampling, rollout = sampling_flops(cfg, 20, 2, 8, 6), rollout_flops(cfg, 20, 2, 8, 6)
    assert train_step_flops(cfg, 20, prompts=2, samples=4, C=6, reference=True) == sampling + 4 * rollout
    assert train_step_flops(cfg, 20, prompts=2, samples=4, C=6, reference=False) == sampling + 3 * rollout
