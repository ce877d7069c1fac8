"""Rewards equal sacrebleu / rouge-score on the same strings, multi-reference included."""

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from llm_pg.errors import ConfigError
from llm_pg.evaluation import corpus_scores
from llm_pg.rewards import REWARDS, RewardModel

HYPS = ["Return the number of items in the queue.", "the cat sat on a mat", "", "Ça marche très bien — 東京"]
REFS = [["Return the size of the queue.", "Count the queued items."], ["the cat is on the mat"],
        ["anything"], ["ça marche bien", "東京 is big"]]


def test_sentence_bleu_equals_sacrebleu():
    got = REWARDS["bleu"]([""] * 4, HYPS, REFS)
    want = [sacrebleu.sentence_bleu(h, r).score / 100 for h, r in zip(HYPS, REFS)]
    assert got == pytest.approx(want, abs=1e-12)
    assert got[0] > 0 and 0 <= min(got) and max(got) <= 1


@pytest.mark.parametrize("kind", ["rouge1", "rouge2", "rougeL"])
def test_rouge_equals_rouge_score_best_reference(kind):
    scorer = rouge_scorer.RougeScorer([kind], use_stemmer=True)
    got = REWARDS[kind]([""] * 4, HYPS, REFS)
    want = [max(scorer.score(ref, h)[kind].fmeasure for ref in refs) for h, refs in zip(HYPS, REFS)]
    assert got == pytest.approx(want, abs=1e-12)


def test_rougeL_hand_value():
    # LCS("the cat sat on a mat", "the cat is on the mat") = the cat on mat = 4; P = 4/6, R = 4/6
    assert REWARDS["rougeL"]([""], ["the cat sat on a mat"], [["the cat is on the mat"]])[0] == pytest.approx(4 / 6)


def test_reward_model_mixes_by_weight_and_reports_components():
    model = RewardModel.from_config([{"name": "rougeL", "weight": 0.5}, {"name": "bleu", "weight": 2.0}])
    total, parts = model([""] * 4, HYPS, REFS)
    assert set(parts) == {"rougeL", "bleu"}
    for i in range(4):
        assert total[i] == pytest.approx(0.5 * parts["rougeL"][i] + 2.0 * parts["bleu"][i])


def test_reward_model_rejects_unknown_options():
    with pytest.raises(ConfigError, match=r"reward.components\[0\]"):
        RewardModel.from_config([{"name": "rougeL", "wieght": 1.0}])


def test_corpus_scores_equal_sacrebleu_corpus_bleu_with_ragged_references():
    scores = corpus_scores(HYPS, REFS)
    # sacrebleu wants one stream per reference position; short lists repeat their first reference
    streams = [[r[0] for r in REFS], [r[1] if len(r) > 1 else r[0] for r in REFS]]
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, streams).score / 100)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    want = sum(scorer.score_multi(r, h)["rougeL"].fmeasure for h, r in zip(HYPS, REFS)) / 4
    assert scores["rougeL"] == pytest.approx(want)
    assert scores["num_samples"] == 4 and scores["bleu_signature"].startswith("nrefs:2")
