"""The optimizer step SFT, the reward model and DPO share (training/setup.py `optimizer_step`) against the four lines
each trainer wrote before: clip to max_grad_norm (none when 0), AdamW step, schedule step, gradients cleared.
The golden runs (tests/test_golden_runs.py) pin that the trainers' numbers did not move."""

from __future__ import annotations

import copy

import pytest
import torch

from llm_pg.training.setup import OptimizerSettings, build_adamw, optimizer_step


class CpuAccelerator:
    """The one Accelerator method the step calls; Accelerate's is torch's on one process."""

    @staticmethod
    def clip_grad_norm_(parameters, max_norm):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)


def _model_with_gradients() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    (model(torch.randn(5, 4)).pow(2).sum() * 100).backward()  # a gradient norm far above 1: the clip acts
    return model


def _stepped(max_grad_norm: float, by_hand: bool) -> tuple[list[torch.Tensor], float, torch.nn.Module]:
    model = _model_with_gradients()
    settings = OptimizerSettings(0.1, 0.01, schedule="linear", total_steps=4)  # lr 0.1, then 0.075
    optimizer, schedule = build_adamw([{"params": list(model.parameters())}], settings, torch.device("cpu"))
    if by_hand:  # the lines of sft.py, reward_model.py and dpo.py before they shared one function
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    else:
        optimizer_step(CpuAccelerator(), model, optimizer, schedule, max_grad_norm)
    return [copy.deepcopy(p.detach()) for p in model.parameters()], schedule.get_last_lr()[0], model


@pytest.mark.parametrize("max_grad_norm", [0.0, 1e-6])
def test_the_shared_step_is_the_trainers_four_lines(max_grad_norm):
    shared, shared_lr, model = _stepped(max_grad_norm, by_hand=False)
    hand, hand_lr, _ = _stepped(max_grad_norm, by_hand=True)
    assert all(torch.equal(a, b) for a, b in zip(shared, hand))  # bit-identical
    assert shared_lr == hand_lr == pytest.approx(0.075)  # the schedule stepped once
    assert not any(torch.equal(a, b) for a, b in zip(shared, _model_with_gradients().parameters()))  # it moved
    assert all(p.grad is None for p in model.parameters())


def test_max_grad_norm_0_does_not_clip():
    """AdamW's first step is about lr * sign(g) whatever g's scale, so the clip shows only when it brings the
    gradient near AdamW's eps (1e-8): a norm of 1e-6 does."""
    clipped, _, _ = _stepped(1e-6, by_hand=False)
    unclipped, _, _ = _stepped(0.0, by_hand=False)
    assert not all(torch.equal(a, b) for a, b in zip(clipped, unclipped))


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_the_schedule_is_transformers_get_scheduler_to_the_bit(schedule):
    """setup.lr_factor against transformers' get_scheduler (what build_adamw called before): every learning rate of
    a run, warm-up or not, steps past the end included, and the same scheduler state_dict (checkpoints)."""
    from transformers import get_scheduler

    for warmup in (0, 1, 3, 10):
        for total in (0, 1, 5, 20, 37):
            ours_optimizer, ours = build_adamw([{"params": [torch.nn.Parameter(torch.zeros(2))]}], OptimizerSettings(
                3e-4, 0.0, schedule=schedule, warmup_steps=warmup, total_steps=total), torch.device("cpu"))
            theirs_optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=3e-4)
            theirs = get_scheduler(schedule, theirs_optimizer, num_warmup_steps=warmup, num_training_steps=total)
            for _ in range(total + 4):
                assert [float(x).hex() for x in ours.get_last_lr()] == [float(x).hex() for x in theirs.get_last_lr()]
                ours_optimizer.step(), ours.step(), theirs_optimizer.step(), theirs.step()
            assert ours.state_dict() == theirs.state_dict()


@pytest.mark.parametrize("warmup", [0, 3])
def test_an_unknown_schedule_is_refused_at_set_up(warmup):
    with pytest.raises(ValueError, match="'step': one of constant, linear, cosine"):
        build_adamw([{"params": [torch.nn.Parameter(torch.zeros(2))]}], OptimizerSettings(
            1e-3, 0.0, schedule="step", warmup_steps=warmup, total_steps=5), torch.device("cpu"))
