"""The set-up every trainer shares (RL, SFT, the reward model): precision, Accelerator, threads, seed, AdamW and its
schedule, the resolved config in the run folder.

    accelerator = start_training(config, "model.dtype")  # precision checked, threads set, every process seeded
    optimizer, schedule = build_adamw(param_groups, OptimizerSettings(...), accelerator.device)
    optimizer_step(accelerator, model, optimizer, schedule, max_grad_norm)  # SFT, RM, DPO: clip, step, zero
    save_resolved_config(accelerator, config, folder)  # <folder>/config.yaml, main process only

What stays in each trainer is its own: which parameters form which group (RL: the value head at
critic.learning_rate), which section its learning rate and schedule come from (training, sft, rm), and its loop.

The order is part of the contract: `start_training` seeds after the Accelerator exists and before the caller loads
anything, so every process draws the same initial weights (value head, LoRA adapters) and the data order; golden
runs (tests/test_golden_runs.py) pin every draw that follows.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from llm_pg.checks.reward_model import SCHEDULES  # the schedule names the config checks accept
from llm_pg.config.schema import TrainConfig
from llm_pg.errors import ConfigError
from llm_pg.models.precision import resolve_mixed_precision, training_device, warn_about_precision
from llm_pg.runs.rng import seed_everything
from llm_pg.runs.tracking import fused_adam, save_config, set_threads


logger = logging.getLogger(__name__)


def mixed_precision(config: TrainConfig) -> str:
    """training.mixed_precision resolved ('auto': the launcher's) to 'no', 'bf16' or 'fp16', refused where this
    machine cannot run it. bf16 and fp16 mean autocast forward passes over float32 weights (models/precision.py)."""
    precision = resolve_mixed_precision(config.training.mixed_precision)
    if precision == "fp16" and training_device().type != "cuda":
        raise ConfigError("training.mixed_precision: fp16 needs a GPU; use bf16 on a CPU (or no)")
    return precision


def make_accelerator(precision: str, log_with: list[str] | None = None,
                     project_dir: str | None = None) -> Accelerator:
    """An Accelerator in `precision`; refuses a launch whose processes would each train alone."""
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", precision) != precision:
        # one process, several runs (a sweep, SFT then RL, tests) in different precisions: Accelerate keeps its
        # settings process-wide and refuses another precision, so forget them; the process group (PartialState) stays.
        AcceleratorState._reset_state()
    accelerator = Accelerator(log_with=log_with or None, project_dir=project_dir, mixed_precision=precision)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > accelerator.num_processes:  # e.g. `accelerate launch --multi_gpu` on a machine without GPUs
        raise ConfigError(f"accelerate launch: {launched} processes were started but Accelerate joined "
                          f"{accelerator.num_processes}, so each would train alone; without GPUs run "
                          "ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N ...")
    return accelerator


def start_training(config: TrainConfig, dtype_field: str, log_with: list[str] | None = None,
                   project_dir: str | None = None) -> Accelerator:
    """Precision, Accelerator, torch threads and the seed, in that order, for any trainer.

    `dtype_field` names the setting the trainer loads its weights in ("model.dtype", "rm.dtype"): 16-bit weights on
    a CPU, or bf16 compute on a CPU without bf16 instructions, get their one warning here. Call it before loading
    anything: it seeds torch, Python and NumPy with training.seed on every process (runs/rng.py)."""
    accelerator = make_accelerator(mixed_precision(config), log_with, project_dir)
    section, name = dtype_field.split(".")
    warn_about_precision(getattr(getattr(config, section), name), accelerator.mixed_precision, accelerator.device,
                         dtype_field)
    set_threads(config.training.num_threads, accelerator.num_processes)
    seed_everything(config.training.seed)
    return accelerator


@dataclass(frozen=True)
class OptimizerSettings:
    """AdamW and its learning-rate schedule, filled by each trainer from its own config section.

    lr(step) = learning_rate * warm-up(step) * schedule(step), the warm-up linear over warmup_steps, the schedule
    (constant, linear or cosine to 0) over total_steps: `lr_factor`, transformers' get_scheduler to the bit."""

    learning_rate: float
    weight_decay: float
    betas: tuple[float, float] = (0.9, 0.999)  # torch's AdamW default
    schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 0


def build_adamw(param_groups: list[dict], settings: OptimizerSettings, device: torch.device):
    """(AdamW, schedule) over the non-empty `param_groups` (torch's dicts: 'params', optionally their own 'lr').

    The schedule is not given to Accelerate's prepare: its wrapper steps it once per process on every call (made for
    data loaders whose global batch grows with the processes), while every trainer here takes one optimizer step per
    process and step, so with P processes the schedule would run P times too fast. The trainer steps it."""
    if settings.schedule not in SCHEDULES:  # at set-up, not at the first step past the warm-up
        raise ValueError(f"lr schedule {settings.schedule!r}: one of {', '.join(SCHEDULES)}")
    optimizer = torch.optim.AdamW([g for g in param_groups if g["params"]], lr=settings.learning_rate,
                                  weight_decay=settings.weight_decay, betas=tuple(settings.betas),
                                  fused=fused_adam(device))
    # a function for constant, a partial otherwise, as transformers': LambdaLR's state_dict (checkpoints) keeps None
    # for a function and the object's __dict__ ({}) for a partial, so old checkpoints and new ones hold the same
    factor = _constant if settings.schedule == "constant" else partial(
        lr_factor, schedule=settings.schedule, warmup_steps=settings.warmup_steps, total_steps=settings.total_steps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _constant(_step: int) -> int:
    return 1


def lr_factor(step: int, *, schedule: str, warmup_steps: int, total_steps: int) -> float:
    """The learning rate's factor at `step`: transformers' get_scheduler formulas, operation for operation (tested
    equal to it), computed here because importing them imports transformers' Trainer utilities and peft (~0.3 s of
    every training process's start).  'constant' has no warm-up, as get_scheduler's (checks/numbers.py and
    checks/reward_model.py refuse a warm-up with it)."""
    if schedule == "constant":
        return 1
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    if schedule == "linear":
        return max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))
    if schedule == "cosine":  # half a cosine wave from 1 to 0 (num_cycles = 0.5)
        progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))
    raise ValueError(f"lr schedule {schedule!r}: one of {', '.join(SCHEDULES)}")


def optimizer_step(accelerator: Accelerator, model, optimizer, schedule, max_grad_norm: float) -> None:
    """After the backward: clip the gradient norm to max_grad_norm (none when 0), step AdamW and its schedule, clear
    the gradients. SFT's, the reward model's and DPO's step (one per batch). RL's step is update.py's: it clips the
    policy and the value head apart, skips a non-finite update and steps the schedule once per rollout."""
    if max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)


def save_resolved_config(accelerator: Accelerator, config: TrainConfig, folder: Path) -> None:
    """<folder>/config.yaml: the config as resolved, the run's one source of truth (`--config` reads it back).
    Written by the main process once the trainer's inputs are known to load."""
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        save_config(config, folder / "config.yaml")


def save_final_policy(accelerator: Accelerator, model, tokenizer, out: Path, what: str) -> Path:
    """<out>/final: the trained policy (weights gathered first under ZeRO-3/FSDP), written by the main process."""
    return save_policy(accelerator, model, tokenizer, out / "final", what)


def save_policy(accelerator: Accelerator, model, tokenizer, folder: Path, what: str) -> Path:
    """The policy as a whole model (save_model: weights, tokenizer; no optimizer state) in `folder`, weights
    gathered first under ZeRO-3/FSDP; called by every process, written by the main one."""
    from llm_pg.models.sharding import full_state_dict
    from llm_pg.runs.checkpoint import save_model

    accelerator.wait_for_everyone()
    weights = full_state_dict(accelerator, model)  # ZeRO-3/FSDP: gathered by every process; else None
    if accelerator.is_main_process:
        folder.parent.mkdir(parents=True, exist_ok=True)
        save_model(accelerator.unwrap_model(model), tokenizer, folder, weights)
        logger.info("%s saved to %s", what, folder)
    accelerator.wait_for_everyone()
    return folder


POLICIES = "policies"  # <run folder>/policies/step-NNNNNN: the policies kept at given steps (rlhf.frontier_steps)


def policy_at_step(run_dir: Path, step: int) -> Path:
    """Where a run keeps its policy after `step` updates (save_policy; never deleted, unlike checkpoints)."""
    return Path(run_dir) / POLICIES / f"step-{step:06d}"
