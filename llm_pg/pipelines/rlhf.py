"""`llm-pg rlhf`: the whole pipeline from preference pairs, each stage one existing module.

    data      rlhf_data.prepare: prompt records (train / validation / test) + the pairs' two disjoint halves
    sft       sft.train_sft on the chosen answers                               -> sft/final
    rm_proxy  rm_train.train_reward_model on one half (the rm section)          -> rm_proxy/final
    rm_gold   the same on the other half (base rlhf.gold_base_model)            -> rm_gold/final
    rl        trainer.train from sft/final; reward = proxy (weight 1) + gold (weight 0: computed and logged as
              reward/gold and eval/reward_gold, never trained on) [+ rlhf.length_penalty x a length term]; KL
              (kl.coef) to the SFT policy -> rl/. With rlhf.choose: every candidate setting trained, the one with
              the best gold gain at matched length on the validation prompts -> rl/final (rlhf_choose.py)
    dpo       with rlhf.dpo: dpo.train_dpo from sft/final on the proxy half of the pairs (the preference data RL
              sees through the proxy), reference = the SFT policy                  -> dpo/final
    compare   K samples of each policy on the test prompts, scored by both reward models, with the KL of RL (and
              DPO) to SFT; rlhf_statistics.compare -> comparison.json, and report.md
With rlhf.frontier_steps, rl and dpo also keep their policies at those steps (rl/policies, dpo/policies) and compare
scores them too: gold gain against KL, RL vs DPO at matched KL (rlhf_frontier.py).

Each stage writes <rlhf.output_dir>/<stage>/DONE last and is skipped when it is there, so a second run changes
nothing. DONE records what the stage's output was made from: its settings (INPUTS), the sha256 of the data it read
(SOURCES: the preference pairs), the digest of every earlier stage's output it saw, and the sha256 of every file
of its own output (OUTPUTS). Before anything runs, every finished stage is checked against the config and files
of now: a changed setting, changed data, an earlier stage's output that is not the one it saw, or an output file
that is missing or changed is refused in one line naming the stage and the fix (delete that stage's folder to redo
it and every stage after it, or --overwrite to redo the whole pipeline). Refusing keeps hours of finished work
that an automatic re-run would delete on a mistyped path; the fix is one command.
A stage folder without DONE was interrupted: with --resume the reward models and RL continue from their latest
checkpoint (their config and data checked as `llm-pg train|rm --resume` checks them); otherwise (and always for
data, sft and compare, which cannot resume) it is redone from scratch.
Every stage is a run of its own command (sft/ of `sft`, rm_*/ of `rm`, rl/ of `train`, or with rlhf.choose one
per candidate in rl/candidates/), held and checked by llm_pg/runs/folder.py inside the pipeline's folder, which is
held as a whole. Each stage's config is made from the pipeline's in rlhf_configs.py.
Run it: `llm-pg rlhf --config configs/dialogue_rlhf.yaml`, or `run_pipeline(load_config(...))` in Python.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from llm_pg.checks import check_pipeline
from llm_pg.config.schema import TrainConfig, checked
from llm_pg.errors import ConfigError
from llm_pg.pipelines.rlhf_configs import (  # noqa: F401  (INPUTS ... stage_inputs: also this module's API)
    INPUTS, NOT_INPUTS, OPTIONAL_INPUTS, _flat, dpo_config, frontier_steps, rl_config, rl_summary, rm_config,
    sft_config, stage_inputs)

logger = logging.getLogger(__name__)
DONE = "DONE"
# dpo needs only data and sft, but runs after rl: switching rlhf.dpo on in a finished pipeline then redoes dpo and
# compare alone, never the reward models and RL (a stage that runs deletes the stages after it)
STAGES = ("data", "sft", "rm_proxy", "rm_gold", "rl", "dpo", "compare")
RESUMABLE = ("rm_proxy", "rm_gold", "rl")  # stages with checkpoints that --resume continues
# What each stage hands on (paths under rlhf.output_dir), and the data outside the folder that a stage reads.
OUTPUTS = {"data": ("data",), "sft": ("sft/final",), "rm_proxy": ("rm_proxy/final", "rm_proxy/eval.json"),
           "rm_gold": ("rm_gold/final", "rm_gold/eval.json"),
           "rl": ("rl/final", "rl/choice.json", "rl/policies"),  # rl/policies, dpo/policies: rlhf.frontier_steps
           "dpo": ("dpo/final", "dpo/policies"),
           "compare": ("compare", "comparison.json")}
SOURCES = {"data": ("rm.source",)}


def stages(config: TrainConfig) -> tuple[str, ...]:
    """The stages this config runs: every one, dpo only with rlhf.dpo."""
    return tuple(s for s in STAGES if s != "dpo" or config.rlhf.dpo)


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
    from llm_pg.pipelines.rlhf_choose import run_choice
    from llm_pg.training.rl import train

    if config.rlhf.choose:
        return run_choice(config, out, resume)
    result = train(rl_config(config, out), resume=resume, policy_steps=frontier_steps(config))
    return None if result.get("interrupted") else rl_summary(config, out, result)


def _stage_dpo(config, out, resume):
    from llm_pg.training.dpo import train_dpo

    return {"model": str(train_dpo(dpo_config(config, out), policy_steps=frontier_steps(config)))}


def _stage_compare(config, out, resume):
    from llm_pg.pipelines.rlhf_evaluate import run_comparison

    return run_comparison(config, rl_config(config, out), out)


RUNNERS = {"data": _stage_data, "sft": _stage_sft, "rm_proxy": _stage_rm("proxy"), "rm_gold": _stage_rm("gold"),
           "rl": _stage_rl, "dpo": _stage_dpo, "compare": _stage_compare}


def run_stage(name: str, config: TrainConfig, out: Path, resume: bool) -> dict | None:
    """One stage unless its DONE marker is there; its summary (None when it was interrupted: no marker)."""
    folder = out / name
    if (folder / DONE).is_file():  # its settings and content were checked by check_finished_stages
        logger.info("rlhf: stage %s is done (%s); skipped", name, folder / DONE)
        return read_done(out, name)["summary"]
    if folder.exists() and not (resume and name in RESUMABLE and not other_layout(name, config, folder)):
        logger.warning("rlhf: stage %s was interrupted; redoing it from the start%s", name,
                       " (--resume continues it)" if name in RESUMABLE else "")
        remove_stage(out, name)
    folder.mkdir(parents=True, exist_ok=True)
    logger.info("rlhf: stage %s", name)
    summary = RUNNERS[name](config, out, resume)
    if summary is not None:
        write_done(name, config, out, summary)
    return summary


def other_layout(name: str, config: TrainConfig, folder: Path) -> bool:
    """An interrupted rl/ that --resume cannot continue: one RL run (its run marker) when rlhf.choose lists
    candidates now, or candidates when it lists none."""
    from llm_pg.runs.marker import MARKER

    return name == "rl" and (folder / (MARKER if config.rlhf.choose else "candidates")).exists()


def write_done(name: str, config: TrainConfig, out: Path, summary: dict) -> None:
    """DONE, written last (atomically): the summary, the settings, and the digests of what the stage read and
    wrote (see the module docstring)."""
    from llm_pg.runs.digests import combined, manifest

    active = stages(config)
    earlier = {s: read_done(out, s).get("outputs") for s in active[:active.index(name)]}
    marker = {"summary": summary, "inputs": stage_inputs(name, config), "sources": source_digests(name, config),
              "upstream": {s: combined(files) for s, files in earlier.items() if files is not None},
              "outputs": manifest(out, OUTPUTS[name])}
    tmp = out / name / f"{DONE}.tmp"
    tmp.write_text(json.dumps(marker, indent=1, default=_plain) + "\n")
    tmp.replace(out / name / DONE)


def source_digests(name: str, config: TrainConfig) -> dict:
    from llm_pg.runs.digests import source_digest

    flat = _flat(config)
    return {key: source_digest(flat[key]) for key in SOURCES.get(name, ())}


def read_done(out: Path, name: str) -> dict:
    """A stage's DONE marker, or a one-line error when it is damaged."""
    path = out / name / DONE
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        marker, why = None, f"not valid JSON: {type(e).__name__}"
    else:
        why = "it lacks the summary or the settings"
    if not (isinstance(marker, dict) and isinstance(marker.get("inputs"), dict) and "summary" in marker):
        raise ConfigError(f"rlhf: {path} is damaged ({why}); {_redo(out, name)}")
    return marker


def _redo(out: Path, name: str) -> str:
    return (f"delete {out / name} to redo stage {name} and every stage after it, or rerun with --overwrite to redo "
            "the whole pipeline")


def remove_stage(out: Path, name: str) -> None:
    """A stage's folder, and for compare the files it writes beside the stages (the report is the comparison's)."""
    shutil.rmtree(out / name)
    if name == "compare":
        for path in (out / "comparison.json", out / "report.md", out / "plots"):
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def check_finished_stages(config: TrainConfig, out: Path, resume: bool = False) -> None:
    """Before anything is written: every finished stage (up to the first unfinished one) must have been done with
    the settings and data it depends on now, from the outputs of the stages before it as they are now, and its own
    output must be intact; or the pipeline would mix outputs of two configs. With resume, the first unfinished
    stage's checkpointed run must be able to continue with the config of now."""
    done = {}
    for name in stages(config):
        if not (out / name / DONE).is_file():
            if resume and name in RESUMABLE and (out / name).exists():
                _check_resumable(name, config, out)
            return
        done[name] = read_done(out, name)
        _check_unchanged(name, out / name, done[name]["inputs"], stage_inputs(name, config))
        _check_content(name, config, out, done)


def _check_unchanged(name: str, folder: Path, saved: dict, now: dict) -> None:
    saved, now = _comparable(saved), _comparable(now)
    changed = [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
               if saved.get(k) != now.get(k)]
    if changed:
        raise ConfigError(f"rlhf: stage {name} in {folder} was done with other settings ({'; '.join(changed)[:300]}); "
                          f"delete {folder} to redo it and the stages after it, or restore those settings")


def _comparable(inputs: dict) -> dict:
    """A stage's dotted settings as two are compared: a DONE of an earlier version (old key names, ppo.epochs: 2
    beside grpo.num_iterations) read as it ran, null epochs as the algorithm's (runs/resume.py comparable)."""
    from llm_pg.config.resume import flatten, unflatten
    from llm_pg.runs.resume import comparable

    return flatten(comparable(unflatten(inputs)))


def _check_content(name: str, config: TrainConfig, out: Path, done: dict) -> None:
    """The data the stage read, the earlier outputs it was made from, and its own output: as DONE recorded them."""
    from llm_pg.runs.digests import combined, manifest

    marker = done[name]
    if "outputs" not in marker:  # DONE written before digests existed: its settings alone were checked
        logger.warning("rlhf: %s predates content digests; the content of stage %s's inputs is not checked", name,
                       out / name / DONE)
        return
    for key, now in source_digests(name, config).items():
        if marker["sources"].get(key) != now:
            raise ConfigError(f"rlhf: the data of stage {name} changed since it was done ({key} {_flat(config)[key]}: "
                              f"sha256 {str(marker['sources'].get(key))[:12]} -> {str(now)[:12]}); restore that "
                              f"data, or {_redo(out, name)}")
    for earlier, digest in marker["upstream"].items():
        files = done.get(earlier, {}).get("outputs")
        if files is not None and combined(files) != digest:
            raise ConfigError(f"rlhf: stage {name} in {out / name} was made from another output of stage {earlier} "
                              f"(redone or replaced since); {_redo(out, name)}")
    files = manifest(out, OUTPUTS[name])
    if files != marker["outputs"]:
        bad = sorted(k for k in set(files) | set(marker["outputs"]) if files.get(k) != marker["outputs"].get(k))
        what = "is missing" if bad[0] not in files else ("was added" if bad[0] not in marker["outputs"] else
                                                         "changed (its sha256 differs from DONE's)")
        raise ConfigError(f"rlhf: the output of stage {name} is damaged or was changed since the stage was done "
                          f"({out / bad[0]} {what}{f', and {len(bad) - 1} more file(s)' if len(bad) > 1 else ''}); "
                          f"{_redo(out, name)}")


def stage_runs(name: str, config: TrainConfig, out: Path) -> list[tuple[str, Path, TrainConfig]]:
    """(kind, folder, config) of a resumable stage's own runs: `rm` for the reward models, `train` for RL (one per
    interrupted candidate with rlhf.choose)."""
    from llm_pg.pipelines.rlhf_choose import resumable_runs

    if name.startswith("rm_"):
        return [("rm", out / name, rm_config(config, out, name.split("_")[1]))]
    if config.rlhf.choose:
        return [("train", folder, run_config) for folder, run_config in resumable_runs(config, out)]
    return [("train", out / name, rl_config(config, out))]


def _check_resumable(name: str, config: TrainConfig, out: Path) -> None:
    """--resume of an interrupted stage: its checkpointed run must be able to continue with the config of now
    (what `llm-pg train|rm --resume` refuses, refused before the pipeline writes anything)."""
    from llm_pg.config.resume import ResumeConfigError
    from llm_pg.runs.resume import check_resume, checkpoint_step, input_digests

    for kind, folder, stage_config in stage_runs(name, config, out):
        step = checkpoint_step(folder)
        if step is None:
            continue
        try:
            check_resume(stage_config, folder, step, kind, input_digests(stage_config, kind))
        except ResumeConfigError as e:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in e.changes.items()) or str(e)
            raise ConfigError(f"rlhf --resume: stage {name} in {folder} ran with other settings ({listed[:300]}); "
                              f"restore them to continue it, or run without --resume to redo stage {name} and the "
                              "stages after it") from None


def _plain(value):
    return value.item() if isinstance(value, np.generic) else str(value)


def check_config(config: TrainConfig) -> None:
    """One-line ConfigErrors for a config the pipeline cannot run, before anything is written."""
    from llm_pg.checks.reward_model import check_rm_config  # not the trainer: a refused pipeline loads no model code
    from llm_pg.pipelines.rlhf_choose import check_candidates

    check_rm_config(config.rm)
    check_pipeline(config)
    check_candidates(config)


def run_pipeline(config: TrainConfig, resume: bool = False, overwrite: bool = False) -> dict:
    """Every stage in order (see the module docstring); {stage: summary}, stopping at an interrupted stage.
    rlhf.output_dir is held as `llm-pg rlhf` holds it (llm_pg/runs/folder.py): locked, and refused when it holds
    another command's run; `overwrite` replaces everything in it (llm_pg/runs/overwrite.py)."""
    from llm_pg.runs.folder import open_run

    if resume and overwrite:
        raise ConfigError("rlhf: resume continues the pipeline's interrupted stage and overwrite replaces the whole "
                          "pipeline; give one of them")
    check_config(checked(config, "llm_pg.run_pipeline"))
    with open_run(config, "rlhf", resume=not overwrite, overwrite=overwrite) as out:
        return _run_stages(config, out, resume)


def _run_stages(config: TrainConfig, out: Path, resume: bool) -> dict:
    from llm_pg.runs.tracking import save_config

    check_finished_stages(config, out, resume)
    save_config(config, out / "config.yaml")
    results = {}
    for name in stages(config):
        if not (out / name / DONE).is_file():  # this stage runs: what later stages made from its old output is stale
            for later in STAGES[STAGES.index(name) + 1:]:  # a dpo/ left from when rlhf.dpo was on too
                if (out / later).exists():
                    logger.warning("rlhf: stage %s runs again, so %s is deleted", name, out / later)
                    remove_stage(out, later)
        results[name] = run_stage(name, config, out, resume)
        if results[name] is None:
            logger.warning("rlhf: stage %s stopped before its end; run the same command with --resume", name)
            break
    return results
