"""The decoding loop: the same tokens as Hugging Face generate() where both are deterministic, exact sampling."""

from __future__ import annotations

import pytest
import torch

from llm_pg.config.schema import ModelConfig
from llm_pg.rollout.decoding import decode, inverse_cdf_sample
from llm_pg.models.policy import load_policy, load_tokenizer
from llm_pg.rollout.sampling import pad_left

EOS, PAD = 2, 0  # the tiny tokenizer's ids (tests/helpers.py SPECIAL_TOKENS)
PROMPTS = ["a boy", "the cat sees", "the old man plays with", "my friend"]  # different lengths: left padding matters


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    config = ModelConfig(name_or_path=str(tiny_model_dir))
    model, tokenizer = load_policy(config).eval(), load_tokenizer(config)
    ids, mask = pad_left([tokenizer(t)["input_ids"] for t in PROMPTS], tokenizer.pad_token_id)
    return model, tokenizer, ids, mask


def test_inverse_cdf_sample_draws_each_token_with_its_probability():
    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.0, 0.3, 0.15, 0.05, 0.0])  # zeros: tokens cut by top-k / top-p
    draws = inverse_cdf_sample(probs.expand(40000, 6).clone())  # (40000,)
    frequencies = torch.bincount(draws, minlength=6).float() / 40000
    assert frequencies[1] == 0 and frequencies[5] == 0  # never a token of probability 0, not even the last one
    assert torch.allclose(frequencies, probs, atol=0.01), frequencies  # 4 sigma of a binomial at 40k draws is 0.01


def test_inverse_cdf_sample_with_an_unnormalized_total():
    torch.manual_seed(0)
    probs = torch.tensor([[0.25, 0.25, 0.25, 0.2499]])  # sums to 0.9999, as a float cumsum may
    draws = inverse_cdf_sample(probs.expand(20000, 4).clone())
    assert torch.allclose(torch.bincount(draws, minlength=4).float() / 20000, torch.full((4,), 0.25), atol=0.015)


def test_greedy_decode_equals_generate_with_left_padding(tiny):
    model, tokenizer, ids, mask = tiny
    ours = decode(model, ids, mask, 12, [EOS], PAD, greedy=True)
    theirs = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                            eos_token_id=[EOS], pad_token_id=PAD)[:, ids.shape[1]:]
    assert torch.equal(ours.tokens, theirs)


def test_greedy_logprobs_are_the_full_forward_pass_log_softmax(tiny):
    model, tokenizer, ids, mask = tiny
    out = decode(model, ids, mask, 6, [], PAD, greedy=True)  # no EOS: every row runs all 6 tokens
    full_ids, full_mask = torch.cat([ids, out.tokens], 1), torch.cat([mask, torch.ones_like(out.tokens)], 1)
    logits = model(input_ids=full_ids, attention_mask=full_mask,
                   position_ids=(full_mask.cumsum(1) - 1).clamp(min=0)).logits[:, ids.shape[1] - 1:-1]
    expected = torch.log_softmax(logits.float(), -1).gather(-1, out.tokens[..., None])[..., 0]
    assert torch.allclose(out.logprobs, expected, atol=1e-5)


def test_top_k_one_sampling_is_greedy(tiny):
    model, tokenizer, ids, mask = tiny
    torch.manual_seed(0)
    sampled = decode(model, ids, mask, 8, [EOS], PAD, temperature=0.7, top_k=1)
    greedy = decode(model, ids, mask, 8, [EOS], PAD, greedy=True)
    assert torch.equal(sampled.tokens, greedy.tokens)


def test_tiny_top_p_keeps_only_the_most_likely_token(tiny):
    model, tokenizer, ids, mask = tiny
    torch.manual_seed(0)
    sampled = decode(model, ids, mask, 8, [EOS], PAD, temperature=1.3, top_p=1e-6)
    assert torch.equal(sampled.tokens, decode(model, ids, mask, 8, [EOS], PAD, greedy=True).tokens)


def test_inverse_cdf_sample_keeps_tiny_probabilities_of_a_large_vocabulary(monkeypatch):
    """Near 1 a float32 CDF is spaced 6e-8 apart, too coarse for tokens of probability 1e-8: the draw must land on
    the exact token a float64 CDF gives."""
    probs = torch.full((1, 50_001), 1e-8)
    probs[0, 0] = 1 - 50_000 * 1e-8  # 0.9995, then 50,000 tokens of 1e-8
    total = probs.double().sum()
    u = (0.9995 + 2500.5e-8) / total  # a uniform draw that falls in the 2,500th rare token's interval
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.full(shape, u.item(), dtype=kw.get("dtype")))
    drawn = inverse_cdf_sample(probs).item()
    p0, rare = probs[0, 0].item(), probs[0, 1].item()  # the float32 values, exactly, as Python floats
    expected = int((u.item() * total.item() - p0) // rare) + 1  # F(k) = p0 + k * rare: the first F(k) > u
    assert drawn == expected, (drawn, expected)
    cdf32 = probs.cumsum(-1)  # what a float32 CDF would draw for the same u: another token
    assert torch.searchsorted(cdf32, u.float() * cdf32[:, -1:], right=True).item() != expected


def test_rows_after_their_eos_are_padded_and_decoding_stops_when_all_ended(tiny):
    model, tokenizer, ids, mask = tiny
    torch.manual_seed(0)
    first = decode(model, ids, mask, 1, [], PAD, greedy=True).tokens[:, 0]  # (N,) each row's greedy first token
    out = decode(model, ids, mask, 10, first.tolist(), PAD, greedy=True)  # every row ends at its first token
    assert out.tokens.shape == (len(PROMPTS), 1) and torch.equal(out.tokens[:, 0], first)
    assert out.ends.tolist() == [0, 0, 0, 0]
    ends_early = decode(model, ids, mask, 10, [first[0].item()], PAD, greedy=True)  # only row 0 ends at once
    assert ends_early.tokens[0, 1:].eq(PAD).all() and ends_early.tokens.shape[1] > 1
    assert ends_early.ends[0] == 0


def test_ends_record_the_eos_or_stop_token_else_T(tiny):
    model, tokenizer, ids, mask = tiny
    free = decode(model, ids, mask, 4, [], PAD, greedy=True)
    assert [tokenizer.decode(row) for row in free.tokens] == [" sees the ball.", " the ball.</s>", " a small box.",
                                                               " sees the ball."]  # the greedy path, unstopped
    assert free.ends.tolist() == [4, 4, 4, 4]  # T: truncated
    out = decode(model, ids, mask, 4, [EOS], PAD, greedy=True, tokenizer=tokenizer, stop_strings=["small"])
    assert out.ends.tolist() == [4, 3, 1, 4]  # truncated, EOS at the last step, the token that completes "small"
    # "the cat sees" + " the": a stop string may start in the prompt; it ends the row at its first token
    out = decode(model, ids, mask, 4, [EOS], PAD, greedy=True, tokenizer=tokenizer, stop_strings=["sees the"])
    assert out.ends.tolist() == [1, 0, 4, 1]
