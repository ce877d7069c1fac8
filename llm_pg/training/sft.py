"""Supervised warm start (stage one of every RLHF pipeline): cross-entropy on the reference tokens only.

Each (prompt, reference) pair becomes prompt_ids + reference_ids + EOS (a `messages` record: the conversation
before its last assistant turn, rendered with the chat template and its generation prompt, + that turn; TRL's
prompt-completion record: prompt + completion); the loss is the mean negative
log-likelihood of the reference tokens and the EOS given everything before them.  The prompt is rendered exactly
as RL renders it (template, chat template), so `llm-pg train` can start from the model this writes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from llm_pg.config.schema import TrainConfig, checked
from llm_pg.data.chat import end_of_answer_ids
from llm_pg.data.prompts import load_examples
from llm_pg.errors import DataError
from llm_pg.models.calls import positions
from llm_pg.models.policy import load_policy, load_tokenizer
from llm_pg.models.sharding import prepare_backend
from llm_pg.rollout.sampling import pad_left
from llm_pg.training.setup import (OptimizerSettings, build_adamw, optimizer_step, save_final_policy,
                                   save_resolved_config, start_training)

logger = logging.getLogger(__name__)


def sft_pairs(examples, tokenizer, end_ids: list[int] | None = None) -> list[tuple[list[int], list[int]]]:
    """(prompt_ids, target_ids) for every reference of every example; a target ends with `end_ids`, the end of an
    answer (data/chat.py end_of_answer_ids: the chat template's end-of-turn token), EOS when not given."""
    end_ids = [tokenizer.eos_token_id] if end_ids is None else end_ids
    pairs = []
    for e in examples:
        for reference in e.references:
            target = answer_ids(tokenizer, reference, end_ids)
            if target:
                pairs.append((e.prompt_ids, target))
    return pairs


def answer_ids(tokenizer, answer: str, end_ids: list[int]) -> list[int]:
    """An answer's tokens as they follow the prompt's (no special tokens of their own), then `end_ids`; [] for an
    answer with no tokens. SFT's targets and DPO's chosen and rejected answers (training/dpo.py) are made here."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return ids + end_ids if ids else []


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded (input_ids, attention_mask, labels), each (N, L); labels are -100 except on target tokens."""
    ids, mask = pad_left([p + t for p, t in pairs], pad_id)  # (N, L)
    labels = torch.full_like(ids, -100)
    for i, (_, target) in enumerate(pairs):
        labels[i, ids.shape[1] - len(target):] = torch.tensor(target)
    return ids, mask, labels


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L = -(1 / #targets) sum_{t: target} log p(x_t | x_<t).  logits (N, L, V) predict labels shifted by one."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


def train_sft(config: TrainConfig, output_dir: str | Path | None = None, overwrite: bool = False) -> Path:
    """Train on the references of the train split for sft.max_steps; returns the saved model folder.  The folder
    (output_dir, else sft.output_dir) is held as `llm-pg sft` holds it (llm_pg/runs/folder.py): one that holds a run
    is refused unless `overwrite`."""
    from llm_pg.runs.folder import open_run

    config = checked(config, "llm_pg.train_sft")
    out = Path(output_dir or config.sft.output_dir)
    with open_run(config, "sft", overwrite=overwrite, folder=out):
        return train_sft_in_folder(config, out)


def train_sft_in_folder(config: TrainConfig, out: Path) -> Path:
    """`train_sft` into a folder that the caller already holds (llm_pg/runs/folder.py open_run): `llm-pg sft` takes
    the folder before it imports this module, so that a refused folder answers without loading the model code."""
    s_cfg = config.sft
    # precision, threads and training.seed, before anything is loaded (training/setup.py): the policy computes in
    # training.mixed_precision exactly as RL's does, so a warm start and the RL after it run in one precision
    accelerator = start_training(config, "model.dtype")
    tokenizer = load_tokenizer(config.model)
    pairs = sft_pairs(load_examples(config.data, config.data.train_split, tokenizer, config.data.max_train_samples),
                      tokenizer, end_of_answer_ids(tokenizer, config.data.use_chat_template))
    if not pairs:
        raise DataError(f"sft: the train split of '{config.data.source}' has no non-empty references (SFT learns the "
                        "reference answers); name the field that holds them in data.reference_field (a `messages` "
                        "record's last assistant turn, or TRL's `completion`, is found by itself)")
    model = load_policy(config.model)
    # a constant learning rate: torch's AdamW betas, training.weight_decay
    optimizer, schedule = build_adamw([{"params": list(model.parameters())}],
                                      OptimizerSettings(s_cfg.learning_rate, config.training.weight_decay,
                                                        total_steps=s_cfg.max_steps), accelerator.device)
    prepare_backend(accelerator, config)  # DeepSpeed: the batch sizes it would take from a DataLoader
    model, optimizer = accelerator.prepare(model, optimizer)
    save_resolved_config(accelerator, config, out)
    _sft_loop(config, accelerator, model, optimizer, schedule, tokenizer, pairs, out)
    return save_final_policy(accelerator, model, tokenizer, out, "SFT model")


def _sft_loop(config: TrainConfig, accelerator, model, optimizer, schedule, tokenizer, pairs, out: Path) -> None:
    """sft.max_steps steps over the pairs in one seeded order (epoch after epoch); sft_metrics.jsonl."""
    s_cfg = config.sft
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(config.training.seed)).tolist()
    log = open(out / "sft_metrics.jsonl", "w") if accelerator.is_main_process else None
    position = 0
    for step in tqdm(range(s_cfg.max_steps), desc="sft", disable=not accelerator.is_local_main_process):
        batch = [pairs[order[(position + i) % len(pairs)]] for i in range(s_cfg.batch_size)]
        position += s_cfg.batch_size
        mine = batch[accelerator.process_index::accelerator.num_processes] or batch[:1]
        ids, mask, labels = (t.to(accelerator.device) for t in collate(mine, tokenizer.pad_token_id))
        # the prepared model's forward runs under autocast with mixed precision; sft_loss is float32
        loss = sft_loss(model(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits, labels)
        accelerator.backward(loss)
        optimizer_step(accelerator, model, optimizer, schedule, config.training.max_grad_norm)
        loss_value = accelerator.reduce(loss.detach(), "mean").item()
        if log is not None:
            log.write(json.dumps({"step": step + 1, "sft/loss": loss_value,
                                  "sft/epoch": position / len(pairs)}) + "\n")
            log.flush()
    if log is not None:
        log.close()
