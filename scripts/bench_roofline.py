"""How close a training step comes to this machine's own limits, stage by stage, in fp32 and in bf16.

    python scripts/bench_roofline.py --model smollm2 --output docs/benchmarks.md --json docs/benchmarks.json
    python scripts/bench_roofline.py --model tinystories

In one run: the machine's ceilings measured with the same threads (dense matrix products in fp32 and bf16, the
best of several sizes; memory bandwidth from a large copy), then llm_pg's own stages on the bench_rl.py work
(B prompts x K samples, T new tokens), each timed alone and its model FLOPs counted:

    prefill   the B distinct prompts once (the shared prompt pass)         2 * params * tokens + attention
    decode    T steps of N = B*K rows, one token each, with the KV cache   memory-bound: weights read per step
    update    forward + backward over the rollout (prompts once per group)  3 * forward

A forward costs 2 FLOPs per multiply-add: 2 * (non-embedding parameters) per token, plus 2 * d_model * vocab per
position whose logits are computed, plus attention 4 * layers * d_model * context per token. Decoding one token
at a time reads every weight once per step, so it is reported against the measured memory bandwidth (bytes of
the weights in the compute dtype per step over the step's time), not against the FLOP ceiling.
Memory: the floor of training is weights + gradients + AdamW's two moments = 16 bytes per parameter in fp32.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rl import prepare_model, write_data  # noqa: E402  (the same work as the speed comparison)


def best_seconds(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_ceiling(dtype: torch.dtype) -> float:
    """Best dense matrix-product throughput (FLOP/s) over a few square sizes."""
    best = 0.0
    for n in (1024, 2048, 3072):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        best = max(best, 2 * n ** 3 / best_seconds(lambda: a @ b))
    return best


def memory_bandwidth() -> float:
    """Bytes/s of a 512 MB copy (read + write counted)."""
    src = torch.empty(128 * 1024 * 1024, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / best_seconds(lambda: dst.copy_(src))


def forward_flops(cfg, tokens: int, context: float, logit_positions: int) -> float:
    """Model FLOPs of a forward over `tokens` tokens whose mean attention context is `context`."""
    d, layers, vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
    heads, kv_heads = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", cfg.num_attention_heads)
    attention_proj = d * d * 2 + 2 * d * (d * kv_heads // heads)  # q, o and the (grouped) k, v projections
    mlp = 3 * d * cfg.intermediate_size  # gate, up, down
    per_token = 2 * layers * (attention_proj + mlp) + 4 * layers * d * context
    return tokens * per_token + 2 * d * vocab * logit_positions


def stage_times(model, rollout_inputs, K: int, T: int, precision: str) -> dict:
    """Seconds of the prefill, the decoding loop and the update's forward+backward, each the best of 3."""
    from llm_pg.rollout.decoding import decode
    from llm_pg.rollout.sampling import _prompt_pass, completion_outputs

    ids, mask, eos, pad = rollout_inputs
    region = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else nullcontext
    N = ids.shape[0] * K
    rows, row_mask = ids.repeat_interleave(K, 0), mask.repeat_interleave(K, 0)

    def prefill():
        with torch.no_grad(), region():
            return _prompt_pass(model, ids[:, :-1], mask[:, :-1], K)[1]

    def decoding():
        cache = prefill()
        with region():  # one autocast region per rollout, as the trainer runs it
            return decode(model, rows, row_mask, T, [], pad, cache=cache)  # no EOS: exactly T tokens

    tokens = decoding().tokens  # (N, T)
    completion_mask = torch.ones_like(tokens)

    def update():
        with region():
            scores = completion_outputs(model, rows, row_mask, tokens, completion_mask, group_size=K)
        scores.logprobs.sum().backward()
        model.zero_grad(set_to_none=True)

    t_prefill = best_seconds(prefill)
    return {"prefill": t_prefill, "decode": best_seconds(decoding) - t_prefill, "update": best_seconds(update),
            "rows": N}


def load_work(model_name: str, prompts: int):
    """(model in eval mode, tokenizer, prompt ids, prompt mask (B, P) left-padded, model kind) of the bench_rl work."""
    from llm_pg.config.schema import DataConfig, ModelConfig
    from llm_pg.data.prompts import load_examples
    from llm_pg.models.policy import load_policy, load_tokenizer
    from llm_pg.rollout.sampling import pad_left

    folder, kind = prepare_model(model_name)
    model_config = ModelConfig(name_or_path=folder)
    model, tokenizer = load_policy(model_config).eval(), load_tokenizer(model_config)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data({"model_kind": kind, "prompts": prompts}, Path(tmp))
        examples = load_examples(DataConfig(**data, use_chat_template=kind != "tinystories"), "train", tokenizer)
    ids, mask = pad_left([e.prompt_ids for e in examples], tokenizer.pad_token_id)
    return model, tokenizer, ids, mask, kind


def measure(model_name: str, prompts: int, samples: int, new_tokens: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    model, tokenizer, ids, mask, kind = load_work(model_name, prompts)
    cfg, params = model.config, sum(p.numel() for p in model.parameters())
    embedding = cfg.vocab_size * cfg.hidden_size
    P = mask.sum(1).float().mean().item()  # mean prompt tokens
    N, T = prompts * samples, new_tokens
    flops = {"prefill": forward_flops(cfg, prompts * P, P / 2, prompts),
             "decode": forward_flops(cfg, N * T, P + T / 2, N * T),
             "update": 3 * (forward_flops(cfg, prompts * P, P / 2, prompts) + forward_flops(cfg, N * T, P + T / 2, N * T))}
    result = {"model": kind, "B": prompts, "parameters": params, "prompt_tokens": P, "N": N, "T": T, "threads": threads,
              "ceiling": {"fp32": matmul_ceiling(torch.float32), "bf16": matmul_ceiling(torch.bfloat16)},
              "bandwidth": memory_bandwidth(), "stages": {},
              "memory_floor_gb": params * 16 / 1e9}
    for precision, weight_bytes in (("fp32", 4), ("bf16", 2)):
        times = stage_times(model, (ids, mask, [], tokenizer.pad_token_id), samples, T, precision)
        ceiling = result["ceiling"][precision]
        stages = {name: {"s": times[name], "flops": flops[name], "flop_s": flops[name] / times[name],
                         "of_ceiling": flops[name] / times[name] / ceiling} for name in flops}
        # decoding reads every weight (but the embedding table, of which it reads N rows) once per step
        bytes_per_step = (params - embedding) * weight_bytes + embedding * weight_bytes  # the LM head reads it all
        stages["decode"]["bytes_s"] = bytes_per_step * T / times["decode"]
        stages["decode"]["of_bandwidth"] = stages["decode"]["bytes_s"] / result["bandwidth"]
        result["stages"][precision] = stages
    return result


def markdown(r: dict, command: str) -> str:
    lines = [f"\n### Fraction of the machine's limits: `{r['model']}` ({r['parameters'] / 1e6:.1f} M parameters), "
             f"B = {r['B']} prompts x K = {r['N'] // r['B']} samples, T = {r['T']} new tokens, "
             f"{r['threads']} threads\n", f"`{command}`\n",
             f"Ceilings measured in the same run: dense matrix products {r['ceiling']['fp32'] / 1e9:.0f} GFLOP/s "
             f"(fp32) and {r['ceiling']['bf16'] / 1e9:.0f} GFLOP/s (bf16); memory bandwidth "
             f"{r['bandwidth'] / 1e9:.1f} GB/s. Prompts average {r['prompt_tokens']:.0f} tokens.\n",
             "| stage | precision | seconds | model GFLOP | achieved GFLOP/s | of the FLOP ceiling | "
             "of the bandwidth |", "|---|---|---|---|---|---|---|"]
    for precision, stages in r["stages"].items():
        for name, s in stages.items():
            band = f"{s['of_bandwidth']:.0%}" if "of_bandwidth" in s else ""
            lines.append(f"| {name} | {precision} | {s['s']:.2f} | {s['flops'] / 1e9:.1f} | {s['flop_s'] / 1e9:.1f} "
                         f"| {s['of_ceiling']:.0%} | {band} |")
    lines.append(f"\nMemory floor of training (fp32 weights + gradients + AdamW's two moments, 16 bytes per "
                 f"parameter): {r['memory_floor_gb']:.2f} GB.\n")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tinystories", help="tinystories, smollm2 or a model folder")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None, help="append the Markdown table to this file")
    parser.add_argument("--json", default=None, help="record the figures under roofline.<model> in this JSON file")
    args = parser.parse_args()
    result = measure(args.model, args.prompts, args.samples, args.max_new_tokens, args.threads)
    command = "python scripts/bench_roofline.py " + " ".join(sys.argv[1:])
    text = markdown(result, command)
    print(text)
    if args.output:
        with open(args.output, "a") as f:
            f.write(text)
    if args.json:
        path = Path(args.json)
        data = json.loads(path.read_text()) if path.exists() else {}
        data.setdefault("roofline", {})[result["model"]] = {**result, "command": command}
        path.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
