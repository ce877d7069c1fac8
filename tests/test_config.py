"""Config: YAML + dotted overrides, typed, with errors that name the key and the fix."""

import pytest
import yaml

from llm_pg.config.schema import TrainConfig, config_from_dict, load_config, parse_override
from llm_pg.errors import ConfigError

BASE = {"model": {"name_or_path": "some/model"}}


def write(tmp_path, values):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, {**BASE, "training": {"learning_rate": 1e-4, "max_steps": 5}})
    cfg = load_config(path, ["training.learning_rate=1e-5", "generation.max_new_tokens=48",
                             'generation.stop_strings=["\\n"]', "algorithm.baseline=greedy"])
    assert cfg.training.learning_rate == 1e-5 and cfg.training.max_steps == 5
    assert cfg.generation.max_new_tokens == 48 and cfg.generation.stop_strings == ["\n"]
    assert cfg.algorithm.baseline == "greedy"


def test_int_is_accepted_for_float_but_not_the_reverse():
    assert config_from_dict({**BASE, "training": {"learning_rate": 1}}).training.learning_rate == 1.0
    with pytest.raises(ConfigError, match="training.max_steps: expected int"):
        config_from_dict({**BASE, "training": {"max_steps": 2.5}})
    with pytest.raises(ConfigError, match="training.max_steps: expected int"):
        config_from_dict({**BASE, "training": {"max_steps": True}})


@pytest.mark.parametrize("values, message", [
    ({**BASE, "training": {"learning_rat": 1.0}}, "did you mean 'training.learning_rate'"),
    ({**BASE, "trainig": {}}, "did you mean 'training'"),
    ({**BASE, "training": 3}, "training: expected a section"),
    ({**BASE, "generation": {"stop_strings": "x"}}, "generation.stop_strings: expected a list"),
    ({**BASE, "generation": {"backend": "vllm"}}, "generation.backend: 'vllm' is not one of"),
    ({**BASE, "generation": {"num_samples": 1}}, "leave_one_out needs generation.num_samples >= 2"),
    ({**BASE, "algorithm": {"baseline": "median"}}, "algorithm.baseline"),
    ({**BASE, "algorithm": {"name": "dqn"}}, "algorithm.name"),
    ({"model": {}}, "model.name_or_path"),
    ({**BASE, "reward": {"components": [{"name": "meteor"}]}}, r"reward.components\[0\]"),
    ({**BASE, "training": {"gradient_accumulation_steps": 3}}, "gradient_accumulation_steps"),
    ({**BASE, "data": {"split_fractions": [0.5, 0.5]}}, "data.split_fractions"),
    ({**BASE, "hub": {"push": True}}, "hub.repo_id"),
    ({**BASE, "evaluation": {"metric": "perplexity", "reference_model": "none"}}, "evaluation.metric: 'perplexity'"),
    ({**BASE, "evaluation": {"metric": "reward_bleu"}}, "evaluation.metric: 'reward_bleu' is not one of"),
    *[({**BASE, "algorithm": {"name": name}, "ppo": {"use_critic": True}}, f"ppo.use_critic: only algorithm.name=ppo "
       f"reads it \\({name} would run without a critic\\)") for name in ("grpo", "reinforce", "actor_critic")],
])
def test_bad_config_names_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(values)


def test_ppo_reads_use_critic():
    assert config_from_dict({**BASE, "algorithm": {"name": "ppo"}, "ppo": {"use_critic": True}}).ppo.use_critic


def test_errors_are_one_line(tmp_path):
    for bad in ({**BASE, "training": {"learning_rat": 1.0}}, {**BASE, "generation": {"top_p": 0}}):
        with pytest.raises(ConfigError) as info:
            config_from_dict(bad)
        assert "\n" not in str(info.value)


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(write(tmp_path, BASE), ["training.max_steps"])


def test_parse_override_values():
    assert parse_override("a.b=1e-5") == (["a", "b"], 1e-5)
    assert parse_override("a.b=true") == (["a", "b"], True)
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a.b=hello") == (["a", "b"], "hello")


def test_resolved_config_round_trips(tmp_path):
    cfg = config_from_dict({**BASE, "generation": {"num_samples": 3}})
    again = load_config(write(tmp_path, cfg.to_dict()))
    assert again == cfg and isinstance(again, TrainConfig)


def test_every_field_has_help_text():
    import dataclasses

    for section in dataclasses.fields(TrainConfig):
        for f in dataclasses.fields(section.type if isinstance(section.type, type) else
                                    type(getattr(TrainConfig(), section.name))):
            assert f.metadata.get("help"), f"{section.name}.{f.name} has no help text"


def test_shipped_recipes_are_valid():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")):
        load_config(path)


def test_evaluation_metric_may_name_any_reward_component_even_unnamed_or_single():
    one = {**BASE, "reward": {"components": [{"name": "rougeL"}]}, "evaluation": {"metric": "reward_rougeL"}}
    assert config_from_dict(one).evaluation.metric == "reward_rougeL"
    unnamed = {**BASE, "reward": {"components": [{"type": "bleu"}, {"function": "f.py:g", "weight": 0.5}]},
               "evaluation": {"metric": "reward_function"}}  # names default to the type
    assert config_from_dict(unnamed).evaluation.metric == "reward_function"
