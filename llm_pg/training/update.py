"""The update stage: gradient steps on the policy (and its value head) over one scored rollout.

REINFORCE and Actor-Critic take one optimizer step over the whole rollout; PPO and GRPO take `ppo.epochs` passes of
`ppo.num_minibatches` steps each (by default 2 x 2 for ppo, 1 x 1 for grpo: algorithms/registry.py).  Every step
splits its sequences into gradient_accumulation_steps micro-batches whose summed losses are divided by the whole
step's normalizer, so accumulation gives the full-batch gradient.

    scoring.ScoredRollout -> policy_update -> _steps (epochs x minibatches) -> _optimizer_step -> _backward
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from llm_pg.algorithms.losses import entropy_bonus, reduction_normalizer, reduction_weights, truncation_mask, value_loss
from llm_pg.algorithms.registry import Algorithm, get_algorithm
from llm_pg.models.memory import release_freed_memory, update_mode
from llm_pg.models.sharding import sharding_of
from llm_pg.models.value_head import value_head_of
from llm_pg.rollout.sampling import completion_outputs
from llm_pg.training.scoring import ScoredRollout

logger = logging.getLogger(__name__)


@dataclass
class Learner:
    """What the update trains: the prepared policy (with its value head), its optimizer and schedule."""

    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """{'policy': the policy's trained weights, 'value': the value head's (empty without a critic)}."""
        head = value_head_of(self.model)
        critic = list(head.parameters()) if head is not None else []
        ids = {id(p) for p in critic}
        return {"policy": [p for p in self.model.parameters() if id(p) not in ids], "value": critic}


@dataclass
class UpdateBatch:
    """One scored rollout as every gradient step of its update reads it."""

    scored: ScoredRollout
    old_logprobs: torch.Tensor  # (N, T) log pi_old(a_t|s_t): PPO's ratio denominator
    loss_mask: torch.Tensor  # (N, T) the tokens that get a gradient (truncated rows zeroed when masked)
    algorithm: Algorithm
    uses_critic: bool  # a value head is trained beside the policy
    critic_only: bool = False  # critic.warmup_steps: only the value head moves, the policy stays bit-identical
    recomputed: torch.Tensor | None = None  # (N, T) filled by the gradient steps with their log pi, when they all
    # run at the sampling weights (one epoch, one minibatch): the trainer's side of sampler_mismatch


def _slices(start: int, size: int, parts: int) -> list[slice]:
    step = size // parts
    return [slice(start + i * step, start + (i + 1) * step) for i in range(parts)]


def _shared_prompt_group(rows: int, K: int) -> int:
    """K when a micro-batch of `rows` holds whole prompts (each prompt's pass is then shared by its K samples)."""
    return K if rows % K == 0 else 1


@torch.no_grad()
def exact_old_logprobs(config, model, scored: ScoredRollout, micro_batches: list[slice]) -> torch.Tensor:
    """log pi_old(a_t|s_t) (N, T) from the same forward passes the update makes, before any of its steps.

    The rollout's own log-probs come from incremental decoding and differ in the last bits; these make PPO's
    ratio exactly 1 on the first minibatch.
    """
    r = scored.rollout
    old = torch.zeros_like(r.logprobs)
    for s in micro_batches:
        old[s] = completion_outputs(model, r.prompt_ids[s], r.prompt_mask[s], r.completion_ids[s],
                                    r.completion_mask[s], temperature=config.generation.temperature,
                                    group_size=_shared_prompt_group(s.stop - s.start, r.group_size),
                                    logits_chunk_tokens=config.training.logits_chunk_tokens).logprobs
    return old


def _backward(config, learner: Learner, batch: UpdateBatch, s: slice, normalizer: float) -> tuple[dict, dict]:
    """Loss of micro-batch s, divided by the step's normalizer, backpropagated; its (summed terms, policy stats)."""
    a, r, scored = config.algorithm, batch.scored.rollout, batch.scored
    # every term is summed with the reduction's per-token weights (losses.LOSS_REDUCTIONS), then / normalizer
    mask = reduction_weights(batch.loss_mask[s], a.loss_reduction)  # (n, T)
    scores = completion_outputs(learner.model, r.prompt_ids[s], r.prompt_mask[s], r.completion_ids[s],
                                r.completion_mask[s], with_entropy=True, entropy_grad=a.entropy_coef > 0,
                                with_values=batch.uses_critic, temperature=config.generation.temperature,
                                group_size=_shared_prompt_group(s.stop - s.start, r.group_size),
                                logits_chunk_tokens=config.training.logits_chunk_tokens)
    policy_loss, policy_stats = batch.algorithm.policy_loss(scores.logprobs, batch.old_logprobs[s],
                                                            scored.advantages[s], mask, config)
    terms = {"loss/policy": policy_loss, "policy/entropy": entropy_bonus(scores.entropy, mask, "sum")}
    actor_loss = policy_loss - a.entropy_coef * terms["policy/entropy"]
    kl = scored.kl_penalty
    if kl is not None and kl.in_loss:  # the KL that is trained is the one that is logged: same estimator, tokens
        terms["loss/kl"] = kl.per_token(scores.logprobs, scored.ref_logprobs[s], mask).sum()
        actor_loss = actor_loss + kl.coef * terms["loss/kl"]
    critic_loss = 0.0
    if batch.uses_critic:
        terms["loss/value"] = value_loss(scores.values, r.values[s], scored.returns[s], mask,
                                         config.critic.value_clip, "sum")
        critic_loss = config.critic.loss_coef * terms["loss/value"]
    loss = critic_loss if batch.critic_only else actor_loss + critic_loss  # warm-up: no actor term at all
    learner.accelerator.backward(loss / normalizer)
    if batch.recomputed is not None:
        batch.recomputed[s] = scores.logprobs.detach()
    return terms, policy_stats


def _optimizer_step(config, learner: Learner, batch: UpdateBatch, minibatch: slice) -> dict[str, float]:
    """Backward over the minibatch's micro-batches, clip, step (skipped when non-finite).  Returns its stats."""
    accelerator, mask = learner.accelerator, batch.loss_mask
    accumulation = config.training.gradient_accumulation_steps
    n = minibatch.stop - minibatch.start
    # DDP averages gradients over P processes, so each divides by (the whole step's count) / P.
    tokens = accelerator.reduce(mask[minibatch].sum().float(), "sum").item() / accelerator.num_processes
    normalizer = reduction_normalizer(config.algorithm.loss_reduction, n, tokens, config.generation.max_new_tokens)
    stats: dict[str, float] = defaultdict(float)
    token_stats: dict[str, float] = defaultdict(float)  # the policy loss's per-token means, times their tokens
    for i, s in enumerate(_slices(minibatch.start, n, accumulation)):
        with nullcontext() if i == accumulation - 1 else accelerator.no_sync(learner.model):
            terms, policy_stats = _backward(config, learner, batch, s, normalizer)
        if i < accumulation - 1:  # this micro-batch's freed activations, back to the OS before the next one's
            release_freed_memory()  # (glibc keeps them, fragmented: 2 micro-batches lowered the RSS peak 0.16 GB)
        for k, v in terms.items():
            stats[k] += v.item() / normalizer
        for k, v in policy_stats.items():
            token_stats[k] += v.item() * mask[s].sum().item()
    if accelerator.num_processes > 1:  # each process holds its share (over the global normalizer / P): mean them
        stats = dict(zip(stats, accelerator.reduce(torch.tensor(list(stats.values()), device=mask.device),
                                                   "mean").tolist()))
    if token_stats:  # e.g. ppo/clip_frac: the mean over every process's tokens, not a mean of per-process means
        sums = accelerator.reduce(torch.tensor(list(token_stats.values()), device=mask.device, dtype=torch.float64),
                                  "sum")
        stats.update(zip(token_stats, (sums / max(tokens * accelerator.num_processes, 1.0)).tolist()))
    groups = learner.parameter_groups()
    if batch.critic_only:  # no gradient at all (not even a zero one): AdamW then skips the policy's weights,
        for p in groups["policy"]:  # weight decay and moment updates included, so they stay bit-identical
            p.grad = None
    norms = _clip_gradients(config, learner, groups)
    finite = all(math.isfinite(v) for v in (*norms.values(), *stats.values()))
    if finite:
        learner.optimizer.step()
    else:  # a NaN/inf update would destroy the weights; skip it and let the loop count how many in a row
        logger.warning("non-finite loss or gradient (%s, grad norms %s): update skipped", dict(stats), norms)
    learner.optimizer.zero_grad(set_to_none=True)
    return {**stats, **norms, "train/skipped_update": float(not finite)}


def _clip_gradients(config, learner: Learner, groups: dict[str, list]) -> dict[str, float]:
    """Clip the policy's and the value head's gradients each to training.max_grad_norm; their norms before.

    Separately, so that a large critic gradient (hidden states of norm ~600 make V's gradient large) cannot shrink
    the actor's step, nor the reverse. DeepSpeed and FSDP1 clip the whole model themselves: one joint norm there.
    """
    accelerator = learner.accelerator
    max_norm = config.training.max_grad_norm if config.training.max_grad_norm > 0 else float("inf")
    sharding = sharding_of(accelerator)
    if sharding.deepspeed_stage is not None or sharding.fsdp_version == 1 or not groups["value"]:
        return {"policy/grad_norm": float(accelerator.clip_grad_norm_(learner.model.parameters(), max_norm))}
    return {"policy/grad_norm": float(accelerator.clip_grad_norm_(groups["policy"], max_norm)),
            "value/grad_norm": float(accelerator.clip_grad_norm_(groups["value"], max_norm))}


def policy_update(config, learner: Learner, scored: ScoredRollout, critic_only: bool = False,
                  train_mode=None) -> dict[str, float]:
    """All of the algorithm's optimizer steps on one scored rollout; the step's mean stats.

    critic_only trains the value head alone (critic.warmup_steps): the policy's weights stay bit-identical.  The
    learning-rate schedule advances once per rollout, so it spans training.max_steps whatever the algorithm.
    `train_mode` (gradient checkpointing, LoRA dropout: memory.update_mode) is entered for the gradient steps only;
    PPO's log pi_old is computed before them through the same checkpointed layers, without dropout.
    """
    algo = get_algorithm(config)
    N = scored.rollout.completion_mask.shape[0]
    minibatches = _slices(0, N, algo.minibatches(config))
    old_logprobs = scored.rollout.logprobs
    if algo.exact_old_logprobs:
        accumulation = config.training.gradient_accumulation_steps
        micro = [s for m in minibatches for s in _slices(m.start, m.stop - m.start, accumulation)]
        # the update's own forward passes (checkpointed layers drop the shared prompt cache), without dropout
        with update_mode(learner.model, dropout=False):
            old_logprobs = exact_old_logprobs(config, learner.model, scored, micro)
    r = scored.rollout
    loss_mask = truncation_mask(r.completion_mask, r.truncated) if config.algorithm.mask_truncated_completions \
        else r.completion_mask
    one_pass = algo.epochs(config) == 1 and len(minibatches) == 1  # every gradient step at the sampling weights
    recomputed = torch.zeros_like(old_logprobs) if one_pass and not algo.exact_old_logprobs else None
    batch = UpdateBatch(scored, old_logprobs, loss_mask, algo, algo.uses_critic(config), critic_only, recomputed)
    with train_mode or nullcontext():
        metrics = _steps(config, learner, batch, minibatches)
    trainer = old_logprobs if algo.exact_old_logprobs else recomputed
    if trainer is not None:
        metrics.update(sampler_mismatch(r.logprobs, trainer, r.completion_mask, learner.accelerator))
    return metrics


def sampler_mismatch(sampler: torch.Tensor, trainer: torch.Tensor, mask: torch.Tensor, accelerator) -> dict:
    """How far the sampler's log-probs (incremental decoding: rollout.logprobs) are from the trainer's own
    recomputation at the same weights, over the step's completion tokens on every process: mean |d|, its 95th
    percentile, and the share of tokens whose ratio exp(d) leaves [0.9, 1.1], d = log pi_trainer - log pi_sampler.

    A sampler whose numbers differ from the trainer's (another kernel, precision or engine: trl#4772, verl#2953)
    makes an on-policy update silently off-policy; llm_pg samples and scores with one model, so this is the
    rounding of the KV-cached decode against the full forward pass (docs/algorithms.md gives the measured values)."""
    d = (trainer.double() - sampler.double())[mask.bool()]  # (tokens of this process,)
    if accelerator.num_processes > 1:  # token counts differ between processes: pad with NaN, gather, drop the pad
        d = accelerator.gather(accelerator.pad_across_processes(d, dim=0, pad_index=math.nan))
        d = d[~d.isnan()]
    if d.numel() == 0:
        return {}
    outside = (d > math.log(1.1)) | (d < math.log(0.9))
    return {"mismatch/abs_logp_mean": d.abs().mean().item(), "mismatch/abs_logp_p95": d.abs().quantile(0.95).item(),
            "mismatch/ratio_outside_frac": outside.double().mean().item()}


def minibatch_order(count: int, epoch: int, accelerator: Accelerator) -> list[int]:
    """The order of `count` minibatches in `epoch`: as sampled in the first, shuffled in the later ones.

    Every process must take the same order (DDP averages minibatch i of each process) while each process has a
    random stream of its own (runs/rng.py): process 0's shuffle is sent to the others. Its stream is checkpointed,
    so a resume shuffles again as the uninterrupted run did."""
    if epoch == 0:
        return list(range(count))
    order = torch.randperm(count).tolist()  # every process draws, so that every stream advances alike
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        order = broadcast_object_list([order], from_process=0)[0]
    return order


def _steps(config, learner: Learner, batch: UpdateBatch, minibatches: list[slice]) -> dict[str, float]:
    """The epochs x minibatches optimizer steps; their mean stats."""
    history: dict[str, list[float]] = defaultdict(list)
    epochs = 0
    for epoch in range(batch.algorithm.epochs(config)):
        order = minibatch_order(len(minibatches), epoch, learner.accelerator)
        epoch_kl = []
        for i, m in enumerate(order):
            if i or epoch:  # the previous optimizer step's activations and gradients, as between micro-batches
                release_freed_memory()
            stats = _optimizer_step(config, learner, batch, minibatches[m])
            for k, v in stats.items():
                history[k].append(v)
            epoch_kl.append(stats.get("ppo/approx_kl", 0.0))
        epochs += 1
        target_kl = batch.algorithm.target_kl(config)  # ppo.target_kl, for ppo and grpo
        if target_kl and sum(epoch_kl) / len(epoch_kl) > target_kl:
            break  # the policy moved far enough from the one that sampled
    if not all(history["train/skipped_update"]):
        learner.scheduler.step()
    metrics = {k: sum(v) / len(v) for k, v in history.items()}
    metrics["train/skipped_update"] = float(any(history["train/skipped_update"]))
    if batch.algorithm.epochs(config) > 1:
        metrics["ppo/epochs"] = float(epochs)
    return metrics
