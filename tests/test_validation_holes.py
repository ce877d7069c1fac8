"""Config values that used to slip through validation (issue 13, part B): each is one line naming the field and
the fix, exit code 2, before any model loads, and nothing is written. The limits of issue 24 (clip ranges that
invert or reach 0, a soft overlong window that no completion reaches: llm_pg/checks/limits.py) are checked the same way.

Every case runs through `llm_pg.cli.main` in-process (the console script's code path; config checks need no
model, so this is quick), and a representative subset runs as a real process as well.
"""

from __future__ import annotations

import math

import pytest

from helpers import CAN_LEARN, assert_one_line_error, run_cli, write_config_yaml
from llm_pg.cli import main
from llm_pg.config.schema import load_config

OVERLONG = "type: soft_overlong_punishment"
# case -> (overrides after `train --config <tiny.yaml>`, words the error line must contain)
CASES = {
    "temperature NaN": (["generation.temperature=.nan"], ["generation.temperature", "finite number"]),
    "learning rate NaN": (["training.learning_rate=.nan"], ["training.learning_rate", "finite number"]),
    "kl.coef inf": (["kl.coef=.inf"], ["kl.coef", "finite number"]),
    "a NaN inside a list": (["training.adam_betas=[0.9, .nan]"], ["training.adam_betas[1]", "finite number"]),
    "log_every 0": (["training.log_every=0"], ["training.log_every", ">= 1"]),
    "keep_checkpoints 0": (["training.keep_checkpoints=0"], ["training.keep_checkpoints", ">= 1"]),
    "negative max_grad_norm": (["training.max_grad_norm=-1"], ["training.max_grad_norm", ">= 0", "0 = no clipping"]),
    "negative top_k": (["generation.top_k=-5"], ["generation.top_k", ">= 0", "0 = off"]),
    "adam beta 1.5": (["training.adam_betas=[0.9, 1.5]"], ["training.adam_betas", "[0, 1)"]),
    "one adam beta": (["training.adam_betas=[0.9]"], ["training.adam_betas", "two numbers"]),
    "negative num_threads": (["training.num_threads=-2"], ["training.num_threads", "[0, 1024]"]),
    "a meaning encoder folder that is not there": (["evaluation.meaning_encoder=/no/such/encoder",
                                                    "evaluation.after_training=true"],
                                                   ["evaluation.meaning_encoder", "/no/such/encoder", "not found"]),
    "num_threads past a C int": (["training.num_threads=100000000000"], ["training.num_threads", "[0, 1024]"]),
    "negative max_prompt_tokens": (["data.max_prompt_tokens=-3"], ["data.max_prompt_tokens", ">= 1"]),
    "zero max_prompt_tokens": (["data.max_prompt_tokens=0"], ["data.max_prompt_tokens", ">= 1"]),
    "negative split fraction": (["data.split_fractions=[1.2, -0.1, -0.1]"], ["data.split_fractions", ">= 0"]),
    "empty stop string": (['generation.stop_strings=[""]'], ["generation.stop_strings", "empty string", "remove it"]),
    "empty output_dir": (["training.output_dir="], ["training.output_dir", "must not be empty"]),
    "negative seed": (["training.seed=-1"], ["training.seed", "[0, 2**32)"]),
    "negative save_every": (["training.save_every=-1"], ["training.save_every", ">= 0"]),
    "max_bad_updates 0": (["training.max_bad_updates=0"], ["training.max_bad_updates", ">= 1"]),
    "moving average decay 2": (["algorithm.moving_average_decay=2"], ["algorithm.moving_average_decay", "[0, 1]"]),
    "max_train_samples 0": (["data.max_train_samples=0"], ["data.max_train_samples", ">= 1"]),
    "evaluation.max_new_tokens 0": (["evaluation.max_new_tokens=0"], ["evaluation.max_new_tokens", ">= 1"]),
    "override that is not YAML": (["reward.components=[{name: rougeL"], ["override 'reward.components=",
                                                                         "not valid YAML", "[a, b]"]),
    "template with a stray brace": (["data.prompt_template=Q: {prompt"], ["data.prompt_template",
                                                                          "literal brace as {{ or }}"]),
    "template with a closing brace": (["data.prompt_template=Q} {prompt}"], ["data.prompt_template",
                                                                             "literal brace as {{ or }}"]),
    "template with a positional field": (["data.prompt_template=Q: {} {prompt}"], ["data.prompt_template", "{}",
                                                                                 "no field name", "{{ or }}"]),
    "template with a numbered field": (["data.prompt_template={0}"], ["data.prompt_template", "{0}", "{prompt}"]),
    "template with an attribute": (["data.prompt_template={prompt.upper}"], ["data.prompt_template",
                                                                             "reads an attribute or an index"]),
    "warmup with a constant schedule": (["training.warmup_steps=5"], ["training.warmup_steps", "lr_scheduler=constant",
                                                                      "linear or cosine"]),
    "a reference model that does not exist": (["evaluation.reference_model=./no/such/model"],
                                              ["evaluation.reference_model", "not found", "'start' or 'none'"]),
    "flow mapping without a space": (["reward.components=[{name:rougeL}]"], ["reward.components[0]", "name:rougeL",
                                                                             "space after the colon",
                                                                             "{name: rougeL}"]),
    # limits of issue 24 (llm_pg/checks/limits.py): values that load but cannot work
    "an old name and its new name at two values": (
        ["grpo.epsilon=0.1", "ppo.clip_eps=0.3"],
        ["override 'ppo.clip_eps=0.3'", "ppo.clip_eps=0.3 and grpo.epsilon=0.1 set one knob to two values",
         "grpo.epsilon is the old name of ppo.clip_eps", "keep only ppo.clip_eps"]),
    "clip-higher below the clip by the old names": (["grpo.epsilon_high=0.1"], [
        "ppo.clip_eps_high: 0.1 is below ppo.clip_eps=0.2", "clip_eps_high >= clip_eps", "or null"]),
    "ppo clip_eps 1": (["ppo.clip_eps=1"], ["ppo.clip_eps: 1.0 must lie in (0, 1)", "1 - clip_eps"]),
    "ppo clip_eps_high below clip_eps": (["ppo.clip_eps_high=0.1"], ["ppo.clip_eps_high: 0.1 is below ppo.clip_eps=0.2",
                                                                     "clip_eps_high >= clip_eps", "or null"]),
    "overlong window longer than max_new_tokens": (
        [f"reward.components=[{{name: o, {OVERLONG}, max_completion_len: 10, soft_punish_cache: 8}}]"],
        ["reward.components[0].soft_punish_cache: a window of 8 tokens is longer than generation.max_new_tokens=6",
         "set it below 6", "max_completion_len: 6"]),
    "overlong ramp that no completion reaches": (
        [f"reward.components=[{{name: o, {OVERLONG}, max_completion_len: 12, soft_punish_cache: 4}}]"],
        ["reward.components[0].max_completion_len: the punishment starts after token 8",
         "generation.max_new_tokens=6", "reward would be 0 for every completion", "set max_completion_len to 6"]),
    "negative entropy bonus": (["algorithm.entropy_coef=-0.1"], ["algorithm.entropy_coef: must be >= 0"]),
    "adaptive KL from a coefficient of 0": (["kl.target=6.0", "kl.coef=0"], ["kl.target:", "kl.coef, which is 0",
                                                                             "kl.target: null"]),
    "a critic that never trains": (["algorithm.name=actor_critic", "critic.loss_coef=0"],
                                   ["critic.loss_coef: 0 leaves the value head untrained",
                                    "algorithm.name=actor_critic"]),
    "top_k with greedy evaluation": (["evaluation.top_k=5"], ["evaluation.top_k / top_p: act on sampled evaluation "
                                                              "only", "evaluation.do_sample: true"]),
    "rm keep_checkpoints 0": (["rm.keep_checkpoints=0"], ["rm.keep_checkpoints: must be >= 1"]),
    "rm LoRA dropout 1": (["rm.lora.dropout=1.0"], ["rm.lora.dropout: must lie in [0, 1)"]),
    "unknown rm dtype": (["rm.dtype=float8"], ["rm.dtype: 'float8' is not one of"]),
    "rm max_train_pairs 0": (["rm.max_train_pairs=0"], ["rm.max_train_pairs: must be >= 1"]),
}
# a subprocess costs 5-10 s here: one per kind of check (non-finite, range, text, template, YAML shape)
IN_A_REAL_PROCESS = ["temperature NaN", "negative max_prompt_tokens", "empty output_dir",
                     "template with a stray brace", "flow mapping without a space",
                     "overlong window longer than max_new_tokens", "an old name and its new name at two values"]


@pytest.fixture
def config(tiny_model_dir, tiny_data_file, tmp_path):
    return write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "run")


@pytest.mark.parametrize("name", list(CASES))
def test_each_hole_is_one_line(name, config, tmp_path, capsys):
    overrides, needles = CASES[name]
    assert main(["train", "--config", str(config), *overrides]) == 2
    assert_one_line_error(capsys.readouterr().err, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # nothing written


@pytest.mark.parametrize("name", IN_A_REAL_PROCESS)
def test_holes_from_a_real_process(name, config, tmp_path):
    overrides, needles = CASES[name]
    result = run_cli("train", "--config", config, *overrides, cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_a_section_written_twice_is_refused(config, tmp_path):
    """YAML keeps the last of two `training:` sections: the first one's settings would silently vanish."""
    text = config.read_text() + "training:\n  max_steps: 7\n"
    config.write_text(text)
    line = text.splitlines().index("training:") + 1
    result = run_cli("train", "--config", config, cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, f"--config {config}", "'training' is written twice",
                          f"lines {line} and {len(text.splitlines()) - 1}", "merge them")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, read_as", [("on", "True"), ("no", "False"), ("5", "5"), ("null", "None")])
def test_a_yaml_key_that_is_not_a_name_is_one_line(key, read_as, config, tmp_path, capsys):
    """YAML 1.1 reads `on:` as the boolean True (and `5:`, `null:` as a number and None): one line, no TypeError."""
    config.write_text(config.read_text().replace("  max_steps: 3\n", f"  max_steps: 3\n  {key}: 3\n"))
    assert main(["train", "--config", str(config)]) == 2
    assert_one_line_error(capsys.readouterr().err, f"unknown config key 'training.{read_as}'", "quote a key")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_a_key_written_twice_inside_a_section_is_refused(config, tmp_path):
    config.write_text(config.read_text().replace("  max_steps: 3\n", "  max_steps: 3\n  max_steps: 5\n"))
    with pytest.raises(Exception, match="'max_steps' is written twice"):
        load_config(config)


def test_text_overrides_take_the_text_as_typed(config):
    """A template with ': ' or braces is not YAML, but for a text field it is exactly what the user meant."""
    assert load_config(config, ["data.prompt_template=Q: {prompt} A:"]).data.prompt_template == "Q: {prompt} A:"
    assert load_config(config, ["data.prompt_template={prompt}"]).data.prompt_template == "{prompt}"
    assert load_config(config, ["data.prompt_template={{json}} {prompt}"]).data.prompt_template == \
        "{{json}} {prompt}"
    assert load_config(config, ["data.system_prompt=Be brief: one line"]).data.system_prompt == "Be brief: one line"
    assert load_config(config, ["training.learning_rate=1e-3"]).training.learning_rate == 1e-3  # numbers stay numbers


def test_finite_values_still_pass(config):
    """The checks reject only what cannot train: edge values inside every range load."""
    c = load_config(config, ["training.max_grad_norm=0", "generation.top_k=0", "training.num_threads=0",
                             "data.split_fractions=[1.0, 0.0, 0.0]", "training.adam_betas=[0.0, 0.999]",
                             "data.max_prompt_tokens=1", "training.keep_checkpoints=1",
                             "evaluation.meaning_encoder=/no/such/encoder"])  # unused: evaluations are off
    assert c.training.max_grad_norm == 0 and math.isfinite(c.training.learning_rate)
    assert c.training.num_threads == 0 and c.evaluation.meaning_encoder == "/no/such/encoder"
    assert load_config(config, ["training.num_threads=1024"]).training.num_threads == 1024


# ----------------------------------------------------------------------------------- said once, not refused

def test_settings_a_user_rarely_means_are_each_said_once_and_the_run_finishes(tiny_model_dir, tiny_data_file, tmp_path):
    """Start-up warnings (llm_pg/checks/limits.py training_warnings, llm_pg/data/prompts.py for the system prompt):
    legal choices that make part of the run inert are said once, with the field and the fix; the run trains."""
    overlong = {"name": "o", "type": "soft_overlong_punishment", "max_completion_len": 8, "soft_punish_cache": 4}
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "run", **{
        "data.max_train_samples": 2, "training.prompts_per_step": 3, "training.max_steps": 1,
        "evaluation.eval_every": 2, "evaluation.validation_samples": 2, "data.use_chat_template": True,
        "data.system_prompt": "Answer in one sentence.", "reward.components": [{"name": "rougeL"}, overlong],
        **CAN_LEARN})
    result = run_cli("train", "--config", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = {  # the start of each warning -> its fix
        "training.prompts_per_step=3 is more than the 2 training prompts: every step repeats prompts": "add data",
        "evaluation.eval_every=2 > training.max_steps=1: validation runs once, after the last step": "lower eval_every",
        "data.system_prompt is not used: the tokenizer has no chat template": "remove data.system_prompt",
        "reward.components[1].max_completion_len=8 > generation.max_new_tokens=6: no training completion reaches the "
        "end of the ramp": "TRL sets it to the completion limit",
    }
    lines = result.stderr.splitlines()
    for start, fix in warnings.items():
        said = [line for line in lines if start in line]
        assert len(said) == 1 and said[0].startswith("WARNING ") and fix in said[0], (start, said)
    assert "llm-pg: error" not in result.stderr
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
