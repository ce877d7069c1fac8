"""Generation on every causal LM: the native loop against transformers' generate() on tiny models of nine
families built from their configs, and the `hf` backend (generate() with the native loop's log-prob contract)."""

from __future__ import annotations

import logging

import pytest
import torch
import transformers as tf

from helpers import build_tokenizer
from llm_pg.config.schema import GenerationConfig
from llm_pg.rollout.decoding import decode
from llm_pg.rollout.sampling import pad_left, sample, completion_outputs
from llm_pg.models.value_head import attach_value_head

PROMPTS = ["a boy", "the cat sees", "the old man plays with the", "my"]  # 2 to 7 tokens: left padding matters
LAYERS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=128)
# family -> (config class, model class, settings beyond LAYERS). Sliding windows of 4 tokens, shorter than prompt +
# completion, so that the cache must drop what falls out of the window.
FAMILIES = {
    "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(LAYERS, num_key_value_heads=2)),
    "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, dict(LAYERS, num_key_value_heads=2)),
    "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM, dict(LAYERS, num_key_value_heads=2, head_dim=8)),
    "mistral_sliding_window": (tf.MistralConfig, tf.MistralForCausalLM,
                               dict(LAYERS, num_key_value_heads=2, sliding_window=4)),
    "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM, dict(LAYERS, num_key_value_heads=2, head_dim=8,
                                                          sliding_window=4)),
    "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, dict(LAYERS, num_key_value_heads=2, head_dim=8,
                                                               sliding_window=4)),
    "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, dict(LAYERS, num_key_value_heads=2)),
    "gpt2": (tf.GPT2Config, tf.GPT2LMHeadModel, dict(n_embd=32, n_layer=2, n_head=4, n_positions=128)),
    "gpt_neox": (tf.GPTNeoXConfig, tf.GPTNeoXForCausalLM, LAYERS),
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()  # pad 0, bos 1, eos 2


def tiny_family_model(family: str, tokenizer):
    """A randomly initialized 2-layer model of the family; initializer_range 0.3 makes its next-token
    distributions peaked enough that no greedy step is a near tie (which rounding could flip)."""
    config_class, model_class, settings = FAMILIES[family]
    config = config_class(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=0,
                          initializer_range=0.3, **settings)
    torch.manual_seed(0)
    model = model_class(config).eval()
    model.generation_config.pad_token_id = 0
    return model


def encode(tokenizer):
    return [tokenizer(t)["input_ids"] for t in PROMPTS]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_greedy_native_equals_generate_token_for_token(family, tokenizer):
    model = tiny_family_model(family, tokenizer)
    ids, mask = pad_left(encode(tokenizer), 0)
    ours = decode(model, ids, mask, 10, [2], 0, greedy=True)
    theirs = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=10, eos_token_id=[2],
                            pad_token_id=0)[:, ids.shape[1]:]
    assert torch.equal(ours.tokens, theirs), (ours.tokens, theirs)
    hf = sample(model, tokenizer, encode(tokenizer), GenerationConfig(max_new_tokens=10, backend="hf"), greedy=True)
    assert torch.equal(hf.completion_ids, ours.tokens)
    torch.testing.assert_close(hf.logprobs, ours.logprobs * hf.completion_mask, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", ["native", "hf"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sampled_logprobs_equal_score_tokens(family, backend, tokenizer):
    model = tiny_family_model(family, tokenizer)
    torch.manual_seed(1)
    r = sample(model, tokenizer, encode(tokenizer), GenerationConfig(num_samples=2, max_new_tokens=8, temperature=1.5,
                                                                     backend=backend))
    assert r.completion_ids.shape == (8, 8)
    assert len({tuple(row) for row in r.completion_ids.tolist()}) > len(PROMPTS)  # a prompt's 2 samples differ
    args = (r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
    with torch.no_grad():
        for group_size in (1, 2):  # one forward over prompt + completion, and the shared prompt pass
            scored = completion_outputs(model, *args, temperature=1.5, group_size=group_size).logprobs
            torch.testing.assert_close(scored, r.logprobs, atol=1e-4, rtol=1e-4)


def test_top_1_sampling_gives_the_same_rollout_and_values_on_both_backends(tokenizer):
    model = tiny_family_model("llama", tokenizer)
    attach_value_head(model)
    torch.nn.init.normal_(model.value_head.linear.weight)  # V != 0, so that misaligned values would show
    config = GenerationConfig(num_samples=2, max_new_tokens=8, top_k=1, stop_strings=["the"])
    native, hf = (sample(model, tokenizer, encode(tokenizer), GenerationConfig(**{**vars(config), "backend": b}))
                  for b in ("native", "hf"))
    assert torch.equal(native.completion_ids, hf.completion_ids) and native.completions == hf.completions
    assert torch.equal(native.completion_mask, hf.completion_mask) and torch.equal(native.truncated, hf.truncated)
    assert not native.truncated.all() and native.truncated.any()  # the stop string ends some rows, not all
    torch.testing.assert_close(hf.logprobs, native.logprobs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hf.values, native.values, atol=1e-5, rtol=1e-5)


def test_hf_backend_ignores_the_models_logits_processors(tokenizer):
    """A repetition penalty (or top-k) in the model's generation_config would sample from another distribution than
    softmax(logits / temperature), the policy that is trained: generate() must not apply it."""
    model = tiny_family_model("qwen2", tokenizer)
    model.generation_config.repetition_penalty, model.generation_config.top_k = 100.0, 3
    config = GenerationConfig(num_samples=2, max_new_tokens=8, backend="hf")
    greedy = sample(model, tokenizer, encode(tokenizer), config, greedy=True)
    native = sample(model, tokenizer, encode(tokenizer), GenerationConfig(max_new_tokens=8), greedy=True)
    assert torch.equal(greedy.completion_ids, native.completion_ids)
    torch.manual_seed(2)
    r = sample(model, tokenizer, encode(tokenizer), config)
    with torch.no_grad():
        scored = completion_outputs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask).logprobs
    torch.testing.assert_close(scored, r.logprobs, atol=1e-4, rtol=1e-4)
    assert model.generation_config.repetition_penalty == 100.0 and model.generation_config.top_k == 3  # restored


class StatefulLlama(tf.LlamaForCausalLM):
    """Stands for an architecture whose cache is a recurrent state (Mamba, ...): the native loop cannot extend it."""

    _is_stateful = True


def test_an_architecture_the_native_loop_cannot_drive_falls_back_to_hf_with_one_log_line(tokenizer, caplog):
    model = tiny_family_model("llama", tokenizer)
    stateful = StatefulLlama(model.config).eval()
    stateful.load_state_dict(model.state_dict())
    config = GenerationConfig(max_new_tokens=8)
    with caplog.at_level(logging.WARNING, logger="llm_pg.rollout.hf_decoding"):
        fallback = [sample(stateful, tokenizer, encode(tokenizer), config, greedy=True) for _ in range(2)]
    lines = [r.getMessage() for r in caplog.records if r.name == "llm_pg.rollout.hf_decoding"]
    assert len(lines) == 1 and "StatefulLlama" in lines[0] and "generation.backend=hf" in lines[0], lines
    hf = sample(model, tokenizer, encode(tokenizer), GenerationConfig(max_new_tokens=8, backend="hf"), greedy=True)
    for r in fallback:
        assert torch.equal(r.completion_ids, hf.completion_ids)
        torch.testing.assert_close(r.logprobs, hf.logprobs)
