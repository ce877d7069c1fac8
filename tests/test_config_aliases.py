"""Old key names of the clipped-ratio knobs (issue 25, llm_pg/config/aliases.py): grpo.epsilon, grpo.epsilon_high and
grpo.num_iterations are read as ppo.clip_eps, ppo.clip_eps_high and ppo.epochs for one release; an old and a new name
at two values are one line; configs and run folders saved by an earlier version load, resume and compare as they ran.
"""

from __future__ import annotations

import copy
import json
import logging

import pytest
import yaml

from helpers import CAN_LEARN, assert_one_line_error, cli_main, run_cli, tiny_config, tiny_config_dict
from llm_pg.config.aliases import ALIASES
from llm_pg.config.resume import ResumeConfigError, flatten
from llm_pg.config.schema import TrainConfig, config_from_dict, load_config
from llm_pg.errors import ConfigError

BASE = {"model": {"name_or_path": "some/model"}, "algorithm": {"name": "grpo"}}
OLD_VALUES = {"grpo.epsilon": 0.1, "grpo.epsilon_high": 0.3, "grpo.num_iterations": 3}
EARLIER_PPO_DEFAULTS = {"epochs": 2, "num_minibatches": 2, "clip_eps": 0.2, "dual_clip": 0.0, "target_kl": 0.0,
                        "use_critic": False, "clip_eps_high": None}


def ppo_field(config: TrainConfig, dotted: str):
    return getattr(config.ppo, dotted.split(".")[1])


def earlier_layout(values: dict, **ppo_ignored) -> dict:
    """A config as llm_pg saved it before issue 25: every field of both sections; the clip of a grpo run in grpo.*,
    ppo.* at its defaults then (or ppo_ignored: what a grpo run ignored)."""
    values = copy.deepcopy(values)
    ppo = values["ppo"]
    if values["algorithm"]["name"] != "grpo":
        values["ppo"] = {**EARLIER_PPO_DEFAULTS, **{k: v for k, v in ppo.items() if v is not None}}
        values["grpo"] = {**values["grpo"], "num_iterations": 1, "epsilon": 0.2, "epsilon_high": None}
        return values
    values["grpo"] = {**values["grpo"], "num_iterations": ppo["epochs"] or 1, "epsilon": ppo["clip_eps"],
                      "epsilon_high": ppo["clip_eps_high"]}
    values["ppo"] = {**EARLIER_PPO_DEFAULTS, **ppo_ignored}
    return values


@pytest.mark.parametrize("old", list(ALIASES))
def test_each_old_name_reads_as_its_new_name_in_a_file_and_on_the_command_line(old, tmp_path, caplog):
    new, value = ALIASES[old], OLD_VALUES[old]
    section, field = old.split(".")
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({**BASE, section: {field: value}}))
    with caplog.at_level(logging.WARNING, logger="llm_pg.config.aliases"):
        from_file = load_config(path)
        from_override = load_config(None, ["model.name_or_path=some/model", "algorithm.name=grpo", f"{old}={value}"])
    assert ppo_field(from_file, new) == value and ppo_field(from_override, new) == value
    assert from_file.to_dict() == from_override.to_dict()
    assert from_file.to_dict()["grpo"] == {"scale_rewards": "group"}  # no second copy of the knob
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and all(old in w and new in w for w in warnings)  # one line per load


def test_an_old_and_a_new_name_at_one_value_is_accepted():
    config = config_from_dict({**BASE, "grpo": {"epsilon": 0.25}, "ppo": {"clip_eps": 0.25}})
    assert config.ppo.clip_eps == 0.25


@pytest.mark.parametrize("old", list(ALIASES))
def test_an_old_and_a_new_name_at_two_values_are_refused_naming_both(old):
    new, value = ALIASES[old], OLD_VALUES[old]
    (old_section, old_field), (new_section, new_field) = old.split("."), new.split(".")
    with pytest.raises(ConfigError) as error:
        config_from_dict({**BASE, old_section: {old_field: value}, new_section: {new_field: 2}})
    assert str(error.value) == f"{old}: {value!r} and {new}: 2 set one knob to two values; {old} is the old name " \
                               f"of {new}: keep only {new}"
    with pytest.raises(ConfigError, match=f"{new}=2 and {old}={value!r} set one knob to two values"):
        load_config(None, ["model.name_or_path=x", f"{old}={value}", f"{new}=2"])


def test_an_old_and_a_new_name_at_two_values_in_a_file_is_one_cli_line(tiny_model_dir, tiny_data_file, tmp_path):
    values = tiny_config_dict(tiny_model_dir, tiny_data_file, tmp_path / "run", **{
        "algorithm.name": "grpo", "grpo.epsilon": 0.1, "ppo.clip_eps": 0.3})
    (tmp_path / "both.yaml").write_text(yaml.safe_dump(values))
    result = run_cli("train", "--config", tmp_path / "both.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, f"--config {tmp_path / 'both.yaml'}: grpo.epsilon: 0.1 and ppo.clip_eps: 0.3 "
                                         "set one knob to two values", "keep only ppo.clip_eps")
    assert not (tmp_path / "run").exists()


def test_overrides_win_over_the_file_whichever_name_either_uses(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**BASE, "grpo": {"epsilon": 0.1}, "ppo": {"epochs": 3}}))
    config = load_config(path, ["ppo.clip_eps=0.3", "grpo.num_iterations=4"])
    assert (config.ppo.clip_eps, config.ppo.epochs) == (0.3, 4)


def test_a_config_saved_by_an_earlier_version_loads_as_it_ran(tmp_path):
    """Its grpo.* and ppo.* disagree by design (ppo.epochs: 2 beside grpo.num_iterations: 3): a grpo run takes the
    grpo.* values, and what grpo then ignored (a second minibatch, a target KL, a dual clip) is off; any other
    run keeps its ppo.* values."""
    grpo_run = tiny_config("some/model", "demo", tmp_path, **{"algorithm.name": "grpo", "ppo.epochs": 3,
                                                               "ppo.clip_eps": 0.1, "ppo.clip_eps_high": 0.28})
    saved = earlier_layout(grpo_run.to_dict(), target_kl=0.5, dual_clip=2.0)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    loaded = load_config(tmp_path / "config.yaml")  # as `llm-pg report` and `push` read a run's config.yaml
    assert loaded.to_dict() == grpo_run.to_dict()
    assert loaded.ppo.num_minibatches is None and (loaded.ppo.target_kl, loaded.ppo.dual_clip) == (0.0, 0.0)

    ppo_run = tiny_config("some/model", "demo", tmp_path, **{"algorithm.name": "ppo", "ppo.epochs": 4,
                                                              "ppo.clip_eps": 0.3})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(earlier_layout(ppo_run.to_dict())))
    loaded = load_config(tmp_path / "config.yaml")
    assert (loaded.ppo.epochs, loaded.ppo.num_minibatches, loaded.ppo.clip_eps) == (4, 2, 0.3)


def rewrite_as_earlier_version(run_dir):
    """The run folder as an earlier llm_pg left it: config.yaml and every history entry in the old layout."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    (run_dir / "config.yaml").write_text(yaml.safe_dump(earlier_layout(config), sort_keys=False))
    history = run_dir / "config_history.jsonl"
    entries = [json.loads(line) for line in history.read_text().splitlines()]
    history.write_text("".join(json.dumps({**e, "config": e["config"] if "epsilon" in e["config"]["grpo"]
                                           else earlier_layout(e["config"])}) + "\n" for e in entries))


def test_a_run_of_an_earlier_version_resumes(tiny_model_dir, tiny_data_file, tmp_path, caplog):
    """With its own saved config.yaml (the old layout) or with a config in the new names, as the user upgraded it.
    The runs go through helpers.cli_main (in-process: the resume is tested, not the process; the CLI's process is
    the test above)."""
    run_dir = tmp_path / "run"
    values = tiny_config_dict(tiny_model_dir, tiny_data_file, run_dir, **{
        "algorithm.name": "grpo", "ppo.epochs": 2, "ppo.clip_eps_high": 0.28, "training.max_steps": 1,
        "training.save_every": 1, "training.save_final_model": False, **CAN_LEARN})
    (tmp_path / "new.yaml").write_text(yaml.safe_dump(values))
    assert cli_main("train", "--config", tmp_path / "new.yaml") == 0
    rewrite_as_earlier_version(run_dir)
    old_yaml = tmp_path / "old.yaml"
    old_yaml.write_text((run_dir / "config.yaml").read_text())
    assert yaml.safe_load(old_yaml.read_text())["grpo"]["num_iterations"] == 2

    caplog.clear()  # the resumed run's messages only
    assert cli_main("train", "--config", old_yaml, "--resume", "training.max_steps=2") == 0
    assert "a config saved by an earlier llm_pg" in caplog.text
    rewrite_as_earlier_version(run_dir)
    assert cli_main("train", "--config", tmp_path / "new.yaml", "--resume", "training.max_steps=3") == 0
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(m["step"], m["ppo/epochs"]) for m in steps] == [(1, 2.0), (2, 2.0), (3, 2.0)]


def test_resume_compares_what_runs_and_refuses_what_grpo_now_reads(tiny_model_dir, tiny_data_file, tmp_path):
    """ppo.epochs null and 2 are the same ppo run; a ppo.target_kl that an earlier grpo ignored now stops its
    epochs, so that resume is refused naming it."""
    from llm_pg.runs.resume import check_resume

    ppo = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{"algorithm.name": "ppo"})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(earlier_layout(ppo.to_dict())))
    assert check_resume(ppo, tmp_path, 1) == {}

    grpo = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{"algorithm.name": "grpo", "ppo.target_kl": 0.5})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(earlier_layout(grpo.to_dict(), target_kl=0.5)))
    with pytest.raises(ResumeConfigError, match=r"ppo\.target_kl \(0\.0 -> 0\.5\)"):
        check_resume(grpo, tmp_path, 1)


def test_a_finished_rlhf_stage_of_an_earlier_version_is_not_redone(tmp_path):
    """A DONE marker holds the stage's settings as dotted keys; an earlier version's (old names) compares equal."""
    from llm_pg.pipelines.rlhf import _check_unchanged, stage_inputs

    config = tiny_config("some/model", "demo", tmp_path, **{"algorithm.name": "grpo", "ppo.clip_eps_high": 0.28})
    old = {k: v for k, v in flatten(earlier_layout(config.to_dict())).items() if k in stage_inputs("rl", config)
           or k.startswith(("grpo.", "ppo."))}
    assert "grpo.epsilon_high" in old and old["ppo.epochs"] == 2
    _check_unchanged("rl", tmp_path, old, stage_inputs("rl", config))
    with pytest.raises(ConfigError, match=r"ppo\.clip_eps_high: 0\.28 -> 0\.3"):
        _check_unchanged("rl", tmp_path, old, {**stage_inputs("rl", config), "ppo.clip_eps_high": 0.3})


@pytest.mark.parametrize("name, default, explicit", [("ppo", (2, 2), (3, 1)), ("grpo", (1, 1), (3, 1)),
                                                     ("reinforce", (1, 1), (1, 1)), ("actor_critic", (1, 1), (1, 1))])
def test_null_epochs_and_minibatches_are_the_algorithms_defaults(name, default, explicit):
    """ppo.epochs / ppo.num_minibatches null: 2 x 2 for ppo, 1 x 1 for grpo (registry.py); set, they apply to both
    clipped-ratio algorithms and to no other."""
    from llm_pg.algorithms.registry import get_algorithm

    for ppo, want in (({}, default), ({"epochs": 3, "num_minibatches": 1}, explicit)):
        config = config_from_dict({"model": {"name_or_path": "m"}, "algorithm": {"name": name}, "ppo": ppo})
        assert (get_algorithm(config).epochs(config), get_algorithm(config).minibatches(config)) == want
    assert TrainConfig().ppo.epochs is None and TrainConfig().ppo.num_minibatches is None
