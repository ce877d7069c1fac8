"""The rl stage with `rlhf.choose`: candidate RL settings, each trained from the SFT policy, chosen on the validation
prompts by the gold gain over SFT at matched length (llm_pg/pipelines/rlhf.py runs it; docs/reward_model.md).

    rl/candidates/<name>/            `llm-pg train` run of one candidate (the config with its overrides); its DONE
                                     (settings + summary) is written when the run has finished
    rl/validation/samples_<p>.jsonl  K = rlhf.compare_samples completions of every validation prompt (the data
                                     stage's validation split, never the test prompts) of the SFT policy and of each
                                     candidate, scored by both reward models (rlhf_evaluate.sample_policy)
    rl/choice.json                   every candidate's validation comparison with SFT (rlhf_statistics.compare, the
                                     statistics the compare stage reports on the test prompts) and the chosen one
    rl/final, rl/metrics.jsonl       copies of the chosen candidate's: the RL policy of the later stages (and
    rl/policies                      with rlhf.frontier_steps, the policies kept at those steps)

The score of a candidate is the regression's c (length_control.regression_gain: gold s = a + b L + c 1[candidate]
over the SFT and the candidate completions), the gain that is not explained by a change of length; when every
completion has the same length no slope can be fitted and c is the raw gain (at one length they are the same thing).
The highest score wins; ties go to the first candidate listed. Choosing on the validation prompts leaves the test
prompts of the compare stage untouched by the choice, so its numbers for the chosen policy are not selected on.

Resume (--resume): finished candidates (their DONE) are kept when their settings are unchanged (refused otherwise);
an interrupted one continues from its last checkpoint; the validation sampling is always redone (it is cheap and
deterministic). Without --resume the rl stage is redone whole, as any interrupted stage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from pathlib import Path

from llm_pg.errors import ConfigError

logger = logging.getLogger(__name__)
NAME = re.compile(r"[A-Za-z0-9_-]+")  # a candidate's name is a folder name (and no dot: config keys split on dots)
DONE = "DONE"
STATISTIC = "gold gain over SFT at matched length (regression c; the raw gain when all lengths are equal)"


def rl_only(key: str) -> bool:
    """A key that only the rl stage reads (rlhf.INPUTS), so that candidates share data, SFT and reward models:
    rlhf.length_penalty, and rl's settings that no other stage reads, except the reward the pipeline sets."""
    from llm_pg.pipelines.rlhf_configs import INPUTS, NOT_INPUTS

    others = tuple(prefix for stage, keys in INPUTS.items() if stage != "rl" for prefix in keys)
    return key == "rlhf.length_penalty" or (key.startswith(INPUTS["rl"]) and not key.startswith(others)
                                            and key not in NOT_INPUTS and not key.startswith("reward.components"))


def candidate_config(config, name: str):
    """The pipeline's config with candidate `name`'s overrides (and no rlhf.choose: a candidate is one RL run), or
    a one-line ConfigError naming the candidate and the key."""
    from llm_pg.checks import check_pipeline
    from llm_pg.config.aliases import canonical_key
    from llm_pg.config.schema import config_from_dict, merge_overrides

    where = f"rlhf.choose.{name}"
    if not NAME.fullmatch(name):
        raise ConfigError(f"{where}: a candidate's name is a folder name: letters, digits, '_' and '-' only")
    for text in config.rlhf.choose[name]:
        key = canonical_key(text.split("=", 1)[0].strip())
        if "=" not in text:
            raise ConfigError(f"{where}: '{text}' is not an override; write it as section.key=value (kl.coef=0.1)")
        if not rl_only(key):
            raise ConfigError(f"{where}: '{key}' cannot be chosen on validation; a candidate overrides only keys that "
                              "the rl stage alone reads (kl.*, algorithm.*, ppo.*, grpo.*, critic.*, "
                              "training.learning_rate, reward.normalize, rlhf.length_penalty, ...)")
    try:
        values = merge_overrides(config.to_dict(), list(config.rlhf.choose[name]))
        values["rlhf"]["choose"] = {}
        candidate = config_from_dict(values)
        check_pipeline(candidate)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    return candidate


def check_candidates(config) -> None:
    """Every candidate's config is one the pipeline can run: refused in one line before anything is written."""
    for name in config.rlhf.choose:
        candidate_config(config, name)


def candidate_folder(out: Path, name: str) -> Path:
    return out / "rl" / "candidates" / name


def candidate_rl_config(config, out: Path, name: str):
    """The train config of one candidate: rlhf_configs.rl_config of its config, in rl/candidates/<name>/."""
    from llm_pg.pipelines.rlhf_configs import rl_config

    rl = rl_config(candidate_config(config, name), out)
    return dataclasses.replace(rl, training=dataclasses.replace(rl.training,
                                                                output_dir=str(candidate_folder(out, name))))


def candidate_inputs(config, name: str) -> dict:
    """A candidate's rl settings as its DONE keeps them (JSON: tuples read back as lists)."""
    from llm_pg.pipelines.rlhf_configs import stage_inputs

    return json.loads(json.dumps(stage_inputs("rl", candidate_config(config, name)), default=str))


def resumable_runs(config, out: Path) -> list[tuple[Path, object]]:
    """(folder, train config) of every interrupted candidate that --resume continues; a finished candidate whose
    settings changed is refused in one line (it would be kept)."""
    runs = []
    for name in config.rlhf.choose:
        folder = candidate_folder(out, name)
        if (folder / DONE).is_file():
            saved = json.loads((folder / DONE).read_text())["inputs"]
            if saved != candidate_inputs(config, name):
                raise ConfigError(f"rlhf --resume: candidate {name} in {folder} was done with other settings; delete "
                                  f"{folder} to redo it, or run without --resume to redo stage rl")
        elif folder.exists():
            runs.append((folder, candidate_rl_config(config, out, name)))
    return runs


def train_candidates(config, out: Path, resume: bool) -> dict | None:
    """Every candidate's run, each from the SFT policy; {name: its summary}, None when one was interrupted."""
    from llm_pg.pipelines.rlhf_configs import frontier_steps, rl_summary
    from llm_pg.training.rl import train

    for stale in sorted((out / "rl" / "candidates").glob("*")):  # a candidate no longer listed
        if stale.is_dir() and stale.name not in config.rlhf.choose:
            shutil.rmtree(stale)
    summaries = {}
    for name in config.rlhf.choose:
        folder = candidate_folder(out, name)
        if not (folder / DONE).is_file():
            if folder.exists() and not resume:
                shutil.rmtree(folder)
            logger.info("rlhf: stage rl, candidate %s (%s)", name,
                        " ".join(config.rlhf.choose[name]) or "as configured")
            result = train(candidate_rl_config(config, out, name), resume=resume, policy_steps=frontier_steps(config))
            if result.get("interrupted"):
                return None
            summary = rl_summary(candidate_config(config, name), out, result)
            marker = {"inputs": candidate_inputs(config, name), "summary": summary}
            (folder / f"{DONE}.tmp").write_text(json.dumps(marker, indent=1, default=str) + "\n")
            (folder / f"{DONE}.tmp").replace(folder / DONE)  # written last, whole
        summaries[name] = json.loads((folder / DONE).read_text())["summary"]
    return summaries


def score(gold: dict) -> float:
    """A candidate's score from its gold comparison (rlhf_statistics.compare_scores): c at matched length."""
    matched = gold["matched_length"]["regression"]
    return gold["gain"] if matched is None else matched["value"]


def choose(sft, candidates: dict, resamples: int) -> dict:
    """The choice among candidates' PolicySamples on the validation prompts (pure): each one's comparison with SFT
    and the name of the highest score (max keeps the first of equal scores: ties go to the first listed)."""
    from llm_pg.pipelines.rlhf_statistics import compare

    results = {name: compare(sft, samples, resamples) for name, samples in candidates.items()}
    chosen = max(results, key=lambda name: score(results[name]["gold"]))
    return {"chosen": chosen, "statistic": STATISTIC, "prompts": int(sft.gold.shape[0]),
            "samples_per_prompt": int(sft.gold.shape[1]),
            "candidates": {name: {"score": score(r["gold"]), "validation": r} for name, r in results.items()}}


def validation_choice(config, out: Path) -> dict:
    """Sample the SFT policy and every candidate on the validation prompts, score, choose (see the docstring)."""
    from llm_pg.data.prompts import load_examples
    from llm_pg.models.policy import load_policy
    from llm_pg.pipelines.rlhf_configs import rl_config
    from llm_pg.pipelines.rlhf_evaluate import evaluation_setup, sample_policy
    from llm_pg.rollout.reference import Reference

    rl = rl_config(config, out)
    tokenizer, reward, sft_model = evaluation_setup(config, rl)
    examples = load_examples(rl.data, rl.data.validation_split, tokenizer)  # every validation prompt, never test
    folder = out / "rl" / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    sft = sample_policy(config, rl, "sft", sft_model, tokenizer, examples, reward, None, folder)
    candidates = {}
    for name in config.rlhf.choose:  # one candidate in memory at a time
        model = load_policy(dataclasses.replace(rl.model, name_or_path=str(candidate_folder(out, name) / "final")))
        candidates[name] = sample_policy(config, rl, name, model, tokenizer, examples, reward, Reference(sft_model),
                                         folder)
        del model
    return choose(sft, candidates, config.evaluation.bootstrap_resamples)


def run_choice(config, out: Path, resume: bool) -> dict | None:
    """The rl stage with rlhf.choose: train the candidates, choose on validation, copy the chosen one's policy to
    rl/final; its summary (None when a candidate's run was interrupted)."""
    from llm_pg.pipelines.rlhf_evaluate import CHOICE

    summaries = train_candidates(config, out, resume)
    if summaries is None:
        return None
    choice = validation_choice(config, out)
    for name, record in choice["candidates"].items():
        record.update(overrides=list(config.rlhf.choose[name]), **summaries[name])
    chosen = candidate_folder(out, choice["chosen"])
    logger.info("rlhf: stage rl chose candidate %s (%s %.4f on the validation prompts)", choice["chosen"], STATISTIC,
                choice["candidates"][choice["chosen"]]["score"])
    shutil.rmtree(out / "rl" / "final", ignore_errors=True)
    shutil.copytree(chosen / "final", out / "rl" / "final")
    shutil.copyfile(chosen / "metrics.jsonl", out / "rl" / "metrics.jsonl")  # the report's proxy-vs-gold curve
    shutil.rmtree(out / "rl" / "policies", ignore_errors=True)
    if (chosen / "policies").is_dir():  # rlhf.frontier_steps: the chosen run's policies are RL's frontier
        shutil.copytree(chosen / "policies", out / "rl" / "policies")
    (out / "rl" / CHOICE).write_text(json.dumps(choice, indent=1) + "\n")
    return {**summaries[choice["chosen"]], "chosen": choice["chosen"]}
