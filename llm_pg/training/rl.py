"""The training loop: sample -> reward -> advantage -> loss -> update, through Hugging Face Accelerate.

    train_step:  rollout.sample -> scoring.reward_rollout -> scoring.score_rollout (KL, advantages.py)
                 -> update.policy_update (losses.py) -> scoring.step_metrics

This module holds the set-up (`setup_run`: model, data, reward, optimizer, a restored checkpoint), the loop
(`train`) and checkpointing; evaluation during training is periodic_eval.py's, publishing (report, Hub) runs at
the end. Shapes: B prompts per process and step, K samples per prompt, N = B*K sequences, T completion tokens.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from llm_pg.algorithms import advantages as adv
from llm_pg.algorithms.kl import KLController, KLPenalty
from llm_pg.algorithms.registry import get_algorithm
from llm_pg.checks.limits import training_warnings
from llm_pg.config.schema import TrainConfig, checked
from llm_pg.data.prompts import PromptSampler, load_examples
from llm_pg.errors import ConfigError, LlmPgError
from llm_pg.evaluation.periodic import TrainingEvaluator
from llm_pg.models.lora import load_trainable_policy
from llm_pg.models.memory import enable_gradient_checkpointing, release_freed_memory, update_mode
from llm_pg.models.policy import load_tokenizer
from llm_pg.models.sharding import (drain_collectives, full_state_dict, gathered_for_generation, prepare_backend,
                                    save_sharded_state)
from llm_pg.models.value_head import attach_value_head
from llm_pg.rewards import RewardMix
from llm_pg.rollout.decoding import stop_criteria
from llm_pg.rollout.reference import Reference, load_reference
from llm_pg.rollout.sampling import sample
from llm_pg.runs.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from llm_pg.runs.rng import all_rng_states, split_streams
from llm_pg.runs.stop import StopRequest
from llm_pg.runs.tracking import CompletionsLog, MetricsLogger
from llm_pg.training.dynamic_sampling import GroupFilter
from llm_pg.training.run_end import choose_final_policy, publish, save_final
from llm_pg.training.scoring import (
    completion_rows,
    control_arm_rewards,
    greedy_rewards,
    reward_rollout,
    score_rollout,
    step_metrics,
    zero_update_reason,
)
from llm_pg.training.setup import (OptimizerSettings, build_adamw, policy_at_step, save_policy, save_resolved_config,
                                   start_training)
from llm_pg.training.update import Learner, policy_update

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """Everything a training run holds between steps."""

    accelerator: Accelerator
    run_dir: Path
    tokenizer: object
    model: torch.nn.Module
    reference: Reference | None  # frozen starting policy, only when kl.coef > 0
    optimizer: torch.optim.Optimizer
    scheduler: object
    reward_mix: RewardMix
    train_examples: list
    test_examples: list
    sampler: PromptSampler
    moving_average: adv.MovingAverageBaseline
    kl_controller: KLController
    start_step: int = 0
    results: dict = dataclasses.field(default_factory=dict)  # eval_before / eval_after scores
    evaluator_state: dict = dataclasses.field(default_factory=dict)  # periodic_eval.TrainingEvaluator's
    completions: CompletionsLog | None = None  # the completions table (evaluation.log_completions_every)

    @property
    def learner(self) -> Learner:
        return Learner(self.accelerator, self.model, self.optimizer, self.scheduler)

    def trainer_state(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "moving_average": self.moving_average.state_dict(),
                "kl_controller": self.kl_controller.state_dict(), "results": self.results,
                "evaluator": self.evaluator_state, "reward": self.reward_mix.state_dict()}


def _check_context(config: TrainConfig, model, examples) -> None:
    """Prompt + completion must fit the model's context, or generation fails deep inside the model."""
    context = getattr(model.config, "max_position_embeddings", None)
    longest = max(len(e.prompt_ids) for e in examples)
    new_tokens = max(config.generation.max_new_tokens, config.evaluation.max_new_tokens or 0)
    if context and new_tokens >= context:  # no prompt length could fit: the fix is the completion length
        raise ConfigError(f"generation.max_new_tokens: {new_tokens} new tokens do not fit the model's context of "
                          f"{context} tokens; set generation.max_new_tokens and evaluation.max_new_tokens < {context}")
    if context and longest + new_tokens > context:
        raise ConfigError(f"data.max_prompt_tokens: prompts of up to {longest} tokens plus generation.max_new_tokens="
                          f"{new_tokens} exceed the model's context of {context} tokens; set data.max_prompt_tokens "
                          f"<= {context - new_tokens}")


def _load_policy(config: TrainConfig, accelerator: Accelerator, saved: Path | None, resumed: bool):
    """(policy with its value head when the algorithm has a critic, frozen KL reference or None)."""
    model = load_trainable_policy(config.model, saved)  # with model.lora.r > 0: base model + (saved) adapters
    model.eval()  # dropout off: the update scores exactly the policy that sampled
    if config.training.gradient_checkpointing:  # active in the update only (llm_pg/models/memory.py)
        enable_gradient_checkpointing(model)
    reference = None
    if config.kl.coef > 0:  # the frozen starting model, even when resuming
        reference = load_reference(config, model, resumed=resumed, device=accelerator.device)
    if get_algorithm(config).uses_critic(config):  # trained beside the policy, or continued from its folder
        attach_value_head(model, config.critic.detach_trunk, path=saved or config.model.name_or_path)
    return model, reference


def build_optimizer(config: TrainConfig, model: torch.nn.Module, device: torch.device):
    """(AdamW, learning-rate schedule) from the training section: the value head in its own group with
    critic.learning_rate (training/setup.py builds both)."""
    t_cfg = config.training
    is_critic = {id(p) for p in getattr(model, "value_head", torch.nn.Module()).parameters()}
    trained = [p for p in model.parameters() if p.requires_grad]  # with LoRA: the adapters (and the value head)
    groups = [{"params": [p for p in trained if id(p) not in is_critic]},
              {"params": [p for p in model.parameters() if id(p) in is_critic], "lr": config.critic.learning_rate}]
    settings = OptimizerSettings(t_cfg.learning_rate, t_cfg.weight_decay, tuple(t_cfg.adam_betas), t_cfg.lr_scheduler,
                                 t_cfg.warmup_steps, t_cfg.max_steps)
    return build_adamw(groups, settings, device)


def restore_checkpoint(run: Run, checkpoint: Path, seed: int) -> None:
    """Optimizer, schedule, every process's RNG and the loop's own state (data position, baselines, evaluation)
    from a checkpoint."""
    state = load_checkpoint(checkpoint, run.optimizer, run.scheduler, run.accelerator, seed)
    run.sampler.load_state_dict(state["sampler"])
    run.moving_average.load_state_dict(state["moving_average"])
    if "kl_controller" in state:
        run.kl_controller.load_state_dict(state["kl_controller"])
    run.reward_mix.load_state_dict(state.get("reward", {}))
    run.start_step, run.results = state["step"], state.get("results", {})
    # checkpoints before the evaluator had its own field kept its state among the results
    run.evaluator_state = state.get("evaluator") or run.results.pop("evaluator", {})
    logger.info("resumed from %s at step %d", checkpoint, run.start_step)


def setup_run(config: TrainConfig, resume: bool = False) -> Run:
    """Load model, data, reward and optimizer; with resume, restore the latest complete checkpoint."""
    t_cfg = config.training
    # precision, threads and training.seed on every process, before anything is loaded (training/setup.py)
    accelerator = start_training(config, "model.dtype", t_cfg.report_to, t_cfg.output_dir)
    prepare_backend(accelerator, config)  # DeepSpeed/FSDP: checks and DeepSpeed's batch sizes
    run_dir = Path(t_cfg.output_dir)
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None:  # (every checkpoint damaged: refused by runs/resume.start_run)
        logger.warning("--resume: no complete checkpoint in %s; starting from the beginning", run_dir)
    tokenizer = load_tokenizer(config.model)
    stop_criteria(tokenizer, config.generation.stop_strings)  # one the tokenizer cannot produce: refused now
    train_examples = load_examples(config.data, config.data.train_split, tokenizer, config.data.max_train_samples)
    evaluating = config.evaluation.before_training or config.evaluation.after_training
    test_examples = load_examples(config.data, config.data.test_split, tokenizer,
                                  config.data.max_eval_samples) if evaluating else []
    saved = checkpoint / "model" if checkpoint is not None else None
    model, reference = _load_policy(config, accelerator, saved, resumed=checkpoint is not None)
    model.generation_config.pad_token_id = tokenizer.pad_token_id  # saved with the model
    _check_context(config, model, train_examples + test_examples)
    if accelerator.is_main_process:
        for warning in training_warnings(config, len(train_examples), accelerator.num_processes):
            logger.warning(warning)
    reward_mix = RewardMix.from_config(config.reward)
    save_resolved_config(accelerator, config, run_dir)  # written once the inputs are known to load
    if accelerator.is_main_process:
        (run_dir / "reward_signatures.json").write_text(json.dumps(reward_mix.signatures, indent=1) + "\n")
    optimizer, scheduler = build_optimizer(config, model, accelerator.device)  # the schedule stays out of prepare
    model, optimizer = accelerator.prepare(model, optimizer)
    run = Run(accelerator, run_dir, tokenizer, model, reference, optimizer, scheduler,
              reward_mix, train_examples, test_examples,
              PromptSampler(len(train_examples), t_cfg.seed),
              adv.MovingAverageBaseline(config.algorithm.moving_average_decay),
              KLController(config.kl.coef, config.kl.target, config.kl.horizon))
    split_streams(t_cfg.seed, accelerator.process_index)  # each process samples its own completions (runs/rng.py)
    if checkpoint is not None:
        restore_checkpoint(run, checkpoint, t_cfg.seed)
    return run


def train_step(config: TrainConfig, run: Run, step: int = 0) -> dict:
    """Sample -> reward -> advantage -> update on one batch of prompts (0-based `step`); the step's metrics."""
    t0 = time.perf_counter()
    accelerator, algorithm = run.accelerator, get_algorithm(config)
    # one round of B prompts, or more with algorithm.dynamic_sampling (groups with equal rewards dropped)
    groups = GroupFilter.from_config(config.algorithm, lambda x: int(
        accelerator.reduce(torch.tensor(x, device=accelerator.device), "sum").item()))
    while groups.wants_another_round():
        groups.add(*_sample_round(config, run, step, groups.rounds_taken))
    batch, rollout, rewards, sampling = groups.result(run.tokenizer.pad_token_id)
    greedy = None
    if algorithm.uses_baseline(config) and config.algorithm.baseline == "greedy":  # self-critical baseline
        greedy = greedy_rewards(accelerator, run.model, run.tokenizer, batch, config.generation, run.reward_mix)
    kl = KLPenalty.from_config(config.kl, run.kl_controller.value) if run.reference is not None else None
    baseline = adv.BaselineInputs(rollout.group_size, run.moving_average, greedy, accelerator.gather)
    with accelerator.autocast():  # the reference scores the rollout in the policy's precision
        scored = score_rollout(config, rollout, rewards, run.reference, kl, baseline, algorithm.uses_critic(config))
    if run.completions is not None:
        run.completions.add(step + 1, completion_rows(scored, batch))
    t1 = time.perf_counter()
    warming_up = algorithm.uses_critic(config) and step < config.critic.warmup_steps
    # gradient checkpointing and LoRA dropout act in the update only
    update = policy_update(config, run.learner, scored, critic_only=warming_up, train_mode=update_mode(run.model))
    release_freed_memory()  # the update's activations and gradients, back to the OS before the next rollout
    t2 = time.perf_counter()
    metrics = {**step_metrics(scored, update, run.scheduler.get_last_lr()[0],
                              {"sample": t1 - t0, "update": t2 - t1, "step": t2 - t0}, accelerator.gather), **sampling}
    run.kl_controller.update(metrics["policy/kl"], rollout.completion_mask.shape[0] * accelerator.num_processes)
    return metrics


def _sample_round(config: TrainConfig, run: Run, step: int = 0,
                  round_index: int = 0) -> tuple[list, object, object]:
    """The next B prompts of this process, their K completions each, and the completions' rewards (a control
    arm's, with reward.control: rewards/control.py)."""
    accelerator = run.accelerator
    batch = [run.train_examples[i] for i in run.sampler.next_batch(
        config.training.prompts_per_step, accelerator.num_processes, accelerator.process_index)]
    # accelerator.autocast: with mixed precision, one autocast region per rollout casts each weight once
    with gathered_for_generation(accelerator, run.model) as policy, accelerator.autocast():
        rollout = sample(policy, run.tokenizer, [e.prompt_ids for e in batch], config.generation)
    rewards = reward_rollout(rollout, batch, run.reward_mix, run.tokenizer, config.reward.per_token,
                             config.generation.stop_strings, accelerator.gather)
    rewards = control_arm_rewards(rewards, rollout.completion_mask, config.reward.control,
                                  (config.training.seed, step, round_index), accelerator.gather,
                                  accelerator.process_index)
    return batch, rollout, rewards


def train(config: TrainConfig, resume: bool = False, overwrite: bool = False, *, command: str = "train",
          policy_steps: tuple[int, ...] = ()) -> dict:
    """Run the configured training; returns {'eval_before', 'eval_after', 'evaluator' (the validation history),
    'final_step', 'run_dir'}.

    training.output_dir is held as `llm-pg train` holds it (llm_pg/runs/folder.py): locked for the run, refused when
    it holds another run unless `resume` (continue it: the config and data are checked against the run's) or
    `overwrite` (replace it: llm_pg/runs/overwrite.py)."""
    from llm_pg.runs.folder import open_run

    config = checked(config, "llm_pg.train")
    with open_run(config, command, resume, overwrite):
        return train_in_folder(config, resume, policy_steps)


@dataclass
class _SessionSteps:
    """What the loop remembers of this session's steps: the non-finite updates in a row (training.max_bad_updates),
    and per step whether its update changed the weights and why its policy gradient was 0 (None: it was not)."""
    bad_updates: int = 0
    applied: list[bool] = dataclasses.field(default_factory=list)
    inert: list[str | None] = dataclasses.field(default_factory=list)

    def observe(self, config: TrainConfig, step: int, metrics: dict, is_main: bool) -> None:
        skipped = metrics["train/skipped_update"]
        self.bad_updates = self.bad_updates + 1 if skipped else 0
        self.applied.append(not skipped)
        warming_up = get_algorithm(config).uses_critic(config) and step < config.critic.warmup_steps
        self.inert.append(None if warming_up else zero_update_reason(config, metrics))
        if self.inert[-1] and sum(map(bool, self.inert)) == 1 and is_main:  # said once
            logger.warning("step %d: the update cannot change the policy: %s", step + 1, self.inert[-1])

    def refuse_untrained(self, start_step: int, last_step: int) -> None:
        """A run resumed from a checkpoint already holds the earlier sessions' updates; only a run that never changed
        its starting weights is refused, so that no untrained final/ looks like a result."""
        if start_step != 0:
            return
        if self.applied and not any(self.applied):
            raise TrainingDiverged(f"training: every update of steps 1..{last_step} was skipped (a non-finite loss or "
                                   "gradient), so no final/ was written; check the reward's values, "
                                   "generation.temperature and training.learning_rate")
        if self.inert and all(self.inert):
            raise NoLearningSignal(f"training: no update of steps 1..{last_step} could change the policy, so no "
                                   f"final/ was written: {self.inert[-1]}")


def train_in_folder(config: TrainConfig, resume: bool = False, policy_steps: tuple[int, ...] = ()) -> dict:
    """`train` in a training.output_dir that the caller already holds (llm_pg/runs/folder.py open_run): `llm-pg train`
    takes the folder before it imports this module, so that a refused folder answers without loading the model code.
    policy_steps: steps after which the policy is also kept whole in policies/step-NNNNNN (setup.save_policy; the
    pipeline's rlhf.frontier_steps), never deleted as checkpoints are."""
    t_cfg = config.training
    if config.sft.before_rl:  # supervised warm start: RL (and its KL reference) start from the SFT model
        config = _warm_start(config)
    run = setup_run(config, resume)
    evaluator = TrainingEvaluator(config, run)  # held-out evaluation, best policy, reward-hacking check
    if config.evaluation.log_completions_every > 0:
        run.completions = CompletionsLog(run.run_dir, run.accelerator, config.evaluation.log_completions_every,
                                         run.start_step)
    if config.evaluation.before_training and "eval_before" not in run.results:
        run.results["eval_before"] = evaluator.evaluate_test("eval_before")
    metrics_log = MetricsLogger(run.run_dir / "metrics.jsonl", run.accelerator, config, run.start_step)
    progress = tqdm(range(run.start_step, t_cfg.max_steps), initial=run.start_step, total=t_cfg.max_steps,
                    desc="train", disable=not run.accelerator.is_local_main_process)
    stop, steps, step, early_stop = StopRequest(), _SessionSteps(), run.start_step, False
    try:
        for step in progress:
            metrics = metrics_log.log(step + 1, train_step(config, run, step), every=t_cfg.log_every)
            progress.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics['policy/kl']:.3f}",
                                 cps=f"{metrics['speed/completions_per_s']:.2f}")
            steps.observe(config, step, metrics, run.accelerator.is_main_process)
            early_stop = evaluator.after_step(step + 1, metrics, metrics_log)  # evaluation.stop_on_hacking
            halted = steps.bad_updates >= t_cfg.max_bad_updates or stop.requested
            if (t_cfg.save_every and (step + 1) % t_cfg.save_every == 0) or step + 1 == t_cfg.max_steps or halted \
                    or early_stop:
                _save(run, step + 1, t_cfg.keep_checkpoints)
            if step + 1 in policy_steps:
                save_policy(run.accelerator, run.model, run.tokenizer, policy_at_step(run.run_dir, step + 1),
                            f"policy at step {step + 1}")
            if stop.requested:
                print(f"\nStopped by {stop.requested} after step {step + 1}; checkpoint saved. Run the same command "
                      f"with --resume to continue.", flush=True)
                return {**run.results, "final_step": step + 1, "run_dir": str(run.run_dir), "interrupted": True}
            if halted:
                raise TrainingDiverged(f"training: {steps.bad_updates} non-finite updates in a row at step "
                                       f"{step + 1}; the last good state is checkpointed. Lower "
                                       "training.learning_rate or check the reward")
            if early_stop:
                break
    finally:
        stop.restore()
        metrics_log.close()
    steps.refuse_untrained(run.start_step, step + 1)
    return _finish(config, run, evaluator, step + 1 if early_stop else t_cfg.max_steps)


def _finish(config: TrainConfig, run: Run, evaluator: TrainingEvaluator, last_step: int) -> dict:
    """The policy to ship (the last or the best), its test evaluation, final/, the report and the Hub push."""
    shipped = choose_final_policy(config, run, evaluator, last_step)
    if config.evaluation.after_training:
        run.results["eval_after"] = evaluator.evaluate_test("eval_after")
    if config.training.save_final_model:
        save_final(config, run, shipped)
    publish(config, run)  # report.md / report.html, and the Hub push when hub.push
    run.accelerator.end_training()
    return {**run.results, "evaluator": run.evaluator_state, "final_policy": shipped,
            "final_step": last_step, "run_dir": str(run.run_dir)}


def _warm_start(config: TrainConfig) -> TrainConfig:
    """Run SFT into <output_dir>/sft unless a finished one is there; the config with the policy swapped for it."""
    from llm_pg.training.sft import train_sft

    folder = Path(config.training.output_dir) / "sft"
    if (folder / "final" / "config.json").exists():
        logger.info("SFT warm start: reusing %s", folder / "final")
    else:  # a warm start that was interrupted is redone
        train_sft(config, folder, overwrite=folder.exists())
    return dataclasses.replace(config, model=dataclasses.replace(
        config.model, name_or_path=str(folder / "final"), gguf_file=None))


class TrainingDiverged(LlmPgError):
    """Too many non-finite updates in a row."""


class NoLearningSignal(LlmPgError):
    """Every update of a run had a policy gradient of exactly 0 (scoring.zero_update_reason says why)."""


def _save(run: Run, step: int, keep: int) -> None:
    run.accelerator.wait_for_everyone()
    weights = full_state_dict(run.accelerator, run.model)  # ZeRO-3/FSDP: gathered by every process; else None
    shards = save_sharded_state(run.accelerator, run.run_dir, step)  # DeepSpeed/FSDP optimizer shards; else None
    rng_states = all_rng_states(run.accelerator)  # a collective: every process's own sampling stream
    if run.accelerator.is_main_process:
        path = save_checkpoint(run.run_dir, step, run.accelerator.unwrap_model(run.model), run.tokenizer,
                               run.optimizer, run.scheduler, run.trainer_state(), keep, weights, shards, rng_states)
        logger.info("saved checkpoint %s", path)
    run.accelerator.wait_for_everyone()
    drain_collectives(run.accelerator)  # the run may end here (last step, stop request, divergence)
