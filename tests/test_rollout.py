"""Rollout: padding, end-of-completion masks, sampling, and log-probs that match a separate forward pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llm_pg.config.schema import GenerationConfig, ModelConfig
from llm_pg.models.policy import load_policy, load_tokenizer
from llm_pg.rollout.sampling import (
    completion_logprobs,
    decode_completions,
    end_positions,
    mask_from_ends,
    pad_left,
    sample,
)

EOS, PAD = 2, 0  # the tiny tokenizer's ids (tests/helpers.py SPECIAL_TOKENS)
PROMPTS = ["a boy", "the cat sees", "the old man plays with", "my friend"]  # different lengths: left padding matters


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    config = ModelConfig(name_or_path=str(tiny_model_dir))
    return load_policy(config).eval(), load_tokenizer(config)


@pytest.fixture(scope="module")
def tiny_pad_eos(tiny_model_dir_pad_eos):
    config = ModelConfig(name_or_path=str(tiny_model_dir_pad_eos))
    return load_policy(config).eval(), load_tokenizer(config)


IM_END = "<|im_end|>"  # a chat model's end-of-turn token: special, and not the EOS


@pytest.fixture(scope="module")
def tiny_im_end(tiny_model_dir):
    """The tiny policy with an extra special token <|im_end|> that it emits where it would emit ".": its LM-head
    row is twice "."'s, so its logit beats "."'s (the argmax) wherever that is positive."""
    config = ModelConfig(name_or_path=str(tiny_model_dir))
    model, tokenizer = load_policy(config).eval(), load_tokenizer(config)
    tokenizer.add_special_tokens({"additional_special_tokens": [IM_END]})
    torch.manual_seed(0)  # the new embedding rows are drawn at random
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    im_end, period = tokenizer.convert_tokens_to_ids([IM_END, "."])
    with torch.no_grad():
        model.lm_head.weight[im_end] = 2 * model.lm_head.weight[period]
    return model, tokenizer


def encode(tokenizer, texts):
    return [tokenizer(t)["input_ids"] for t in texts]


def per_sequence_logits(model, rollout, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row n run alone, unpadded: (logits (L, V) predicting each real completion token, those tokens (L,))."""
    prompt = rollout.prompt_ids[n][rollout.prompt_mask[n].bool()]
    length = int(rollout.completion_mask[n].sum())
    completion = rollout.completion_ids[n, :length]
    with torch.no_grad():
        logits = model(input_ids=torch.cat([prompt, completion])[None]).logits[0].float()
    return logits[len(prompt) - 1:len(prompt) - 1 + length], completion


def per_sequence_logprobs(model, rollout, temperature: float = 1.0) -> torch.Tensor:
    """The slow reference: log softmax(logits / temperature) of each row's own tokens, 0 past its end."""
    out = torch.zeros(rollout.completion_ids.shape)
    for n in range(rollout.completion_ids.shape[0]):
        logits, completion = per_sequence_logits(model, rollout, n)
        out[n, :len(completion)] = F.log_softmax(logits / temperature, -1).gather(-1, completion[:, None])[:, 0]
    return out


# --- pad_left, end_positions, mask_from_ends: exact values ---------------------------------------------------------


def test_pad_left_pads_on_the_left_and_masks_real_tokens():
    ids, mask = pad_left([[5, 6, 7], [8], [9, 10]], pad_id=PAD)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert ids.dtype == mask.dtype == torch.long


def test_pad_left_with_pad_equal_to_eos_keeps_the_mask_from_lengths():
    ids, mask = pad_left([[EOS, 5], [6]], pad_id=EOS)  # a real EOS inside a prompt stays unmasked
    assert ids.tolist() == [[2, 5], [2, 6]]
    assert mask.tolist() == [[1, 1], [0, 1]]


def test_end_positions_eos_truncated_and_mask():
    completions = torch.tensor([
        [5, 6, EOS, PAD, PAD],  # ends with EOS at t=2
        [5, 6, 7, 8, 9],  # no EOS: truncated, end = T
        [EOS, PAD, PAD, PAD, PAD],  # EOS first: one action
    ])
    ends = end_positions(completions, [EOS])
    assert ends.tolist() == [2, 5, 0]
    mask = mask_from_ends(ends, 5)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]  # the EOS is in the mask
    assert (ends >= 5).tolist() == [False, True, False]  # the rollout's truncated flag


def test_end_positions_pad_equal_to_eos_counts_only_the_first_eos():
    completions = torch.tensor([
        [5, EOS, EOS, EOS],  # EOS, then padding that is also EOS
        [EOS, EOS, EOS, EOS],
        [5, 6, 7, EOS],  # EOS at the last position: not truncated
    ])
    ends = end_positions(completions, [EOS])
    assert ends.tolist() == [1, 0, 3]
    assert mask_from_ends(ends, 4).tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]


def test_end_positions_several_eos_ids():
    completions = torch.tensor([[5, 7, 2, 0], [5, 6, 6, 7], [5, 6, 6, 6]])
    assert end_positions(completions, [2, 7]).tolist() == [1, 3, 4]


# --- stop strings on hand-built ids --------------------------------------------------------------------------------


def test_decode_completions_cuts_at_the_end_and_before_the_stop_string(tiny):
    _, tokenizer = tiny
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in
            [" the ball. the sun.", " a tree", " some bread."]]
    T = max(map(len, rows))
    ids = torch.tensor([r + [EOS] * (T - len(r)) for r in rows])
    period = [r.index(tokenizer.convert_tokens_to_ids(".")) for r in (rows[0], rows[2])]

    ends = torch.tensor([period[0], T - 1, period[1]])  # where decoding ended: the first "." (a stop string)
    assert decode_completions(tokenizer, ids, ends, ["."]) == ["the ball", "a tree", "some bread"]
    # Without stop strings, decoding keeps everything up to the end and drops the EOS (a special token).
    ends = end_positions(ids, [EOS]).clamp(max=T - 1)
    assert decode_completions(tokenizer, ids, ends, []) == ["the ball. the sun.", "a tree", "some bread."]
    # Only the tokens up to the end count, even when a stop string comes later in the row.
    assert decode_completions(tokenizer, ids, torch.tensor([1, 0, 0]), ["the sun"]) == ["the ball", "a", "some"]


# --- sample(): shapes, grouping, masks ----------------------------------------------------------------------------


def check_masks_follow_first_eos(rollout, eos: int) -> tuple[int, int]:
    """Every row's mask is 1 up to and including its first EOS (all ones without one); returns (#ended, #truncated)."""
    T = rollout.completion_ids.shape[1]
    ended = truncated = 0
    for ids, mask, trunc in zip(rollout.completion_ids.tolist(), rollout.completion_mask.tolist(),
                                rollout.truncated.tolist()):
        if eos in ids:
            first = ids.index(eos)
            assert mask == [1] * (first + 1) + [0] * (T - first - 1)
            assert not trunc
            ended += 1
        else:
            assert mask == [1] * T
            assert trunc
            truncated += 1
    return ended, truncated


def test_sample_shapes_group_and_masks(tiny):
    model, tokenizer = tiny
    prompts = encode(tokenizer, PROMPTS)
    K, B = 3, len(prompts)
    torch.manual_seed(0)
    r = sample(model, tokenizer, prompts, GenerationConfig(num_samples=K, max_new_tokens=6))

    N, P = B * K, max(map(len, prompts))
    assert r.prompt_ids.shape == r.prompt_mask.shape == (N, P)
    T = r.completion_ids.shape[1]
    assert 1 <= T <= 6
    assert r.completion_mask.shape == r.logprobs.shape == (N, T)
    assert r.truncated.shape == r.group.shape == (N,)
    assert len(r.completions) == N
    assert r.group.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]  # prompt-major: K rows per prompt
    for n in range(N):  # row n holds prompt group[n], left-padded
        prompt = prompts[int(r.group[n])]
        assert r.prompt_ids[n, P - len(prompt):].tolist() == prompt
        assert r.prompt_mask[n].tolist() == [0] * (P - len(prompt)) + [1] * len(prompt)
        assert r.prompt_ids[n, :P - len(prompt)].eq(tokenizer.pad_token_id).all()

    ended, truncated = check_masks_follow_first_eos(r, EOS)
    assert ended > 0 and truncated > 0  # the fixed seed exercises both kinds of ending
    assert r.lengths.tolist() == r.completion_mask.sum(1).tolist()
    assert (r.logprobs[r.completion_mask == 0] == 0).all()
    assert (r.logprobs[r.completion_mask == 1] < 0).all()  # real log-probs of a non-degenerate policy
    for text, ids, length in zip(r.completions, r.completion_ids.tolist(), r.lengths.tolist()):
        real = [t for t in ids[:length] if t != EOS]
        assert text == tokenizer.decode(real).strip()
        assert "</s>" not in text and "<pad>" not in text
    assert any(r.completions), "every completion is empty"


def test_sample_pad_equal_to_eos_keeps_the_real_eos(tiny_pad_eos):
    model, tokenizer = tiny_pad_eos
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == EOS
    prompts = encode(tokenizer, PROMPTS)
    torch.manual_seed(1)
    r = sample(model, tokenizer, prompts, GenerationConfig(num_samples=3, max_new_tokens=6))
    ended, truncated = check_masks_follow_first_eos(r, EOS)
    assert ended > 0 and truncated > 0
    for ids, length in zip(r.completion_ids.tolist(), r.lengths.tolist()):
        if length < len(ids):  # after the real EOS, generate pads with pad = eos; none of those is an action
            assert ids[length - 1] == EOS and set(ids[length:]) == {EOS}
    logprobs, _ = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)
    torch.testing.assert_close(logprobs, r.logprobs, atol=1e-4, rtol=1e-4)


def test_sample_greedy_is_one_deterministic_row_per_prompt(tiny):
    model, tokenizer = tiny
    prompts = encode(tokenizer, PROMPTS)
    config = GenerationConfig(num_samples=3, max_new_tokens=6)
    a, b = (sample(model, tokenizer, prompts, config, greedy=True) for _ in range(2))
    assert a.group.tolist() == [0, 1, 2, 3]
    assert torch.equal(a.completion_ids, b.completion_ids) and a.completions == b.completions
    # Each greedy token is the argmax of the policy at its position.
    for n in range(len(prompts)):
        logits, completion = per_sequence_logits(model, a, n)
        assert logits.argmax(-1).tolist() == completion.tolist()


def test_sample_with_stop_string_cuts_the_completion(tiny):
    model, tokenizer = tiny
    prompts = encode(tokenizer, PROMPTS)
    torch.manual_seed(0)
    r = sample(model, tokenizer, prompts, GenerationConfig(num_samples=2, max_new_tokens=8, stop_strings=["."]))
    period = tokenizer.convert_tokens_to_ids(".")
    cut = 0
    for ids, length, text in zip(r.completion_ids.tolist(), r.lengths.tolist(), r.completions):
        assert "." not in text
        if period in ids[:length]:  # the mask ends on the token that completes the stop string
            assert ids.index(period) == length - 1
            cut += 1
    assert cut > 0


@pytest.mark.parametrize("backend", ["native", "hf"])
def test_a_stop_string_that_is_a_special_tokens_text_ends_the_mask_there(tiny_im_end, backend):
    """Decoding stops on <|im_end|> (the stop criterion reads token strings, special ones too), so the mask, the
    truncated flag and the text must end there, although text decoded without special tokens never contains it."""
    model, tokenizer = tiny_im_end
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    prompts = encode(tokenizer, PROMPTS)
    config = GenerationConfig(num_samples=2, max_new_tokens=8, stop_strings=[IM_END], backend=backend)
    greedy = sample(model, tokenizer, prompts, config, greedy=True)
    assert greedy.completion_ids.tolist() == [[im_end, PAD, PAD, PAD], [35, 102, im_end, PAD],
                                              [33, 109, 101, im_end], [im_end, PAD, PAD, PAD]]
    assert greedy.completion_mask.tolist() == [[1, 0, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert greedy.truncated.tolist() == [False] * 4  # fails on the text-based re-detection: all True, all ones
    assert greedy.completions == ["", "the ball", "a small box", ""]

    torch.manual_seed(0)
    r = sample(model, tokenizer, prompts, config)  # sampled: rows end on <|im_end|>, on EOS, or not at all
    T, stopped = r.completion_ids.shape[1], 0
    for ids, mask, truncated, text in zip(r.completion_ids.tolist(), r.completion_mask.tolist(),
                                          r.truncated.tolist(), r.completions):
        ends = [t for t, token in enumerate(ids) if token in (im_end, EOS)]
        end = ends[0] if ends else T
        assert mask == [1] * (end + 1) + [0] * (T - end - 1) and truncated == (end == T)
        assert text == tokenizer.decode(ids[:end], skip_special_tokens=True).strip()
        stopped += end < T and ids[end] == im_end
    assert stopped > 0 and (r.logprobs[r.completion_mask == 0] == 0).all()


def test_evaluation_counts_tokens_up_to_a_special_stop_token(tiny_im_end):
    """Evaluation samples through the same path: its token counts and reference log-probs stop at <|im_end|>."""
    from llm_pg.data.prompts import Example
    from llm_pg.evaluation.heldout import generate

    model, tokenizer = tiny_im_end
    examples = [Example(f"e{i}", text, ids, ["x"]) for i, (text, ids) in enumerate(zip(PROMPTS, encode(tokenizer,
                                                                                                        PROMPTS)))]
    generations = generate(model, tokenizer, examples, GenerationConfig(max_new_tokens=8, stop_strings=[IM_END]),
                           batch_size=4, reference=model)
    assert [g.tokens for g in generations] == [1, 3, 4, 1]  # fails on the old code: 4 tokens each
    assert [g.completion for g in generations] == ["", "the ball", "a small box", ""]
    r = sample(model, tokenizer, encode(tokenizer, PROMPTS), GenerationConfig(max_new_tokens=8), greedy=True,
               max_new_tokens=4)  # the same tokens without a stop string: <|im_end|> is then an ordinary token
    expected = [sum(lp[:n]) for lp, n in zip(r.logprobs.tolist(), [1, 3, 4, 1])]
    assert [g.ref_logprob for g in generations] == pytest.approx(expected, abs=1e-4)


# --- log-probs: the rollout's equal a separate forward pass -------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_logprobs_equal_a_separate_forward_pass(tiny, temperature):
    model, tokenizer = tiny
    prompts = encode(tokenizer, PROMPTS)
    assert len(set(map(len, prompts))) >= 3  # three different prompt lengths
    torch.manual_seed(2)
    r = sample(model, tokenizer, prompts, GenerationConfig(num_samples=2, max_new_tokens=6, temperature=temperature))
    mask = r.completion_mask.bool()

    with torch.no_grad():
        logprobs, _ = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                          temperature=temperature)
    torch.testing.assert_close(logprobs[mask], r.logprobs[mask], atol=1e-4, rtol=1e-4)
    assert (logprobs[~mask] == 0).all()
    reference = per_sequence_logprobs(model, r, temperature)
    torch.testing.assert_close(r.logprobs[mask], reference[mask], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logprobs[mask], reference[mask], atol=1e-4, rtol=1e-4)

    # The check has teeth: the wrong temperature, or a forward pass that attends to the left padding, is far off.
    # (Shifted position ids alone would not show: RoPE scores depend only on relative positions.)
    with torch.no_grad():
        other, _ = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                       temperature=1.0 if temperature != 1.0 else 0.5)
        logits = model(input_ids=torch.cat([r.prompt_ids, r.completion_ids], 1)).logits  # no attention mask
    T = r.completion_ids.shape[1]
    naive = F.log_softmax(logits[:, -(T + 1):-1].float() / temperature, -1).gather(-1, r.completion_ids[..., None])
    assert (other - r.logprobs)[mask].abs().max() > 1e-2
    padded = r.prompt_mask[:, 0] == 0
    assert (naive[..., 0] - r.logprobs)[mask & padded[:, None]].abs().max() > 1e-2


def test_rollout_logprobs_with_top_k_are_the_full_softmax(tiny):
    """Documented in sample(): top-k cuts only which tokens can be drawn; log-probs stay log softmax(logits / T)."""
    model, tokenizer = tiny
    torch.manual_seed(3)
    r = sample(model, tokenizer, encode(tokenizer, PROMPTS), GenerationConfig(num_samples=2, max_new_tokens=6,
                                                                              top_k=2))
    mask = r.completion_mask.bool()
    torch.testing.assert_close(r.logprobs[mask], per_sequence_logprobs(model, r)[mask], atol=1e-4, rtol=1e-4)
    for n in range(r.completion_ids.shape[0]):  # every drawn token is one of the 2 most likely
        logits, completion = per_sequence_logits(model, r, n)
        rank = (logits > logits.gather(-1, completion[:, None])).sum(-1)
        assert (rank < 2).all()


def test_completion_logprobs_gradient_and_entropy(tiny):
    model, tokenizer = tiny
    torch.manual_seed(4)
    r = sample(model, tokenizer, encode(tokenizer, PROMPTS), GenerationConfig(num_samples=2, max_new_tokens=6))
    logprobs, entropy = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids,
                                            r.completion_mask, with_entropy=True)
    assert logprobs.requires_grad and not entropy.requires_grad  # entropy detached unless entropy_grad
    assert (entropy[r.completion_mask == 0] == 0).all()

    n = int(r.prompt_mask[:, 0].eq(0).nonzero()[0])  # a left-padded row
    logits, completion = per_sequence_logits(model, r, n)
    p = torch.softmax(logits, -1)
    by_hand = -(p * torch.log(p)).sum(-1)  # H = -sum_v p log p
    torch.testing.assert_close(entropy[n, :len(completion)].detach(), by_hand, atol=1e-4, rtol=1e-4)
    assert by_hand.min() > 1e-3  # a real distribution, not a point mass

    _, with_grad = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                       with_entropy=True, entropy_grad=True)
    assert with_grad.requires_grad
    torch.testing.assert_close(with_grad.detach(), entropy.detach())


def test_stop_string_that_starts_in_the_prompt_ends_the_mask(tiny):
    model, tokenizer = tiny
    prompts = encode(tokenizer, ["the cat sees", "a boy"])
    greedy = sample(model, tokenizer, prompts, GenerationConfig(max_new_tokens=6), greedy=True)
    stop = "s" + tokenizer.decode(greedy.completion_ids[0, :1])  # "s the": the prompt's last letter + token 0
    assert stop not in tokenizer.decode(greedy.completion_ids[0])  # only the prompt boundary completes it

    r = sample(model, tokenizer, prompts, GenerationConfig(max_new_tokens=6, stop_strings=[stop]), greedy=True)
    T = r.completion_ids.shape[1]
    assert T > 1 and r.completion_ids[0, 1:].eq(PAD).all()  # generate() stopped row 0 after one token
    assert r.completion_mask[0].tolist() == [1] + [0] * (T - 1)  # fails: [1, 1] (the pad counts as an action)
    assert not r.truncated[0]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_shared_prompt_pass_gives_the_same_logprobs_and_gradients(tiny, temperature):
    """group_size=K runs each prompt once and repeats its KV cache: values and gradients must not change."""
    model, tokenizer = tiny
    torch.manual_seed(3)
    prompts = encode(tokenizer, ["the cat sees", "a boy runs to the big", "the dog"])  # different lengths
    r = sample(model, tokenizer, prompts, GenerationConfig(num_samples=3, max_new_tokens=6, temperature=temperature))
    results = []
    for group_size in (1, 3):
        model.zero_grad()
        logprobs, entropy = completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids,
                                                r.completion_mask, with_entropy=True, temperature=temperature,
                                                group_size=group_size)
        (logprobs * torch.linspace(0.5, 2.0, logprobs.shape[0])[:, None]).sum().backward()
        results.append((logprobs.detach(), entropy, [p.grad.clone() for p in model.parameters()]))
    model.zero_grad()
    (full_lp, full_h, full_g), (shared_lp, shared_h, shared_g) = results
    torch.testing.assert_close(shared_lp, full_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared_h, full_h, atol=1e-5, rtol=1e-5)
    for a, b in zip(shared_g, full_g):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(shared_lp, r.logprobs, atol=1e-4, rtol=1e-4)  # and the sampler's own log-probs


def test_shared_prompt_cache_samples_the_same_tokens(tiny, monkeypatch):
    import llm_pg.rollout.sampling as rollout_module

    model, tokenizer = tiny
    prompts = encode(tokenizer, ["the cat sees", "a boy runs to the big"])
    config = GenerationConfig(num_samples=3, max_new_tokens=6, top_k=1)  # top-1 sampling is deterministic
    shared = sample(model, tokenizer, prompts, config)
    monkeypatch.setattr(rollout_module, "_shared_prompt_cache", lambda *args: None)
    plain = sample(model, tokenizer, prompts, config)
    assert torch.equal(shared.completion_ids, plain.completion_ids)
    torch.testing.assert_close(shared.logprobs, plain.logprobs, atol=1e-5, rtol=1e-5)
