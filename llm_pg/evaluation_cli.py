"""`llm-pg eval`: evaluate a model on a split, or compare two evaluations with paired-bootstrap intervals.

    llm-pg eval --model runs/demo/final --config configs/demo.yaml --split test --output eval.json
    llm-pg eval --compare runs/demo/eval_before.json runs/demo/eval_after.json --output compare.json
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from llm_pg.bootstrap import Difference, paired_bootstrap, samples_per_prompt
from llm_pg.errors import LlmPgError
from llm_pg.eval_metrics import LOWER_IS_BETTER, corpus_statistics
from llm_pg.evaluation import evaluate_split, generations_path, load_generations

logger = logging.getLogger(__name__)


def _reference_model(config, policy_path: str, policy):
    """Perplexity model: evaluation.reference_model, where 'start' is the config's own model.name_or_path
    (the policy training started from), so a trained policy is scored by the model it came from; for a LoRA
    adapter on that model, the policy with its adapters off."""
    from llm_pg.lora import is_lora
    from llm_pg.policy import load_policy
    from llm_pg.reference import Reference

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


def evaluate(model_path: str, config_path: str, split: str | None, output: str, overrides: list[str]) -> dict:
    from llm_pg.config import load_config
    from llm_pg.data import load_examples
    from llm_pg.lora import load_saved_policy
    from llm_pg.policy import load_tokenizer
    from llm_pg.rewards import RewardModel
    from llm_pg.tracking import set_threads

    config = load_config(config_path, overrides)
    set_threads(config.training.num_threads, 1)
    same = model_path == config.model.name_or_path
    model_cfg = config.model if same else dataclasses.replace(config.model, name_or_path=model_path, gguf_file=None)
    tokenizer = load_tokenizer(model_cfg)
    model = load_saved_policy(config.model, model_path)  # a LoRA adapter folder goes onto model.name_or_path
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    examples = load_examples(config.data, split or config.data.test_split, tokenizer, config.data.max_eval_samples)
    # the raw reward (no normalization, clipping or per-token credit), with reward.on_error / error_penalty kept
    reward_model = RewardModel.from_config(dataclasses.replace(config.reward, normalize=False, clip=None,
                                                               per_token=False))
    reference = _reference_model(config, model_path, model)
    scores, _ = evaluate_split(config, model, tokenizer, examples, reward_model, reference, output,
                               desc=f"eval {split or config.data.test_split}")
    print(json.dumps(scores, indent=1))  # stdout: the scores as JSON, for scripts
    logger.info("wrote %s and %s", output, generations_path(output))
    return scores


def format_differences(differences: list[Difference]) -> str:
    lines = [f"{'metric':<22} {'A':>9} {'B':>9} {'B - A':>9}  {'95% CI':>21} {'p':>6}"]
    for d in differences:
        better = (d.difference < 0) if d.metric in LOWER_IS_BETTER else (d.difference > 0)
        directionless = d.metric.startswith("length_")  # longer is neither better nor worse
        mark = ("better" if better else "worse") if d.p_value < 0.05 and not directionless else ""
        lines.append(f"{d.metric:<22} {d.a:>9.4f} {d.b:>9.4f} {d.difference:>+9.4f}  "
                     f"[{d.ci_low:>+8.4f}, {d.ci_high:>+8.4f}] {d.p_value:>6.3f} {mark}")
    return "\n".join(lines)


def compare(path_a: str, path_b: str, output: str | None = None, resamples: int = 1000) -> list[Difference]:
    """B - A for every metric of two evaluations of the same prompts (the same ids, in the same order)."""
    a, b = load_generations(path_a), load_generations(path_b)
    keys_a, keys_b = [(g.id, g.sample) for g in a], [(g.id, g.sample) for g in b]
    if keys_a != keys_b:
        raise LlmPgError(f"eval --compare: {path_a} and {path_b} do not hold the same prompts in the same order "
                         f"({len(a)} and {len(b)} generations); evaluate both on the same split and settings")
    differences = paired_bootstrap(corpus_statistics(a), corpus_statistics(b), resamples,
                                   group_size=samples_per_prompt(a))  # K samples of a prompt are resampled together
    print(f"A = {path_a}\nB = {path_b}\n{len(a)} paired samples, {resamples} bootstrap resamples\n")
    print(format_differences(differences))
    if output:
        Path(output).write_text(json.dumps({"a": str(path_a), "b": str(path_b), "num_samples": len(a),
                                            "resamples": resamples,
                                            "differences": [d.to_dict() for d in differences]}, indent=1))
    return differences
