"""GRPO on two CPU processes (gloo): the same update as one process with the whole batch, and dynamic sampling
that keeps both processes in step.  Launch and argmax sampling as in tests/test_reliability.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

import llm_pg.rollout.decoding
from helpers import cli_env, tiny_config, write_config_yaml
from llm_pg.training.rl import train
from test_reliability import free_port, read_metrics, tensors


def parity_sample(probs: torch.Tensor) -> torch.Tensor:
    """(N,) the most likely token on even rows, the second most likely on odd rows: deterministic (both runs draw
    the same completions whatever their RNG streams) yet the K = 2 samples of a prompt differ."""
    top2 = probs.topk(2, -1).indices  # (N, 2)
    return top2[torch.arange(probs.shape[0]), torch.arange(probs.shape[0]) % 2]


def _parity_sampling_cli(folder) -> str:
    script = folder / "parity_llm_pg.py"
    script.write_text("import sys\nimport torch\nimport llm_pg.rollout.decoding\n"
                      "def parity_sample(probs):\n"
                      "    top2 = probs.topk(2, -1).indices\n"
                      "    return top2[torch.arange(probs.shape[0]), torch.arange(probs.shape[0]) % 2]\n"
                      "llm_pg.rollout.decoding.inverse_cdf_sample = parity_sample\n"
                      "from llm_pg.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    return str(script)


# `alternating` gives the rows of every group 0 and 1 (rows are prompt-major, K = 2); `uneven` makes a group
# informative only for prompts of even length
REWARDS = '''
def alternating(prompts, completions, references, **columns):
    return [float(i % 2) for i in range(len(completions))]


def uneven(prompts, completions, references, **columns):
    return [float(i % 2) if len(p) % 2 == 0 else 0.5 for i, p in enumerate(prompts)]
'''


def launch_two(tmp_path, config) -> None:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(free_port()), _parity_sampling_cli(tmp_path), "train", "--config", str(config)]
    env = {**cli_env(), "ACCELERATE_USE_CPU": "true"}
    launcher = subprocess.Popen(launch, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    try:
        _, stderr = launcher.communicate(timeout=240)
    except subprocess.TimeoutExpired:  # a hung rank (e.g. processes out of step): end both workers
        os.killpg(launcher.pid, signal.SIGKILL)
        raise
    assert launcher.returncode == 0, stderr[-4000:]


def reward(tmp_path, name: str) -> dict:
    (tmp_path / "rewards.py").write_text(REWARDS)
    return {"reward.components": [{"name": name, "function": f"{tmp_path / 'rewards.py'}:{name}"}]}


def test_grpo_on_two_processes_equals_one_process_with_the_whole_batch(tiny_model_dir, tiny_data_file, tmp_path,
                                                                       monkeypatch):
    """grpo.scale_rewards: batch (a std over both processes' rewards), sequence_token_mean (per-row weights, the
    global N), clip-higher and 2 iterations: 2 processes x 2 prompts == 1 process x 4 prompts."""
    same = {"algorithm.name": "grpo", "grpo.scale_rewards": "batch", "ppo.epochs": 2,
            "ppo.clip_eps_high": 0.28, "algorithm.loss_reduction": "sequence_token_mean", "training.max_steps": 2,
            **reward(tmp_path, "alternating")}
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "two", **same,
                               **{"training.prompts_per_step": 2})
    launch_two(tmp_path, config)
    monkeypatch.setattr(llm_pg.rollout.decoding, "inverse_cdf_sample", parity_sample)
    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path / "one", **same, **{"training.prompts_per_step": 4}))
    two, one = read_metrics(tmp_path / "two"), read_metrics(tmp_path / "one")
    assert any(m["policy/grad_norm"] > 1e-3 for m in one)
    for mine, theirs in zip(two, one):
        for key in ("reward/mean", "loss/policy", "policy/grad_norm", "ppo/clip_frac", "ppo/approx_kl"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key
    a, b = tensors(tmp_path / "one" / "final"), tensors(tmp_path / "two" / "final")
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


def test_dynamic_sampling_on_two_processes_stays_in_step(tiny_model_dir, tiny_data_file, tmp_path):
    """Groups are informative only for prompts of even length, so the processes need different numbers of rounds;
    both take as many as the one that needs most (else the collectives would hang) and the counts are global."""
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "two", **{
        "algorithm.name": "grpo", "algorithm.dynamic_sampling": True, "algorithm.dynamic_sampling_max_rounds": 3,
        "training.max_steps": 3, "training.prompts_per_step": 2, **reward(tmp_path, "uneven")})
    launch_two(tmp_path, config)
    metrics = read_metrics(tmp_path / "two")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert any(m["dynamic_sampling/dropped_groups"] > 0 for m in metrics)
    for m in metrics:  # extra rounds are taken by both processes together: 2 processes x 2 prompts x K = 2 each
        assert m["dynamic_sampling/extra_rollouts"] % 8 == 0
