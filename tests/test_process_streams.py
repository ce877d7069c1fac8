"""Each process samples from a random stream of its own (llm_pg/runs/rng.py), checkpointed per process.

An outside audit found every process seeded alike and sampling from the global generator: two processes given the
same prompts drew the same completions. These tests sample for real (no argmax patch): two processes with
identical prompts draw different completions, and a two-process run resumed from a checkpoint equals the
uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import CAN_LEARN, cli_env, write_config_yaml
from llm_pg.runs.rng import (all_rng_states, checkpoint_rng, derived_seed, restore_rng, rng_state, seed_everything,
                             set_rng_state, split_streams)
from llm_pg.training.update import minibatch_order
from test_reliability import TIMING, assert_bit_equal, free_port, read_metrics, tensors

# A reward that records, per process, every completion it scores (RANK is set by `accelerate launch`), and varies
# with the completion, so that the updates move the policy.
RECORDING_REWARD = '''
import json, os


def recorded(prompts, completions, references, **columns):
    with open(os.path.join(os.path.dirname(__file__), f"completions-{os.environ.get('RANK', '0')}.jsonl"), "a") as f:
        f.write(json.dumps(completions) + "\\n")
    return [len(c) / 10 for c in completions]
'''


# ------------------------------------------------------------------------------------------------- the streams


def test_process_zero_keeps_its_stream_and_the_others_get_their_own():
    seed_everything(7)
    torch.rand(5)  # what loading a model draws
    before = rng_state()
    unsplit = torch.rand(4)
    streams = []
    for index in range(3):
        set_rng_state(before)
        split_streams(7, index)
        streams.append(torch.rand(4))
    assert torch.equal(streams[0], unsplit)  # a one-process run draws what it drew before
    assert not torch.equal(streams[1], unsplit) and not torch.equal(streams[2], streams[1])
    seed_everything(8)  # process 1 of seed 7 is not the run seeded 7 + 1
    assert not torch.equal(torch.rand(4), streams[1])
    assert derived_seed(7, 1) == derived_seed(7, 1) != derived_seed(8, 0)


def test_a_checkpoint_gives_each_process_its_own_state_back(caplog):
    states = []
    for index in range(2):
        seed_everything(derived_seed(3, index))
        states.append(rng_state())
    saved = checkpoint_rng(states)
    assert torch.equal(saved["torch"], states[0]["torch"])  # process 0's at the top, as older checkpoints had it
    for index in range(2):
        seed_everything(99)
        restore_rng(saved, index, 2, seed=3)
        assert torch.equal(torch.get_rng_state(), states[index]["torch"])

    with caplog.at_level(logging.WARNING):  # three processes now: the third has no saved state
        restore_rng(saved, 0, 3, seed=3)
    assert torch.equal(torch.get_rng_state(), states[0]["torch"])
    assert "holds the random streams of 2 process(es) and this run has 3" in caplog.text
    restore_rng(saved, 2, 3, seed=3)
    assert not torch.equal(torch.get_rng_state(), states[0]["torch"])  # a fresh stream, not process 0's copy

    old = states[0]  # a checkpoint from before per-process streams: one state, no "processes"
    restore_rng(old, 0, 1, seed=3)
    assert torch.equal(torch.get_rng_state(), old["torch"])
    assert all_rng_states(None)[0]["torch"].equal(torch.get_rng_state())


def test_the_minibatch_order_of_one_process_draws_from_its_stream():
    """PPO's later epochs shuffle the minibatches with the process's stream (process 0's order is sent to the
    others in a multi-process run: test_two_processes_resumed_equal_an_uninterrupted_run_bit_for_bit[ppo...])."""
    class One:
        num_processes = 1

    assert minibatch_order(4, 0, One()) == [0, 1, 2, 3]
    seed_everything(1)
    first = minibatch_order(8, 1, One())
    seed_everything(1)
    assert minibatch_order(8, 1, One()) == first
    assert first == torch.randperm(8, generator=torch.Generator().manual_seed(1)).tolist()  # the stream's own draw


# -------------------------------------------------------------------------------------------- two processes


def _launch_two(tmp_path: Path, *args: str) -> str:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(free_port()), "-m", "llm_pg", *args]
    env = {**cli_env(), "ACCELERATE_USE_CPU": "true"}
    launcher = subprocess.Popen(launch, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    try:
        _, stderr = launcher.communicate(timeout=240)
    except subprocess.TimeoutExpired:  # a hung rank: end the launcher and both workers
        os.killpg(launcher.pid, signal.SIGKILL)
        raise
    assert launcher.returncode == 0, stderr[-4000:]
    return stderr


def _one_prompt_data(path: Path, n: int = 8) -> Path:
    path.write_text("".join(json.dumps({"prompt": "the cat sees", "reference": "a dog."}) + "\n" for _ in range(n)))
    return path


def test_two_processes_with_identical_prompts_sample_different_completions(tiny_model_dir, tmp_path):
    (tmp_path / "rewards.py").write_text(RECORDING_REWARD)
    config = write_config_yaml(
        tmp_path / "c.yaml", tiny_model_dir, _one_prompt_data(tmp_path / "same.jsonl"), tmp_path / "run",
        **{"training.max_steps": 2, "generation.num_samples": 4, "generation.max_new_tokens": 8,
           "reward.components": [{"name": "recorded", "function": f"{tmp_path / 'rewards.py'}:recorded"}]})
    _launch_two(tmp_path, "train", "--config", str(config))
    drawn = [[json.loads(line) for line in (tmp_path / f"completions-{rank}.jsonl").read_text().splitlines()]
             for rank in (0, 1)]
    assert len(drawn[0]) == len(drawn[1]) == 2  # one call per step on each process
    for mine, theirs in zip(*drawn):  # the same prompt, 2 prompts x 4 samples on each process
        assert len(mine) == len(theirs) == 8
        assert sum(a == b for a, b in zip(mine, theirs)) <= 1, (mine, theirs)  # with one stream: 8 of 8 equal
        assert len(set(mine)) > 1  # and within a process the samples differ, as they always did


@pytest.mark.parametrize("settings", [{}, {"algorithm.name": "ppo", "ppo.epochs": 2, "ppo.num_minibatches": 2}],
                         ids=["reinforce", "ppo_shuffled_minibatches"])
def test_two_processes_resumed_equal_an_uninterrupted_run_bit_for_bit(settings, tiny_model_dir, tiny_data_file,
                                                                      tmp_path):
    """Real sampling at temperature 0.7: the resumed run must give each process its own stream back (restoring
    process 0's on both, as a one-state checkpoint would, makes the second session sample other completions)."""
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "resumed", **{
        "generation.temperature": 0.7, "training.save_every": 1, "training.keep_checkpoints": 5, **CAN_LEARN,
        **settings})
    _launch_two(tmp_path, "train", "--config", str(config), "training.max_steps=4",
                f"training.output_dir={tmp_path / 'whole'}")
    _launch_two(tmp_path, "train", "--config", str(config), "training.max_steps=2")
    stderr = _launch_two(tmp_path, "train", "--config", str(config), "--resume", "training.max_steps=4")
    assert "resumed from" in stderr and "random streams" not in stderr

    assert_bit_equal(tensors(tmp_path / "resumed" / "final"), tensors(tmp_path / "whole" / "final"))
    resumed, whole = read_metrics(tmp_path / "resumed"), read_metrics(tmp_path / "whole")
    assert [m["step"] for m in resumed] == [m["step"] for m in whole] == [1, 2, 3, 4]
    for mine, theirs in zip(resumed, whole):  # the same samples, rewards and losses at every step
        assert {k: v for k, v in mine.items() if not k.startswith(TIMING)} == \
            {k: v for k, v in theirs.items() if not k.startswith(TIMING)}
