"""Control arms (reward.control, llm_pg/rewards/control.py): the reward replaced by noise or by the batch's own
rewards permuted, everything else exactly as in the real run.

The real run and the control runs go through helpers.cli_main (`llm-pg train` in this process: what is compared is
the runs, not the processes, so ~4 s of imports are spared per run); the resume refusal is a real process."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from helpers import CAN_LEARN, assert_one_line_error, cli_main, run_cli, tiny_config, write_config_yaml
from llm_pg.errors import ConfigError
from llm_pg.rewards.control import CONTROLS, apply_control, control_rewards

REWARDS = torch.tensor([0.0, 1.0, 0.25, 0.5, 0.75, 0.0], dtype=torch.float32)


def test_random_is_the_batch_mean_plus_its_std_times_standard_normal_noise():
    got = control_rewards(REWARDS, "random", torch.Generator().manual_seed(5))
    z = torch.randn(6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    mean = sum(REWARDS.tolist()) / 6  # 2.5 / 6
    std = (sum((r - mean) ** 2 for r in REWARDS.tolist()) / 6) ** 0.5  # population std, by hand
    assert torch.allclose(got.double(), mean + std * z, atol=1e-6, rtol=0)
    assert got.dtype == torch.float32
    assert torch.equal(control_rewards(torch.full((4,), 0.3), "random", torch.Generator().manual_seed(1)),
                       torch.full((4,), 0.3))  # no spread, no noise


def test_shuffled_is_a_permutation_of_the_batch():
    got = control_rewards(REWARDS, "shuffled", torch.Generator().manual_seed(5))
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(5))
    assert torch.equal(got, REWARDS[perm])
    assert sorted(got.tolist()) == sorted(REWARDS.tolist()) and not torch.equal(got, REWARDS)
    assert torch.equal(control_rewards(REWARDS, "none", torch.Generator()), REWARDS)


@pytest.mark.parametrize("kind", ["random", "shuffled"])
def test_two_processes_take_their_slices_of_the_whole_batchs_control(kind):
    """Every process draws the same numbers over the gathered batch: process 0's and 1's slices together are the
    control of one process holding both halves."""
    halves = REWARDS[:3], REWARDS[3:]
    gathered = lambda mine: torch.cat(halves)  # noqa: E731  accelerator.gather on 2 processes
    slices = [apply_control(halves[i], kind, torch.Generator().manual_seed(9), gathered, i) for i in range(2)]
    whole = apply_control(REWARDS, kind, torch.Generator().manual_seed(9), lambda x: x, 0)
    assert torch.equal(torch.cat(slices), whole)


@pytest.mark.parametrize("overrides, message", [
    ({"reward.control": "noise"}, "reward.control: 'noise' is not one of"),
    ({"reward.control": "random", "reward.per_token": True}, "reward.control replaces each completion's reward"),
    ({"reward.control": "shuffled", "algorithm.baseline": "greedy"}, "reward.control with algorithm.baseline=greedy"),
])
def test_controls_that_cannot_be_a_clean_control_are_refused(overrides, message, tiny_model_dir, tiny_data_file,
                                                             tmp_path):
    with pytest.raises(ConfigError, match=message):
        tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **overrides)
    assert set(CONTROLS) == {"none", "random", "shuffled"}


def _completions(run) -> list[dict]:
    return [json.loads(line) for line in (run / "completions.jsonl").read_text().splitlines()]


def _metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def real_run(tiny_model_dir, tiny_data_file, tmp_path_factory):
    """The real run both control arms are compared with (only read): its folder and its config file."""
    tmp = tmp_path_factory.mktemp("real_run")
    (tmp / "length.py").write_text("def reward(prompts, completions, references, **columns):\n"
                                   "    return [len(c) / 10 for c in completions]\n")
    settings = {"training.max_steps": 3, "evaluation.log_completions_every": 1, "evaluation.before_training": True,
                "training.prompts_per_step": 4, "generation.num_samples": 4,
                "reward.components": [{"name": "length", "function": f"{tmp / 'length.py'}:reward"},
                                      {"name": "rougeL", "weight": 0.5}], **CAN_LEARN}
    config = write_config_yaml(tmp / "c.yaml", tiny_model_dir, tiny_data_file, tmp / "real", **settings)
    assert cli_main("train", "--config", config) == 0
    return tmp / "real", config


@pytest.mark.parametrize("kind", ["random", "shuffled"])
def test_a_control_arm_differs_from_the_real_run_only_in_the_reward(kind, real_run, tmp_path):
    """Same seed: the same prompts at every step, the same completions where the policy is still the same (step 1,
    the same sampling random numbers), the same task metrics logged beside the reward; only the reward that trains
    differs, and so the weights after it. Held-out evaluation scores the real reward in both."""
    real_dir, config = real_run  # the same config file, only the output folder and reward.control differ
    assert cli_main("train", "--config", config, f"training.output_dir={tmp_path / 'control'}",
                    f"reward.control={kind}") == 0
    real, control = _completions(real_dir), _completions(tmp_path / "control")
    assert [(r["step"], r["prompt"]) for r in real] == [(r["step"], r["prompt"]) for r in control]
    first_real, first_control = ([r for r in rows if r["step"] == 1] for rows in (real, control))
    assert [r["completion"] for r in first_real] == [r["completion"] for r in first_control]
    real_rewards, control_rewards_ = [r["reward"] for r in first_real], [r["reward"] for r in first_control]
    assert real_rewards != control_rewards_
    if kind == "shuffled":
        assert sorted(real_rewards) == sorted(control_rewards_)
    m_real, m_control = _metrics(real_dir)[0], _metrics(tmp_path / "control")[0]
    assert m_real["step"] == m_control["step"] == 1
    for metric in ("reward/length", "reward/rougeL"):  # the task's own measures of the same completions
        assert m_real[metric] == m_control[metric]
    assert json.loads((real_dir / "eval_before.json").read_text())["scores"] == \
        json.loads((tmp_path / "control" / "eval_before.json").read_text())["scores"]  # the real reward, held out
    a, b = (load_file(folder / "final" / "model.safetensors") for folder in (real_dir, tmp_path / "control"))
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_a_control_is_part_of_the_run_a_resume_checks(real_run, tmp_path):
    real_dir, config = real_run
    shutil.copytree(real_dir, tmp_path / "run")  # a copy: the shared run is only read
    resumed = run_cli("train", "--config", config, "--resume", f"training.output_dir={tmp_path / 'run'}",
                      "reward.control=random", cwd=tmp_path)
    assert resumed.returncode == 2
    assert_one_line_error(resumed.stderr, "reward.control ('none' -> 'random')")
