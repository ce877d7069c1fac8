"""`llm-pg dpo`: direct preference optimization (Rafailov et al. 2023) of the policy on preference pairs.

    pairs (rm.source, read as `llm-pg rm` reads them) -> DPOPair: the prompt rendered and cut as SFT and RL render it
    (data.*), each answer + the end-of-answer token(s) as SFT's targets (training/sft.py answer_ids)
    -> per step: log pi(answer | prompt) summed over the answer's tokens, for the P chosen and P rejected answers in
       one forward pass of the policy, and of the frozen reference (the start, model.name_or_path) under no_grad
    -> preference_loss.dpo_loss (dpo.loss_type, dpo.beta, dpo.label_smoothing) -> AdamW
    -> <dpo.output_dir>: config.yaml, dpo_metrics.jsonl, final/ (the policy, safetensors, and tokenizer)
       (and policies/step-NNNNNN/ at the steps the pipeline asks for: rlhf.frontier_steps)

The run folder keeps SFT's promises (training/sft.py): the config saved before the first step, one metrics line per
step, final/ written whole or not at all; like SFT, there are no checkpoints and no --resume (a killed run starts
again with --overwrite). The reference is a second, frozen copy of the start: two models' weights in memory, one
optimizer's state (TRL's precompute_ref_log_probs would trade it for a pass over the data first).
Run it: `llm-pg dpo --config configs/x.yaml`, or `train_dpo(load_config(...))` in Python.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from llm_pg.algorithms.preference_loss import dpo_loss
from llm_pg.config.schema import TrainConfig, checked
from llm_pg.data.chat import end_of_answer_ids
from llm_pg.data.preferences import PairFields, PreferencePair, load_pairs
from llm_pg.data.prompts import PromptSampler, encode_prompt, render_prompt
from llm_pg.errors import DataError
from llm_pg.models.policy import load_policy, load_tokenizer
from llm_pg.models.reward_model import pad_right
from llm_pg.models.sharding import prepare_backend
from llm_pg.rollout.sampling import completion_logprobs, pad_left
from llm_pg.training.setup import (OptimizerSettings, build_adamw, optimizer_step, policy_at_step, save_final_policy,
                                   save_policy, save_resolved_config, start_training)
from llm_pg.training.sft import answer_ids

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DPOPair:
    prompt_ids: list[int]  # as the policy reads the prompt (data.max_prompt_tokens, cut from the left)
    chosen_ids: list[int]  # the answer's tokens + end-of-answer, cut to dpo.max_completion_length
    rejected_ids: list[int]


def dpo_pairs(pairs: list[PreferencePair], config: TrainConfig, tokenizer) -> list[DPOPair]:
    """The pairs as token ids; a pair with an answer that has no tokens is dropped (with a count)."""
    end_ids = end_of_answer_ids(tokenizer, config.data.use_chat_template)
    limit, out, cut = config.dpo.max_completion_length, [], 0
    for pair in pairs:
        prompt, was_cut = encode_prompt(render_prompt({}, config.data, tokenizer, pair.prompt), config.data, tokenizer)
        chosen, rejected = (answer_ids(tokenizer, a, end_ids) for a in (pair.chosen, pair.rejected))
        if chosen and rejected:
            out.append(DPOPair(prompt, chosen[:limit], rejected[:limit]))
            cut += was_cut
    if len(out) < len(pairs):
        logger.warning("dpo: %d of %d pairs have an empty answer; dropped", len(pairs) - len(out), len(pairs))
    if cut:
        logger.warning("dpo: %d of %d prompts were longer than data.max_prompt_tokens=%d and were cut from the left",
                       cut, len(out), config.data.max_prompt_tokens)
    return out


def answer_logprobs(model, batch: list[DPOPair], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(chosen | prompt), log pi(rejected | prompt)), each (P,): the answer tokens' log-probs summed, prompt and
    padding masked, in one forward pass over the 2P sequences (RL's scoring, rollout/sampling.py: left-padded prompts,
    right-padded answers, positions counted over real tokens, so padding changes nothing)."""
    P = len(batch)
    prompt_ids, prompt_mask = pad_left([p.prompt_ids for p in batch] * 2, pad_id)  # (2P, Lp)
    ids, mask = pad_right([p.chosen_ids for p in batch] + [p.rejected_ids for p in batch], pad_id)  # (2P, T)
    logprobs, _ = completion_logprobs(model, prompt_ids.to(device), prompt_mask.to(device), ids.to(device),
                                      mask.to(device))  # (2P, T), 0 on padding
    sums = logprobs.sum(-1)  # (2P,)
    return sums[:P], sums[P:]


def train_dpo(config: TrainConfig, overwrite: bool = False, policy_steps: tuple[int, ...] = ()) -> Path:
    """Train for dpo.max_steps; returns the saved policy's folder. dpo.output_dir is held as `llm-pg dpo` holds it
    (llm_pg/runs/folder.py): one that holds a run is refused unless `overwrite`. policy_steps: steps after which the
    policy is also kept in policies/step-NNNNNN (the pipeline's rlhf.frontier_steps)."""
    from llm_pg.checks import check_dpo
    from llm_pg.runs.folder import open_run

    config = checked(config, "llm_pg.train_dpo")
    check_dpo(config)  # before the folder is taken
    with open_run(config, "dpo", overwrite=overwrite):
        return train_dpo_in_folder(config, Path(config.dpo.output_dir), policy_steps)


def train_dpo_in_folder(config: TrainConfig, out: Path, policy_steps: tuple[int, ...] = ()) -> Path:
    """`train_dpo` into a folder that the caller already holds (`llm-pg dpo` takes it before importing this module)."""
    accelerator = start_training(config, "model.dtype")  # precision, threads and seed before anything loads
    tokenizer = load_tokenizer(config.model)
    rm = config.rm
    pairs = dpo_pairs(load_pairs(rm.source, rm.train_split, PairFields.of(rm), rm.max_train_pairs, rm.eval_fraction,
                                 rm.eval_split), config, tokenizer)
    if not pairs:
        raise DataError(f"rm.source: no pair of '{rm.source}' has two non-empty answers; DPO needs some")
    model, reference = load_policy(config.model), load_policy(config.model)
    reference.requires_grad_(False)
    reference.eval()
    optimizer, schedule = build_adamw([{"params": list(model.parameters())}],
                                      OptimizerSettings(config.dpo.learning_rate, config.training.weight_decay,
                                                        total_steps=config.dpo.max_steps), accelerator.device)
    prepare_backend(accelerator, config)
    model, optimizer = accelerator.prepare(model, optimizer)
    reference.to(accelerator.device)
    save_resolved_config(accelerator, config, out)
    _dpo_loop(config, accelerator, (model, reference, tokenizer), optimizer, schedule, pairs, out, policy_steps)
    return save_final_policy(accelerator, model, tokenizer, out, "DPO policy")


def _dpo_loop(config, accelerator, models: tuple, optimizer, schedule, pairs, out: Path,
              policy_steps: tuple[int, ...] = ()) -> None:
    """dpo.max_steps steps over the pairs in a seeded order, epoch after epoch; dpo_metrics.jsonl; after each step
    of policy_steps the policy in policies/step-NNNNNN. models: (policy, frozen reference, tokenizer)."""
    d = config.dpo
    model, reference, tokenizer = models
    pad_id = tokenizer.pad_token_id
    sampler = PromptSampler(len(pairs), config.training.seed)
    log = open(out / "dpo_metrics.jsonl", "w") if accelerator.is_main_process else None
    model.eval()  # dropout off, as in RL and TRL's disable_dropout: the policy scored is the one compared with ref
    for step in tqdm(range(d.max_steps), desc="dpo", disable=not accelerator.is_local_main_process):
        batch = [pairs[i] for i in sampler.next_batch(d.batch_size, accelerator.num_processes,
                                                      accelerator.process_index)]
        with torch.no_grad(), accelerator.autocast():  # the reference computes as the prepared policy does
            ref_chosen, ref_rejected = answer_logprobs(reference, batch, pad_id, accelerator.device)
        logp_chosen, logp_rejected = answer_logprobs(model, batch, pad_id, accelerator.device)
        loss, r_chosen, r_rejected = dpo_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, d.beta,
                                              d.loss_type, d.label_smoothing)
        accelerator.backward(loss)
        optimizer_step(accelerator, model, optimizer, schedule, config.training.max_grad_norm)
        row = step_metrics(loss, r_chosen, r_rejected, logp_chosen.detach(), logp_rejected.detach(), accelerator)
        if log is not None:
            log.write(json.dumps({"step": step + 1, **row, "dpo/epoch": sampler.epoch + sampler.position / len(pairs)})
                      + "\n")
            log.flush()
        if step + 1 in policy_steps:
            save_policy(accelerator, model, tokenizer, policy_at_step(out, step + 1), f"DPO policy at step {step + 1}")
    if log is not None:
        log.close()


def step_metrics(loss, r_chosen, r_rejected, logp_chosen, logp_rejected, accelerator) -> dict:
    """One step's metrics, averaged over the processes (TRL's names after the slash: rewards/chosen, ...):
    dpo/loss; dpo/rewards_chosen, dpo/rewards_rejected: the mean implicit rewards beta log(pi / ref);
    dpo/rewards_margin: their mean difference; dpo/rewards_accuracy: the share of pairs whose chosen answer has the
    higher implicit reward; dpo/logps_chosen, dpo/logps_rejected: the policy's mean summed answer log-probs."""
    values = torch.stack([loss.detach(), r_chosen.mean(), r_rejected.mean(), (r_chosen - r_rejected).mean(),
                          (r_chosen > r_rejected).float().mean(), logp_chosen.mean(), logp_rejected.mean()])
    values = accelerator.reduce(values, "mean").tolist()
    names = ("loss", "rewards_chosen", "rewards_rejected", "rewards_margin", "rewards_accuracy", "logps_chosen",
             "logps_rejected")
    return {f"dpo/{name}": value for name, value in zip(names, values)}
