"""End-to-end training on the tiny model: parameters move, metrics are logged, checkpoints resume exactly."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import CAN_LEARN, tiny_config
from llm_pg.runs.checkpoint import checkpoint_dir, latest_checkpoint
from llm_pg.training.rl import train


def parameters(model_dir) -> dict[str, torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def assert_moved_and_finite(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    assert all(torch.isfinite(p).all() for p in after.values())
    changed = [name for name in before if (after[name] - before[name]).abs().max() > 1e-4]
    assert changed, "no parameter changed after training"


def assert_same_parameters(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")


@pytest.fixture(scope="module")
def initial(tiny_model_dir):
    return parameters(tiny_model_dir)


@pytest.fixture(scope="module")
def three_steps(tiny_model_dir, tiny_data_file, tmp_path_factory):
    """An uninterrupted 3-step run (leave_one_out baseline, seed 0): the reference for resume and accumulation."""
    run_dir = tmp_path_factory.mktemp("three_steps")
    result = train(tiny_config(tiny_model_dir, tiny_data_file, run_dir))
    return run_dir, result, parameters(run_dir / "final")


@pytest.mark.parametrize("baseline", ["none", "moving_average", "leave_one_out", "greedy"])
def test_three_steps_move_the_parameters(baseline, tiny_model_dir, tiny_data_file, tmp_path, initial):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{"algorithm.baseline": baseline})
    result = train(config)

    assert result["final_step"] == 3
    assert_moved_and_finite(initial, parameters(tmp_path / "final"))
    metrics = read_metrics(tmp_path)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert math.isfinite(m["loss/policy"]) and math.isfinite(m["reward/mean"])
        assert 0.0 <= m["reward/mean"] <= 1.0  # rougeL F1
        assert m["reward/rougeL"] == pytest.approx(m["reward/mean"])  # the only component, weight 1
        assert m["policy/kl"] == 0.0  # kl.coef = 0: no reference model, no KL term
        assert m["policy/entropy"] > 0.0
        assert 1.0 <= m["completion/length"] <= 6.0
        assert m["train/lr"] == pytest.approx(1e-2)  # constant schedule
    assert any(m["reward/mean"] > 0 for m in metrics), "no completion ever overlapped its reference"
    saved = (tmp_path / "config.yaml").read_text()
    assert f"baseline: {baseline}" in saved


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_kl_penalty_to_the_frozen_start(temperature, tiny_model_dir, tiny_data_file, tmp_path, initial):
    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path,
                      **{"kl.coef": 0.1, "generation.temperature": temperature}))
    metrics = read_metrics(tmp_path)
    kl = [m["policy/kl"] for m in metrics]
    assert all(math.isfinite(k) for k in kl)
    # Step 1: the policy is still the reference, and both are scored at the sampling temperature.
    assert abs(kl[0]) < 1e-3
    assert max(abs(k) for k in kl[1:]) > 1e-3  # after updates at lr 1e-2 the policy has moved away
    assert_moved_and_finite(initial, parameters(tmp_path / "final"))


def test_checkpoint_is_saved_at_the_end(three_steps):
    run_dir, result, _ = three_steps
    path = checkpoint_dir(run_dir, 3)
    assert path.name == "step-000003" and path.is_dir()
    assert latest_checkpoint(run_dir) == path
    state = json.loads((path / "trainer_state.json").read_text())
    assert state["step"] == 3 and {"sampler", "moving_average"} <= set(state)
    for name in ("model", "optimizer.pt", "scheduler.pt", "rng.pt"):
        assert (path / name).exists()
    assert_same_parameters(parameters(path / "model"), parameters(run_dir / "final"))


def test_final_model_keeps_the_pad_token_id(three_steps, tiny_model_dir):
    run_dir, _, _ = three_steps
    start = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert start["pad_token_id"] == 0  # <pad>; eos is 2
    saved = json.loads((run_dir / "final" / "generation_config.json").read_text())
    assert saved["pad_token_id"] == 0  # fails: 2


def test_resume_continues_at_step_3_and_matches_an_uninterrupted_run(three_steps, tiny_model_dir, tiny_data_file,
                                                                     tmp_path):
    _, _, uninterrupted = three_steps
    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{"training.max_steps": 2}))
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 2)
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2]

    result = train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{"training.max_steps": 3}), resume=True)
    assert result["final_step"] == 3
    metrics = read_metrics(tmp_path)
    assert [m["step"] for m in metrics] == [1, 2, 3]  # only step 3 ran after resuming
    step3 = read_metrics(three_steps[0])[2]
    assert metrics[2]["reward/mean"] == step3["reward/mean"]  # the same prompts and samples
    assert metrics[2]["loss/policy"] == pytest.approx(step3["loss/policy"], rel=1e-4, abs=1e-6)
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 3)
    assert checkpoint_dir(tmp_path, 2).is_dir()  # keep_checkpoints = 2
    # Same seed, same data order, RNG, optimizer and baseline state: resuming changes nothing.
    assert_same_parameters(parameters(tmp_path / "final"), uninterrupted)


def test_save_every_keeps_only_the_newest_checkpoints(tiny_model_dir, tiny_data_file, tmp_path):
    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path,
                      **{"training.save_every": 1, "training.keep_checkpoints": 2}))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 3)


def test_resume_from_an_older_checkpoint_does_not_duplicate_metrics(tiny_model_dir, tiny_data_file, tmp_path):
    overrides = {"training.save_every": 2}
    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **overrides))  # checkpoints at steps 2 and 3
    shutil.rmtree(checkpoint_dir(tmp_path, 3))  # as if the run died after logging step 3, before saving it
    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **overrides, **{"training.max_steps": 4}),
          resume=True)
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2, 3, 4]  # fails: [1, 2, 3, 3, 4]


def test_resume_without_a_checkpoint_starts_from_the_beginning(tiny_model_dir, tiny_data_file, tmp_path):
    train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{"training.max_steps": 1, **CAN_LEARN}),
          resume=True)
    assert [m["step"] for m in read_metrics(tmp_path)] == [1]


@pytest.mark.parametrize("prompts_per_step, accumulation", [(2, 2), (4, 8)])
def test_gradient_accumulation_gives_the_full_batch_update(prompts_per_step, accumulation, three_steps,
                                                           tiny_model_dir, tiny_data_file, tmp_path):
    """N = prompts_per_step * 2 samples: 2 x 2 == 1 x 4 sequences, and 8 x 1 == 1 x 8 (one sequence per pass)."""
    if prompts_per_step == 2:
        full_dir, _, full_batch = three_steps
    else:
        full_dir = tmp_path / "full"
        train(tiny_config(tiny_model_dir, tiny_data_file, full_dir, **{"training.prompts_per_step": prompts_per_step}))
        full_batch = parameters(full_dir / "final")
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{
        "training.prompts_per_step": prompts_per_step, "training.gradient_accumulation_steps": accumulation})
    train(config)
    metrics = read_metrics(tmp_path)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert all(math.isfinite(m["loss/policy"]) for m in metrics)
    # Micro-batch losses are divided by the whole batch's normalizer, so the accumulated gradient is the full
    # batch's. Adam and clipping hide a gradient scale error in the parameters, so the loss and the
    # (pre-clipping) gradient norm are compared too.
    reference = read_metrics(full_dir)
    assert any(m["policy/grad_norm"] > 1e-3 for m in reference)
    for mine, full in zip(metrics, reference):
        assert mine["loss/policy"] == pytest.approx(full["loss/policy"], rel=1e-4, abs=1e-6)
        assert mine["policy/grad_norm"] == pytest.approx(full["policy/grad_norm"], rel=1e-4, abs=1e-6)
    after = parameters(tmp_path / "final")
    # Adam divides by sqrt(v) + 1e-8: a near-zero gradient's last-bit difference (one pass of 8 sequences vs 8
    # passes of one) changes that weight's step, by up to 1e-5 here; 1e-4 is 1% of one step at lr 1e-2.
    for name in full_batch:
        torch.testing.assert_close(after[name], full_batch[name], atol=1e-4, rtol=0, msg=lambda m, n=name: f"{n}: {m}")


def test_evaluation_before_and_after_training(tiny_model_dir, tiny_data_file, tmp_path):
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path, **{
        "evaluation.before_training": True, "evaluation.after_training": True,
        "data.split_fractions": [0.5, 0.25, 0.25], "training.max_steps": 1})
    result = train(config)
    for name in ("eval_before", "eval_after"):
        saved = json.loads((tmp_path / f"{name}.json").read_text())
        scores = saved["scores"]
        assert {"bleu", "rougeL"} <= set(scores)
        assert 0.0 <= scores["bleu"] <= 1.0 and 0.0 <= scores["rougeL"] <= 1.0
        generations = (tmp_path / f"{name}.jsonl").read_text().splitlines()
        assert scores["num_samples"] == len(generations) > 0
        assert result[name]["rougeL"] == pytest.approx(scores["rougeL"])
