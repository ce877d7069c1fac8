"""`llm-pg rm`: train a Bradley-Terry reward model on preference pairs, evaluate it, save it for `type: reward_model`.

    pairs (preference_data) -> texts (Rendering: prompt as the policy sees it + answer) -> token ids
    -> per step: r = sequence_scores(chosen ++ rejected) -> rm_loss.bradley_terry_loss -> AdamW
    -> final/: weights, tokenizer, rm_settings.json (rendering, max_length, mean/std of the training scores)
    -> eval.json + eval_scores.jsonl (each pair's scores) + report.md on the held-out pairs
       (evaluation/preference_accuracy.py, reporting/rm_report.py)

Through Accelerate like `llm-pg sft`/`train`: each process takes its slice of every batch; checkpoints (with the
manifest of llm_pg/runs/checkpoint.py) every rm.save_every steps and at the end; `--resume` continues from the latest.
Run it: `llm-pg rm --config configs/reward_model_hh.yaml`, or `train_reward_model(load_config(...))` in Python.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from llm_pg.algorithms.preference_loss import bradley_terry_loss, pairwise_correct
from llm_pg.checks.reward_model import SCHEDULES, check_rm_config  # noqa: F401 (handed on: the rm API)
from llm_pg.config.schema import RewardModelConfig, TrainConfig, checked
from llm_pg.data.preferences import PairFields, PreferencePair, Rendering, load_pairs
from llm_pg.data.prompts import PromptSampler
from llm_pg.errors import ConfigError
from llm_pg.evaluation.preference_accuracy import evaluate_pairs, pair_rows
from llm_pg.models import reward_model as rm_model
from llm_pg.reporting.rm_report import write_rm_report
from llm_pg.runs.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, save_model
from llm_pg.runs.rng import all_rng_states
from llm_pg.runs.tracking import read_metrics_lines
from llm_pg.training.setup import (OptimizerSettings, build_adamw, optimizer_step, save_resolved_config,
                                   start_training)

logger = logging.getLogger(__name__)


@dataclass
class TokenPair:
    chosen: list[int]
    rejected: list[int]
    margin: float
    lengths: tuple[float, float] = (0.0, 0.0)  # the two answers' lengths in rm_model.LENGTH_UNIT characters


def tokenize_pairs(pairs: list[PreferencePair], tokenizer, rendering: Rendering, max_length: int) -> list[TokenPair]:
    chosen = rm_model.encode(tokenizer, [rendering.text(tokenizer, p.prompt, p.chosen) for p in pairs], max_length)
    rejected = rm_model.encode(tokenizer, [rendering.text(tokenizer, p.prompt, p.rejected) for p in pairs], max_length)
    unit = rm_model.LENGTH_UNIT
    return [TokenPair(c, r, p.margin, (len(p.chosen) / unit, len(p.rejected) / unit))
            for c, r, p in zip(chosen, rejected, pairs)]


def pair_loss(model, batch: list[TokenPair], pad_id: int, cfg: RewardModelConfig, device):
    """(loss, r_chosen (P,), r_rejected (P,)): one forward pass over the P chosen then the P rejected texts (r = q +
    beta L with rm.length_covariate, else q)."""
    ids, mask = rm_model.pad_right([p.chosen for p in batch] + [p.rejected for p in batch], pad_id)  # (2P, L)
    lengths = torch.tensor([p.lengths[0] for p in batch] + [p.lengths[1] for p in batch], device=device)  # (2P,)
    r = model(ids.to(device), mask.to(device), lengths)  # (2P,) model: an rm_model.Scorer (under DDP: wrapped)
    r_chosen, r_rejected = r[:len(batch)], r[len(batch):]
    margin = torch.tensor([p.margin for p in batch], device=device)
    return bradley_terry_loss(r_chosen, r_rejected, margin, cfg.center_coef), r_chosen, r_rejected


def base_model(config: TrainConfig) -> str:
    """rm.base_model, else the policy's model.name_or_path (a reward model on the policy's own base)."""
    return config.rm.base_model or config.model.name_or_path


def _load(cfg: RewardModelConfig, base: str, checkpoint: Path | None):
    """(model, tokenizer): the base with a fresh head (and fresh adapters), or the checkpoint's state."""
    path, gguf = rm_model.resolve_base(base)
    tokenizer = rm_model.load_tokenizer(path, gguf)
    saved = checkpoint / "model" if checkpoint is not None else None
    full = saved is not None and cfg.lora.r == 0
    model = rm_model.load_model(str(saved) if full else path, None if full else gguf, tokenizer.pad_token_id,
                                cfg.dtype)
    if cfg.lora.r > 0:
        model = _with_adapters(model, cfg, saved)
    return model, tokenizer


def _with_adapters(model, cfg: RewardModelConfig, saved: Path | None):
    """LoRA on the base (task SEQ_CLS: peft also trains and saves the score / classifier head)."""
    from llm_pg.models.lora import _peft

    peft = _peft()
    if saved is not None:
        return peft.PeftModel.from_pretrained(model, str(saved), is_trainable=True)
    spec = peft.LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                           target_modules=cfg.lora.target_modules, task_type="SEQ_CLS")
    try:
        return peft.get_peft_model(model, spec)
    except ValueError as e:
        raise ConfigError(f"rm.lora.target_modules: {str(e).splitlines()[0]}") from None


def _steps(cfg: RewardModelConfig, num_pairs: int) -> int:
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * num_pairs / cfg.batch_size))


def train_reward_model(config: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Train, save final/ and evaluate; returns the evaluation (empty without rm.eval_split) with 'final'.

    rm.output_dir is held as `llm-pg rm` holds it (llm_pg/runs/folder.py): refused when it holds another run unless
    `resume` (continue it: the config and the pairs' content are checked against the run's) or `overwrite`."""
    from llm_pg.runs.folder import open_run

    config = checked(config, "llm_pg.train_reward_model")
    check_rm_config(config.rm)  # before the folder is taken
    with open_run(config, "rm", resume, overwrite):
        return train_reward_model_in_folder(config, resume)


def train_reward_model_in_folder(config: TrainConfig, resume: bool = False) -> dict:
    """`train_reward_model` in an rm.output_dir that the caller already holds (llm_pg/runs/folder.py open_run), its rm
    section checked: `llm-pg rm` does both before it imports this module, so that a refusal answers without loading
    the model code."""
    cfg = config.rm
    out = Path(cfg.output_dir)
    # precision, threads and training.seed, before anything is loaded (training/setup.py): the scorer computes in
    # training.mixed_precision as the RL policy does
    accelerator = start_training(config, "rm.dtype")
    train_pairs = load_pairs(cfg.source, cfg.train_split, PairFields.of(cfg), cfg.max_train_pairs, cfg.eval_fraction,
                             cfg.eval_split)
    eval_pairs = load_pairs(cfg.source, cfg.eval_split, PairFields.of(cfg), cfg.max_eval_pairs, cfg.eval_fraction,
                            cfg.eval_split) if cfg.eval_split else []
    checkpoint = latest_checkpoint(out) if resume else None
    model, tokenizer = _load(cfg, base_model(config), checkpoint)
    rendering = Rendering(cfg.use_chat_template, cfg.system_prompt)
    tokens = tokenize_pairs(train_pairs, tokenizer, rendering, cfg.max_length)
    max_steps = _steps(cfg, len(tokens))
    scorer = rm_model.Scorer(model, cfg.length_covariate)
    # rm's own learning rate and schedule; torch's AdamW betas, training.weight_decay; beta with its own rate
    groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if scorer.length_beta is not None:
        groups.append({"params": [scorer.length_beta], "lr": cfg.length_covariate_lr, "weight_decay": 0.0})
    optimizer, scheduler = build_adamw(groups, OptimizerSettings(cfg.learning_rate, config.training.weight_decay,
                                                                 schedule=cfg.lr_scheduler,
                                                                 warmup_steps=cfg.warmup_steps,
                                                                 total_steps=max_steps), accelerator.device)
    model, optimizer = accelerator.prepare(scorer, optimizer)
    sampler, start = PromptSampler(len(tokens), config.training.seed), 0
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, optimizer, scheduler, accelerator, config.training.seed)
        sampler.load_state_dict(state["sampler"])
        if scorer.length_beta is not None:
            scorer.length_beta.data.fill_(state.get("length_beta") or 0.0)
        start = state["step"]
        logger.info("resumed from %s at step %d", checkpoint, start)
    save_resolved_config(accelerator, config, out)
    t0 = time.perf_counter()
    _loop(config, accelerator, model, tokenizer, optimizer, scheduler, sampler, tokens, start, max_steps)
    seconds = time.perf_counter() - t0
    return _finish(config, accelerator, model, tokenizer, rendering, tokens, eval_pairs, seconds)


def _loop(config, accelerator, model, tokenizer, optimizer, scheduler, sampler, tokens, start, max_steps) -> None:
    cfg = config.rm
    model.train()
    log = _open_log(Path(cfg.output_dir) / "rm_metrics.jsonl", start) if accelerator.is_main_process else None
    for step in tqdm(range(start, max_steps), initial=start, total=max_steps, desc="rm",
                     disable=not accelerator.is_local_main_process):
        batch = [tokens[i] for i in sampler.next_batch(cfg.batch_size, accelerator.num_processes,
                                                       accelerator.process_index)]
        loss, r_chosen, r_rejected = pair_loss(model, batch, tokenizer.pad_token_id, cfg, accelerator.device)
        accelerator.backward(loss)
        optimizer_step(accelerator, model, optimizer, scheduler, config.training.max_grad_norm)
        if log is not None:
            row = _step_metrics(step + 1, loss, r_chosen, r_rejected, scheduler, sampler, tokens)
            if _length_beta(model) is not None:
                row["rm/length_beta"] = _length_beta(model)
            log.write(json.dumps(row) + "\n")
            log.flush()
        if (cfg.save_every and (step + 1) % cfg.save_every == 0) or step + 1 == max_steps:
            _save(accelerator, model, tokenizer, optimizer, scheduler, sampler, step + 1, cfg)
    if log is not None:
        log.close()


def _open_log(path: Path, start: int):
    """rm_metrics.jsonl for appending after step `start`: lines of later steps (logged after the checkpoint that
    a resume starts from) are dropped, so every step appears once, and so is a line torn by a kill (a warning)."""
    kept = [row for row in read_metrics_lines(path) if row["step"] <= start] if start and path.is_file() else []
    tmp = path.with_suffix(".tmp")  # the repaired log replaces the old one whole, or not at all
    tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
    os.replace(tmp, path)
    return open(path, "a")


def _length_beta(model) -> float | None:
    """beta of rm.length_covariate (None without it); model: the prepared Scorer."""
    beta = getattr(model, "module", model).length_beta
    return None if beta is None else beta.item()


def _step_metrics(step, loss, r_chosen, r_rejected, scheduler, sampler, tokens) -> dict:
    """rm/loss, rm/accuracy (of this batch), rm/margin (mean r_c - r_r), rm/lr, rm/epoch (this process's view)."""
    return {"step": step, "rm/loss": loss.item(), "rm/accuracy": pairwise_correct(r_chosen, r_rejected).mean().item(),
            "rm/margin": (r_chosen - r_rejected).mean().item(), "rm/lr": scheduler.get_last_lr()[0],
            "rm/epoch": sampler.epoch + sampler.position / len(tokens)}


def _save(accelerator, model, tokenizer, optimizer, scheduler, sampler, step: int, cfg: RewardModelConfig) -> None:
    accelerator.wait_for_everyone()
    rng_states = all_rng_states(accelerator)  # a collective: every process's random state, for an exact resume
    if accelerator.is_main_process:
        # "moving_average": checkpoint.damage() asks every checkpoint for the RL loop's keys; a reward model has none
        state = {"sampler": sampler.state_dict(), "moving_average": None, "length_beta": _length_beta(model)}
        save_checkpoint(cfg.output_dir, step, accelerator.unwrap_model(model).model, tokenizer, optimizer, scheduler,
                        state, cfg.keep_checkpoints, rng_states=rng_states)
    accelerator.wait_for_everyone()


def save_reward_model(model, tokenizer, folder: Path, settings: dict, state_dict: dict | None = None) -> Path:
    """Weights (LoRA merged: the folder loads with plain transformers), tokenizer and rm_settings.json."""
    model = getattr(model, "module", model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    save_model(model, tokenizer, folder, state_dict, {rm_model.SETTINGS_FILE: json.dumps(settings, indent=1) + "\n"})
    return folder


def _finish(config, accelerator, model, tokenizer, rendering, tokens, eval_pairs, seconds) -> dict:
    """Normalization statistics, final/ and the held-out evaluation (main process)."""
    cfg, result, beta = config.rm, {}, _length_beta(model)
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(model).model.eval()
        pad, device = tokenizer.pad_token_id, accelerator.device
        train_scores = torch.tensor(rm_model.score_ids(model, [t.chosen for t in tokens] + [t.rejected for t in tokens],
                                                       pad, cfg.eval_batch_size, device))
        if eval_pairs:
            held_out = tokenize_pairs(eval_pairs, tokenizer, rendering, cfg.max_length)
            scores = rm_model.score_ids(model, [t.chosen for t in held_out] + [t.rejected for t in held_out], pad,
                                        cfg.eval_batch_size, device)
            result = evaluate_pairs(scores[:len(held_out)], scores[len(held_out):], eval_pairs,
                                    cfg.bootstrap_resamples)
            if beta is not None:  # trained with r = q + beta L; q alone is evaluated and saved
                result["length_beta"] = beta
            write_rm_report(Path(cfg.output_dir), {**result, "train_seconds": seconds}, seconds,
                            pair_rows(scores[:len(held_out)], scores[len(held_out):], eval_pairs))
        settings = {"rendering": {"use_chat_template": rendering.use_chat_template,
                                  "system_prompt": rendering.system_prompt},
                    "max_length": cfg.max_length, "base_model": base_model(config),
                    "reads_last_token": rm_model.reads_last_token(model),
                    "normalization": {"mean": train_scores.mean().item(), "std": train_scores.std().item(),
                                      "count": len(train_scores)}}
        save_reward_model(model, tokenizer, Path(cfg.output_dir) / "final", settings)
        logger.info("reward model saved to %s", Path(cfg.output_dir) / "final")
    accelerator.wait_for_everyone()
    return {**result, "final": str(Path(cfg.output_dir) / "final"), "train_seconds": seconds}
