"""Exact per-token credit: r_t = M(prefix <= t) - M(prefix < t) sums to the sentence reward, token by token.

Shapes: N completions, T completion tokens.
"""

from __future__ import annotations

import pytest
import sacrebleu
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from helpers import SENTENCES, build_tokenizer, tiny_config
from llm_pg.algorithms import advantages as adv
from llm_pg.config.schema import RewardConfig
from llm_pg.data.prompts import Example
from llm_pg.rewards import RewardMix
from llm_pg.rewards.token_credit import CompletionTokens, prefix_texts
from llm_pg.rollout.sampling import Rollout, decode_completions, end_positions, mask_from_ends
from llm_pg.training.scoring import reward_rollout, score_rollout

EOS = 2


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def byte_tokenizer():
    """Byte-level BPE with all 256 bytes: random ids split multi-byte characters (decoded as U+FFFD)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(SENTENCES + ["Ça marche très bien — 東京 ✓ مرحبا"] * 3, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def rollout_text(tokenizer, ids: torch.Tensor, stop_strings: list[str]):
    """(mask, completions) exactly as rollout.sample builds them from the sampled ids (N, T)."""
    T = ids.shape[1]
    ends = end_positions(ids, [EOS])
    mask = mask_from_ends(ends, T)
    return mask, decode_completions(tokenizer, ids, ends.clamp(max=T - 1), stop_strings)


def library(kind: str, hyp: str, refs: list[str]) -> float:
    if kind == "bleu":
        return min(1.0, sacrebleu.sentence_bleu(hyp, refs).score / 100)
    if kind == "chrf++":
        return sacrebleu.sentence_chrf(hyp, refs, word_order=2).score / 100
    scorer = rouge_scorer.RougeScorer([kind], use_stemmer=True)
    return max(scorer.score(r, hyp)[kind].fmeasure for r in refs)


def test_rouge1_credit_hand_values(tokenizer):
    ids = torch.tensor([tokenizer("the cat likes the ball.", add_special_tokens=False)["input_ids"] + [EOS, 0]])
    mask, completions = rollout_text(tokenizer, ids, [])
    model = RewardMix.from_config(RewardConfig(components=[{"name": "rouge1"}], per_token=True))
    batch = model.reward_batch([""], completions, [["the cat"]], tokens=CompletionTokens(tokenizer, ids, mask, []))
    # prefixes: the | the cat | the cat likes | ... the | ... ball | ... ball. | </s> | (pad)
    # ROUGE-1 F: 2/3, 1, 0.8 (P 2/3, R 1), 2/3 (P 2/4), 4/7 (P 2/5), 4/7, 4/7
    want = [2 / 3, 1 / 3, 0.8 - 1, 2 / 3 - 0.8, 4 / 7 - 2 / 3, 0.0, 0.0, 0.0]
    assert batch.token_rewards[0].tolist() == pytest.approx(want, abs=1e-12)
    assert batch.rewards == pytest.approx([4 / 7])


KINDS = ["bleu", "chrf++", "rouge1", "rouge2", "rougeL", "rougeLsum"]
PROPERTY = settings(max_examples=40, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@PROPERTY
@given(data=st.data(), stop=st.sampled_from([[], ["."], ["the ", "!"]]), byte_level=st.booleans())
def test_per_token_rewards_sum_to_the_sentence_score_and_track_every_prefix(data, stop, byte_level, tokenizer,
                                                                             byte_tokenizer):
    tok = byte_tokenizer if byte_level else tokenizer
    N, T = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 12))
    rows = []
    for _ in range(N):  # real sentences (so that prefixes match the references) with random tokens mixed in
        text = " ".join(data.draw(st.lists(st.sampled_from(SENTENCES[:20] + ["Ça marche — 東京!"]), max_size=2)))
        row = (tok(text, add_special_tokens=False)["input_ids"] + [EOS] * data.draw(st.integers(0, 1)))[:T]
        row += data.draw(st.lists(st.integers(0, len(tok) - 1), min_size=T - len(row), max_size=T - len(row)))
        for position, token in data.draw(st.lists(st.tuples(st.integers(0, T - 1), st.integers(0, len(tok) - 1)),
                                                  max_size=2)):
            row[position] = token
        rows.append(row)
    ids = torch.tensor(rows)  # (N, T)
    refs = data.draw(st.lists(st.lists(st.sampled_from(SENTENCES[:20] + ["", "Ça marche — 東京", "the the the"]),
                                       min_size=1, max_size=3), min_size=N, max_size=N))
    mask, completions = rollout_text(tok, ids, stop)
    tokens = CompletionTokens(tok, ids, mask, stop)

    for kind in KINDS:  # each metric alone: the running sum of r_t is M(prefix) at every token
        model = RewardMix.from_config(RewardConfig(components=[{"name": kind}], per_token=True))
        batch = model.reward_batch([""] * N, completions, refs, tokens=tokens)
        assert batch.token_rewards.shape == (N, T)
        assert batch.token_rewards.sum(1).tolist() == pytest.approx(batch.rewards, abs=1e-9)
        assert (batch.token_rewards * (1 - mask)).abs().sum() == 0  # nothing after the end
        assert batch.rewards == pytest.approx([library(kind, c, r) for c, r in zip(completions, refs)], abs=1e-12)
        for i, texts in enumerate(prefix_texts(tokens)):
            running = batch.token_rewards[i, :len(texts)].cumsum(0).tolist()
            assert running == pytest.approx([library(kind, p, refs[i]) for p in texts], abs=1e-9)

    # a mix with shaping, normalization and clipping: rows still sum to the final reward
    mix = RewardMix.from_config(RewardConfig(components=[
        {"name": "bleu", "weight": 0.5}, {"name": "chrf++"}, {"name": "rougeL", "weight": 2.0},
        {"name": "length_penalty", "target": 3, "weight": 0.1}, {"name": "repetition_penalty", "n": 1}],
        per_token=True, normalize=True, clip=[-1.5, 1.5]))
    batch = mix.reward_batch([""] * N, completions, refs, tokens=tokens)
    assert batch.token_rewards.sum(1).tolist() == pytest.approx(batch.rewards, abs=1e-9)


def test_score_rollout_feeds_the_per_token_credit_into_the_returns(tokenizer, tiny_model_dir, tiny_data_file,
                                                                 tmp_path):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{
        "reward.components": [{"name": "rouge1"}], "reward.per_token": True, "algorithm.baseline": "none",
        "generation.num_samples": 1})
    ids = torch.tensor([tokenizer("the cat likes the ball.", add_special_tokens=False)["input_ids"] + [EOS, 0]])
    mask, completions = rollout_text(tokenizer, ids, [])
    rollout = Rollout(prompt_ids=torch.tensor([[1]]), prompt_mask=torch.tensor([[1]]), completion_ids=ids,
                      completion_mask=mask, logprobs=torch.zeros(ids.shape), truncated=torch.tensor([False]),
                      completions=completions, group=torch.tensor([0]))
    batch = [Example("0", "", [1], ["the cat"])]
    model = RewardMix.from_config(config.reward)
    rewards = reward_rollout(rollout, batch, model, tokenizer, config.reward.per_token, [])
    scored = score_rollout(config, rollout, rewards, None, None, adv.BaselineInputs(1), uses_critic=False)
    r = [2 / 3, 1 / 3, -0.2, 2 / 3 - 0.8, 4 / 7 - 2 / 3, 0.0, 0.0]
    returns = [sum(r[t:]) for t in range(7)] + [0.0]  # gamma = 1, baseline 0: A_t = G_t
    assert scored.advantages[0].tolist() == pytest.approx(returns, abs=1e-6)
    assert scored.rewards.tolist() == pytest.approx([4 / 7])


def word_count(prompts, completions, references, bonus):
    """A user reward with a per-token variant: the number of words, plus a record column."""
    return [len(c.split()) + b for c, b in zip(completions, bonus)]


def test_a_function_with_per_token_scores_its_prefixes_and_the_rest_goes_last(tokenizer):
    ids = torch.tensor([tokenizer("the cat likes the ball.", add_special_tokens=False)["input_ids"] + [EOS, 0]])
    mask, completions = rollout_text(tokenizer, ids, [])
    model = RewardMix.from_config(RewardConfig(per_token=True, components=[
        {"name": "words", "function": f"{__name__}:word_count", "per_token": True, "weight": 2.0},
        {"name": "length_penalty", "target": 2, "weight": 0.5}]))
    batch = model.reward_batch([""], completions, [["x"]], {"bonus": [10]}, tokens=CompletionTokens(tokenizer, ids, mask, []))
    # words(prefix) + 10: 11, 12, 13, 14, 15, 15, 15 -> r = 2 * (11, 1, 1, 1, 1, 0, 0); length penalty -3/2 * 0.5 last
    assert batch.token_rewards[0].tolist() == pytest.approx([22, 2, 2, 2, 2, 0, -0.75, 0])
    assert batch.rewards == pytest.approx([2 * 15 - 0.75])
