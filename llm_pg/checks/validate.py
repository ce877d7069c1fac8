"""Checks of a whole TrainConfig: combinations that cannot train are rejected with one line naming the field and
the fix.  `llm_pg.config.schema.load_config` runs them on every config it returns.
"""

from __future__ import annotations


from llm_pg.algorithms.advantages import BASELINES, GRPO_SCALES
from llm_pg.algorithms.kl import KL_MODES, SOUND_KL_ESTIMATOR
from llm_pg.algorithms.losses import KL_ESTIMATORS, LOSS_REDUCTIONS
from llm_pg.algorithms.preference_loss import DPO_LOSSES
from llm_pg.algorithms.registry import ALGORITHMS, dynamic_sampling_problem, kl_in_reward_problem
from llm_pg.checks.limits import validate_limits
from llm_pg.checks.numbers import raise_first, validate_numbers
from llm_pg.errors import ConfigError
from llm_pg.models.precision import MIXED_PRECISION
from llm_pg.rewards.control import CONTROLS
from llm_pg.rewards.spec import check_reward_config

# `config` below is a config.schema.TrainConfig; it is not imported: config/schema.py calls validate() on every
# config it builds.
# generation.backend: llm_pg's decoding loop (decoding.py) or generate() (hf_decoding.py). Listed here, not there:
# hf_decoding sits above config (through the model loaders), so importing it would close an import circle.
BACKENDS = ("native", "hf")


def validate(config):
    """Reject combinations that cannot train, with a message that names the field and the fix."""
    validate_numbers(config)  # first: NaN passes every `x <= 0` check below
    if config.training.mixed_precision is False:  # YAML reads `mixed_precision: no` (Accelerate's spelling) as false
        config.training.mixed_precision = "no"
    a = config.algorithm
    # the optimizer steps each rollout is split into (ppo.num_minibatches for ppo and grpo, else 1)
    minibatches = ALGORITHMS[a.name].minibatches(config) if a.name in ALGORITHMS else 1
    raise_first(_update_checks(config, minibatches))
    raise_first(_run_checks(config, minibatches))
    raise_first(_dpo_checks(config.dpo))
    _validate_objective(config)
    specs = check_reward_config(config.reward)  # the specs only: no metric library, model or user code is loaded
    _validate_evaluation(config, [spec.name for spec in specs])
    _validate_references(config, specs)
    _validate_memory(config)
    validate_limits(config, specs)
    return config


def _update_checks(config, minibatches: int) -> list[tuple[bool, str]]:
    """(failed, message) of the model and the update's sections: algorithm, kl, critic, ppo, grpo."""
    a, g, t = config.algorithm, config.generation, config.training
    return [
        (not config.model.name_or_path, "model.name_or_path: set a local folder, Hub id or .gguf file"),
        (a.name not in ALGORITHMS, f"algorithm.name: '{a.name}' is not one of {tuple(ALGORITHMS)}"),
        (a.baseline not in BASELINES, f"algorithm.baseline: '{a.baseline}' is not one of {tuple(BASELINES)}"),
        (a.baseline == "leave_one_out" and g.num_samples < 2,
         "algorithm.baseline=leave_one_out needs generation.num_samples >= 2 (or choose another baseline)"),
        (a.loss_reduction not in LOSS_REDUCTIONS,
         f"algorithm.loss_reduction: choose one of {LOSS_REDUCTIONS}"),
        (not 0.0 <= a.gamma <= 1.0, "algorithm.gamma: must lie in [0, 1]"),
        (config.kl.coef < 0, "kl.coef: must be >= 0"),
        (config.kl.estimator not in ("auto", *KL_ESTIMATORS),
         f"kl.estimator: choose one of {('auto', *KL_ESTIMATORS)}"),
        (config.kl.mode not in KL_MODES, f"kl.mode: choose one of {KL_MODES}"),
        (config.kl.mode in KL_MODES and config.kl.estimator not in ("auto", SOUND_KL_ESTIMATOR[config.kl.mode]),
         f"kl.estimator: {config.kl.estimator} with kl.mode={config.kl.mode} trains a wrong KL gradient; use "
         f"kl.estimator={SOUND_KL_ESTIMATOR.get(config.kl.mode)} (or auto) with this mode (docs/algorithms.md)"),
        (config.kl.target is not None and config.kl.target <= 0, "kl.target: must be > 0 (or null for a fixed coef)"),
        (config.kl.horizon < 1, "kl.horizon: must be >= 1"),
        (not 0.0 <= config.critic.gae_lambda <= 1.0, "critic.gae_lambda: must lie in [0, 1]"),
        (config.critic.learning_rate <= 0, "critic.learning_rate: must be > 0"),
        (config.critic.value_clip < 0, "critic.value_clip: must be >= 0 (0 = off)"),
        (config.ppo.epochs is not None and config.ppo.epochs < 1, "ppo.epochs: must be >= 1 (or null for the "
                                                                  "algorithm's default)"),
        (config.ppo.clip_eps_high is not None and config.ppo.clip_eps_high <= 0,
         "ppo.clip_eps_high: must be > 0 (or null for ppo.clip_eps)"),
        (a.name == "grpo" and g.num_samples < 2, "algorithm.name=grpo compares the K samples of each prompt: set "
                                                 "generation.num_samples >= 2"),
        (config.grpo.scale_rewards not in GRPO_SCALES, f"grpo.scale_rewards: '{config.grpo.scale_rewards}' is not "
                                                       f"one of {GRPO_SCALES}"),
        (a.dynamic_sampling and g.num_samples < 2, "algorithm.dynamic_sampling drops groups whose K rewards are all "
                                                   "equal: set generation.num_samples >= 2"),
        (a.dynamic_sampling_max_rounds < 0, "algorithm.dynamic_sampling_max_rounds: must be >= 0"),
        (config.ppo.use_critic and a.name != "ppo",  # otherwise the critic the user asked for is silently absent
         f"ppo.use_critic: only algorithm.name=ppo reads it ({a.name} would run without a critic); set "
         "ppo.use_critic=false, or algorithm.name=ppo (actor_critic always trains one)"),
        (config.ppo.clip_eps <= 0, "ppo.clip_eps: must be > 0"),
        (0 < config.ppo.dual_clip <= 1, "ppo.dual_clip: must be > 1 (or 0 for off)"),
        (minibatches < 1 or t.prompts_per_step % minibatches,
         f"ppo.num_minibatches: {minibatches} must divide training.prompts_per_step={t.prompts_per_step} (a prompt's "
         "k samples stay together)"),
    ]


def _run_checks(config, minibatches: int) -> list[tuple[bool, str]]:
    """(failed, message) of the sections around the update: sft, generation, training, data, hub, reward.control."""
    a, g, t = config.algorithm, config.generation, config.training
    return [
        (config.sft.max_steps < 1 or config.sft.batch_size < 1 or config.sft.learning_rate <= 0,
         "sft: max_steps and batch_size must be >= 1 and learning_rate > 0"),
        (g.num_samples < 1, "generation.num_samples: must be >= 1"),
        (g.max_new_tokens < 1, "generation.max_new_tokens: must be >= 1"),
        (g.temperature <= 0, "generation.temperature: must be > 0"),
        (g.top_k != 0, "generation.top_k: training samples from the whole softmax(logits / temperature), the "
                       "policy that is trained; set it to 0 (for sampled evaluation use evaluation.top_k)"),
        (g.top_p != 1.0, "generation.top_p: training samples from the whole softmax(logits / temperature), the "
                         "policy that is trained; set it to 1.0 (for sampled evaluation use evaluation.top_p)"),
        (g.backend not in BACKENDS, f"generation.backend: '{g.backend}' is not one of {BACKENDS}"),
        (t.max_steps < 1, "training.max_steps: must be >= 1"),
        (t.prompts_per_step < 1, "training.prompts_per_step: must be >= 1"),
        (t.gradient_accumulation_steps < 1 or (t.prompts_per_step * g.num_samples) % (
            t.gradient_accumulation_steps * minibatches),
         "training.gradient_accumulation_steps: must divide prompts_per_step * generation.num_samples (for ppo and "
         "grpo: divided by ppo.num_minibatches)"),
        (t.learning_rate <= 0, "training.learning_rate: must be > 0"),
        (t.lr_scheduler not in ("constant", "linear", "cosine"), "training.lr_scheduler: constant, linear or cosine"),
        (t.mixed_precision not in MIXED_PRECISION or t.mixed_precision is True,
         f"training.mixed_precision: choose one of {MIXED_PRECISION}, got {t.mixed_precision!r}"),
        (len(config.data.split_fractions) != 3 or abs(sum(config.data.split_fractions) - 1) > 1e-6,
         "data.split_fractions: give three fractions (train, validation, test) that sum to 1"),
        (config.hub.push and not config.hub.repo_id, "hub.repo_id: set it when hub.push is true"),
        (config.reward.control not in CONTROLS, f"reward.control: '{config.reward.control}' is not one of {CONTROLS}"),
        (config.reward.control != "none" and config.reward.per_token, "reward.control replaces each completion's "
         "reward, not per-token credit: set reward.per_token=false in a control arm"),
        (config.reward.control != "none" and a.baseline == "greedy" and ALGORITHMS[a.name].uses_baseline(config),
         "reward.control with algorithm.baseline=greedy: the greedy baseline would score the real reward while the "
         "samples get the control's; choose another baseline for the arms you compare"),
    ]


def _dpo_checks(d) -> list[tuple[bool, str]]:
    """(failed, message) of the dpo section (`llm-pg dpo`)."""
    return [
        (d.beta <= 0, f"dpo.beta: must be > 0 (0.1 is usual), got {d.beta}"),
        (d.loss_type not in DPO_LOSSES, f"dpo.loss_type: '{d.loss_type}' is not one of {tuple(DPO_LOSSES)}"),
        (not 0 <= d.label_smoothing < 0.5, f"dpo.label_smoothing: must lie in [0, 0.5), got {d.label_smoothing}"),
        (d.label_smoothing > 0 and d.loss_type != "sigmoid",
         f"dpo.label_smoothing: only loss_type=sigmoid reads it ({d.loss_type} would ignore it); set it to 0"),
        (d.max_steps < 1 or d.batch_size < 1 or d.max_completion_length < 1 or d.learning_rate <= 0,
         "dpo: max_steps, batch_size and max_completion_length must be >= 1 and learning_rate > 0"),
    ]


def check_dpo(config) -> None:
    """What `llm-pg dpo` needs beyond a valid config, refused before its folder is taken: the pairs to learn from."""
    if not config.rm.source:
        raise ConfigError("rm.source: name the preference pairs DPO learns from (a folder of <split>.jsonl files or a "
                          ".jsonl file), read as `llm-pg rm` reads them")


def _validate_objective(config) -> None:
    """Combinations that would silently train another objective than the documented one (llm_pg/algorithms/registry.py
    decides which; tests/test_objective_matrix.py proves every accepted one)."""
    for problem in (kl_in_reward_problem(config),
                    dynamic_sampling_problem(config) if config.algorithm.dynamic_sampling else None):
        if problem:
            raise ConfigError(problem)


# Reward types that compare a completion with the references: the reference metrics, the embedding similarity to
# the reference, and `evaluate` modules (compute(predictions, references)).  A user function gets the references
# too but may ignore them, so it is not listed; a verifier needs them unless its answer is a record field
# (reference_column).
REFERENCE_REWARD_TYPES = ("embedding", "evaluate")


def reference_users(config, specs) -> tuple[list[str], list[str]]:
    """(what needs references on the train split, what needs them on the evaluation splits), as config keys."""
    from llm_pg.evaluation.metrics import REFERENCE_METRICS  # late imports: they pull in the metric libraries
    from llm_pg.rewards.metrics import METRIC_TYPES

    rewards = [f"{s.key} ({s.type})" for s in specs if s.type in (*METRIC_TYPES, *REFERENCE_REWARD_TYPES)
               or (s.type == "verifier" and s.options["reference_column"] is None)]
    e = config.evaluation
    watched = e.hacking_metric if e.eval_every > 0 and e.hacking_patience > 0 else None  # checked when it runs
    evaluation = [f"evaluation.{key} ({metric})" for key, metric in
                  (("metric", e.metric), ("success_metric", e.success_metric), ("hacking_metric", watched))
                  if metric in REFERENCE_METRICS]
    return rewards, rewards + evaluation  # evaluation scores the reward too


def _validate_references(config, specs) -> None:
    """Prompt-only data (data.reference_field: null) with a reward or metric that compares with a reference."""
    d = config.data
    if d.reference_field is not None:
        return
    train, evaluation = reference_users(config, specs)
    if train:
        raise ConfigError(f"data.reference_field: null (prompt-only data), but {train[0]} compares completions with a "
                          "reference; name the records' reference field, or use rewards that need none (function, "
                          "classifier, length_penalty, repetition_penalty)")
    if d.eval_reference_field is None and evaluation:
        raise ConfigError(f"data.reference_field: null (prompt-only data), but {evaluation[0]} needs references; set "
                          "it to reward (or a reward_<name>), or name the records' reference field "
                          "(or data.eval_reference_field)")


TRACKERS = ("tensorboard", "wandb", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab", "trackio", "all")


def _validate_evaluation(config, component_names: list[str]) -> None:
    """The evaluation, hub and tracker fields (llm_pg/evaluation/periodic.py, report.py, hub.py use them)."""
    from llm_pg.evaluation.meaning import MEANING_METRICS
    from llm_pg.evaluation.metrics import METRICS  # late import: pulls in the metric libraries

    metrics = list(METRICS) + [f"reward_{name}" for name in component_names]
    raise_first(_evaluation_checks(config.evaluation, metrics, MEANING_METRICS))
    h, e = config.hub, config.evaluation
    raise_first([
        (h.folder not in ("final", "best"), f"hub.folder: choose 'final' or 'best', got '{h.folder}'"),
        (h.folder == "best" and not e.eval_every, "hub.folder=best needs evaluation.eval_every > 0 (the best "
                                                  "policy is chosen on the validation split during training)"),
        (h.repo_id is not None and h.repo_id.count("/") != 1, f"hub.repo_id: write it as user/name, got "
                                                                f"'{h.repo_id}'"),
    ])
    for name in config.training.report_to:
        if name not in TRACKERS:
            raise ConfigError(f"training.report_to: '{name}' is not an Accelerate tracker; choose from {TRACKERS}")


def _evaluation_checks(e, metrics: list[str], meaning_metrics) -> list[tuple[bool, str]]:
    """(failed, message) of the evaluation section, whose metric names must be among `metrics`."""
    return [
        (e.batch_size < 1, "evaluation.batch_size: must be >= 1"),
        (e.num_samples < 1, "evaluation.num_samples: must be >= 1"),
        (e.top_k < 0, "evaluation.top_k: must be >= 0 (0 = off)"),
        (not 0.0 < e.top_p <= 1.0, "evaluation.top_p: must lie in (0, 1] (1.0 = off)"),
        (e.num_samples > 1 and not e.do_sample, "evaluation.num_samples > 1 needs evaluation.do_sample: true "
                                                 "(greedy decoding gives one completion per prompt)"),
        (e.eval_every < 0, "evaluation.eval_every: must be >= 0 (0 = no evaluation during training)"),
        (e.validation_samples is not None and e.validation_samples < 1, "evaluation.validation_samples: must be "
                                                                         ">= 1 (or null for data.max_eval_samples)"),
        (e.metric not in metrics, f"evaluation.metric: '{e.metric}' is not one of {metrics}"),
        (e.success_metric not in metrics, f"evaluation.success_metric: '{e.success_metric}' is not one of {metrics}"),
        (e.success_threshold is not None and not e.do_sample, "evaluation.success_threshold: pass@k is measured on "
                                                              "samples; set evaluation.do_sample: true (and "
                                                              "evaluation.num_samples >= k)"),
        (e.with_greedy and not e.do_sample, "evaluation.with_greedy: adds greedy scores beside sampled ones; set "
                                            "evaluation.do_sample: true (greedy evaluation is already the default)"),
        (e.hacking_patience < 0, "evaluation.hacking_patience: must be >= 0 (0 = off)"),
        (e.hacking_metric != "auto" and e.hacking_metric not in metrics, f"evaluation.hacking_metric: "
                                                                          f"'{e.hacking_metric}' is not 'auto' or one "
                                                                          f"of {metrics}"),
        (e.final_policy not in ("best", "last"), f"evaluation.final_policy: choose 'best' or 'last', got "
                                                  f"'{e.final_policy}'"),
        (e.early_stopping_patience < 0, "evaluation.early_stopping_patience: must be >= 0 (0 = off)"),
        (e.early_stopping_patience > 0 and not e.eval_every, "evaluation.early_stopping_patience needs "
                                                              "evaluation.eval_every > 0 (it counts validation "
                                                              "evaluations)"),
        (e.metric in meaning_metrics and e.meaning_encoder == "none", f"evaluation.metric: '{e.metric}' needs a "
                                                                      "sentence encoder; set "
                                                                      "evaluation.meaning_encoder to auto (or a "
                                                                      "folder) or choose another metric"),
        (not e.meaning_encoder, "evaluation.meaning_encoder: auto, none, or a folder / 'pypi:<package>'"),
        (e.stop_on_hacking and not (e.eval_every and e.hacking_patience),
         "evaluation.stop_on_hacking needs evaluation.eval_every > 0 and evaluation.hacking_patience > 0"),
        (not e.reference_model, "evaluation.reference_model: 'start', 'none', or a model folder / Hub id"),
        (e.metric == "perplexity" and e.reference_model == "none", "evaluation.metric: 'perplexity' needs a "
                                                                    "reference model; set evaluation.reference_model "
                                                                    "to 'start' (or a model) or choose another metric"),
        (e.bootstrap_resamples < 1, "evaluation.bootstrap_resamples: must be >= 1 (1000 is usual)"),
        (e.log_completions_every < 0, "evaluation.log_completions_every: must be >= 0 (0 = off)"),
        (e.report_samples < 0, "evaluation.report_samples: must be >= 0"),
    ]


def _validate_memory(config) -> None:
    """model.lora and kl.reference_device (llm_pg/models/lora.py, llm_pg/rollout/reference.py use them)."""
    import torch

    lora, targets = config.model.lora, config.model.lora.target_modules
    checks = [
        (lora.r < 0, "model.lora.r: must be >= 0 (0 = off)"),
        (lora.alpha <= 0, "model.lora.alpha: must be > 0"),
        (not 0.0 <= lora.dropout < 1.0, "model.lora.dropout: must lie in [0, 1)"),
        (targets != "all-linear" and (isinstance(targets, str) or not targets or not all(targets)),
         f"model.lora.target_modules: give a list of layer names (e.g. [q_proj, v_proj]) or 'all-linear', got "
         f"{targets!r}"),
    ]
    for failed, message in checks:
        if failed:
            raise ConfigError(message)
    if config.kl.reference_device != "same":
        try:
            torch.device(config.kl.reference_device)
        except (RuntimeError, ValueError):
            raise ConfigError(f"kl.reference_device: '{config.kl.reference_device}' is not a device; use same, cpu, "
                              "cuda, cuda:1, ...") from None


DEFAULT_REWARD = [{"name": "rougeL", "weight": 1.0}]


def check_pipeline(config) -> None:
    """What `llm-pg rlhf` (llm_pg/pipelines/rlhf.py) needs beyond a valid config, refused in one line before any stage
    runs (rlhf.check_config adds the rm section's own checks, rm_train.check_rm_config: importing it here would close
    an import circle through the model loaders)."""
    lora = config.model.lora
    checks = [
        (not config.rlhf.output_dir.strip(), "rlhf.output_dir: must not be empty; name a folder, e.g. runs/rlhf"),
        (config.rlhf.validation_pairs < 1, "rlhf.validation_pairs: must be >= 1 (the validation prompts)"),
        (config.rlhf.compare_samples < 1, "rlhf.compare_samples: must be >= 1 (completions per test prompt)"),
        (config.rlhf.length_penalty < 0, f"rlhf.length_penalty: must be >= 0 (the coefficient of a penalty), got "
                                         f"{config.rlhf.length_penalty}"),
        (not config.rm.eval_split, "rm.eval_split: the pipeline's test prompts are the pairs' held-out split; name it "
                                   "(e.g. test)"),
        (config.reward.components != DEFAULT_REWARD, "reward.components: the pipeline sets the reward itself (the "
                                                     "proxy reward model, the gold one at weight 0); remove them"),
        (not config.training.save_final_model, "training.save_final_model: the comparison reads the RL policy from "
                                               "rl/final; set it to true"),
        (lora.r > 0 and not lora.merge_on_save, "model.lora.merge_on_save: the comparison loads rl/final as a whole "
                                                "model; set it to true with model.lora.r > 0"),
    ]
    for failed, message in checks + [(True, m) for m in frontier_problems(config)[:1]]:
        if failed:
            raise ConfigError(message)


def frontier_problems(config) -> list[str]:
    """Why rlhf.frontier_steps cannot be kept: a step that is no training step of RL (or of DPO with rlhf.dpo), or a
    LoRA policy (a mid-run policy would be saved as an adapter, which the comparison cannot load as a model)."""
    steps, rlhf = config.rlhf.frontier_steps, config.rlhf
    last = {"training.max_steps": config.training.max_steps, **({"dpo.max_steps": config.dpo.max_steps}
                                                                  if rlhf.dpo else {})}
    problems = [f"rlhf.frontier_steps: {s} is not a step (steps are counted from 1)" for s in steps if s < 1]
    problems += [f"rlhf.frontier_steps: step {s} is beyond {key}={n} (the run's last step); list steps up to {n}"
                 for s in steps for key, n in last.items() if s > n]
    if steps and config.model.lora.r > 0:
        problems.append("rlhf.frontier_steps: the policies at those steps are kept as whole models, which a LoRA "
                        "policy (model.lora.r > 0) is not before its merge; set model.lora.r: 0 or frontier_steps: []")
    return problems

