"""The compare stage's answer quality (llm_pg/pipelines/rlhf_quality.py) on hand-made answers: each measure and each
trained policy's difference to SFT against hand computation, the human answers' row, and the judge's
log-probabilities against a forward pass by hand whatever the batching. The measures of a whole tiny pipeline are
checked in tests/test_rlhf.py (test_answer_quality_against_a_direct_computation)."""

from __future__ import annotations

import json
import math

import pytest
from test_rlhf import nll_by_hand

from llm_pg.pipelines.rlhf_quality import (QUALITY_METRICS, Answers, answer_logprobs, deinterleaved, human_answers,
                                           interleaved, judged, quality, quality_markdown, read_answers)

# 3 prompts x K = 2 answers each, prompt-major; 3-gram repeats: "a a a a" 1 of 2 (0.5), "x y z x y z" 1 of 4 (0.25)
SFT = Answers(["p0", "p0", "p1", "p1", "p2", "p2"],
              ["the cat sat on the mat", "a a a a", "", "   ", "one two", "x y z x y z"],
              [True, False, False, False, True, True], 2)
RL = Answers(SFT.ids, ["the cat", "a b c", "hello", "fine", "one two", "x y z x y z"],
             [False, False, False, False, False, True], 2)
HUMAN = Answers(["p0", "p1", "p2"], ["the cat sat", "a a a a", "one two"], [False, True, False], 1)


def _generations():
    return {"sft": judged(SFT, [-12.0, -4.0, 0.0, 0.0, -2.0, -6.0], [6, 4, 0, 0, 2, 6]),
            "rl": judged(RL, [-1.0, -3.0, -2.0, -2.0, -2.0, -6.0], [2, 3, 1, 1, 2, 6])}


def test_each_measure_and_the_difference_to_sft_against_hand_computation():
    result = quality(_generations(), judged(HUMAN, [-3.0, -2.0, -1.0], [3, 4, 2]), group_size=2, resamples=200)
    # perplexity: exp(-sum log p / sum tokens) pooled over the answers; an empty answer adds nothing to either
    # distinct-2: SFT's 14 word 2-grams (5 + 3 + 1 + 5) hold 10 distinct ones ((a, a) thrice, (x, y) and (y, z) twice)
    assert result["policies"]["sft"] == pytest.approx({
        "perplexity": math.exp(24 / 18), "repeated_3gram_rate": (0.5 + 0.25) / 6, "distinct2": 10 / 14,
        "truncated_rate": 3 / 6, "empty_rate": 2 / 6})
    assert result["policies"]["rl"] == pytest.approx({  # 2-grams: 1 + 2 + 1 + 5 = 9, distinct 1 + 2 + 1 + 3 = 7
        "perplexity": math.exp(16 / 15), "repeated_3gram_rate": 0.25 / 6, "distinct2": 7 / 9,
        "truncated_rate": 1 / 6, "empty_rate": 0.0})
    assert result["human"] == pytest.approx({  # 2-grams: 2 + 3 + 1 = 6, distinct 2 + 1 + 1 = 4
        "perplexity": math.exp(6 / 9), "repeated_3gram_rate": 0.5 / 3, "distinct2": 4 / 6, "truncated_rate": 1 / 3,
        "empty_rate": 0.0})
    assert result["answers"] == {"sft": 6, "rl": 6, "human": 3} and set(result["vs_sft"]) == {"rl"}
    for metric in QUALITY_METRICS:  # RL - SFT: the difference of the two corpus values, inside its interval
        d = result["vs_sft"]["rl"][metric]
        assert d["difference"] == pytest.approx(result["policies"]["rl"][metric] - result["policies"]["sft"][metric])
        assert d["ci"][0] <= d["difference"] <= d["ci"][1] and 0 < d["p_value"] <= 1
    # 3 prompts: the randomization test's 2^3 trades are all counted, so no p is below 2 / 8
    assert min(d["p_value"] for d in result["vs_sft"]["rl"].values()) >= 0.25
    # the interval of a [0, 1] share's difference stays in [-1, 1]
    assert -1 <= result["vs_sft"]["rl"]["empty_rate"]["ci"][0] <= result["vs_sft"]["rl"]["empty_rate"]["ci"][1] <= 1
    table = quality_markdown({"judge": "start", "max_new_tokens": 3, **result})
    assert "| human (chosen) | 1.948 | 0.167 | 0.667 | 0.333 | 0.000 |" in table  # exp(2 / 3) = 1.948
    rl = result["vs_sft"]["rl"]["perplexity"]
    assert f"| RL | {math.exp(16 / 15):.3f} ({rl['difference']:+.3f} [{rl['ci'][0]:+.3f}, {rl['ci'][1]:+.3f}]) |" \
        in table


def test_answers_must_be_of_the_same_prompts_to_be_compared():
    generations = _generations()
    generations["rl"] = generations["rl"][2:] + generations["rl"][:2]  # another order of the prompts
    with pytest.raises(ValueError, match="the rl and SFT answers are not of the same prompts"):
        quality(generations, judged(HUMAN, [-1.0] * 3, [1] * 3), group_size=2, resamples=20)


class _WordTokenizer:
    """One token per word: what answer_ids sees of a tokenizer."""

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": list(range(len(text.split())))}


def test_the_human_row_is_the_first_reference_cut_when_longer_than_sampling_may_write(tmp_path):
    from llm_pg.data.prompts import Example

    examples = [Example("t0", "q", [1], ["one two three", "other"]), Example("t1", "q", [1], ["one two three four"])]
    answers = human_answers(examples, _WordTokenizer(), max_new_tokens=3)
    assert answers == Answers(["t0", "t1"], ["one two three", "one two three four"], [False, True], 1)
    rows = [{"id": "t0", "sample": k, "completion": f"c{k}", "tokens": 3, "truncated": k == 1} for k in range(2)]
    (tmp_path / "samples_sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_answers(tmp_path / "samples_sft.jsonl") == Answers(["t0", "t0"], ["c0", "c1"], [False, True], 2)


def test_the_judges_log_probabilities_are_a_forward_pass_by_hand_at_any_batch_size(tiny_model_dir):
    """Each prompt once for its G answers (the shared prompt pass), left-padded prompts and right-padded answers of
    other lengths in one batch: the same numbers as one forward pass per answer; an empty answer (whitespace only:
    nothing visible) is (0, 0 tokens)."""
    from transformers import AutoModelForCausalLM

    from llm_pg.config.schema import config_from_dict
    from llm_pg.models.policy import load_tokenizer

    tokenizer = load_tokenizer(config_from_dict({"model": {"name_or_path": str(tiny_model_dir)}}).model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts = [tokenizer("the dog")["input_ids"], tokenizer("a cat sat on")["input_ids"], [5, 6]]
    texts = ["ran to the park", "sat", "the mat", "  ", "  ", "  "]  # G = 2 answers of each prompt
    sums, tokens = answer_logprobs(model, tokenizer, prompts, texts, group_size=2, batch_size=6)
    for batch_size in (1, 4):  # one prompt or two per batch
        again = answer_logprobs(model, tokenizer, prompts, texts, group_size=2, batch_size=batch_size)
        assert again[0] == pytest.approx(sums, rel=1e-5) and again[1] == tokens
    alone = answer_logprobs(model, tokenizer, [p for p in prompts for _ in range(2)], texts, group_size=1)
    assert alone[0] == pytest.approx(sums, rel=1e-5) and alone[1] == tokens  # no shared prompt pass
    for i, (text, total, n) in enumerate(zip(texts[:3], sums, tokens)):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert n == len(ids) > 0 and -total == pytest.approx(nll_by_hand(model, prompts[i // 2], ids), rel=1e-5)
    assert (sums[3:], tokens[3:]) == ([0.0] * 3, [0] * 3)


def test_every_policys_answers_to_a_prompt_are_scored_together_and_handed_back_to_each():
    answers = {"sft": Answers(["a", "a", "b", "b"], ["s0", "s1", "s2", "s3"], [False] * 4, 2),
               "rl": Answers(["a", "a", "b", "b"], ["r0", "r1", "r2", "r3"], [False] * 4, 2),
               "human": Answers(["a", "b"], ["h0", "h1"], [False] * 2, 1)}
    texts = interleaved(answers, ["a", "b"])
    assert texts == ["s0", "s1", "r0", "r1", "h0", "s2", "s3", "r2", "r3", "h1"]
    assert deinterleaved(texts, answers, 2) == {name: a.texts for name, a in answers.items()}
    with pytest.raises(ValueError, match="the rl answers are not K = 2 of each test prompt in order"):
        interleaved({**answers, "rl": Answers(["b", "b", "a", "a"], ["r"] * 4, [False] * 4, 2)}, ["a", "b"])
