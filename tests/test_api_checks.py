"""The library's entry points check what the CLI checks, and a few refusals found by a second hostile-input review:
a config changed after load_config, a stop string the tokenizer cannot produce, a resume whose checkpoints are all
damaged."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

import llm_pg
from helpers import assert_one_line_error, cli_main, tiny_config, write_config_yaml
from llm_pg.errors import ConfigError, LlmPgError
from llm_pg.runs.checkpoint import checkpoint_dir


@pytest.mark.parametrize("api", ["train", "train_sft", "train_reward_model", "train_dpo", "run_pipeline"])
@pytest.mark.parametrize("given", [{"training": {"max_steps": 3}}, "my_run.yaml", None])
def test_every_entry_point_wants_a_train_config(api, given, tmp_path):
    with pytest.raises(ConfigError) as refused:
        getattr(llm_pg, api)(given)
    assert str(refused.value) == (f"llm_pg.{api}: expected a TrainConfig (llm_pg.load_config('my_run.yaml')), got "
                                  f"{type(given).__name__}")


@pytest.mark.parametrize("field, value, message", [
    ("learning_rate", -1.0, "training.learning_rate: must be > 0"),
    ("prompts_per_step", 0, "training.prompts_per_step"),
    ("max_steps", 0, "training.max_steps: must be >= 1"),
])
def test_a_field_set_after_load_config_is_checked_again(field, value, message, tiny_model_dir, tiny_data_file,
                                                          tmp_path):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path / "run")
    setattr(config.training, field, value)
    with pytest.raises(ConfigError, match=message):
        llm_pg.train(config)
    assert not (tmp_path / "run").exists()


def test_run_pipeline_refuses_resume_and_overwrite_together(tiny_model_dir, tiny_data_file, tmp_path):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path / "run")
    with pytest.raises(ConfigError, match="give one of them"):
        llm_pg.run_pipeline(config, resume=True, overwrite=True)


def test_a_stop_string_the_tokenizer_cannot_produce_is_refused_at_set_up(tiny_model_dir, tiny_data_file, tmp_path,
                                                                         capsys):
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "run")
    assert cli_main("train", "--config", str(config), 'generation.stop_strings=["§"]') == 2
    assert_one_line_error(capsys.readouterr().err, "generation.stop_strings", "cannot be matched by the tokenizer",
                          "remove the string or choose another model")
    assert not (tmp_path / "run").exists()  # refused before the first step: no half-made folder


def test_resume_with_every_checkpoint_damaged_is_refused_and_changes_nothing(tiny_model_dir, tiny_data_file,
                                                                             tmp_path, capsys):
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "run",
                               **{"training.max_steps": 2, "training.save_every": 1})
    assert cli_main("train", "--config", str(config)) == 0
    run = tmp_path / "run"
    for step in (1, 2):
        (checkpoint_dir(run, step) / "optimizer.pt").unlink()
    before = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*")) if p.is_file()}
    capsys.readouterr()
    assert cli_main("train", "--config", str(config), "--resume", "training.max_steps=4") == 2
    assert_one_line_error(capsys.readouterr().err, "--resume: no intact checkpoint", "step-000001, step-000002",
                          "--overwrite")
    after = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.rglob("*")) if p.is_file()}
    assert {k: v for k, v in after.items() if "lock" not in k} == {k: v for k, v in before.items() if "lock" not in k}
    shutil.rmtree(run)


def test_the_refusals_are_llm_pg_errors():
    assert issubclass(ConfigError, LlmPgError) and Path(llm_pg.__file__).is_file()
