"""Held-out evaluation: generate on a split (batched; greedy or n samples), score, write JSON + JSONL.

`evaluate_split` is what `llm-pg eval` and the trainer call. It writes two files:
  <name>.json   {"scores": {metric: value, ..., "bleu_signature", "chrf_signature", "num_samples"}, "settings": ...}
  <name>.jsonl  one line per completion: id, sample, prompt, references, completion, tokens, metrics
and `load_generations` reads the JSONL back (for `llm-pg eval --compare` and the report).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from llm_pg.config import GenerationConfig, TrainConfig
from llm_pg.data import Example
from llm_pg.errors import LlmPgError
from llm_pg.eval_metrics import Generation, corpus_scores, corpus_statistics, text_metrics  # noqa: F401 (API)
from llm_pg.reference import as_reference
from llm_pg.rollout import sample

logger = logging.getLogger(__name__)


class EvalFileError(LlmPgError):
    """An evaluation file that is missing or does not hold generations."""


@torch.no_grad()
def generate(model, tokenizer, examples: list[Example], generation: GenerationConfig, batch_size: int,
             num_samples: int = 1, do_sample: bool = False, max_new_tokens: int | None = None,
             reference=None, desc: str = "eval") -> list[Generation]:
    """num_samples completions per example (greedy when do_sample is false), in the examples' order.

    Prompts are batched by length (less padding). With a reference (a model, or a llm_pg.reference.Reference such
    as a LoRA policy with its adapters off), each completion's summed token log-probability under it (temperature 1)
    is kept for perplexity.
    """
    K = num_samples if do_sample else 1
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt_ids))
    rows: dict[int, list[Generation]] = {}
    was_training = model.training
    model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
        chunk = order[start:start + batch_size]
        rollout = sample(model, tokenizer, [examples[i].prompt_ids for i in chunk], generation,
                         num_samples=K, greedy=not do_sample, max_new_tokens=max_new_tokens)
        ref_logprob = [None] * len(rollout.completions)
        if reference is not None:
            logprobs = as_reference(reference).logprobs(rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids,
                                                        rollout.completion_mask, group_size=K)  # (N, T)
            ref_logprob = logprobs.sum(1).tolist()  # (N,) masked positions are 0
        lengths = rollout.lengths.tolist()
        for j, text in enumerate(rollout.completions):
            e = examples[chunk[j // K]]
            rows.setdefault(chunk[j // K], []).append(
                Generation(e.id, j % K, e.prompt, list(e.references), text, tokens=int(lengths[j]),
                           ref_logprob=ref_logprob[j]))
    model.train(was_training)
    return [g for i in range(len(examples)) for g in rows[i]]


def raw_reward_model(reward_model):
    """The same components (nothing reloaded) with normalize, clip and per-token credit off, so held-out scores
    are the raw reward R_raw = sum_c w_c * v_c: the training reward is shaped by running statistics that drift
    during training, which would make evaluations at different steps incomparable."""
    return dataclasses.replace(reward_model, normalize=False, clip=None, per_token=False)


def score_generations(generations: list[Generation], reward_model=None, meaning=None) -> None:
    """Fill each generation's per-sample metrics: text metrics, the configured reward, the meaning metrics
    (llm_pg/meaning.py, when an encoder is given and the samples have references) and perplexity."""
    rewards, components = (None, {})
    with_refs = [g for g in generations if g.references]
    if meaning is not None and with_refs:
        for name, values in meaning([g.completion for g in with_refs], [g.references for g in with_refs]).items():
            for g, v in zip(with_refs, values):
                g.metrics[name] = v
    if reward_model is not None:
        rewards, components = reward_model([g.prompt for g in generations], [g.completion for g in generations],
                                           [g.references for g in generations])
    for i, g in enumerate(generations):
        g.metrics.update(text_metrics(g.completion, g.references))
        if rewards is not None:
            g.metrics["reward"] = float(rewards[i])
            # every component, even a single one: evaluation.metric may name any reward_<name>
            g.metrics.update({f"reward_{name}": float(v[i]) for name, v in components.items()})
        if g.ref_logprob is not None:
            g.metrics["perplexity"] = math.exp(-g.ref_logprob / max(g.tokens, 1))


def write_generations(generations: list[Generation], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for g in generations:
            f.write(json.dumps({"id": g.id, "sample": g.sample, "prompt": g.prompt, "references": g.references,
                                "completion": g.completion, "tokens": g.tokens, "ref_logprob": g.ref_logprob,
                                "metrics": g.metrics}, ensure_ascii=False) + "\n")


def generations_path(output: str | Path) -> Path:
    """eval.json -> eval.jsonl (the generations beside the scores)."""
    output = Path(output)
    return output.with_suffix(".jsonl") if output.suffix == ".json" else output.with_name(output.name + ".jsonl")


def load_generations(path: str | Path) -> list[Generation]:
    """Generations from an eval JSONL file, or from the JSON scores file beside it."""
    path = Path(path)
    if path.suffix == ".json":
        path = generations_path(path)
    if not path.is_file():
        raise EvalFileError(f"no generations file {path}: give the .json or .jsonl written by `llm-pg eval`")
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [Generation(str(r["id"]), int(r["sample"]), r["prompt"], list(r["references"]), r["completion"],
                           dict(r["metrics"]), int(r.get("tokens", 0)), r.get("ref_logprob")) for r in rows]
    except (ValueError, KeyError, TypeError) as e:
        raise EvalFileError(f"{path}: not a generations file of `llm-pg eval` ({type(e).__name__}: {e})") from None


def summarize(generations: list[Generation]) -> dict:
    """Corpus scores plus the signatures and sample count (the 'scores' of an eval file)."""
    stats = corpus_statistics(generations)
    return {**stats.scores(), "num_samples": len(generations), "bleu_signature": stats.signatures["bleu"],
            "chrf_signature": stats.signatures["chrf"]}


def evaluate_split(config: TrainConfig, model, tokenizer, examples: list[Example], reward_model=None,
                   reference=None, output: str | Path | None = None, desc: str = "eval", meaning=None,
                   ) -> tuple[dict, list[Generation]]:
    """Generate with config.evaluation's settings, score, and (with output) write <output> and its .jsonl.

    meaning: a llm_pg.meaning.MeaningMetrics (embedding_similarity, bertscore_f1) or None."""
    e = config.evaluation
    # sampled evaluation may cut the tail (evaluation.top_k/top_p); training never does (config_checks)
    generation = dataclasses.replace(config.generation, top_k=e.top_k, top_p=e.top_p)
    generations = generate(model, tokenizer, examples, generation, e.batch_size, e.num_samples,
                           e.do_sample, e.max_new_tokens, reference, desc)
    score_generations(generations, reward_model, meaning)
    scores = summarize(generations)
    if output is not None:
        output = Path(output)
        write_generations(generations, generations_path(output))
        settings = {"num_prompts": len(examples), "num_samples_per_prompt": e.num_samples if e.do_sample else 1,
                    "do_sample": e.do_sample, "max_new_tokens": e.max_new_tokens or config.generation.max_new_tokens,
                    "generations": generations_path(output).name}
        output.write_text(json.dumps({"scores": scores, "settings": settings}, indent=1))
    return scores, generations


def evaluate_examples(model, tokenizer, examples: list[Example], generation: GenerationConfig, batch_size: int,
                      max_new_tokens: int | None = None, output: str | Path | None = None,
                      desc: str = "eval") -> dict:
    """Greedy text metrics of a model on examples (no reward, no perplexity): the small public entry point."""
    config = TrainConfig(generation=generation)
    config.evaluation.batch_size, config.evaluation.max_new_tokens = batch_size, max_new_tokens
    return evaluate_split(config, model, tokenizer, examples, output=output, desc=desc)[0]
