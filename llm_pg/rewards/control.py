"""Control arms: the training reward replaced by one that says nothing about the completion it is given.

A gain over the start says the policy changed; it does not say the reward caused it. On Qwen2.5-Math a random
reward produced about three quarters of the real one's gain ("Spurious Rewards", arXiv 2506.10947): sampling,
clipping and the KL term move a policy too. A control arm trains exactly as the real run (same prompts, same
sampling streams, same KL, same updates) with the task reward replaced by

    random    R'_i = mean(R) + std(R) z_i,  z_i ~ N(0, 1)   the batch's mean and spread, no information
    shuffled  R'_i = R_pi(i),  pi a random permutation       the batch's very values, on the wrong completions

over the step's whole batch (every process's completions, so 2 processes = 1 process with the double batch). The
held-out evaluation still scores the real reward and metrics: `llm-pg compare` reports each arm against its control
(pipelines/compare.py). The draws come from a generator of their own, seeded by (training.seed, CONTROL_STREAM,
step, round) in training/rl.py, so the sampling streams of a control arm are those of the real run (runs/rng.py).
"""

from __future__ import annotations

import torch

CONTROLS = ("none", "random", "shuffled")
CONTROL_STREAM = 0xC0  # a constant in the seed of the control's draws: apart from every other derived stream


def control_rewards(rewards: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """(N,) the control's rewards for the whole batch's (N,) rewards (float32; `kind` one of CONTROLS).

    random: the batch's mean plus its standard deviation (population, divisor N: the spread the batch has) times
    standard normal noise; shuffled: the rewards in a random order."""
    if kind == "none":
        return rewards
    if kind == "random":
        noise = torch.randn(rewards.shape, generator=generator, dtype=torch.float64)  # (N,)
        values = rewards.double()
        return (values.mean() + values.std(correction=0) * noise).to(rewards.dtype)
    if kind == "shuffled":
        return rewards[torch.randperm(rewards.shape[0], generator=generator)]
    raise ValueError(f"reward.control: {kind!r} is not one of {CONTROLS}")


def apply_control(rewards: torch.Tensor, kind: str, generator: torch.Generator, gather, process_index: int,
                  ) -> torch.Tensor:
    """This process's (N,) rewards replaced by its slice of the control over every process's batch.

    `gather` concatenates the processes' (N,) tensors in process order (accelerator.gather); every process draws the
    same numbers, so the slices fit together."""
    if kind == "none":
        return rewards
    everything = gather(rewards)  # (P * N,)
    n = rewards.shape[0]
    return control_rewards(everything, kind, generator)[process_index * n:(process_index + 1) * n]
