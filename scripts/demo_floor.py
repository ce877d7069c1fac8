"""The shortest time a finished run's work could take on this machine: its model FLOPs at the measured fp32
matrix-product ceiling, and each decoding step's weight reads at the measured memory bandwidth.

    python scripts/demo_floor.py runs/demo --wall 1314

Reads the run folder (config.yaml, metrics.jsonl, eval_before/after.jsonl), tokenizes its splits again with the
run's own data settings (the exact prompt lengths), and counts, phase by phase:

    evaluation   per prompt: the prefill (P tokens), the greedy decode (C tokens) and the perplexity reference's
                 pass over P + C tokens; eval_before/after have each completion's length, a validation only its
                 mean (metrics.jsonl eval/length_tokens)
    training     per step: the prompts' prefill once (the shared prompt pass), the decode of N = prompts x samples
                 rows, the update's forward + backward (3 forwards) and the KL reference's forward over the prompts
                 once and the N completions (metrics.jsonl completion/length; the prompts' lengths are the train
                 split's mean, the sampler draws uniformly)

FLOPs as scripts/bench_roofline.py counts them (2 per multiply-add: non-embedding weights per token, the LM head
per position whose logits are computed, attention per token and context). Only the tokens each row really
produces are counted (a batch's finished rows that keep stepping are not), the reward, the meaning encoder,
loading, saving and Python are left out: a lower bound, not an estimate. A decoding step cannot be faster than
reading the weights once, so each phase's floor is max(FLOPs / ceiling, decode steps x weight bytes / bandwidth).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_roofline import forward_flops, matmul_ceiling, memory_bandwidth  # noqa: E402 (the same counts)


def eval_flops(cfg, prompt_lengths: list[int], completion_lengths: list[float]) -> float:
    total = 0.0
    for P, C in zip(prompt_lengths, completion_lengths):
        total += forward_flops(cfg, P, P / 2, 1)  # prefill: its last position's logits give the first token
        total += forward_flops(cfg, max(C - 1, 0), P + C / 2, max(C - 1, 0))  # the other C - 1, one per step
        total += forward_flops(cfg, P + C - 1, (P + C) / 2, C)  # perplexity under the reference
    return total


def eval_decode_steps(prompt_lengths: list[int], completion_lengths: list[float], batch_size: int) -> float:
    """Decode steps of the batches as heldout.generate forms them (sorted by prompt length): the longest row's."""
    order = sorted(range(len(prompt_lengths)), key=lambda i: prompt_lengths[i])
    return sum(max(completion_lengths[i] for i in order[s:s + batch_size]) for s in range(0, len(order), batch_size))


def sampling_flops(cfg, P: float, prompts: int, N: int, C: float) -> float:
    """The prompts' pass over P - 1 tokens, then C steps that feed the last prompt token and C - 1 sampled ones."""
    return prompts * forward_flops(cfg, P - 1, (P - 1) / 2, 0) + N * forward_flops(cfg, C, P + (C - 1) / 2, C)


def rollout_flops(cfg, P: float, prompts: int, N: int, C: float) -> float:
    """One forward over the rollout as the update scores it (rollout/sampling.py's shared prompt pass): the prompts
    once, then each row's C - 1 inputs."""
    return prompts * forward_flops(cfg, P, P / 2, 1) + N * forward_flops(cfg, C - 1, P + C / 2, C - 1)


def train_step_flops(cfg, prompt_length: float, prompts: int, samples: int, C: float, reference: bool) -> float:
    """Sampling, the update's forward + backward (3 forwards) and the KL reference's forward when there is one."""
    N = prompts * samples
    return sampling_flops(cfg, prompt_length, prompts, N, C) + (4 if reference else 3) * rollout_flops(
        cfg, prompt_length, prompts, N, C)


def phases(run: Path) -> tuple[list[tuple[str, float, float]], object, dict]:
    """[(phase, FLOPs, decode steps)], the model config, the run's config."""
    from llm_pg.config.schema import load_config
    from llm_pg.data.prompts import load_examples
    from llm_pg.models.policy import load_policy, load_tokenizer

    config = load_config(run / "config.yaml")
    if config.model.dtype != "float32" or config.training.mixed_precision not in ("no", "auto", False):
        raise SystemExit("demo_floor.py counts float32 runs only (model.dtype float32, mixed_precision no)")
    tokenizer, cfg = load_tokenizer(config.model), load_policy(config.model).config
    lengths = {split: [len(e.prompt_ids) for e in load_examples(config.data, split, tokenizer)]
               for split in (config.data.train_split, config.data.validation_split, config.data.test_split)}
    test = lengths[config.data.test_split][:config.data.max_eval_samples]
    validation = lengths[config.data.validation_split][:config.evaluation.validation_samples
                                                       or config.data.max_eval_samples]  # as periodic.py
    batch, out = config.evaluation.batch_size, []
    for name in ("eval_before", "eval_after"):
        if (run / f"{name}.jsonl").is_file():
            C = [json.loads(line)["tokens"] for line in (run / f"{name}.jsonl").read_text().splitlines()]
            out.append((name, eval_flops(cfg, test, C), eval_decode_steps(test, C, batch)))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    g, t = config.generation, config.training
    P = sum(lengths[config.data.train_split]) / len(lengths[config.data.train_split])
    steps = [r for r in rows if "completion/length" in r]
    train = sum(train_step_flops(cfg, P, t.prompts_per_step, g.num_samples, r["completion/length"],
                                 config.kl.coef > 0) for r in steps)
    # every row stops at max_new_tokens when one was cut there, else at least at the mean length
    decode = sum(g.max_new_tokens if r.get("completion/truncated_frac", 0) > 0 else math.ceil(r["completion/length"])
                 for r in steps)
    out.append((f"training ({len(steps)} steps)", train, decode))
    for r in (r for r in rows if "eval/length_tokens" in r):
        C = [r["eval/length_tokens"]] * len(validation)
        out.append((f"validation@{r['step']}", eval_flops(cfg, validation, C), math.ceil(len(validation) / batch)
                    * r["eval/length_tokens"]))
    return out, cfg, {"threads": t.num_threads, "dtype_bytes": 4}


def table(run: Path, wall: float | None) -> str:
    work, cfg, settings = phases(run)
    from llm_pg.runs.tracking import set_threads
    threads = set_threads(settings["threads"], 1)  # the run's own rule (0: the cores)
    ceiling, bandwidth = matmul_ceiling(torch.float32), memory_bandwidth()
    weight_bytes = sum(p.numel() for p in _parameters(cfg)) * settings["dtype_bytes"]
    lines = [f"fp32 matrix products {ceiling / 1e9:.0f} GFLOP/s, memory bandwidth {bandwidth / 1e9:.1f} GB/s "
             f"({threads} threads, measured in this run); weights read per decoding step "
             f"{weight_bytes / 1e9:.2f} GB.", "",
             "| phase | model GFLOP | at the FLOP ceiling (s) | decode steps | reading the weights (s) | floor (s) |",
             "|---|---|---|---|---|---|"]
    total = 0.0
    for name, flops, decode in work:
        compute, reads = flops / ceiling, decode * weight_bytes / bandwidth
        total += max(compute, reads)
        lines.append(f"| {name} | {flops / 1e9:,.0f} | {compute:.0f} | {decode:.0f} | {reads:.0f} | "
                     f"{max(compute, reads):.0f} |")
    lines.append(f"| **all** | {sum(w[1] for w in work) / 1e9:,.0f} | | | | **{total:.0f}** "
                 f"({total / 60:.1f} min) |")
    if wall:
        lines += ["", f"The run took {wall:.0f} s ({wall / 60:.1f} min): the floor is {total / wall:.0%} of it."]
    return "\n".join(lines)


def _parameters(cfg):
    """The parameter tensors' shapes of a model with this config, without building it (meta device)."""
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        return list(AutoModelForCausalLM.from_config(cfg).parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run folder (llm-pg demo: runs/demo)")
    parser.add_argument("--wall", type=float, help="the run's measured wall time in seconds, to compare with")
    args = parser.parse_args()
    print(table(args.run, args.wall))


if __name__ == "__main__":
    main()
