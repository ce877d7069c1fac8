"""`llm-pg eval`: evaluate a model on a split, or compare two evaluations with paired-bootstrap intervals.

    llm-pg eval --model runs/demo/final --config configs/demo.yaml --split test --output eval.json
    llm-pg eval --compare runs/demo/eval_before.json runs/demo/eval_after.json --output compare.json
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

from llm_pg.errors import LlmPgError
from llm_pg.evaluation.bootstrap import (
    Difference,
    compare_generations,
    samples_per_prompt,
    significant,
    too_few,
)
from llm_pg.evaluation.generations import generations_path, load_generations
from llm_pg.evaluation.metrics import LOWER_IS_BETTER, Generation
from llm_pg.runs.folder import lock_output_file

logger = logging.getLogger(__name__)


def _reference_model(config, policy_path: str, policy):
    """Perplexity model: evaluation.reference_model, where 'start' is the config's own model.name_or_path
    (the policy training started from), so a trained policy is scored by the model it came from; for a LoRA
    adapter on that model, the policy with its adapters off."""
    from llm_pg.models.lora import is_lora
    from llm_pg.models.policy import load_policy
    from llm_pg.rollout.reference import Reference

    choice = config.evaluation.reference_model
    if choice == "none":
        return None
    if choice == "start" and is_lora(policy):  # the adapter was loaded onto model.name_or_path
        return Reference(policy, adapters_off=True)
    model_cfg = config.model if choice == "start" else dataclasses.replace(config.model, name_or_path=choice,
                                                                             gguf_file=None)
    if model_cfg.name_or_path == policy_path:
        return policy
    return load_policy(model_cfg).eval().requires_grad_(False)


def written_by_eval(output: Path) -> bool:
    """Whether `output` (the scores file) was written by `llm-pg eval` (not, say, a training run's eval_after.json)."""
    try:
        values = json.loads(Path(output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(values, dict) and isinstance(values.get("settings"), dict) and \
        values["settings"].get("command") == "eval"


def evaluate(model_path: str, config_path: str, split: str | None, output: str, overrides: list[str],
             overwrite: bool = False) -> dict:
    """Scores and generations to <output> and its .jsonl: never over another command's files, over an earlier
    evaluation only with `overwrite` (llm_pg/runs/folder.py lock_output_file)."""
    from llm_pg.config.schema import load_config

    config = load_config(config_path, overrides)
    # before the model loads: a bad --output fails now
    with lock_output_file(output, "eval", "eval --output", (generations_path(output),), written_by_eval, overwrite):
        return _evaluate(model_path, config, split, output)


def _evaluate(model_path: str, config, split: str | None, output: str) -> dict:
    from llm_pg.data.prompts import load_examples
    from llm_pg.evaluation.heldout import evaluate_split  # the generation code: not for a refused --output
    from llm_pg.models.lora import load_saved_policy
    from llm_pg.models.policy import load_tokenizer
    from llm_pg.rewards import RewardMix
    from llm_pg.runs.tracking import set_threads

    set_threads(config.training.num_threads, 1)
    same = model_path == config.model.name_or_path
    model_cfg = config.model if same else dataclasses.replace(config.model, name_or_path=model_path, gguf_file=None)
    tokenizer = load_tokenizer(model_cfg)
    model = load_saved_policy(config.model, model_path)  # a LoRA adapter folder goes onto model.name_or_path
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    examples = load_examples(config.data, split or config.data.test_split, tokenizer, config.data.max_eval_samples)
    # the raw reward (no normalization, clipping or per-token credit), with reward.on_error / error_penalty kept
    reward_mix = RewardMix.from_config(dataclasses.replace(config.reward, normalize=False, clip=None,
                                                               per_token=False))
    reference = _reference_model(config, model_path, model)
    from llm_pg.evaluation.meaning import load_meaning_metrics

    scores, _ = evaluate_split(config, model, tokenizer, examples, reward_mix, reference, output,
                               desc=f"eval {split or config.data.test_split}",
                               meaning=load_meaning_metrics(config.evaluation.meaning_encoder), command="eval")
    print(json.dumps(scores, indent=1))  # stdout: the scores as JSON, for scripts
    logger.info("wrote %s and %s", output, generations_path(output))
    return scores


def format_differences(differences: list[Difference]) -> str:
    lines = [f"{'metric':<22} {'A':>9} {'B':>9} {'B - A':>9}  {'95% CI':>21} {'p':>6}"]
    for d in differences:
        better = (d.difference < 0) if d.metric in LOWER_IS_BETTER else (d.difference > 0)
        directionless = d.metric.startswith("length_")  # longer is neither better nor worse
        mark = ("better" if better else "worse") if significant(d) and not directionless else ""
        lines.append(f"{d.metric:<22} {d.a:>9.4f} {d.b:>9.4f} {d.difference:>+9.4f}  "
                     f"[{d.ci_low:>+8.4f}, {d.ci_high:>+8.4f}] {d.p_value:>6.3f} {mark}")
    return "\n".join(lines)


def _keys(generations: list[Generation]) -> list[tuple]:
    """(id, prompt, references, sample, n-th such generation): what pairs two evaluations, whatever their order;
    the same prompt text of another record (another id or reference) is another prompt."""
    seen: dict[tuple, int] = {}
    keys = []
    for g in generations:
        key = (g.id, g.prompt, tuple(g.references), g.sample)
        seen[key] = seen.get(key, -1) + 1
        keys.append((*key, seen[key]))
    return keys


def paired(a: list[Generation], b: list[Generation], path_a, path_b) -> tuple[list[Generation], list[Generation]]:
    """A, and B reordered to A's prompts; refused when the two do not hold the same prompts and samples."""
    keys_a, keys_b = _keys(a), _keys(b)
    by_key = dict(zip(keys_b, b))
    only_a, only_b = [k for k in keys_a if k not in by_key], set(keys_b) - set(keys_a)
    if only_a or only_b:
        example = (only_a or sorted(only_b))[0]
        raise LlmPgError(f"eval --compare: {path_a} and {path_b} are evaluations of different prompts ({len(only_a)} "
                         f"of A's {len(a)} and {len(only_b)} of B's {len(b)} generations have no partner, e.g. id "
                         f"{example[0]!r}: {' '.join(example[1].split())[:50]!r}); evaluate both on the same prompts "
                         "(the same data, split and evaluation.num_samples)")
    return a, [by_key[k] for k in keys_a]


def written_by_compare(output: Path) -> bool:
    """Whether `output` holds an earlier `llm-pg eval --compare` (not an evaluation's scores or a run's file)."""
    try:
        values = json.loads(Path(output).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(values, dict) and {"a", "b", "differences"} <= values.keys()


def compare(path_a: str, path_b: str, output: str | None = None, resamples: int = 1000,
            overwrite: bool = False) -> list[Difference]:
    """B - A for every metric of two evaluations of the same prompts, paired by record and sample in any order.
    `output` (the comparison JSON) never replaces an input or another command's file, and an earlier comparison
    only with `overwrite`."""
    if not output:
        return _compare(path_a, path_b, None, resamples)
    inputs = {Path(p).resolve().with_suffix("") for p in (path_a, path_b)}  # X.json and X.jsonl are one evaluation
    if Path(output).resolve().with_suffix("") in inputs:
        raise LlmPgError(f"eval --output: {output} would replace an input of --compare; choose another --output")
    if written_by_eval(Path(output)):
        raise LlmPgError(f"eval --output: {output} holds an `llm-pg eval` evaluation, not an earlier comparison; "
                         "choose another --output")
    with lock_output_file(output, "eval", "eval --output", (), written_by_compare, overwrite):  # before the bootstrap
        return _compare(path_a, path_b, output, resamples)


def _compare(path_a: str, path_b: str, output: str | None, resamples: int) -> list[Difference]:
    a, b = paired(load_generations(path_a), load_generations(path_b), path_a, path_b)
    differences = compare_generations(a, b, resamples)  # K samples of a prompt are resampled together
    prompts = len(a) // samples_per_prompt(a)
    warning = too_few(prompts)
    if warning:
        logger.warning("eval --compare: %s", warning)
    print(f"A = {path_a}\nB = {path_b}\n{len(a)} paired samples of {prompts} prompts, {resamples} bootstrap "
          f"resamples (95% CI); p: paired randomization test over prompts\n")
    print(format_differences(differences))
    if output:  # whole or not at all: a torn file would be neither a comparison nor replaceable
        tmp = Path(f"{output}.tmp")
        tmp.write_text(json.dumps({"a": str(path_a), "b": str(path_b), "num_samples": len(a), "prompts": prompts,
                                   "resamples": resamples, "warning": warning,
                                   "differences": [d.to_dict() for d in differences]}, indent=1))
        os.replace(tmp, output)
    return differences
