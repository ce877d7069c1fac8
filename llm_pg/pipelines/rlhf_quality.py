"""Answer quality in the compare stage: does each policy write coherent text, and did RL or DPO make it worse?

Over the answers A of each policy to the test prompts (compare/samples_<policy>.jsonl, K per prompt), and over the
human chosen answers of the same prompts (data/test.jsonl's references: what people wrote, one per prompt):

    perplexity            exp( - sum_{a in A} sum_t log p_0(a_t | prompt, a_<t) / sum_{a in A} |a| ), per token
                          under p_0, the pipeline's starting model (model.name_or_path, the model before SFT)
    repeated_3gram_rate   mean over A of the share of an answer's word 3-grams that already occurred in it
    distinct2             unique word 2-grams / all word 2-grams, over A
    truncated_rate        share of A cut at generation.max_new_tokens (no end of answer); for the human answers the
                          share longer than generation.max_new_tokens tokens: what sampling would have cut
    empty_rate            share of A that are empty or whitespace

Why the start model is the judge: no stage trained it, so it favours neither the SFT policy (trained on the chosen
answers) nor RL or DPO (trained from SFT); it is the model that wrote fluent text before the pipeline touched it.
A policy whose answers it finds far less likely than the human answers writes text unlike people's (a babbling
SFT start); a trained policy whose perplexity rose above SFT's lost fluency on its way to reward.

An answer is scored as text, by one route for every policy and for the human answers: its stripped text's tokens
under the start model's tokenizer (training/sft.py answer_ids), after the prompt as that tokenizer renders it,
without an end-of-answer token (a cut answer has none, and whether the start model would stop there is length, not
fluency); an empty answer has no tokens and so no share of the perplexity. The log-probabilities come from
rollout/reference.py's Reference.logprobs, the path that scores the KL reference and evaluation's perplexity, with
every answer to a prompt (each policy's K and the human one) in one group, so that the prompt passes once.

Each trained policy is compared with SFT by evaluation/bootstrap.py's paired_bootstrap: the prompt is the resampled
unit (its K answers together), B - A of each corpus statistic with its 95 % interval and randomization p-value, as
`llm-pg eval --compare` compares two evaluations. The human row has no interval: one answer per prompt is not
paired with K samples (repeating it K times would lower its distinct-2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from llm_pg.evaluation.bootstrap import paired_bootstrap
from llm_pg.evaluation.metrics import CorpusStatistics, Generation, corpus_statistics, repeated_ngram_rate

QUALITY_METRICS = ("perplexity", "repeated_3gram_rate", "distinct2", "truncated_rate", "empty_rate")
# the report's column heads, in QUALITY_METRICS order
HEADS = ("perplexity under the start model", "repeated 3-gram rate", "distinct-2", "cut at max_new_tokens",
         "empty")


@dataclass
class Answers:
    """Answers to the P test prompts, K of each, prompt-major (answer k of prompt p is row p*K + k)."""

    ids: list[str]  # the prompt's id, per answer
    texts: list[str]
    truncated: list[bool]  # cut at max_new_tokens (human answers: longer than max_new_tokens tokens)
    group_size: int  # K


def read_answers(path: Path) -> Answers:
    """A policy's answers from the compare stage's samples file (rows: id, sample, completion, truncated, ...)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return Answers([r["id"] for r in rows], [r["completion"] for r in rows], [bool(r["truncated"]) for r in rows],
                   1 + max(r["sample"] for r in rows))


def human_answers(examples, tokenizer, max_new_tokens: int) -> Answers:
    """The chosen answer of each test prompt (its first reference), 'truncated' when it has more tokens than
    sampling may write."""
    texts = [e.references[0] for e in examples]
    return Answers([e.id for e in examples], texts, [len(answer_tokens(tokenizer, t)) > max_new_tokens for t in texts],
                   1)


def answer_tokens(tokenizer, text: str) -> list[int]:
    """The tokens the judge scores: the answer's visible text (stripped, as the policies' completions are) as it
    follows a prompt (training/sft.py answer_ids), no end-of-answer token; [] for an empty answer."""
    from llm_pg.training.sft import answer_ids

    return answer_ids(tokenizer, text.strip(), [])


def is_empty(text: str) -> float:
    """1 for an answer with no visible text (empty or whitespace), else 0."""
    return float(not text.strip())


@torch.no_grad()
def answer_logprobs(judge, tokenizer, prompts: list[list[int]], texts: list[str], group_size: int = 1,
                    batch_size: int = 16) -> tuple[list[float], list[int]]:
    """(sum_t log p_0(a_t | prompt, a_<t), |a|) of each answer text after its prompt's tokens, under the judge at
    temperature 1. texts: group_size G answers of each prompt, prompt-major (answer g of prompt p is texts[p*G + g]);
    each prompt runs through the judge once for its G answers (rollout/sampling.py's shared prompt pass: the prompt
    is most of the tokens). Prompts of similar length are batched together, about batch_size answers at a time.
    Empty answers: (0.0, 0)."""
    from llm_pg.models.reward_model import pad_right
    from llm_pg.rollout.reference import Reference
    from llm_pg.rollout.sampling import pad_left

    G, reference = group_size, Reference(judge.eval())
    targets = [answer_tokens(tokenizer, text) for text in texts]
    order = sorted(range(len(prompts)), key=lambda p: len(prompts[p]))
    sums, per_batch = [0.0] * len(texts), max(1, batch_size // G)
    for start in range(0, len(order), per_batch):
        rows = [p * G + g for p in order[start:start + per_batch] for g in range(G)]
        if not any(targets[i] for i in rows):  # nothing but empty answers: nothing to score
            continue
        prompt_ids, prompt_mask = pad_left([prompts[i // G] for i in rows], tokenizer.pad_token_id)  # (n, P)
        answer, mask = pad_right([targets[i] for i in rows], tokenizer.pad_token_id)  # (n, T)
        logprobs = reference.logprobs(prompt_ids, prompt_mask, answer, mask, group_size=G)  # (n, T), 0 where masked
        for i, total in zip(rows, logprobs.double().sum(1).tolist()):
            sums[i] = total
    return sums, [len(t) for t in targets]


def interleaved(answers: dict[str, Answers], ids: list[str]) -> list[str]:
    """Every row's answers to each prompt of `ids` together, prompt-major: what answer_logprobs scores with one
    prompt pass per prompt (group size: the rows' K summed)."""
    for name, a in answers.items():
        if a.ids != [i for i in ids for _ in range(a.group_size)]:
            raise ValueError(f"quality: the {name} answers are not K = {a.group_size} of each test prompt in order")
    return [t for p in range(len(ids)) for a in answers.values()
            for t in a.texts[p * a.group_size:(p + 1) * a.group_size]]


def deinterleaved(values: list, answers: dict[str, Answers], prompts: int) -> dict[str, list]:
    """The inverse of `interleaved` for per-answer values: {name: its answers' values in its own order}."""
    G, start, result = sum(a.group_size for a in answers.values()), 0, {}
    for name, a in answers.items():
        result[name] = [values[p * G + start + k] for p in range(prompts) for k in range(a.group_size)]
        start += a.group_size
    return result


def judged(answers: Answers, logprobs: list[float], tokens: list[int]) -> list[Generation]:
    """The answers as evaluation's Generations: the per-answer measures, and the judge's log-probability and token
    count that corpus_statistics turns into the pooled perplexity."""
    K = answers.group_size
    return [Generation(answers.ids[j], j % K, "", [], text,
                       {"repeated_3gram_rate": repeated_ngram_rate(text, 3),
                        "truncated_rate": float(answers.truncated[j]), "empty_rate": is_empty(text)},
                       tokens=tokens[j], ref_logprob=logprobs[j])
            for j, text in enumerate(answers.texts)]


def quality_statistics(generations: list[Generation]) -> CorpusStatistics:
    """evaluation's corpus statistics of the answers, only the QUALITY_METRICS."""
    stats = corpus_statistics(generations)
    return CorpusStatistics({k: stats.statistics[k] for k in QUALITY_METRICS}, stats.size, {})


def quality(policies: dict[str, list[Generation]], human: list[Generation], group_size: int,
            resamples: int) -> dict:
    """Each policy's and the human answers' QUALITY_METRICS, and each trained policy minus SFT (paired bootstrap
    over prompts: difference, 95 % interval, p-value). policies: "sft" and the trained ones, paired by prompt."""
    stats = {name: quality_statistics(g) for name, g in policies.items()}
    result = {"metrics": list(QUALITY_METRICS), "resamples": resamples,
              "answers": {**{name: len(g) for name, g in policies.items()}, "human": len(human)},
              "policies": {name: s.scores() for name, s in stats.items()},
              "human": quality_statistics(human).scores(), "vs_sft": {}}
    for name in (n for n in policies if n != "sft"):
        if [(g.id, g.sample) for g in policies[name]] != [(g.id, g.sample) for g in policies["sft"]]:
            raise ValueError(f"quality: the {name} and SFT answers are not of the same prompts in the same order")
        pooled = quality_statistics(policies["sft"] + policies[name])
        result["vs_sft"][name] = {d.metric: {"difference": d.difference, "ci": [d.ci_low, d.ci_high],
                                             "p_value": d.p_value}
                                  for d in paired_bootstrap(stats["sft"], stats[name], pooled, resamples,
                                                            group_size=group_size)}
    return result


def judge_answers(config, data_config, folder: Path, names: tuple[str, ...]) -> dict:
    """The compare stage's answer quality: the samples of `names` in folder and the human answers of the test
    prompts, scored by the starting model (config.model), which is loaded once here and freed before returning."""
    from llm_pg.data.prompts import load_examples
    from llm_pg.models.memory import release_freed_memory
    from llm_pg.models.policy import load_policy, load_tokenizer

    tokenizer = load_tokenizer(config.model)
    examples = load_examples(data_config, "test", tokenizer, data_config.max_eval_samples)
    answers = {name: read_answers(folder / f"samples_{name}.jsonl") for name in names}
    answers["human"] = human_answers(examples, tokenizer, config.generation.max_new_tokens)
    texts = interleaved(answers, [e.id for e in examples])
    release_freed_memory(collect=True)  # the policies the caller dropped go before the judge comes
    judge = load_policy(config.model).requires_grad_(False)
    try:
        sums, tokens = answer_logprobs(judge, tokenizer, [e.prompt_ids for e in examples], texts,
                                       len(texts) // len(examples), config.evaluation.batch_size)
    finally:
        del judge
        release_freed_memory(collect=True)
    sums, tokens = (deinterleaved(v, answers, len(examples)) for v in (sums, tokens))
    scored = {name: judged(a, sums[name], tokens[name]) for name, a in answers.items()}
    human = scored.pop("human")
    result = quality(scored, human, answers["sft"].group_size, config.evaluation.bootstrap_resamples)
    return {"judge": str(config.model.name_or_path), "max_new_tokens": config.generation.max_new_tokens, **result}


def quality_markdown(result: dict) -> str:
    """The report's answer-quality table: one row per policy and the human answers; a trained policy's cells add
    its difference to SFT with the 95 % interval."""
    def cell(name: str, metric: str) -> str:
        value = result["policies"][name][metric]
        d = result["vs_sft"].get(name, {}).get(metric)
        return f"{value:.3f}" if d is None else \
            f"{value:.3f} ({d['difference']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}])"

    lines = [f"Every answer scored by the starting model {result['judge']} (no stage trained it), as text after its "
             "prompt; perplexity is per token, pooled over the answers. In brackets: the trained policy minus SFT "
             f"with its 95 % interval (paired bootstrap over prompts, {result['resamples']} resamples). The human row "
             f"is the test prompts' chosen answers; its 'cut' is the share longer than {result['max_new_tokens']} "
             "tokens (generation.max_new_tokens).", "",
             "| answers | " + " | ".join(HEADS) + " |", "|---" * (len(HEADS) + 1) + "|",
             "| human (chosen) | " + " | ".join(f"{result['human'][m]:.3f}" for m in QUALITY_METRICS) + " |"]
    lines += [f"| {name.upper()} | " + " | ".join(cell(name, m) for m in QUALITY_METRICS) + " |"
              for name in result["policies"]]
    return "\n".join(lines) + "\n"
