"""Settings that load but cannot work, refused in one line naming the field and the fix (`validate_limits`, run
by config_checks.validate on every config), and settings a user may choose on purpose but rarely means, logged
once when training starts (`training_warnings`). Issue 24; docs/reliability.md lists each with its test.
"""

from __future__ import annotations

from llm_pg.algorithms.registry import ALGORITHMS
from llm_pg.errors import ConfigError
from llm_pg.rewards.spec import check_reward_config

# model.dtype / rm.dtype: the keys of llm_pg.models.policy.DTYPES (not imported here: it pulls in transformers)
DTYPE_NAMES = ("float32", "bfloat16", "float16")


def validate_limits(config, specs) -> None:
    """Values that load but cannot work: clip ranges that invert or reach 0, a reward window no completion reaches,
    settings that make a part of the run inert (issue 24)."""
    g, e, ppo, rm = config.generation, config.evaluation, config.ppo, config.rm
    critic = ALGORITHMS[config.algorithm.name].uses_critic(config)
    checks = [
        (ppo.clip_eps >= 1, f"ppo.clip_eps: {ppo.clip_eps} must lie in (0, 1): the ratio is clipped below at "
                            "1 - clip_eps, which must stay above 0 (0.2 is usual, TRL's epsilon)"),
        (ppo.clip_eps_high is not None and ppo.clip_eps_high < ppo.clip_eps,
         f"ppo.clip_eps_high: {ppo.clip_eps_high} is below ppo.clip_eps={ppo.clip_eps}; clip-higher needs "
         "clip_eps_high >= clip_eps (DAPO uses 0.28 with 0.2), or null for clip_eps"),
        (config.algorithm.entropy_coef < 0, "algorithm.entropy_coef: must be >= 0 (a bonus for entropy; 0 = off)"),
        (config.kl.target is not None and config.kl.coef == 0, "kl.target: the adaptive coefficient starts from "
                                                                "kl.coef, which is 0 (no reference is loaded); set "
                                                                "kl.coef > 0 (e.g. 0.05) or kl.target: null"),
        (critic and config.critic.loss_coef == 0, f"critic.loss_coef: 0 leaves the value head untrained, but "
                                                  f"algorithm.name={config.algorithm.name} takes its advantages from "
                                                  "it; set it > 0 (1.0 is usual)"),
        (not e.do_sample and (e.top_k != 0 or e.top_p != 1.0), "evaluation.top_k / top_p: act on sampled "
                                                                "evaluation only; set evaluation.do_sample: true, "
                                                                "or leave them at 0 and 1.0"),
        (config.model.dtype not in DTYPE_NAMES, f"model.dtype: '{config.model.dtype}' is not one of {DTYPE_NAMES}"),
        (rm.dtype not in DTYPE_NAMES, f"rm.dtype: '{rm.dtype}' is not one of {DTYPE_NAMES}"),
        (rm.warmup_steps < 0, "rm.warmup_steps: must be >= 0"),
        (rm.save_every < 0, "rm.save_every: must be >= 0 (0 = only at the end)"),
        (rm.keep_checkpoints < 1, "rm.keep_checkpoints: must be >= 1 (how many of the newest are kept)"),
        (rm.max_train_pairs is not None and rm.max_train_pairs < 1, "rm.max_train_pairs: must be >= 1 (or null)"),
        (rm.max_eval_pairs is not None and rm.max_eval_pairs < 1, "rm.max_eval_pairs: must be >= 1 (or null)"),
        (rm.lora.r < 0, "rm.lora.r: must be >= 0 (0 = off)"),
        (rm.lora.alpha <= 0, "rm.lora.alpha: must be > 0"),
        (not 0.0 <= rm.lora.dropout < 1.0, "rm.lora.dropout: must lie in [0, 1)"),
    ]
    for failed, message in checks:
        if failed:
            raise ConfigError(message)
    for spec in specs:
        if spec.type == "soft_overlong_punishment":
            _check_overlong_window(spec, g.max_new_tokens)
    _check_per_sample_metrics(e)


def training_warnings(config, num_train: int, num_processes: int = 1) -> list[str]:
    """Settings a user may choose on purpose but rarely means, said once when training starts (not refused): each
    names the field, what will happen and the fix."""
    t, e, specs = config.training, config.evaluation, check_reward_config(config.reward)
    batch = t.prompts_per_step * num_processes
    warnings = [
        (e.eval_every > t.max_steps, f"evaluation.eval_every={e.eval_every} > training.max_steps={t.max_steps}: "
                                     "validation runs once, after the last step, so best/ is the last policy and "
                                     "early stopping and the reward-hacking check cannot act; lower eval_every"),
        (batch > num_train, f"training.prompts_per_step={t.prompts_per_step}"
                            + (f" x {num_processes} processes" if num_processes > 1 else "")
                            + f" is more than the {num_train} training prompts: every step repeats prompts, so a "
                              "step's groups are not independent; lower prompts_per_step or add data"),
        (ALGORITHMS[config.algorithm.name].uses_critic(config) and config.critic.warmup_steps >= t.max_steps,
         f"critic.warmup_steps={config.critic.warmup_steps} >= training.max_steps={t.max_steps}: only the value head "
         "trains in this run (continue it with --resume and a larger max_steps to train the policy)"),
        (t.lr_scheduler != "constant" and t.warmup_steps >= t.max_steps,
         f"training.warmup_steps={t.warmup_steps} >= training.max_steps={t.max_steps}: the learning rate never "
         "reaches training.learning_rate"),
    ]
    warnings += [(True, f"{spec.key}.max_completion_len={spec.options['max_completion_len']} > "
                        f"generation.max_new_tokens={config.generation.max_new_tokens}: no training completion "
                        "reaches the end of the ramp or its -1 (TRL sets it to the completion limit)")
                 for spec in specs if spec.type == "soft_overlong_punishment"
                 and spec.options["max_completion_len"] > config.generation.max_new_tokens]
    return [message for applies, message in warnings if applies]


def _check_overlong_window(spec, max_new_tokens: int) -> None:
    """soft_overlong_punishment ramps over tokens L_max - L_cache .. L_max; completions end at max_new_tokens."""
    cache, limit = spec.options["soft_punish_cache"], spec.options["max_completion_len"]
    if cache > max_new_tokens:
        raise ConfigError(f"{spec.key}.soft_punish_cache: a window of {cache} tokens is longer than "
                          f"generation.max_new_tokens={max_new_tokens}, the longest completion; set it below "
                          f"{max_new_tokens} (e.g. {max(max_new_tokens // 4, 1)}) with max_completion_len: "
                          f"{max_new_tokens}")
    if limit - cache >= max_new_tokens:
        raise ConfigError(f"{spec.key}.max_completion_len: the punishment starts after token {limit - cache} "
                          f"(max_completion_len - soft_punish_cache), which no completion of at most "
                          f"generation.max_new_tokens={max_new_tokens} tokens reaches, so the reward would be 0 for "
                          f"every completion; set max_completion_len to {max_new_tokens}")


def _check_per_sample_metrics(e) -> None:
    """The metrics read per sample (mean@n / pass@k with do_sample) and per evaluation (the hacking check) must be
    measured: a corpus score has no per-sample value, perplexity needs a reference model, meaning an encoder."""
    from llm_pg.evaluation.meaning import MEANING_METRICS
    from llm_pg.evaluation.metrics import CORPUS_ONLY_METRICS

    def unmeasured(metric: str) -> str | None:
        if metric == "perplexity" and e.reference_model == "none":
            return "is not measured with evaluation.reference_model: none; set it to 'start' (or a model)"
        if metric in MEANING_METRICS and e.meaning_encoder == "none":
            return "is not measured with evaluation.meaning_encoder: none; set it to auto (or a folder)"
        return None

    if e.do_sample and e.success_metric in CORPUS_ONLY_METRICS:
        raise ConfigError(f"evaluation.success_metric: '{e.success_metric}' is a corpus score with no value per "
                          "sample, so mean@n and pass@k cannot count successes; choose a per-sample metric (reward, "
                          "a reward_<name>, rouge1, rougeL, ...)")
    for key, metric, used in (("success_metric", e.success_metric, e.do_sample),
                              ("hacking_metric", e.hacking_metric, e.eval_every > 0 and e.hacking_patience > 0)):
        reason = unmeasured(metric) if used else None
        if reason:
            raise ConfigError(f"evaluation.{key}: '{metric}' {reason}, or choose another metric")
