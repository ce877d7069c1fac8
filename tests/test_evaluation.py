"""`evaluate_split` and `llm-pg eval` on the tiny model: files written, per-sample metrics, sampling, comparison."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from helpers import assert_one_line_error, tiny_config, write_config_yaml
from llm_pg.cli import main
from llm_pg.data.prompts import load_examples
from llm_pg.evaluation.heldout import evaluate_split, load_generations
from llm_pg.models.policy import load_policy, load_tokenizer
from llm_pg.rewards import RewardMix

SPLITS = {"data.split_fractions": [0.5, 0.25, 0.25]}


@pytest.fixture(scope="module")
def setup(tiny_model_dir, tiny_data_file, tmp_path_factory):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path_factory.mktemp("eval_run"), **SPLITS,
                         **{"reward.components": [{"name": "rougeL", "weight": 1.0}, {"name": "bleu", "weight": 0.5}]})
    tokenizer, model = load_tokenizer(config.model), load_policy(config.model)
    examples = load_examples(config.data, "test", tokenizer)
    return config, tokenizer, model, examples


def test_evaluate_split_writes_scores_and_every_generation(setup, tmp_path):
    config, tokenizer, model, examples = setup
    reward = RewardMix.from_config(config.reward)
    scores, gens = evaluate_split(config, model, tokenizer, examples, reward, reference=model,
                                  output=tmp_path / "eval.json")
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["scores"] == pytest.approx(scores) and saved["settings"]["generations"] == "eval.jsonl"
    lines = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == [e.id for e in examples]  # one greedy completion per prompt, in order
    assert {"prompt", "references", "completion", "metrics", "tokens"} <= set(lines[0])
    for line in lines:
        m = line["metrics"]
        assert m["reward"] == pytest.approx(m["reward_rougeL"] + 0.5 * m["reward_bleu"])  # the configured reward
        assert m["reward_rougeL"] == pytest.approx(m["rougeL"])
        assert m["perplexity"] == pytest.approx(math.exp(-line["ref_logprob"] / line["tokens"]))
        assert 1 <= line["tokens"] <= 6
    # corpus perplexity: per token over all completions; the policy scores its own greedy tokens as likely
    total = sum(line["ref_logprob"] for line in lines) / sum(line["tokens"] for line in lines)
    assert scores["perplexity"] == pytest.approx(math.exp(-total)) and scores["perplexity"] >= 1.0
    assert scores["reward"] == pytest.approx(sum(line["metrics"]["reward"] for line in lines) / len(lines))
    assert scores["length_tokens"] == pytest.approx(sum(line["tokens"] for line in lines) / len(lines))
    assert [g.completion for g in load_generations(tmp_path / "eval.json")] == [g.completion for g in gens]


def test_sampled_evaluation_scores_n_completions_per_prompt(setup):
    config, tokenizer, model, examples = setup
    config = tiny_config(config.model.name_or_path, config.data.source, "unused", **SPLITS,
                         **{"evaluation.do_sample": True, "evaluation.num_samples": 3})
    scores, gens = evaluate_split(config, model, tokenizer, examples)
    assert [(g.id, g.sample) for g in gens] == [(e.id, k) for e in examples for k in range(3)]
    assert scores["num_samples"] == 3 * len(examples)
    assert "reward" not in scores and "perplexity" not in scores  # no reward model, no reference given


def test_eval_and_compare_from_the_command_line(tiny_model_dir, tiny_data_file, tmp_path, capsys):
    config_yaml = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "run", **SPLITS)
    greedy, sampled = tmp_path / "greedy.json", tmp_path / "sampled.json"
    assert main(["eval", "--model", str(tiny_model_dir), "--config", str(config_yaml), "--output", str(greedy)]) == 0
    assert main(["eval", "--model", str(tiny_model_dir), "--config", str(config_yaml), "--output", str(sampled),
                 "evaluation.do_sample=true"]) == 0
    scores = json.loads(greedy.read_text())["scores"]
    assert {"bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum", "reward", "perplexity", "distinct1",
            "distinct2", "repeated_3gram_rate", "length_tokens"} <= set(scores)
    out = capsys.readouterr().out
    assert json.loads(out[:out.index("\n}") + 2]) == scores  # stdout: the scores as JSON
    # the model is its own reference ('start' = the config's model): perplexity of its greedy text is small
    assert 1.0 <= scores["perplexity"] < json.loads(sampled.read_text())["scores"]["perplexity"]

    comparison = tmp_path / "cmp.json"
    assert main(["eval", "--compare", str(greedy), str(sampled), "--output", str(comparison)]) == 0
    result = json.loads(comparison.read_text())
    by_metric = {d["metric"]: d for d in result["differences"]}
    assert by_metric["rougeL"]["difference"] == pytest.approx(
        json.loads(sampled.read_text())["scores"]["rougeL"] - scores["rougeL"])
    assert all(d["ci_low"] <= d["difference"] <= d["ci_high"] for d in result["differences"])
    assert "95% CI" in capsys.readouterr().out
    assert result["resamples"] == 1000
    first = comparison.read_bytes()
    again = ["eval", "--compare", str(greedy), str(sampled), "--output", str(comparison), "--resamples", "50"]
    assert main(again) == 2  # an earlier comparison is replaced only with --overwrite
    assert_one_line_error(capsys.readouterr().err, "eval --output", "earlier `llm-pg eval` output", "--overwrite")
    assert comparison.read_bytes() == first
    assert main([*again, "--overwrite"]) == 0
    assert json.loads(comparison.read_text())["resamples"] == 50 and "50 bootstrap resamples" in capsys.readouterr().out
    # never over an input (its .json or its .jsonl), another command's file, an evaluation, or a folder
    shutil.copy(greedy, tmp_path / "third.json")
    before = {p: p.read_bytes() for p in tmp_path.glob("*.json*")}
    for output, message in [(greedy, "would replace an input of --compare"),
                            (sampled.with_suffix(".jsonl"), "would replace an input of --compare"),
                            (config_yaml, "was not written by `llm-pg eval`"), (tmp_path, "is a folder"),
                            (tmp_path / "third.json", "holds an `llm-pg eval` evaluation, not an earlier comparison")]:
        assert main(["eval", "--compare", str(greedy), str(sampled), "--output", str(output), "--overwrite"]) == 2
        assert_one_line_error(capsys.readouterr().err, "eval --output", message)
    assert {p: p.read_bytes() for p in tmp_path.glob("*.json*")} == before


ROW = {"id": "0", "sample": 0, "prompt": "p", "references": ["r"], "completion": "c", "metrics": {"rougeL": 0.5}}


@pytest.mark.parametrize("rows, message", [
    ([], "holds no generations"),
    ([{**ROW, "metrics": {"reward": "high"}}], "metric 'reward' is 'high', not a number"),
    ([{**ROW, "metrics": ["rougeL"]}], "not a generations file of `llm-pg eval`"),
])
def test_compare_of_damaged_generations_files_is_one_line(rows, message, tmp_path, capsys):
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "--compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]) == 2
    assert_one_line_error(capsys.readouterr().err, str(tmp_path / "a.jsonl"), message)


def test_eval_bad_input_is_one_line(tiny_model_dir, tiny_data_file, tmp_path, capsys):
    assert main(["eval"]) == 2
    assert_one_line_error(capsys.readouterr().err, "--model and --config", "--compare")
    assert main(["eval", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2
    assert_one_line_error(capsys.readouterr().err, "a.jsonl")
    config_yaml = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "run", **SPLITS)
    assert main(["eval", "--model", str(tiny_model_dir), "--config", str(config_yaml),
                 "evaluation.num_samples=2"]) == 2
    assert_one_line_error(capsys.readouterr().err, "evaluation.num_samples", "do_sample")
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    row = {"id": "1", "sample": 0, "prompt": "p", "references": ["r"], "completion": "c", "metrics": {}}
    a.write_text(json.dumps(row) + "\n")
    b.write_text(json.dumps({**row, "id": "2"}) + "\n")
    assert main(["eval", "--compare", str(a), str(b)]) == 2
    assert_one_line_error(capsys.readouterr().err, "same prompts")
    assert main(["eval", "--compare", str(a), str(a), "--resamples", "0"]) == 2
    assert_one_line_error(capsys.readouterr().err, "--resamples")


def test_held_out_reward_is_the_raw_reward_when_training_normalizes_it(tiny_model_dir, tiny_data_file, tmp_path):
    """reward.normalize/clip shape the training reward only: eval_before's reward is the raw value (here minus the
    completion's length in characters), in the trainer and in `llm-pg eval`; a single component is still written
    as reward_<name>."""
    from llm_pg.training.rl import train

    shaped = {**SPLITS, "reward.components": [{"name": "length_penalty", "unit": "chars"}], "reward.normalize": True,
              "reward.clip": [-0.01, 0.01], "training.max_steps": 1, "evaluation.before_training": True}
    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path / "run", **shaped))
    generations = load_generations(tmp_path / "run" / "eval_before.jsonl")
    assert any(len(g.completion) > 1 for g in generations)  # normalizing or clipping would show
    for g in generations:
        assert g.metrics["reward"] == g.metrics["reward_length_penalty"] == -len(g.completion)

    config_yaml = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "r2", **shaped)
    assert main(["eval", "--model", str(tiny_model_dir), "--config", str(config_yaml),
                 "--output", str(tmp_path / "e.json")]) == 0
    for g in load_generations(tmp_path / "e.json"):
        assert g.metrics["reward"] == -len(g.completion)
