"""Held-out evaluation: greedy completions for a split, scored with corpus BLEU and ROUGE."""

from __future__ import annotations

import json
from pathlib import Path

from sacrebleu.metrics import BLEU
import torch
from rouge_score import rouge_scorer
from tqdm.auto import tqdm

from llm_pg.config import GenerationConfig
from llm_pg.data import Example
from llm_pg.rollout import sample


def corpus_scores(completions: list[str], references: list[list[str]]) -> dict:
    """Corpus BLEU (sacrebleu, all references) / 100 and mean ROUGE-1/2/L F1 (best reference per sample)."""
    width = max(len(r) for r in references)
    streams = [[refs[i] if i < len(refs) else refs[0] for refs in references] for i in range(width)]
    metric = BLEU()
    bleu = metric.corpus_score(completions, streams)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    rouge = [scorer.score_multi(refs, c) for c, refs in zip(completions, references)]
    n = len(completions)
    return {
        "bleu": bleu.score / 100.0,
        "rouge1": sum(r["rouge1"].fmeasure for r in rouge) / n,
        "rouge2": sum(r["rouge2"].fmeasure for r in rouge) / n,
        "rougeL": sum(r["rougeL"].fmeasure for r in rouge) / n,
        "mean_words": sum(len(c.split()) for c in completions) / n,
        "num_samples": n,
        "bleu_signature": str(metric.get_signature()),
    }


@torch.no_grad()
def generate_greedy(model, tokenizer, examples: list[Example], generation: GenerationConfig, batch_size: int,
                    max_new_tokens: int | None = None, desc: str = "eval") -> list[str]:
    """Greedy completions, batched by prompt length (less padding), returned in the examples' order."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].prompt_ids))
    completions: list[str] = [""] * len(examples)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
        chunk = order[start:start + batch_size]
        rollout = sample(model, tokenizer, [examples[i].prompt_ids for i in chunk], generation, greedy=True,
                         max_new_tokens=max_new_tokens)
        for i, text in zip(chunk, rollout.completions):
            completions[i] = text
    return completions


def evaluate_examples(model, tokenizer, examples: list[Example], generation: GenerationConfig, batch_size: int,
                      max_new_tokens: int | None = None, output: str | Path | None = None,
                      desc: str = "eval") -> dict:
    """Scores of the greedy completions; with `output`, writes the scores and every generation as JSON."""
    was_training = model.training
    model.eval()
    completions = generate_greedy(model, tokenizer, examples, generation, batch_size, max_new_tokens, desc)
    model.train(was_training)
    scores = corpus_scores(completions, [e.references for e in examples])
    if output is not None:
        samples = [{"id": e.id, "references": e.references, "completion": c} for e, c in zip(examples, completions)]
        Path(output).write_text(json.dumps({"scores": scores, "samples": samples}, indent=1))
    return scores
