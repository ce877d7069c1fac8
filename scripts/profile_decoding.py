"""Where a decoding step's milliseconds go: one rollout of the bench_rl.py work under torch.profiler.

    python scripts/profile_decoding.py --model smollm2
    python scripts/profile_decoding.py --model smollm2 --precision bf16

Runs the shared prompt pass and the decoding loop (`llm_pg/rollout/decoding.py`) on B prompts x K samples for T
new tokens (no EOS, so exactly T steps): first timed without the profiler, alternating the loop with the in-place
KV cache (`llm_pg/rollout/kv_cache.py`) and the loop before it (transformers' concatenating cache), the time per
step split into the model's forwards and the loop's own per-token work (log-softmax, the draw, the end checks,
Python); then once under torch.profiler, giving each kind of operator's share of the in-place loop.
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_roofline import load_work  # noqa: E402  (the same work as the speed comparison)

GROUPS = {  # operator names -> the part of a decoding step they are
    "matrix products (weights)": ("aten::mm", "aten::addmm"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math"),
    "KV cache append (torch.cat)": ("aten::cat",),
    "casts and copies": ("aten::copy_", "aten::_to_copy"),
    "log-softmax, draw (cumsum, searchsorted)": ("aten::_log_softmax", "aten::cumsum", "aten::searchsorted",
                                                  "aten::exp", "aten::uniform_", "aten::gather"),
}


def rollout(model, ids, mask, K: int, T: int, pad: int, precision: str, temperature: float, in_place: bool):
    """Seconds of the decoding loop (the prompt pass excluded) and of the model forwards inside it."""
    from llm_pg.rollout import decoding
    from llm_pg.rollout.kv_cache import reserve
    from llm_pg.rollout.sampling import _prompt_pass

    decoding.reserve = reserve if in_place else (lambda cache, room: cache)  # the loop before the in-place cache
    region = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    forward_seconds = [0.0]
    forward = model.forward

    def timed_forward(*args, **kwargs):
        start = time.perf_counter()
        out = forward(*args, **kwargs)
        forward_seconds[0] += time.perf_counter() - start
        return out

    with torch.no_grad(), region:
        cache = _prompt_pass(model, ids[:, :-1], mask[:, :-1], K)[1]
        model.forward = timed_forward
        start = time.perf_counter()
        decoding.decode(model, ids.repeat_interleave(K, 0), mask.repeat_interleave(K, 0), T, [], pad, cache=cache,
                        temperature=temperature)
        seconds = time.perf_counter() - start
        del model.forward  # back to the class's forward
    return seconds, forward_seconds[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="tinystories, smollm2 or a model folder")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="timed rollouts per variant, alternating")
    parser.add_argument("--top", type=int, default=0, help="also print the profiler's N most costly operators")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, tokenizer, ids, mask, _ = load_work(args.model, args.prompts)
    T = args.max_new_tokens

    def run(in_place: bool):
        return rollout(model, ids, mask, args.samples, T, tokenizer.pad_token_id, args.precision, args.temperature,
                       in_place)

    run(True), run(False)  # warm-up
    times = {True: [], False: []}
    for _ in range(args.rounds):  # alternating, so a busy spell of the machine hits both alike
        for in_place in (False, True):
            times[in_place].append(run(in_place))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run(True)
    print(markdown(args, times, prof.key_averages(), T))
    if args.top:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


def markdown(args, times: dict, events, T: int) -> str:
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    step = {k: median([s for s, _ in v]) / T for k, v in times.items()}
    forward = {k: median([f for _, f in v]) / T for k, v in times.items()}
    self_ms = {e.key: e.self_cpu_time_total / 1e3 for e in events}
    profiled = sum(self_ms.values())
    lines = [f"\n### A decoding step: `{args.model}`, {args.precision}, N = {args.prompts * args.samples} rows, "
             f"T = {T} new tokens, {args.threads} threads\n",
             f"`python scripts/profile_decoding.py {' '.join(sys.argv[1:])}`\n",
             "| loop | ms per step | of which model forward | loop's own work (sampling, end checks, Python) |",
             "|---|---|---|---|"]
    for in_place, name in ((False, "concatenating KV cache (before)"), (True, "in-place KV cache")):
        lines.append(f"| {name} | {step[in_place] * 1e3:.1f} | {forward[in_place] * 1e3:.1f} | "
                     f"{(step[in_place] - forward[in_place]) * 1e3:.1f} |")
    lines += [f"\nIn-place / concatenating: {step[True] / step[False]:.2f}x the step time (median of {args.rounds} "
              "rollouts each, alternating).\n", "Operators of the in-place loop under torch.profiler (self time):\n",
              "| operators | share of the profiled time |", "|---|---|"]
    grouped = 0.0
    for group, names in GROUPS.items():
        ms = sum(self_ms.get(n, 0.0) for n in names)
        grouped += ms
        lines.append(f"| {group} | {ms / profiled:.1%} |")
    lines.append(f"| everything else (norms, activations, rotary, views, Python-level ops) | "
                 f"{(profiled - grouped) / profiled:.1%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
