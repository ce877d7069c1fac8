"""The update stage: gradient steps on the policy (and its value head) over one scored rollout.

REINFORCE and Actor-Critic take one optimizer step over the whole rollout; PPO takes `ppo.epochs` passes of
`ppo.num_minibatches` steps each.  Every step splits its sequences into gradient_accumulation_steps micro-batches
whose summed losses are divided by the whole step's normalizer, so accumulation gives the full-batch gradient.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from contextlib import nullcontext

import torch
from accelerate import Accelerator

from llm_pg.algorithms import get_algorithm
from llm_pg.config import TrainConfig
from llm_pg.losses import KL_ESTIMATORS, entropy_bonus, value_loss
from llm_pg.rollout import score_tokens

logger = logging.getLogger(__name__)


def _slices(start: int, size: int, parts: int) -> list[slice]:
    step = size // parts
    return [slice(start + i * step, start + (i + 1) * step) for i in range(parts)]


@torch.no_grad()
def exact_old_logprobs(config: TrainConfig, model, scored, micro_batches: list[slice], group: int) -> torch.Tensor:
    """log pi_old(a_t|s_t) (N, T) from the same forward passes the update makes, before any of its steps.

    The rollout's own log-probs come from generate()'s incremental decoding and differ in the last bits; these
    make PPO's ratio exactly 1 on the first minibatch.
    """
    r = scored.rollout
    old = torch.zeros_like(r.logprobs)
    for s in micro_batches:
        old[s] = score_tokens(model, r.prompt_ids[s], r.prompt_mask[s], r.completion_ids[s], r.completion_mask[s],
                              temperature=config.generation.temperature, group_size=group).logprobs
    return old


def _optimizer_step(config: TrainConfig, accelerator: Accelerator, model, optimizer, scored, old_logprobs,
                    minibatch: slice, kl_coef: float, actor_weight: float) -> dict[str, float]:
    """Backward over the minibatch's micro-batches, clip, step (skipped when non-finite).  Returns its stats."""
    algo, a, r = get_algorithm(config), config.algorithm, scored.rollout
    critic = algo.uses_critic(config)
    mask = r.completion_mask
    accumulation = config.training.gradient_accumulation_steps
    n = minibatch.stop - minibatch.start
    # DDP averages gradients over P processes, so each divides by (the whole step's count) / P.
    tokens = accelerator.reduce(mask[minibatch].sum().float(), "sum").item() / accelerator.num_processes
    normalizer = n if a.loss_reduction == "sequence_mean" else max(tokens, 1.0)
    micro_batches = _slices(minibatch.start, n, accumulation)
    K = config.generation.num_samples
    group = K if (n // accumulation) % K == 0 else 1  # share each prompt's forward pass among its K samples
    kl_in_loss = config.kl.mode == "loss" and scored.ref_logprobs is not None
    stats: dict[str, float] = defaultdict(float)
    for i, s in enumerate(micro_batches):
        with nullcontext() if i == accumulation - 1 else accelerator.no_sync(model):
            scores = score_tokens(model, r.prompt_ids[s], r.prompt_mask[s], r.completion_ids[s], mask[s],
                                  with_entropy=True, entropy_grad=a.entropy_coef > 0, with_values=critic,
                                  temperature=config.generation.temperature, group_size=group)
            policy_loss, policy_stats = algo.policy_loss(scores.logprobs, old_logprobs[s], scored.advantages[s],
                                                         mask[s], config)
            terms = {"loss/policy": policy_loss, "policy/entropy": entropy_bonus(scores.entropy, mask[s], "sum")}
            loss = actor_weight * policy_loss - a.entropy_coef * terms["policy/entropy"]
            if critic:
                terms["loss/value"] = value_loss(scores.values, r.values[s], scored.returns[s], mask[s],
                                                 config.critic.value_clip, "sum")
                loss = loss + config.critic.loss_coef * terms["loss/value"]
            if kl_in_loss:  # the KL that is trained is the one that is logged: same estimator, same tokens
                terms["loss/kl"] = KL_ESTIMATORS[config.kl.estimator](scores.logprobs, scored.ref_logprobs[s],
                                                                       mask[s]).sum()
                loss = loss + kl_coef * terms["loss/kl"]
            accelerator.backward(loss / normalizer)
        for k, v in terms.items():
            stats[k] += v.item() / normalizer
        for k, v in policy_stats.items():
            stats[k] += v.item() / accumulation
    if accelerator.num_processes > 1:  # each process holds its share (over the global normalizer / P): mean them
        stats = dict(zip(stats, accelerator.reduce(torch.tensor(list(stats.values()), device=mask.device),
                                                   "mean").tolist()))
    max_norm = config.training.max_grad_norm if config.training.max_grad_norm > 0 else float("inf")
    grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), max_norm))
    finite = math.isfinite(grad_norm) and all(math.isfinite(v) for v in stats.values())
    if finite:
        optimizer.step()
    else:  # a NaN/inf update would destroy the weights; skip it and let the loop count how many in a row
        logger.warning("non-finite loss or gradient (%s, grad norm %s): update skipped", dict(stats), grad_norm)
    optimizer.zero_grad(set_to_none=True)
    return {**stats, "policy/grad_norm": grad_norm, "train/skipped_update": float(not finite)}


def policy_update(config: TrainConfig, accelerator: Accelerator, model, optimizer, scheduler, scored,
                  kl_coef: float = 0.0, actor_weight: float = 1.0, train_mode=None) -> dict[str, float]:
    """All of the algorithm's optimizer steps on one scored rollout; the step's mean stats.

    actor_weight 0 trains only the critic (critic.warmup_steps).  The learning-rate schedule advances once per
    rollout, so it spans training.max_steps whatever the algorithm.  `train_mode` (gradient checkpointing, LoRA
    dropout: memory.update_mode) is entered for the gradient steps only, after PPO's log pi_old is computed.
    """
    algo = get_algorithm(config)
    N = scored.rollout.completion_mask.shape[0]
    minibatches = _slices(0, N, algo.minibatches(config))
    old_logprobs = scored.rollout.logprobs
    if algo.exact_old_logprobs:
        size = N // len(minibatches) // config.training.gradient_accumulation_steps
        group = config.generation.num_samples if size % config.generation.num_samples == 0 else 1
        micro = [s for m in minibatches for s in _slices(m.start, m.stop - m.start,
                                                         config.training.gradient_accumulation_steps)]
        old_logprobs = exact_old_logprobs(config, model, scored, micro, group)  # before train_mode: no dropout
    with train_mode or nullcontext():
        return _steps(config, accelerator, model, optimizer, scheduler, scored, old_logprobs, minibatches, kl_coef,
                      actor_weight)


def _steps(config: TrainConfig, accelerator: Accelerator, model, optimizer, scheduler, scored, old_logprobs,
           minibatches: list[slice], kl_coef: float, actor_weight: float) -> dict[str, float]:
    """The epochs x minibatches optimizer steps; their mean stats."""
    algo = get_algorithm(config)
    history: dict[str, list[float]] = defaultdict(list)
    epochs = 0
    for epoch in range(algo.epochs(config)):
        order = range(len(minibatches)) if epoch == 0 else torch.randperm(len(minibatches)).tolist()
        epoch_kl = []
        for m in order:
            stats = _optimizer_step(config, accelerator, model, optimizer, scored, old_logprobs, minibatches[m],
                                    kl_coef, actor_weight)
            for k, v in stats.items():
                history[k].append(v)
            epoch_kl.append(stats.get("ppo/approx_kl", 0.0))
        epochs += 1
        if config.ppo.target_kl and sum(epoch_kl) / len(epoch_kl) > config.ppo.target_kl:
            break  # the policy moved far enough from the one that sampled
    if not all(history["train/skipped_update"]):
        scheduler.step()
    metrics = {k: sum(v) / len(v) for k, v in history.items()}
    metrics["train/skipped_update"] = float(any(history["train/skipped_update"]))
    if algo.epochs(config) > 1:
        metrics["ppo/epochs"] = float(epochs)
    return metrics
