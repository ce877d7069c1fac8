"""Compare the algorithms on one task at one sample budget, several seeds: held-out scores, wall time, memory.

    python scripts/compare_algorithms.py --config configs/demo.yaml --name demo --seeds 0 1 --steps 12 \
        --eval-samples 60 --jobs 2 --output docs/results_archive.md

Methods (each a separate process, so its peak RSS is its own):
    reinforce/<baseline>   REINFORCE with the none, moving_average, leave_one_out and greedy baselines
    actor_critic           value head on the policy, GAE (critic.* defaults), whitened advantages, 2 critic-only steps
    ppo                    clipped updates, ppo.* defaults (leave-one-out advantages)
    grpo                   GRPO as published (Shao et al. 2024): (R - group mean) / group std, the mean of each
                           completion's token mean, on-policy (ppo.epochs 1, grpo's default)
    dr_grpo                Dr. GRPO (Liu et al. 2025): R - group mean (no std), sum over tokens / (max_new_tokens * N)
    dapo                   DAPO (Yu et al. 2025) at the same budget: group-scaled advantages, clip-higher 0.2 / 0.28,
                           token mean over the step, truncated completions masked. Its dynamic sampling is left out
                           here: it samples extra rollouts, so the budget would differ (add
                           algorithm.dynamic_sampling=true to measure it; the extra rollouts are logged)
    sft                    supervised training on the references only, as many steps of prompts_per_step pairs
    sft+reinforce          that SFT model, then REINFORCE (leave_one_out) at the same RL budget
Every RL method samples steps x prompts_per_step x num_samples completions.  The base model is evaluated once
(greedy decoding does not depend on the seed).  Each method's result is written to <work>/<method>-s<seed>.json
as soon as it finishes, so an interrupted comparison continues where it stopped.  The table (mean +- std over
seeds) replaces the section `<!-- results:NAME -->` of --output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

METHODS = {
    "base": [],
    "reinforce/none": ["algorithm.baseline=none"],
    "reinforce/moving_average": ["algorithm.baseline=moving_average"],
    "reinforce/leave_one_out": ["algorithm.baseline=leave_one_out"],
    "reinforce/greedy": ["algorithm.baseline=greedy"],
    "actor_critic": ["algorithm.name=actor_critic", "algorithm.whiten_advantages=true", "critic.warmup_steps=2"],
    "ppo": ["algorithm.name=ppo"],
    "grpo": ["algorithm.name=grpo", "grpo.scale_rewards=group", "algorithm.loss_reduction=sequence_token_mean"],
    "dr_grpo": ["algorithm.name=grpo", "grpo.scale_rewards=none", "algorithm.loss_reduction=fixed_token_mean"],
    "dapo": ["algorithm.name=grpo", "grpo.scale_rewards=group", "algorithm.loss_reduction=token_mean",
             "ppo.clip_eps_high=0.28", "algorithm.mask_truncated_completions=true"],
    "sft": [],
    "sft+reinforce": ["algorithm.baseline=leave_one_out", "sft.before_rl=true"],
}
METRICS = ("rougeL", "bleu", "rouge1", "rouge2")
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # t(0.975, df)


def run_one(spec: dict) -> dict:
    """Train (or not) and evaluate one method/seed in this process; returns its scores, time and peak RSS."""
    from llm_pg.config.schema import load_config
    from llm_pg.data.prompts import load_examples
    from llm_pg.evaluation.heldout import evaluate_examples
    from llm_pg.models.policy import load_policy, load_tokenizer
    from llm_pg.runs.tracking import set_threads
    from llm_pg.training.rl import train
    from llm_pg.training.sft import train_sft

    t0 = time.perf_counter()
    method, out = spec["method"], Path(spec["output_dir"])
    overrides = [*spec["overrides"], *METHODS[method], f"training.output_dir={out}", f"training.seed={spec['seed']}",
                 f"training.max_steps={spec['steps']}", f"data.max_eval_samples={spec['eval_samples']}",
                 f"training.num_threads={spec['threads']}", "evaluation.before_training=false",
                 "evaluation.after_training=true", "evaluation.eval_every=0", "evaluation.reference_model=none",
                 "training.save_every=0"]
    if method.startswith("sft"):  # SFT: as many steps as RL, each on prompts_per_step (prompt, reference) pairs
        overrides.append(f"sft.max_steps={spec['steps']}")
    config = load_config(spec["config"], overrides)
    config = dataclasses.replace(config, sft=dataclasses.replace(config.sft, batch_size=config.training.prompts_per_step))
    if method in ("base", "sft"):
        set_threads(spec["threads"], 1)
        model_cfg = config.model
        if method == "sft":
            model_cfg = dataclasses.replace(config.model, name_or_path=str(train_sft(config, out / "sft", overwrite=True)),
                                            gguf_file=None)
        tokenizer, model = load_tokenizer(model_cfg), load_policy(model_cfg)
        examples = load_examples(config.data, config.data.test_split, tokenizer, config.data.max_eval_samples)
        scores = evaluate_examples(model, tokenizer, examples, config.generation, config.evaluation.batch_size,
                                   config.evaluation.max_new_tokens)
    else:
        scores = train(config, overwrite=True)["eval_after"]  # a spec without its result file runs afresh
    for heavy in ("checkpoints", "final", "best", "sft"):  # 1.6 GB each for a 135M model: keep the scores only
        shutil.rmtree(out / heavy, ignore_errors=True)
    return {**spec, "scores": {k: scores[k] for k in METRICS}, "num_eval": scores["num_samples"],
            "wall_s": time.perf_counter() - t0, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def launch(spec: dict, work: Path) -> dict:
    """Run one spec in a fresh process (skipped when its result file exists)."""
    result_file = work / f"{spec['method'].replace('/', '-')}-s{spec['seed']}.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    spec_file = result_file.with_suffix(".spec.json")
    spec_file.write_text(json.dumps(spec))
    log = open(result_file.with_suffix(".log"), "w")
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, __file__, "--run-one", str(spec_file), "--result", str(result_file)],
                          stdout=log, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:  # the other runs go on; the table is written without this one
        print(f"FAILED: {spec['method']} seed {spec['seed']}; see {result_file.with_suffix('.log')}", flush=True)
        return None
    print(f"done: {spec['method']} seed {spec['seed']}", flush=True)
    return json.loads(result_file.read_text())


def table(results: list[dict], args, command: str, missing: list[str] = ()) -> str:
    by_method: dict[str, list[dict]] = {}
    for r in results:
        by_method.setdefault(r["method"], []).append(r)
    base = by_method.get("base", [{}])[0].get("scores", {})
    lines = [f"<!-- results:{args.name} -->", f"### {args.name}", "", "```", command, "```", "",
             f"Budget per RL method: {args.steps} steps; held-out: {results[0]['num_eval'] if results else args.eval_samples} examples of the test split, "
             f"greedy. Seeds {' '.join(map(str, args.seeds))}; {args.jobs} run(s) at a time with "
             f"{args.threads} thread(s) each. Wall time includes loading and the evaluation.", "",
             "Δ vs base: the mean over seeds minus the base model's score, with the 95 % interval of that mean over "
             "seeds (Student's t); the other cells are mean ± std over seeds.", "",
             "| method | ROUGE-L | Δ vs base [95 % CI] | BLEU | ROUGE-1 | ROUGE-2 | wall time (min) | peak RSS (GB) |",
             "|---|---|---|---|---|---|---|---|"]

    def cell(values: list[float], scale: float = 1.0) -> str:
        values = [v * scale for v in values]
        if len(values) < 2:
            return f"{values[0]:.4f}"
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"

    def interval(values: list[float], shift: float = 0.0) -> str:
        """mean - shift with the 95 % t-interval of the mean over seeds (Student's t, n - 1 degrees of freedom)."""
        mean = statistics.mean(values) - shift
        if len(values) < 2:
            return f"{mean:+.4f}"
        half = T_975.get(len(values) - 1, 1.96) * statistics.stdev(values) / len(values) ** 0.5
        return f"{mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}]"

    for method, runs in by_method.items():
        scores = {m: [r["scores"][m] for r in runs] for m in METRICS}
        delta = interval(scores["rougeL"], base.get("rougeL", float("nan")))
        lines.append(f"| {method} | {cell(scores['rougeL'])} | {delta} | {cell(scores['bleu'])} | "
                     f"{cell(scores['rouge1'])} | {cell(scores['rouge2'])} | "
                     f"{statistics.mean(r['wall_s'] for r in runs) / 60:.1f} | "
                     f"{max(r['peak_rss_gb'] for r in runs):.2f} |")
    if missing:
        lines += ["", f"Not run in time (the command above runs them): {', '.join(missing)}."]
    lines.append(f"<!-- /results:{args.name} -->")
    return "\n".join(lines)


def write_section(path: Path, section: str, name: str) -> None:
    text = path.read_text() if path.exists() else "# Algorithm comparison\n"
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    if start in text:
        text = text[:text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", help="The task's training config (YAML).")
    p.add_argument("--name", help="Section name in the output file, e.g. demo or aeslc.")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=12, help="RL steps (and SFT steps) per method.")
    p.add_argument("--eval-samples", type=int, default=60, help="Test examples evaluated per method.")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--jobs", type=int, default=2, help="Methods run at the same time.")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run.")
    p.add_argument("--work", default=None, help="Folder for runs and per-run results (default runs/compare-NAME).")
    p.add_argument("--output", default="docs/results_archive.md")
    p.add_argument("--table-only", action="store_true",
                   help="Write the table from the results already in --work; run nothing, list what is missing.")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides applied to every method.")
    p.add_argument("--run-one", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.run_one:
        result = run_one(json.loads(Path(args.run_one).read_text()))
        tmp = Path(args.result).with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, args.result)
        return
    if not (args.config and args.name):
        p.error("--config and --name are required")
    work = Path(args.work or f"runs/compare-{args.name}")
    work.mkdir(parents=True, exist_ok=True)
    specs = [{"method": m, "seed": s, "config": args.config, "overrides": args.overrides, "steps": args.steps,
              "eval_samples": args.eval_samples, "threads": args.threads,
              "output_dir": str(work / f"{m.replace('/', '-')}-s{s}")}
             for s in args.seeds for m in args.methods if not (m == "base" and s != args.seeds[0])]
    if args.table_only:
        files = [work / f"{spec['method'].replace('/', '-')}-s{spec['seed']}.json" for spec in specs]
        results = [json.loads(f.read_text()) for f in files if f.exists()]
        missing = [f"{spec['method']} seed {spec['seed']}" for spec, f in zip(specs, files) if not f.exists()]
    else:
        with ThreadPoolExecutor(args.jobs) as pool:
            results = [r for r in pool.map(lambda spec: launch(spec, work), specs) if r is not None]
        missing = []
    command = "python scripts/compare_algorithms.py " + " ".join(a for a in sys.argv[1:] if a != "--table-only")
    section = table(results, args, command, missing)
    write_section(Path(args.output), section, args.name)
    print(section)
    if len(results) < len(specs) and not args.table_only:
        sys.exit(f"{len(specs) - len(results)} run(s) failed; run the same command again to retry them")


if __name__ == "__main__":
    main()
