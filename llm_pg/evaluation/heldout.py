"""Held-out evaluation: generate on a split (batched; greedy or n samples), score, write JSON + JSONL.

Sampled (evaluation.do_sample, n = evaluation.num_samples) adds <metric>_mean@n, pass@k with
evaluation.success_threshold (Chen et al. 2021's unbiased estimator, `pass_at_k`) and, with
evaluation.with_greedy, greedy_<metric> of one greedy completion per prompt.

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

from llm_pg.config.schema import GenerationConfig, TrainConfig
from llm_pg.data.prompts import Example
from llm_pg.evaluation.generations import (  # noqa: F401 (handed on: the evaluation API)
    EvalFileError, generations_path, load_generations, write_generations)
from llm_pg.evaluation.metrics import LOWER_IS_BETTER, Generation, corpus_scores, corpus_statistics, text_metrics  # noqa: F401 (API)  # noqa: F401 (API)
from llm_pg.rewards import RewardMix, reward_inputs
from llm_pg.rewards.mix import in_reward
from llm_pg.rollout.reference import as_reference
from llm_pg.rollout.sampling import sample

logger = logging.getLogger(__name__)


@torch.no_grad()
def generate(model, tokenizer, examples: list[Example], generation: GenerationConfig, batch_size: int,
             num_samples: int = 1, do_sample: bool = False, max_new_tokens: int | None = None,
             reference=None, desc: str = "eval") -> list[Generation]:
    """num_samples completions per example (greedy when do_sample is false), in the examples' order.

    Prompts are batched by length (less padding). With a reference (a model, or a llm_pg.rollout.reference.Reference such
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
                           ref_logprob=ref_logprob[j], columns=e.columns))
    model.train(was_training)
    return [g for i in range(len(examples)) for g in rows[i]]


def raw_reward_mix(reward_mix):
    """The same components (nothing reloaded) with normalize, clip and per-token credit off, so held-out scores
    are the raw reward R_raw = sum_c w_c * v_c: the training reward is shaped by running statistics that drift
    during training, which would make evaluations at different steps incomparable."""
    return dataclasses.replace(reward_mix, normalize=False, clip=None, per_token=False)


def score_generations(generations: list[Generation], reward_mix=None, meaning=None) -> None:
    """Fill each generation's per-sample metrics: text metrics, the configured reward, the meaning metrics
    (llm_pg/evaluation/meaning.py, when an encoder is given and the samples have references) and perplexity."""
    rewards, components = (None, {})
    with_refs = [g for g in generations if g.references]
    if meaning is not None and with_refs:
        for name, values in meaning([g.completion for g in with_refs], [g.references for g in with_refs]).items():
            for g, v in zip(with_refs, values):
                g.metrics[name] = v
    if reward_mix is not None:  # with the records' other fields, as in training
        prompts, references, columns = reward_inputs(generations, 1)
        completions = [g.completion for g in generations]
        if isinstance(reward_mix, RewardMix):  # and the token counts, as training gives them (soft_overlong)
            batch = reward_mix.reward_batch(prompts, completions, references, columns, update=False,
                                       lengths=[g.tokens for g in generations])
            rewards, components = batch.rewards, batch.components
        else:
            rewards, components = reward_mix(prompts, completions, references, **columns)
    for i, g in enumerate(generations):
        g.metrics.update(text_metrics(g.completion, g.references))
        if rewards is not None:
            g.metrics["reward"] = float(rewards[i])
            # every component, even a single one: evaluation.metric may name any reward_<name>; a sample a TRL
            # function does not apply to (None) scores 0 there, as in R (docs/rewards.md)
            g.metrics.update({f"reward_{name}": in_reward(float(v[i])) for name, v in components.items()})
        if g.ref_logprob is not None:
            g.metrics["perplexity"] = math.exp(-g.ref_logprob / max(g.tokens, 1))


def summarize(generations: list[Generation]) -> dict:
    """Corpus scores plus the signatures and sample count (the 'scores' of an eval file)."""
    stats = corpus_statistics(generations)
    return {**stats.scores(), "num_samples": len(generations), "bleu_signature": stats.signatures["bleu"],
            "chrf_signature": stats.signatures["chrf"]}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples of which c succeed (Chen et al. 2021, "Evaluating Large Language
    Models Trained on Code", eq. 1):

        pass@k = 1 - C(n - c, k) / C(n, k)

    the probability that a set of k samples drawn without replacement from the n holds at least one success.
    Computed as 1 - prod_{i = n-c+1}^{n} (1 - k / i), their numerically stable form (no huge binomials).
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:  # every k-subset holds a success
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def k_ladder(n: int) -> list[int]:
    """The k reported for n samples per prompt: 1, 2, 4, ... below n, and n."""
    ladder, k = [], 1
    while k < n:
        ladder.append(k)
        k *= 2
    return ladder + [n]


def succeeds(value: float, threshold: float, metric: str) -> bool:
    """A sample reaches the success threshold: metric >= threshold, or <= for a metric where lower is better
    (perplexity, repeated_3gram_rate)."""
    return value <= threshold if metric in LOWER_IS_BETTER else value >= threshold


def sampled_scores(generations: list[Generation], metric: str = "reward",
                   threshold: float | None = None) -> dict[str, float]:
    """<metric>_mean@n (the mean over prompts of the mean of their n samples) and, with a success threshold,
    pass@k for k in k_ladder(n): the mean over prompts of pass_at_k(n, c, k), c = samples that succeed (`succeeds`).
    Empty when a sample carries no such metric (evaluate_split then says so)."""
    by_prompt: dict[tuple, list[float]] = {}
    for i, g in enumerate(generations):
        if metric not in g.metrics:
            return {}
        by_prompt.setdefault((g.id, g.prompt, i - g.sample), []).append(g.metrics[metric])  # one key per prompt
    groups = list(by_prompt.values())
    n = min(len(v) for v in groups)
    scores = {f"{metric}_mean@{n}": sum(sum(v) / len(v) for v in groups) / len(groups)}
    if threshold is not None:
        for k in k_ladder(n):
            scores[f"pass@{k}"] = sum(pass_at_k(len(v), sum(succeeds(x, threshold, metric) for x in v), k)
                                      for v in groups) / len(groups)
    return scores


_SAID: set[str] = set()  # periodic validation evaluates many times: a warning is said once per process


def _say_once(message: str) -> None:
    if message not in _SAID:
        _SAID.add(message)
        logger.warning(message)


def evaluate_split(config: TrainConfig, model, tokenizer, examples: list[Example], reward_mix=None,
                   reference=None, output: str | Path | None = None, desc: str = "eval", meaning=None,
                   command: str | None = None) -> tuple[dict, list[Generation]]:
    """Generate with config.evaluation's settings, score, and (with output) write <output> and its .jsonl.

    meaning: a llm_pg.evaluation.meaning.MeaningMetrics (embedding_similarity, bertscore_f1) or None. command: saved in the
    settings ("eval" from `llm-pg eval`, which replaces only files it wrote itself)."""
    e = config.evaluation
    # sampled evaluation may cut the tail (evaluation.top_k/top_p); training never does (config_checks)
    generation = dataclasses.replace(config.generation, top_k=e.top_k, top_p=e.top_p)
    generations = generate(model, tokenizer, examples, generation, e.batch_size, e.num_samples,
                           e.do_sample, e.max_new_tokens, reference, desc)
    score_generations(generations, reward_mix, meaning)
    scores = summarize(generations)
    if e.do_sample:  # mean@n and pass@k of the n samples per prompt, then the greedy decode beside them
        sampled = sampled_scores(generations, e.success_metric, e.success_threshold)
        if not sampled:
            _say_once(f"evaluation.success_metric: '{e.success_metric}' has no value on "
                      f"{sum(e.success_metric not in g.metrics for g in generations)} of the {len(generations)} "
                      "samples (a reference metric on samples without references, or a metric that is not scored), "
                      "so no mean@n" + (" and no pass@k" if e.success_threshold is not None else "")
                      + " is reported; choose a metric every sample has, e.g. reward")
        scores.update(sampled)
        if e.with_greedy:
            scores.update(greedy_scores(config, model, tokenizer, examples, reward_mix, desc))
    if output is not None:
        output = Path(output)
        write_generations(generations, generations_path(output))
        settings = {"num_prompts": len(examples), "num_samples_per_prompt": e.num_samples if e.do_sample else 1,
                    "do_sample": e.do_sample, "max_new_tokens": e.max_new_tokens or config.generation.max_new_tokens,
                    "generations": generations_path(output).name, **({"command": command} if command else {})}
        output.write_text(json.dumps({"scores": scores, "settings": settings}, indent=1))
    return scores, generations


def greedy_scores(config: TrainConfig, model, tokenizer, examples: list[Example], reward_mix=None,
                  desc: str = "eval") -> dict[str, float]:
    """The numeric scores of one greedy completion per prompt, named greedy_<metric> (greedy_success is the share of
    prompts whose greedy completion reaches evaluation.success_threshold)."""
    e = config.evaluation
    generations = generate(model, tokenizer, examples, config.generation, e.batch_size, 1, False, e.max_new_tokens,
                           None, f"{desc} greedy")
    score_generations(generations, reward_mix)
    scores = {k: v for k, v in summarize(generations).items() if isinstance(v, float)}
    if e.success_threshold is not None and all(e.success_metric in g.metrics for g in generations):
        scores["success"] = sum(succeeds(g.metrics[e.success_metric], e.success_threshold, e.success_metric)
                                for g in generations) / len(generations)
    return {f"greedy_{k}": v for k, v in scores.items()}


def evaluate_examples(model, tokenizer, examples: list[Example], generation: GenerationConfig, batch_size: int,
                      max_new_tokens: int | None = None, output: str | Path | None = None,
                      desc: str = "eval") -> dict:
    """Greedy text metrics of a model on examples (no reward, no perplexity): the small public entry point."""
    config = TrainConfig(generation=generation)
    config.evaluation.batch_size, config.evaluation.max_new_tokens = batch_size, max_new_tokens
    return evaluate_split(config, model, tokenizer, examples, output=output, desc=desc)[0]
