"""`llm-pg rlhf`: the whole pipeline from preference pairs, each stage one existing module.

    data      rlhf_data.prepare: prompt records (train / validation / test) + the pairs' two disjoint halves
    sft       sft.train_sft on the chosen answers                               -> sft/final
    rm_proxy  rm_train.train_reward_model on one half (the rm section)          -> rm_proxy/final
    rm_gold   the same on the other half (base rlhf.gold_base_model)            -> rm_gold/final
    rl        trainer.train from sft/final; reward = proxy (weight 1) + gold (weight 0: computed and logged as
              reward/gold and eval/reward_gold, never trained on); KL (kl.coef) to the SFT policy -> rl/
    compare   K samples of each policy on the test prompts, scored by both reward models, with the KL of RL to
              SFT; rlhf_compare.compare -> comparison.json, and report.md

Each stage writes <rlhf.output_dir>/<stage>/DONE last and is skipped when it is there, so a second run changes
nothing. A stage folder without DONE was interrupted: with --resume the reward models and RL continue from their
latest checkpoint; otherwise (and always for data, sft and compare, which cannot resume) it is redone from scratch.
Run it: `llm-pg rlhf --config configs/dialogue_rlhf.yaml`, or `run_pipeline(load_config(...))` in Python.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from llm_pg.checks import check_pipeline
from llm_pg.config.schema import TrainConfig, config_from_dict
from llm_pg.data.chat import SOURCE_PROMPT_COLUMN
from llm_pg.errors import ConfigError

logger = logging.getLogger(__name__)
DONE = "DONE"
STAGES = ("data", "sft", "rm_proxy", "rm_gold", "rl", "compare")
RESUMABLE = ("rm_proxy", "rm_gold", "rl")  # stages with checkpoints that --resume continues
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
    "compare": ("data.", "generation.", "rlhf.compare_samples", "evaluation.batch_size",
                "evaluation.bootstrap_resamples", "training.seed"),
}
NOT_INPUTS = ("training.output_dir", "sft.output_dir", "rm.output_dir", "training.num_threads", "training.report_to",
              "training.log_every", "training.save_every", "training.keep_checkpoints", "rm.save_every",
              "rm.keep_checkpoints", "rm.eval_batch_size")


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
    """The rm section on one half of the pairs; the gold one on rlhf.gold_base_model when given."""
    base = config.rlhf.gold_base_model if half == "gold" and config.rlhf.gold_base_model else config.rm.base_model
    rm = dataclasses.replace(config.rm, source=str(out / "data" / f"pairs_{half}"), train_split="train",
                             eval_split="test", max_train_pairs=None, output_dir=str(out / f"rm_{half}"),
                             base_model=base)
    return _checked(dataclasses.replace(config, rm=rm))


def reward_components(out: Path) -> list[dict]:
    """The proxy trains the policy; the gold, at weight 0, is computed and logged beside it and changes nothing
    (R = 1 * proxy + 0 * gold). Both read the conversation with their own saved rendering."""
    return [{"name": name, "type": "reward_model", "weight": weight, "model": str(out / f"rm_{name}" / "final"),
             "messages_column": SOURCE_PROMPT_COLUMN} for name, weight in (("proxy", 1.0), ("gold", 0.0))]


def rl_config(config: TrainConfig, out: Path) -> TrainConfig:
    """RL from the SFT policy (also the KL reference) with the proxy reward; the reward-hacking check watches the
    gold score on the validation prompts unless the user chose a metric."""
    e = config.evaluation
    return _checked(dataclasses.replace(
        config, data=data_config(config, out),
        model=dataclasses.replace(config.model, name_or_path=str(out / "sft" / "final"), gguf_file=None,
                                  revision=None),
        reward=dataclasses.replace(config.reward, components=reward_components(out)),
        sft=dataclasses.replace(config.sft, before_rl=False),
        training=dataclasses.replace(config.training, output_dir=str(out / "rl")),
        evaluation=dataclasses.replace(e, hacking_metric="reward_gold" if e.hacking_metric == "auto"
                                       else e.hacking_metric)))


def _stage_data(config, out, resume):
    from llm_pg.pipelines.rlhf_data import prepare

    return prepare(config, out / "data")


def _stage_sft(config, out, resume):
    from llm_pg.training.sft import train_sft

    return {"model": str(train_sft(sft_config(config, out), out / "sft"))}


def _stage_rm(half: str):
    def run(config, out, resume):
        from llm_pg.training.reward_model import train_reward_model

        result = train_reward_model(rm_config(config, out, half), resume=resume)
        return {k: result[k] for k in ("accuracy", "ci", "pairs", "final") if k in result}
    return run


def _stage_rl(config, out, resume):
    from llm_pg.training.rl import train

    result = train(rl_config(config, out), resume=resume)
    return None if result.get("interrupted") else {"final_step": result["final_step"]}


def _stage_compare(config, out, resume):
    from llm_pg.pipelines.rlhf_report import run_comparison

    return run_comparison(config, rl_config(config, out), out)


RUNNERS = {"data": _stage_data, "sft": _stage_sft, "rm_proxy": _stage_rm("proxy"), "rm_gold": _stage_rm("gold"),
           "rl": _stage_rl, "compare": _stage_compare}


def run_stage(name: str, config: TrainConfig, out: Path, resume: bool) -> dict | None:
    """One stage unless its DONE marker is there; its summary (None when it was interrupted: no marker)."""
    folder = out / name
    if (folder / DONE).is_file():  # its settings were checked by check_finished_stages
        logger.info("rlhf: stage %s is done (%s); skipped", name, folder / DONE)
        return json.loads((folder / DONE).read_text())["summary"]
    if folder.exists() and not (resume and name in RESUMABLE):
        logger.warning("rlhf: stage %s was interrupted; redoing it from the start%s", name,
                       " (--resume continues it)" if name in RESUMABLE else "")
        remove_stage(out, name)
    folder.mkdir(parents=True, exist_ok=True)
    logger.info("rlhf: stage %s", name)
    summary = RUNNERS[name](config, out, resume)
    if summary is not None:
        (folder / DONE).write_text(json.dumps({"summary": summary, "inputs": stage_inputs(name, config)}, indent=1,
                                              default=_plain) + "\n")
    return summary


def remove_stage(out: Path, name: str) -> None:
    """A stage's folder, and for compare the files it writes beside the stages (the report is the comparison's)."""
    shutil.rmtree(out / name)
    if name == "compare":
        for path in (out / "comparison.json", out / "report.md", out / "plots"):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def stage_inputs(name: str, config: TrainConfig) -> dict:
    """The stage's settings (INPUTS), as dotted keys."""
    from llm_pg.config.resume import flatten

    return {k: v for k, v in flatten(config.to_dict()).items() if k.startswith(INPUTS[name]) and k not in NOT_INPUTS}


def check_finished_stages(config: TrainConfig, out: Path) -> None:
    """Before anything is written: every finished stage (up to the first unfinished one) must have been done with
    the settings it depends on now, or the pipeline would mix outputs of two configs."""
    for name in STAGES:
        if not (out / name / DONE).is_file():
            return
        saved = json.loads((out / name / DONE).read_text())["inputs"]
        _check_unchanged(name, out / name, saved, stage_inputs(name, config))


def _check_unchanged(name: str, folder: Path, saved: dict, now: dict) -> None:
    changed = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
               if saved.get(k) != now.get(k)]
    if changed:
        raise ConfigError(f"rlhf: stage {name} in {folder} was done with other settings ({'; '.join(changed)[:300]}); "
                          f"delete {folder} to redo it and the stages after it, or restore those settings")


def _plain(value):
    return value.item() if isinstance(value, np.generic) else str(value)


def check_config(config: TrainConfig) -> None:
    """One-line ConfigErrors for a config the pipeline cannot run, before anything is written."""
    from llm_pg.training.reward_model import check_rm_config

    check_rm_config(config.rm)
    check_pipeline(config)


def run_pipeline(config: TrainConfig, resume: bool = False) -> dict:
    """Every stage in order (see the module docstring); {stage: summary}, stopping at an interrupted stage."""
    from llm_pg.runs.tracking import save_config

    check_config(config)
    out = Path(config.rlhf.output_dir)
    check_finished_stages(config, out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    results = {}
    for i, name in enumerate(STAGES):
        if not (out / name / DONE).is_file():  # this stage runs: what later stages made from its old output is stale
            for later in STAGES[i + 1:]:
                if (out / later).exists():
                    logger.warning("rlhf: stage %s runs again, so %s is deleted", name, out / later)
                    remove_stage(out, later)
        results[name] = run_stage(name, config, out, resume)
        if results[name] is None:
            logger.warning("rlhf: stage %s stopped before its end; run the same command with --resume", name)
            break
    return results
