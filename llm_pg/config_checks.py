"""Checks of a whole TrainConfig: combinations that cannot train are rejected with one line naming the field and
the fix.  `llm_pg.config.load_config` runs them on every config it returns.
"""

from __future__ import annotations

from llm_pg.advantages import BASELINES
from llm_pg.algorithms import ALGORITHMS
from llm_pg.errors import ConfigError
from llm_pg.kl_control import KL_MODES, SOUND_KL_ESTIMATOR
from llm_pg.losses import KL_ESTIMATORS, LOSS_REDUCTIONS
from llm_pg.precision import MIXED_PRECISION
from llm_pg.rewards.spec import check_reward_config

# `config` below is a config.TrainConfig; it is not imported: config.py calls validate() on every config it builds.
# generation.backend: llm_pg's decoding loop (decoding.py) or generate() (hf_decoding.py). Listed here, not there:
# hf_decoding sits above config (through the model loaders), so importing it would close an import circle.
BACKENDS = ("native", "hf")


def validate(config):
    """Reject combinations that cannot train, with a message that names the field and the fix."""
    a, g, t = config.algorithm, config.generation, config.training
    checks = [
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
        (config.ppo.epochs < 1, "ppo.epochs: must be >= 1"),
        (config.ppo.clip_eps <= 0, "ppo.clip_eps: must be > 0"),
        (0 < config.ppo.dual_clip <= 1, "ppo.dual_clip: must be > 1 (or 0 for off)"),
        (a.name == "ppo" and (config.ppo.num_minibatches < 1 or t.prompts_per_step % config.ppo.num_minibatches),
         "ppo.num_minibatches: must divide training.prompts_per_step (a prompt's k samples stay together)"),
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
            t.gradient_accumulation_steps * (config.ppo.num_minibatches if a.name == "ppo" else 1)),
         "training.gradient_accumulation_steps: must divide prompts_per_step * generation.num_samples (for ppo: "
         "divided by ppo.num_minibatches)"),
        (t.learning_rate <= 0, "training.learning_rate: must be > 0"),
        (t.lr_scheduler not in ("constant", "linear", "cosine"), "training.lr_scheduler: constant, linear or cosine"),
        (t.mixed_precision not in MIXED_PRECISION, f"training.mixed_precision: choose one of {MIXED_PRECISION}"),
        (len(config.data.split_fractions) != 3 or abs(sum(config.data.split_fractions) - 1) > 1e-6,
         "data.split_fractions: give three fractions (train, validation, test) that sum to 1"),
        (config.hub.push and not config.hub.repo_id, "hub.repo_id: set it when hub.push is true"),
    ]
    for failed, message in checks:
        if failed:
            raise ConfigError(message)
    specs = check_reward_config(config.reward)  # the specs only: no metric library, model or user code is loaded
    _validate_evaluation(config, [spec.name for spec in specs])
    _validate_memory(config)
    return config


TRACKERS = ("tensorboard", "wandb", "comet_ml", "aim", "mlflow", "clearml", "dvclive", "swanlab", "trackio", "all")


def _validate_evaluation(config, component_names: list[str]) -> None:
    """The evaluation, hub and tracker fields (llm_pg/periodic_eval.py, report.py, hub.py use them)."""
    from llm_pg.eval_metrics import METRICS  # late import: pulls in the metric libraries

    e, h = config.evaluation, config.hub
    metrics = list(METRICS) + [f"reward_{name}" for name in component_names]
    checks = [
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
        (e.hacking_patience < 0, "evaluation.hacking_patience: must be >= 0 (0 = off)"),
        (e.stop_on_hacking and not (e.eval_every and e.hacking_patience),
         "evaluation.stop_on_hacking needs evaluation.eval_every > 0 and evaluation.hacking_patience > 0"),
        (not e.reference_model, "evaluation.reference_model: 'start', 'none', or a model folder / Hub id"),
        (e.metric == "perplexity" and e.reference_model == "none", "evaluation.metric: 'perplexity' needs a "
                                                                    "reference model; set evaluation.reference_model "
                                                                    "to 'start' (or a model) or choose another metric"),
        (e.bootstrap_resamples < 1, "evaluation.bootstrap_resamples: must be >= 1 (1000 is usual)"),
        (e.log_completions_every < 0, "evaluation.log_completions_every: must be >= 0 (0 = off)"),
        (e.report_samples < 0, "evaluation.report_samples: must be >= 0"),
        (h.folder not in ("final", "best"), f"hub.folder: choose 'final' or 'best', got '{h.folder}'"),
        (h.folder == "best" and not e.eval_every, "hub.folder=best needs evaluation.eval_every > 0 (the best "
                                                  "policy is chosen on the validation split during training)"),
        (h.repo_id is not None and h.repo_id.count("/") != 1, f"hub.repo_id: write it as user/name, got "
                                                                f"'{h.repo_id}'"),
    ]
    for failed, message in checks:
        if failed:
            raise ConfigError(message)
    for name in config.training.report_to:
        if name not in TRACKERS:
            raise ConfigError(f"training.report_to: '{name}' is not an Accelerate tracker; choose from {TRACKERS}")


def _validate_memory(config) -> None:
    """model.lora and kl.reference_device (llm_pg/lora.py, llm_pg/reference.py use them)."""
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
