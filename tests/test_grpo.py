"""GRPO and DAPO's options in training on the tiny model: the update moves the policy with ratio exactly 1,
accumulation gives the full batch's gradient for every loss reduction, truncated rows get no gradient, dynamic
sampling refills the batch and logs its counts, bad settings are one-line errors, and the CLI runs
configs/grpo.yaml's algorithm settings end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from helpers import assert_one_line_error, run_cli, tiny_config, tiny_config_dict
from llm_pg.errors import ConfigError
from llm_pg.training.rl import _sample_round, setup_run, train

GRPO = {"algorithm.name": "grpo"}


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "model.safetensors"))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_grpo_on_policy_moves_the_policy_with_ratio_one(scale, tiny_model_dir, tiny_data_file, tmp_path):
    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **GRPO, **{"grpo.scale_rewards": scale}))
    before, after = weights(tiny_model_dir), weights(tmp_path / "final")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    metrics = read_metrics(tmp_path)
    assert all(math.isfinite(m["loss/policy"]) for m in metrics)
    # one epoch (grpo's default): log pi_old comes from the update's own forward pass, so the ratio is exactly 1
    assert all(m["ppo/clip_frac"] == 0.0 and m["ppo/approx_kl"] == 0.0 for m in metrics)


def test_the_ratio_is_one_with_gradient_checkpointing_too(tiny_model_dir, tiny_data_file, tmp_path):
    """Checkpointed layers drop the shared prompt cache in the update, so log pi_old must be computed that way too:
    computed with the cache, the first step's approx_kl was 2.8e-9, not 0 (an outside audit: 5e-7 off in the ratio)."""
    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **GRPO, **{"training.gradient_checkpointing": True}))
    assert all(m["ppo/clip_frac"] == 0.0 and m["ppo/approx_kl"] == 0.0 for m in read_metrics(tmp_path))


def test_grpo_ppo_epochs_take_several_steps_per_rollout(tiny_model_dir, tiny_data_file, tmp_path):
    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **GRPO, **{
        "ppo.epochs": 3, "ppo.clip_eps": 0.01, "training.max_steps": 2}))
    metrics = read_metrics(tmp_path)
    assert [m["ppo/epochs"] for m in metrics] == [3.0, 3.0]
    assert any(m["ppo/clip_frac"] > 0 for m in metrics)  # lr 1e-2 moves the ratio past 1 +- 0.01 after step 1


def test_target_kl_and_minibatches_act_on_grpo_as_on_ppo(tiny_model_dir, tiny_data_file, tmp_path):
    """ppo.target_kl and ppo.num_minibatches are the clipped-ratio update's, read by grpo as by ppo (issue 25).
    With a tiny target an epoch stops the update once a step of it ran at moved weights: with one minibatch the
    first epoch runs at the sampling weights (approx KL exactly 0) and the second stops; with two minibatches the
    second step of the first epoch has moved, so it stops there, for grpo and ppo alike. Without a target all 3
    epochs run."""
    (tmp_path / "alternating.py").write_text("def alternating(prompts, completions, references):\n"
                                             "    return [float(i % 2) for i in range(len(completions))]\n")
    tiny = {"ppo.epochs": 3, "training.max_steps": 1, "reward.components": [
        {"name": "alternating", "function": f"{tmp_path / 'alternating.py'}:alternating"}]}
    runs = {"grpo": ({**GRPO, "ppo.target_kl": 1e-9}, 2.0),
            "grpo_minibatches": ({**GRPO, "ppo.target_kl": 1e-9, "ppo.num_minibatches": 2}, 1.0),
            "grpo_no_target": ({**GRPO, "ppo.num_minibatches": 2}, 3.0),
            "ppo_minibatches": ({"algorithm.name": "ppo", "ppo.target_kl": 1e-9, "ppo.num_minibatches": 2}, 1.0)}
    for name, (settings, _) in runs.items():
        train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path / name, **tiny, **settings))
    assert {name: read_metrics(tmp_path / name)[0]["ppo/epochs"] for name in runs} == \
        {name: epochs for name, (_, epochs) in runs.items()}


@pytest.mark.parametrize("reduction", ["sequence_token_mean", "fixed_token_mean", "token_mean"])
def test_accumulation_gives_the_full_batch_gradient(reduction, tiny_model_dir, tiny_data_file, tmp_path):
    """1 x 8 == 8 x 1 sequences (one per micro-batch), with truncated rows masked, for each reduction."""
    common = {**GRPO, "algorithm.loss_reduction": reduction, "algorithm.mask_truncated_completions": True,
              "training.prompts_per_step": 4, "training.max_steps": 2}
    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path / "full", **common))
    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path / "split", **common,
                      **{"training.gradient_accumulation_steps": 8}))
    full, split = read_metrics(tmp_path / "full"), read_metrics(tmp_path / "split")
    assert any(m["policy/grad_norm"] > 1e-3 for m in full)
    assert any(m["completion/truncated_frac"] > 0 for m in full)  # some rows really are masked
    for a, b in zip(split, full):
        assert a["loss/policy"] == pytest.approx(b["loss/policy"], rel=1e-4, abs=1e-6)
        assert a["policy/grad_norm"] == pytest.approx(b["policy/grad_norm"], rel=1e-4, abs=1e-6)


def scored_step(config, advantage_rows: str):
    """One sampled and scored rollout whose advantages are 1 on the truncated rows (or the others), else 0."""
    from llm_pg.algorithms import advantages as adv
    from llm_pg.training.scoring import score_rollout

    run = setup_run(config)
    _, rollout, rewards = _sample_round(config, run)
    scored = score_rollout(config, rollout, rewards, None, None, adv.BaselineInputs(rollout.group_size), False)
    rows = rollout.truncated if advantage_rows == "truncated" else ~rollout.truncated
    scored.advantages = rows.float()[:, None] * rollout.completion_mask
    return run, scored


@pytest.mark.parametrize("masked", [True, False])
def test_truncated_completions_get_no_gradient(masked, tiny_model_dir, tiny_data_file, tmp_path):
    from llm_pg.training.update import policy_update

    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{
        "algorithm.mask_truncated_completions": masked, "training.prompts_per_step": 4, "generation.num_samples": 4})
    run, scored = scored_step(config, "truncated")
    truncated = scored.rollout.truncated
    assert 0 < truncated.sum() < truncated.numel()
    stats = policy_update(config, run.learner, scored)
    assert (stats["policy/grad_norm"] == 0.0) == masked  # only truncated rows carry an advantage


def test_dynamic_sampling_in_training_logs_its_counts(tiny_model_dir, tiny_data_file, tmp_path):
    """A constant reward: every group is uninformative, so each step takes the 2 extra rounds, then fills; the
    steps are logged, and the run, which could not learn anything, ends with an error instead of a final/."""
    from llm_pg.training.rl import NoLearningSignal

    (tmp_path / "const.py").write_text("def constant(prompts, completions, references):\n"
                                       "    return [0.7] * len(completions)\n")
    with pytest.raises(NoLearningSignal, match="dynamic_sampling found no prompt group whose 2 rewards differ"):
        train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path / "run", **GRPO, **{
            "algorithm.dynamic_sampling": True, "algorithm.dynamic_sampling_max_rounds": 2, "training.max_steps": 2,
            "reward.components": [{"name": "const", "function": f"{tmp_path / 'const.py'}:constant"}]}))
    assert not (tmp_path / "run" / "final").exists()
    metrics = read_metrics(tmp_path / "run")
    for m in metrics:  # B = 2 prompts, K = 2: 3 rounds of 2 groups, all dropped; 2 extra rounds of 4 completions
        assert m["dynamic_sampling/dropped_groups"] == 6.0
        assert m["dynamic_sampling/extra_rollouts"] == 8.0
        assert m["dynamic_sampling/filled_groups"] == 2.0


def test_dynamic_sampling_keeps_informative_groups(tiny_model_dir, tiny_data_file, tmp_path):
    """With the real ROUGE-L reward most groups differ; the batch stays B groups and rows match their prompts."""
    from llm_pg.training.dynamic_sampling import GroupFilter, informative_groups

    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{
        "algorithm.dynamic_sampling": True, "training.prompts_per_step": 4, "generation.num_samples": 2})
    run = setup_run(config)
    groups = GroupFilter.from_config(config.algorithm)
    while groups.wants_another_round():  # as train_step drives it
        groups.add(*_sample_round(config, run, 0, groups.rounds_taken))
    batch, rollout, rewards, stats = groups.result(run.tokenizer.pad_token_id)
    assert len(batch) == 4 and rollout.completion_ids.shape[0] == 8 == rewards.rewards.shape[0]
    rounds = 1 + stats["dynamic_sampling/extra_rollouts"] / 8
    assert run.sampler.position == 4 * rounds  # every round took 4 fresh prompts
    kept = informative_groups(rewards.rewards, 2)
    assert kept.sum() == 4 - stats["dynamic_sampling/filled_groups"]
    assert kept.tolist() == sorted(kept.tolist(), reverse=True)  # informative groups first within the batch
    # each row's prompt tokens are its example's (left-padded)
    for i, example in enumerate(e for e in batch for _ in range(2)):
        ids = rollout.prompt_ids[i][rollout.prompt_mask[i].bool()].tolist()
        assert ids == list(example.prompt_ids)


@pytest.mark.parametrize("overrides, needle", [
    ({**GRPO, "generation.num_samples": 1, "algorithm.baseline": "none"}, "generation.num_samples >= 2"),
    ({**GRPO, "grpo.scale_rewards": "std"}, "grpo.scale_rewards"),
    ({**GRPO, "ppo.epochs": 0}, "ppo.epochs"),
    ({**GRPO, "ppo.num_minibatches": 3}, "ppo.num_minibatches: 3 must divide training.prompts_per_step=2"),
    ({"ppo.clip_eps_high": -0.1}, "ppo.clip_eps_high"),
    ({"algorithm.loss_reduction": "dr_grpo"}, "algorithm.loss_reduction"),
    ({"algorithm.dynamic_sampling": True, "generation.num_samples": 1, "algorithm.baseline": "none"},
     "algorithm.dynamic_sampling"),
    ({"algorithm.dynamic_sampling_max_rounds": -1}, "dynamic_sampling_max_rounds"),
])
def test_bad_grpo_settings_are_config_errors(overrides, needle, tiny_model_dir, tiny_data_file, tmp_path):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **overrides)


def test_cli_runs_the_grpo_recipe_settings(tiny_model_dir, tiny_data_file, tmp_path):
    """configs/grpo.yaml's algorithm, grpo and reward sections, on the tiny model and data, as a user runs it."""
    recipe = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "grpo.yaml").read_text())
    values = tiny_config_dict(tiny_model_dir, tiny_data_file, tmp_path / "run", **{"training.max_steps": 2})
    for section in ("algorithm", "grpo", "ppo", "kl"):
        values[section] = recipe[section]
    values["reward"] = {"components": [{"name": "rougeL"}, {**recipe["reward"]["components"][1],
                                                            "max_completion_len": 6, "soft_punish_cache": 3}]}
    (tmp_path / "grpo.yaml").write_text(yaml.safe_dump(values))
    result = run_cli("train", "--config", tmp_path / "grpo.yaml", "grpo.scale_rewards=none", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(tmp_path / "run")
    assert [m["step"] for m in metrics] == [1, 2]
    assert all("dynamic_sampling/dropped_groups" in m and "reward/overlong" in m for m in metrics)
    assert any(m["reward/overlong"] < 0 for m in metrics)  # some tiny completions reach the ramp (> 3 tokens)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["grpo"] == {"scale_rewards": "none"} and saved["ppo"]["clip_eps_high"] == 0.28


def test_cli_bad_grpo_setting_is_one_line(tiny_model_dir, tiny_data_file, tmp_path):
    values = tiny_config_dict(tiny_model_dir, tiny_data_file, tmp_path / "run", **GRPO)
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(values))
    result = run_cli("train", "--config", tmp_path / "bad.yaml", "grpo.scale_rewards=std", cwd=tmp_path)
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "grpo.scale_rewards")


def test_compare_script_settings_for_the_grpo_family(tiny_model_dir, tiny_data_file, tmp_path):
    """scripts/compare_algorithms.py's grpo, dr_grpo and dapo entries validate and set what their names promise."""
    import importlib.util

    from llm_pg.config.schema import config_from_dict, merge_overrides

    path = Path(__file__).resolve().parents[1] / "scripts" / "compare_algorithms.py"
    spec = importlib.util.spec_from_file_location("compare_algorithms", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = {"grpo": ("group", "sequence_token_mean", None, False),
                "dr_grpo": ("none", "fixed_token_mean", None, False),
                "dapo": ("group", "token_mean", 0.28, True)}
    for method, (scale, reduction, eps_high, masked) in expected.items():
        values = merge_overrides(tiny_config_dict(tiny_model_dir, tiny_data_file, tmp_path), module.METHODS[method])
        c = config_from_dict(values)
        assert (c.algorithm.name, c.grpo.scale_rewards, c.algorithm.loss_reduction, c.ppo.clip_eps_high,
                c.algorithm.mask_truncated_completions) == ("grpo", scale, reduction, eps_high, masked), method
