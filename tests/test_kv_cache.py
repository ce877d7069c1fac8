"""The in-place KV cache of the decoding loop: the same states, tokens and log-probs as the concatenating one."""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

import llm_pg.rollout.decoding as decoding
from llm_pg.config.schema import ModelConfig
from llm_pg.models.policy import load_policy, load_tokenizer
from llm_pg.rollout.kv_cache import ReservedLayer, reserve
from llm_pg.rollout.sampling import _shared_prompt_cache, pad_left

PROMPTS = ["a boy", "the cat sees", "the old man plays with", "my friend"]  # left padding matters


def states(n: int, length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, length, 4, generator=g), torch.randn(n, 2, length, 4, generator=g)


def test_a_reserved_layer_holds_what_concatenation_holds_and_never_rewrites_the_past():
    plain, reserved = DynamicLayer(), None
    keys, values = states(3, 5, 0)
    plain.update(keys, values)
    reserved = ReservedLayer(keys, values, room=2)
    for step in range(4):  # two steps fit the room, the next two need a larger buffer
        k, v = states(3, 1, step + 1)
        before = reserved.keys.clone()
        want, got = plain.update(k, v), reserved.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert torch.equal(reserved.keys[:, :, :-1], before)  # earlier positions untouched by the write
    assert reserved.get_seq_length() == plain.get_seq_length() == 9


def test_a_reserved_layer_stays_right_after_a_batch_repeat_and_a_crop():
    plain = DynamicLayer()
    keys, values = states(2, 4, 0)
    plain.update(keys, values)
    reserved = ReservedLayer(keys, values, room=8)
    for layer in (plain, reserved):
        layer.batch_repeat_interleave(3)  # (2, ...) -> (6, ...): a new tensor, the buffer no longer holds it
        layer.crop(-1)  # drop the last position
    for step in range(3):
        k, v = states(6, 1, step + 10)
        want, got = plain.update(k, v), reserved.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_reserve_changes_only_plain_dynamic_layers_that_hold_states():
    cache = DynamicCache()
    assert reserve(cache, 4) is cache  # nothing stored yet: nothing to change
    assert reserve(None, 4) is None and reserve("not a cache", 4) == "not a cache"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    config = ModelConfig(name_or_path=str(tiny_model_dir))
    model, tokenizer = load_policy(config).eval(), load_tokenizer(config)
    ids, mask = pad_left([tokenizer(t)["input_ids"] for t in PROMPTS], tokenizer.pad_token_id)
    return model, tokenizer, ids, mask


@pytest.mark.parametrize("shared_prompt", [False, True])
def test_decoding_draws_the_same_tokens_and_log_probs_with_the_in_place_cache(tiny, monkeypatch, shared_prompt):
    model, tokenizer, ids, mask = tiny
    K = 3
    rows, row_mask = ids.repeat_interleave(K, 0), mask.repeat_interleave(K, 0)

    def sample():
        torch.manual_seed(0)
        cache = _shared_prompt_cache(model, ids, mask, K) if shared_prompt else None
        return decoding.decode(model, rows, row_mask, 10, [], tokenizer.pad_token_id, temperature=0.9,
                               cache=cache)

    seen = []
    real_reserve = decoding.reserve
    monkeypatch.setattr(decoding, "reserve", lambda cache, room: seen.append(real_reserve(cache, room)) or seen[-1])
    reserved = sample()
    assert seen and all(type(layer) is ReservedLayer for layer in seen[0].layers)  # the in-place cache was used
    monkeypatch.setattr(decoding, "reserve", lambda cache, room: cache)
    concatenated = sample()
    assert torch.equal(reserved.tokens, concatenated.tokens)
    assert torch.equal(reserved.logprobs, concatenated.logprobs)  # bit for bit, not only close
    assert len(set(map(tuple, reserved.tokens.tolist()))) > 1  # a real sample, not a constant
