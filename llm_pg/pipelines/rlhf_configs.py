"""Each stage's config, made from the pipeline's (llm_pg/pipelines/rlhf.py): where it reads and writes under
rlhf.output_dir, what the pipeline sets itself (the prepared data, the starting policy, RL's reward), and the
settings each stage's output depends on (INPUTS, kept in its DONE marker)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from llm_pg.config.schema import TrainConfig, config_from_dict
from llm_pg.data.chat import SOURCE_PROMPT_COLUMN


# The settings (dotted keys or prefixes) that each stage's output depends on, saved in its DONE marker: a finished
# stage whose settings changed is refused in one line rather than silently reused. Where things are written and
# how fast (threads, logging, checkpoint frequency) are left out.
_RM = ("rm.", "model.name_or_path", "training.seed", "training.weight_decay", "training.max_grad_norm")
INPUTS = {
    "data": ("rm.source", "rm.format", "rm.prompt_field", "rm.chosen_field", "rm.rejected_field", "rm.margin_field",
             "rm.train_split", "rm.eval_split", "rm.eval_fraction", "rm.max_train_pairs", "rlhf.validation_pairs",
             "training.seed"),
    "sft": ("model.", "data.", "sft.", "training.seed", "training.weight_decay", "training.max_grad_norm"),
    "rm_proxy": _RM, "rm_gold": _RM + ("rlhf.gold_base_model",),
    "rl": ("model.", "data.", "generation.", "reward.", "algorithm.", "critic.", "ppo.", "grpo.", "kl.", "training.",
           "evaluation."),
    "dpo": ("model.", "data.", "dpo.", "rm.format", "rm.prompt_field", "rm.chosen_field", "rm.rejected_field",
            "training.seed", "training.weight_decay", "training.max_grad_norm"),
    "compare": ("data.", "generation.", "rlhf.compare_samples", "evaluation.batch_size",
                "evaluation.bootstrap_resamples", "training.seed"),
}
# Settings that are inputs only when they are not at their default (so that a DONE of a pipeline from before they
# existed stays valid, and rlhf.choose: {} leaves the rl stage exactly as it was without it)
# rlhf.frontier_steps is one of rl's and dpo's (their runs keep the policies at those steps: a run made without
# them has none to give) and of compare's (it evaluates them)
OPTIONAL_INPUTS = {"rl": ("rlhf.length_penalty", "rlhf.choose", "rlhf.frontier_steps"),
                   "dpo": ("rlhf.frontier_steps",), "compare": ("rlhf.dpo", "rlhf.frontier_steps")}
NOT_INPUTS = ("training.output_dir", "sft.output_dir", "rm.output_dir", "dpo.output_dir", "training.num_threads",
              "training.report_to", "training.log_every", "training.save_every", "training.keep_checkpoints",
              "rm.save_every", "rm.keep_checkpoints", "rm.eval_batch_size")


def _checked(config: TrainConfig) -> TrainConfig:
    """A stage's config, validated as a user's would be (a stage never runs a config `--config` would refuse)."""
    return config_from_dict(config.to_dict())


def data_config(config: TrainConfig, out: Path):
    """The data section of SFT, RL and the comparison: the prepared `messages` records of data/."""
    return dataclasses.replace(config.data, source=str(out / "data"), train_split="train",
                               validation_split="validation", test_split="test", prompt_field="messages",
                               reference_field="reference", eval_reference_field=None, prompt_template="{prompt}")


def sft_config(config: TrainConfig, out: Path) -> TrainConfig:
    return _checked(dataclasses.replace(config, data=data_config(config, out),
                                        sft=dataclasses.replace(config.sft, before_rl=False)))


def rm_config(config: TrainConfig, out: Path, half: str) -> TrainConfig:
    """The rm section on one half of the pairs; the gold one on rlhf.gold_base_model when given, and always a plain
    Bradley-Terry model: the gold stands in for the people who labelled the pairs, length preference included, so
    rm.length_covariate (which keeps length out of a reward) applies to the proxy that RL optimizes, never to it."""
    gold = half == "gold"
    rm = dataclasses.replace(config.rm, source=str(out / "data" / f"pairs_{half}"), train_split="train",
                             eval_split="test", max_train_pairs=None, output_dir=str(out / f"rm_{half}"),
                             base_model=config.rlhf.gold_base_model if gold and config.rlhf.gold_base_model
                             else config.rm.base_model,
                             length_covariate=config.rm.length_covariate and not gold)
    return _checked(dataclasses.replace(config, rm=rm))


def dpo_config(config: TrainConfig, out: Path) -> TrainConfig:
    """DPO from the SFT policy (also its reference) on the proxy half's training pairs, prompts rendered as SFT's."""
    rm = dataclasses.replace(config.rm, source=str(out / "data" / "pairs_proxy"), train_split="train",
                             eval_split="test", max_train_pairs=None)
    return _checked(dataclasses.replace(
        config, data=data_config(config, out), rm=rm, dpo=dataclasses.replace(config.dpo, output_dir=str(out / "dpo")),
        model=dataclasses.replace(config.model, name_or_path=str(out / "sft" / "final"), gguf_file=None,
                                  revision=None)))


def reward_components(out: Path, length_penalty: float = 0.0) -> list[dict]:
    """The proxy trains the policy; the gold, at weight 0, is computed and logged beside it and changes nothing
    (R = 1 * proxy + 0 * gold). Both read the conversation with their own saved rendering. With a length_penalty c
    > 0, R adds c * (-|n - T| / T), n the answer's words and T rlhf_data.length_target: the length people wrote."""
    from llm_pg.pipelines.rlhf_data import length_target

    components = [{"name": name, "type": "reward_model", "weight": weight, "model": str(out / f"rm_{name}" / "final"),
                   "messages_column": SOURCE_PROMPT_COLUMN} for name, weight in (("proxy", 1.0), ("gold", 0.0))]
    if length_penalty > 0:
        components.append({"name": "length_penalty", "type": "length_penalty", "weight": length_penalty,
                           "target": length_target(out / "data"), "unit": "words"})
    return components


def rl_config(config: TrainConfig, out: Path) -> TrainConfig:
    """RL from the SFT policy (also the KL reference) with the proxy reward; the reward-hacking check watches the
    gold score on the validation prompts unless the user chose a metric."""
    e = config.evaluation
    return _checked(dataclasses.replace(
        config, data=data_config(config, out),
        model=dataclasses.replace(config.model, name_or_path=str(out / "sft" / "final"), gguf_file=None,
                                  revision=None),
        reward=dataclasses.replace(config.reward, components=reward_components(out, config.rlhf.length_penalty)),
        sft=dataclasses.replace(config.sft, before_rl=False),
        training=dataclasses.replace(config.training, output_dir=str(out / "rl")),
        evaluation=dataclasses.replace(e, hacking_metric="reward_gold" if e.hacking_metric == "auto"
                                       else e.hacking_metric)))


def rl_summary(config, out, result: dict) -> dict:
    """An RL run's summary in DONE: its last step, and T of the length penalty when there is one."""
    from llm_pg.pipelines.rlhf_data import length_target

    target = {"length_penalty_target": length_target(out / "data")} if config.rlhf.length_penalty > 0 else {}
    return {"final_step": result["final_step"], **target}


def _flat(config: TrainConfig) -> dict:
    from llm_pg.config.resume import flatten

    return flatten(config.to_dict())


def stage_inputs(name: str, config: TrainConfig) -> dict:
    """The stage's settings (INPUTS), as dotted keys, with OPTIONAL_INPUTS when set: compare's include rlhf.dpo when
    it is on (absent when off, as in the DONE of a pipeline from before the dpo stage existed), so a comparison with
    DPO is not reused without; rl's rlhf.length_penalty when > 0 and rlhf.choose when it lists candidates; rl's, dpo's
    and compare's rlhf.frontier_steps when it lists steps."""
    keys = INPUTS[name] + tuple(k for k in OPTIONAL_INPUTS.get(name, ()) if getattr(config.rlhf, k.split(".")[1]))
    ignored = NOT_INPUTS + (("rm.length_covariate", "rm.length_covariate_lr") if name == "rm_gold" else ())
    return {k: v for k, v in _flat(config).items() if k.startswith(keys) and k not in ignored}


def frontier_steps(config: TrainConfig) -> tuple[int, ...]:
    """rlhf.frontier_steps as the steps at which the RL and DPO runs keep their policies (sorted, once each)."""
    return tuple(sorted(set(config.rlhf.frontier_steps)))
