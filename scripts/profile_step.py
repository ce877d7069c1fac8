"""Where a training step's time goes: llm_pg's real `train_step`, each stage timed by wrapping its function.

    python scripts/profile_step.py --model smollm2 --steps 3 --output docs/benchmarks.md

The workload is scripts/bench_rl.py's (same prompts, k, max_new_tokens, 2 threads). Stages: sampling (the
decoding loop; its share of model forwards is shown apart), reward, KL reference, the update's forward passes,
backward, optimizer step; "other" is the rest of the step (advantages, metrics, Python). With --cprofile the
20 most expensive functions of the same steps are printed too.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import bench_rl
import torch

import llm_pg.rollout.sampling
import llm_pg.training.rl
import llm_pg.training.update

SECONDS: dict[str, float] = defaultdict(float)


def timed(owner, name: str, stage: str) -> None:
    """Replace owner.name by a wrapper that adds its wall time to SECONDS[stage]."""
    real = getattr(owner, name)

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            SECONDS[stage] += time.perf_counter() - t0

    setattr(owner, name, wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="tinystories, smollm2 or a model folder")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after one warm-up step)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cprofile", action="store_true", help="also print cProfile's top 20 functions")
    parser.add_argument("--output", default=None, help="append the Markdown table to this file")
    parser.add_argument("overrides", nargs="*", help="llm_pg config overrides, e.g. algorithm.name=actor_critic")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder, kind = bench_rl.prepare_model(args.model)
    spec = {"model": folder, "model_kind": kind, "prompts": 4, "samples": 4, "max_new_tokens": 24, "lr": 1e-6,
            "steps": args.steps, "threads": args.threads}
    config = bench_rl.llm_pg_config(spec, Path(tempfile.mkdtemp(prefix="profile_step_")), args.overrides)
    run = llm_pg.training.rl.setup_run(config)
    llm_pg.training.rl.train_step(config, run, 0)  # warm-up

    timed(llm_pg.training.rl, "sample", "sampling (decoding loop)")
    timed(llm_pg.rollout.sampling, "decode", "  of which the token-by-token decoding")
    timed(type(run.reward_mix), "reward_batch", "reward")
    if run.reference is not None:
        timed(type(run.reference), "logprobs", "KL reference log-probs")
    timed(llm_pg.training.update, "completion_outputs", "update: forward passes")
    timed(type(run.accelerator), "backward", "update: backward")
    timed(type(run.optimizer), "step", "update: optimizer step")
    profiler = cProfile.Profile() if args.cprofile else None
    t0 = time.perf_counter()
    if profiler:
        profiler.enable()
    for step in range(args.steps):
        llm_pg.training.rl.train_step(config, run, step + 1)
    if profiler:
        profiler.disable()
    total = (time.perf_counter() - t0) / args.steps
    order = ["sampling (decoding loop)", "  of which the token-by-token decoding", "reward", "KL reference log-probs",
             "update: forward passes", "update: backward", "update: optimizer step"]
    per_step = {k: SECONDS[k] / args.steps for k in order if k in SECONDS}
    counted = sum(v for k, v in per_step.items() if not k.startswith("  "))
    lines = [f"\n### Where a step goes: `{args.model}`, 4 prompts x 4 samples, 24 new tokens, {args.threads} threads"
             f"{' (' + ', '.join(args.overrides) + ')' if args.overrides else ''}\n",
             f"`python scripts/profile_step.py --model {args.model} --steps {args.steps}"
             f"{' ' + ' '.join(args.overrides) if args.overrides else ''}`\n",
             "| stage | s/step | share |", "|---|---|---|"]
    for stage, seconds in [*per_step.items(), ("other (advantages, metrics, Python)", total - counted)]:
        lines.append(f"| {stage} | {seconds:.3f} | {100 * seconds / total:.1f}% |")
    lines.append(f"| **step** | **{total:.3f}** | 100% |")
    text = "\n".join(lines) + "\n"
    print(text)
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)
    if args.output:
        with open(args.output, "a", encoding="utf-8") as f:
            f.write(text)


if __name__ == "__main__":
    main()
