"""The `llm-pg` command line: a real train and eval run, and one-line errors (exit 2) for bad input.

Each subprocess pays ~4 s of imports on this machine, so only the runs that must be real processes are
subprocesses; the other bad-input cases call `llm_pg.cli.main` in-process (the same code path, one import).
"""

from __future__ import annotations

import json

import pytest

from helpers import assert_one_line_error, run_cli, write_config_yaml
from llm_pg.cli import main
from llm_pg.config.schema import load_config
from llm_pg.data.prompts import load_examples
from llm_pg.evaluation.heldout import evaluate_examples
from llm_pg.models.policy import load_policy, load_tokenizer

SPLITS = {"data.split_fractions": [0.5, 0.25, 0.25]}  # 24 rows: a test split of a few rows, never empty


@pytest.fixture
def config_yaml(tiny_model_dir, tiny_data_file, tmp_path):
    """The tiny config written as YAML, as a user would pass it to --config."""
    return write_config_yaml(tmp_path / "tiny.yaml", tiny_model_dir, tiny_data_file, tmp_path / "run", **SPLITS)


def test_train_subprocess(config_yaml, tmp_path):
    result = run_cli("train", "--config", config_yaml, "training.max_steps=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "run"
    assert (run_dir / "final" / "model.safetensors").is_file()
    assert (run_dir / "final" / "tokenizer.json").is_file()
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    saved = load_config(run_dir / "config.yaml")  # the resolved config reads back as a config
    assert saved.training.max_steps == 2  # the override, not the YAML's 3
    assert saved.training.learning_rate == 1e-2 and saved.generation.num_samples == 2
    assert saved.data.split_fractions == [0.5, 0.25, 0.25]
    assert "llm-pg: error" not in result.stderr


def bad_input_cases(tmp_path, tiny_data_file):
    return {
        "unknown key": (["training.learning_rat=1"], ["training.learning_rate"]),
        "wrong type": (["training.max_steps=abc"], ["training.max_steps", "abc"]),
        "missing data file": ([f"data.source={tmp_path / 'missing.jsonl'}"], ["data.source", "not found"]),
        "leave_one_out with k=1": (["algorithm.baseline=leave_one_out", "generation.num_samples=1"],
                                   ["leave_one_out", "generation.num_samples"]),
        "missing model": ([f"model.name_or_path={tmp_path / 'no_such_model'}"], ["model.name_or_path",
                                                                                 "no_such_model"]),
        "bad section": (["training=3"], ["training"]),
    }


@pytest.mark.parametrize("case", ["unknown key", "wrong type", "missing data file", "leave_one_out with k=1",
                                  "missing model", "bad section"])
def test_bad_input_prints_one_line_and_exits_2(case, config_yaml, tiny_data_file, tmp_path, capsys):
    overrides, needles = bad_input_cases(tmp_path, tiny_data_file)[case]
    assert main(["train", "--config", str(config_yaml), *overrides]) == 2
    captured = capsys.readouterr()
    assert_one_line_error(captured.err, *needles)
    assert not (tmp_path / "run" / "final").exists()


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"llm-pg: error: --config: file not found: {tmp_path / 'nope.yaml'}"


def test_missing_relative_data_file_is_reported_as_a_missing_file(config_yaml, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(config_yaml), "data.source=data/missing.jsonl"]) == 2
    assert_one_line_error(capsys.readouterr().err, "not found")


@pytest.mark.parametrize("case", ["unknown key", "missing config"])
def test_errors_from_a_real_process(case, config_yaml, tmp_path):
    """Exit status 2 and a clean one-line stderr as the shell sees them (config errors: no model is loaded)."""
    if case == "unknown key":
        argv = ["train", "--config", config_yaml, "training.learning_rat=1"]
        needles = ["unknown config key 'training.learning_rat'", "did you mean 'training.learning_rate'"]
    else:
        argv, needles = ["train", "--config", tmp_path / "missing.yaml"], ["--config: file not found"]
    result = run_cli(*argv, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert_one_line_error(result.stderr, *needles)
    assert result.stdout == ""


def test_eval_subprocess_writes_scores(config_yaml, tiny_model_dir, tmp_path):
    output = tmp_path / "e.json"
    result = run_cli("eval", "--model", tiny_model_dir, "--config", config_yaml, "--output", output, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads(output.read_text())
    scores = saved["scores"]
    assert {"bleu", "rouge1", "rouge2", "rougeL", "num_samples"} <= set(scores)
    assert 0.0 <= scores["bleu"] <= 1.0 and 0.0 <= scores["rougeL"] <= 1.0
    assert json.loads(result.stdout) == scores  # the same scores are printed

    # The same greedy evaluation in-process gives the same numbers and the same test examples.
    config = load_config(config_yaml)
    tokenizer, model = load_tokenizer(config.model), load_policy(config.model)
    examples = load_examples(config.data, config.data.test_split, tokenizer)
    generations = [json.loads(line) for line in output.with_suffix(".jsonl").read_text().splitlines()]
    assert [g["id"] for g in generations] == [e.id for e in examples]
    expected = evaluate_examples(model, tokenizer, examples, config.generation, config.evaluation.batch_size)
    assert scores["num_samples"] == len(examples) > 0
    for key in ("bleu", "rougeL"):
        assert scores[key] == pytest.approx(expected[key], abs=1e-9)


@pytest.mark.parametrize("argv, needles", [
    ([], ["the following arguments are required: command", "see `llm-pg --help`"]),
    (["trian"], ["invalid choice: 'trian'", "see `llm-pg --help`"]),
    (["train"], ["train: the following arguments are required: --config", "see `llm-pg train --help`"]),
    (["train", "--config", "c.yaml", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["eval", "--resamples", "many"], ["eval: argument --resamples: invalid int value: 'many'",
                                       "see `llm-pg eval --help`"]),
])
def test_usage_errors_are_one_line_too(argv, needles, capsys):
    """argparse prints the whole usage before its message by default; here it is one line, as every refusal."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert_one_line_error(err, *needles)
    assert len(err.strip().splitlines()) == 1, err  # no usage block above it
