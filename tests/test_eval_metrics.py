"""Held-out metrics against their reference implementations, the paired bootstrap against a slow loop and
against sacrebleu's own paired bootstrap, and the randomization test's p-value against a full enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU
from sacrebleu.significance import PairedTest

from llm_pg.evaluation.bootstrap import interval_and_p_value, paired_bootstrap, resample_indices, resampled_scores
from llm_pg.evaluation.bootstrap import (compare_generations, significant)
from llm_pg.errors import LlmPgError
from llm_pg.evaluation.metrics import (Generation, corpus_scores, corpus_statistics, repeated_ngram_rate, text_metrics)

COMPLETIONS = ["the cat sat on the mat", "a dog ran in the park today", "it is raining", "hello world",
               "the quick brown fox jumps", "no overlap at all here"]
REFERENCES = [["the cat sat on a mat", "a cat was on the mat"], ["the dog ran in the park"], ["it rains"],
              ["hello there world"], ["the quick brown fox jumps over the lazy dog"], ["something else entirely"]]


def generations(completions, references=REFERENCES, **metrics) -> list[Generation]:
    return [Generation(str(i), 0, "", list(r), c, text_metrics(c, r)) for i, (c, r) in
            enumerate(zip(completions, references))]


def test_bleu_and_chrf_equal_sacrebleu_with_a_varying_number_of_references():
    scores = corpus_scores(COMPLETIONS, REFERENCES)
    streams = [[r[0] for r in REFERENCES], [r[1] if len(r) > 1 else r[0] for r in REFERENCES]]
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(COMPLETIONS, streams).score / 100, abs=1e-12)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(COMPLETIONS, streams).score / 100, abs=1e-12)
    assert scores["bleu_signature"].startswith("nrefs:2|case:mixed|eff:no|tok:13a|smooth:exp")
    assert scores["chrf_signature"].startswith("nrefs:2|")
    assert scores["num_samples"] == 6


def test_rouge_is_the_mean_best_reference_f1_of_rouge_score():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    scores = corpus_scores(COMPLETIONS, REFERENCES)
    for kind in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        expected = np.mean([scorer.score_multi(r, c)[kind].fmeasure for c, r in zip(COMPLETIONS, REFERENCES)])
        assert scores[kind] == pytest.approx(expected, abs=1e-12)
    # rougeLsum splits sentences on newlines: two swapped sentences keep the summary-level LCS, not rougeL's
    two = text_metrics("b c d\na x", ["a x\nb c d"])
    assert two["rougeLsum"] == pytest.approx(1.0) and two["rougeL"] < 1.0


def test_distinct_length_and_repetition_by_hand():
    scores = corpus_scores(["a b a", "a c"], [["x"], ["y"]])
    assert scores["distinct1"] == pytest.approx(3 / 5)  # {a, b, c} over a b a a c
    assert scores["distinct2"] == pytest.approx(3 / 3)  # (a b) (b a) (a c)
    assert scores["length_words"] == pytest.approx(2.5)
    assert repeated_ngram_rate("a b c a b c a") == pytest.approx(1 - 3 / 5)  # abc bca cab abc bca
    assert repeated_ngram_rate("a b") == 0.0  # no 3-gram at all


def test_perplexity_is_per_token_over_the_corpus():
    gens = generations(["x", "y"], [["x"], ["y"]])
    gens[0].ref_logprob, gens[0].tokens = -2.0, 2
    gens[1].ref_logprob, gens[1].tokens = -4.0, 2
    stats = corpus_statistics(gens)
    assert stats.scores()["perplexity"] == pytest.approx(math.exp(6 / 4))
    assert stats.statistics["perplexity"](np.array([1, 1])) == pytest.approx(math.exp(2))  # a resample: y twice


def test_a_system_compared_with_itself_has_no_difference():
    for d in compare_generations(generations(COMPLETIONS), generations(COMPLETIONS), num_resamples=200):
        assert d.difference == 0.0 and d.ci_low == 0.0 and d.ci_high == 0.0
        assert d.p_value == 1.0


def test_an_interval_always_holds_its_estimate():
    """Every prompt gains 2/3: each resample's difference is 2/3 up to float noise, and centring the resamples once
    put both ends one ulp below the observed 0.6666666666666667 (a plot of the run then failed: negative error bar)."""
    a = generations(COMPLETIONS)
    b = generations(COMPLETIONS)
    for f, g in zip(a, b):
        f.metrics["repeated_3gram_rate"], g.metrics["repeated_3gram_rate"] = 0.0, 2 / 3
    for R in (200, 1000):
        for d in compare_generations(a, b, R):
            assert d.ci_low <= d.difference <= d.ci_high, d


def test_bootstrap_of_a_mean_metric_equals_a_slow_loop():
    a = generations(COMPLETIONS)
    b = generations(["the cat sat on the mat", "the dog ran in the park", "it rains", "hello world",
                     "the quick brown fox", "nothing"])
    R = 300
    result = {d.metric: d for d in compare_generations(a, b, R, seed=7)}
    rng = np.random.default_rng(7)
    draws = rng.choice(len(a), size=(R, len(a)), replace=True)
    slow = []
    for draw in draws:
        slow.append(sum(b[i].metrics["rouge1"] for i in draw) / len(draw)
                    - sum(a[i].metrics["rouge1"] for i in draw) / len(draw))
    slow = np.array(slow)
    observed = np.mean([g.metrics["rouge1"] for g in b]) - np.mean([g.metrics["rouge1"] for g in a])
    slow = slow - slow.mean() + observed
    d = result["rouge1"]
    assert d.difference == pytest.approx(np.mean([g.metrics["rouge1"] for g in b])
                                         - np.mean([g.metrics["rouge1"] for g in a]))
    m = max(L for L in range(R) if 2 * (1 + L) / (R + 1) < 0.05)  # the most losing resamples with p < 0.05
    ordered = np.sort(slow)
    assert d.ci_low == pytest.approx(ordered[m]) and d.ci_high == pytest.approx(ordered[R - 1 - m])
    # p: the sign-flip test, exact for 6 prompts (2^6 = 64 <= R): every sign pattern of the 6 differences
    diffs = [g.metrics["rouge1"] - f.metrics["rouge1"] for f, g in zip(a, b)]
    flipped = [abs(sum(s * x for s, x in zip(signs, diffs)) / 6) for signs in itertools.product((1, -1), repeat=6)]
    assert d.p_value == pytest.approx(sum(t >= abs(observed) - 1e-12 for t in flipped) / 64)


def test_resampled_bleu_equals_sacrebleus_paired_bootstrap():
    """Same resamples (generator, seed) and the same BLEU of summed statistics: sacrebleu's mean and 95 % CI of
    the system's resampled scores are reproduced."""
    hyps = [c + " extra" if i % 2 else c for i, c in enumerate(COMPLETIONS * 5)]
    refs = REFERENCES * 5
    streams = [[r[0] for r in refs], [r[1] if len(r) > 1 else r[0] for r in refs]]
    test = PairedTest([("baseline", [c for c in COMPLETIONS * 5]), ("system", hyps)], {"BLEU": BLEU()}, streams,
                      test_type="bs", n_samples=1000)
    _, results = test()
    sacre = results["BLEU"][1]  # the system's Result(score, p_value, mean, ci)
    mine = resampled_scores(corpus_statistics(generations(hyps, refs)).statistics["bleu"],
                            resample_indices(len(hyps), 1000)) * 100
    assert mine.mean() == pytest.approx(sacre.mean, abs=1e-4)
    ordered = np.sort(mine)
    assert 0.5 * (ordered[1000 - 25 - 1] - ordered[25]) == pytest.approx(sacre.ci, abs=1e-4)


def test_a_clearly_better_system_is_significant_with_the_smallest_p_six_prompts_allow():
    """B beats A on all 6 prompts: the exact test's p is 2 / 2^6 (only no trade and the full trade are as extreme),
    not the bootstrap's 2 / (R + 1) = 0.004, which no 6 observations can support."""
    a = generations(["zzz"] * 6)
    b = generations(COMPLETIONS[:5] + ["something else"])  # every completion shares a word with its reference
    assert all(g.metrics["rouge1"] > 0 for g in b)
    for d in compare_generations(a, b, 500):
        if d.metric in ("rouge1", "chrf"):
            assert d.difference > 0 and d.ci_low > 0 and significant(d), d
        if d.metric == "rouge1":
            assert d.p_value == pytest.approx(2 / 64)
        assert d.p_value >= 2 / 64 - 1e-12, d
        assert not significant(d) or d.ci_low > 0 or d.ci_high < 0, d


def test_randomization_p_of_corpus_bleu_equals_sacrebleu_on_every_traded_corpus():
    """Corpus BLEU is not a mean: the test trades whole prompts' outputs and rescores the corpora. Here every one of
    the 2^6 trades is rescored by sacrebleu itself."""
    hyps_a, hyps_b = ["zzz"] * 6, COMPLETIONS
    streams = [[r[0] for r in REFERENCES], [r[1] if len(r) > 1 else r[0] for r in REFERENCES]]
    bleu = lambda hyps: sacrebleu.corpus_bleu(hyps, streams).score / 100  # noqa: E731
    observed = abs(bleu(hyps_b) - bleu(hyps_a))
    extreme = 0
    for trade in itertools.product((False, True), repeat=6):
        a = [y if t else x for x, y, t in zip(hyps_a, hyps_b, trade)]
        b = [x if t else y for x, y, t in zip(hyps_a, hyps_b, trade)]
        extreme += abs(bleu(b) - bleu(a)) >= observed - 1e-12
    d = {d.metric: d for d in compare_generations(generations(hyps_a), generations(hyps_b), 500)}["bleu"]
    assert d.p_value == pytest.approx(extreme / 64) and extreme >= 2


@pytest.mark.parametrize("R", [40, 79, 100, 300, 999, 1000, 2000])
def test_the_interval_excludes_zero_exactly_when_p_is_below_005(R):
    """Every count of losing resamples, on either side of 0, and ties at 0."""
    for losing in range(0, R // 10):
        for sign in (1.0, -1.0):
            e = sign * np.concatenate([-np.arange(1, losing + 1), np.arange(1, R - losing + 1)]).astype(float)
            if losing:
                e[0] = 0.0  # a tie counts on both sides
            low, high, p = interval_and_p_value(e)
            assert (p < 0.05) == (low > 0 or high < 0), (R, losing, sign, low, high, p)


def test_k_samples_per_prompt_are_resampled_together():
    """Two identical samples per prompt carry no more information than one: the interval equals that of the
    prompt-level data (resampling completions independently would make it narrower)."""
    a, b = generations(["zzz"] * 6), generations(COMPLETIONS)
    one = {d.metric: d for d in compare_generations(a, b, 300)}
    twice = lambda gens: [Generation(g.id, k, g.prompt, g.references, g.completion, g.metrics)  # noqa: E731
                          for g in gens for k in range(2)]
    two = {d.metric: d for d in compare_generations(twice(a), twice(b), 300)}
    for name in ("rouge1", "rougeL"):
        assert (two[name].ci_low, two[name].ci_high) == pytest.approx((one[name].ci_low, one[name].ci_high))
        assert two[name].p_value == pytest.approx(one[name].p_value)  # 6 prompts traded, not 12 samples
    assert resample_indices(4, 1, seed=0, group_size=2).tolist() in ([[0, 1, 0, 1]], [[0, 1, 2, 3]],
                                                                     [[2, 3, 0, 1]], [[2, 3, 2, 3]])
    with pytest.raises(LlmPgError, match="3 samples are not 2 samples for each prompt"):
        resample_indices(3, 1, group_size=2)


def test_bootstrap_needs_paired_systems():
    a, b = generations(COMPLETIONS), generations(COMPLETIONS[:3], REFERENCES[:3])
    with pytest.raises(LlmPgError, match="same prompts"):
        paired_bootstrap(corpus_statistics(a), corpus_statistics(b), corpus_statistics(a + b))
