"""Equal-budget LEARNING: llm_pg and TRL's RLOOTrainer train the same model on the same prompts with the same
number of sampled completions (and the same wall-clock limit), then both are scored on the same held-out split.

    pip install -e ".[bench]"       # TRL
    python scripts/bench_learning.py --config configs/demo.yaml --name demo --completions 768 --wall-limit 1200 \
        --output docs/results.md
    python scripts/bench_learning.py --config configs/aeslc.yaml --name aeslc --completions 768 --wall-limit 1200 \
        --output docs/results.md
    python scripts/bench_learning.py --config configs/demo.yaml --name demo3 --completions 256 --wall-limit 1e9 \
        --seeds 0 1 2       # each seed into <work>/demo3/seed-<s>/, then the table across seeds (Student t)

What is the same: the model, the training prompts as tokens (llm_pg renders each prompt, chat template included;
TRL receives that text and the script checks it tokenizes to the same ids), B prompts x K completions per step,
max_new_tokens, temperature, learning rate (constant), gradient clipping, seed, the KL coefficient (kl.coef ->
TRL's beta; TRL's RLOO can only subtract beta * sum_t (log pi - log pi_ref) from the reward, k1, where llm_pg
follows the recipe's kl.mode, k3 in the loss for the demo and AESLC) and the reward: TRL's reward function calls llm_pg's own reward module on the completion cut at the
recipe's first stop string (TRL has no stop strings; it keeps generating to EOS or max_new_tokens, so its
gradient also covers the text after the stop string).  Each system stops at the completion budget or the wall
limit, whichever comes first, and ships its last policy (no validation-based choice for either).
Held-out: llm_pg's evaluation of both policies and of the start (greedy, data.max_eval_samples test prompts, with
the metrics of meaning and perplexity under the start), and paired-bootstrap intervals of llm_pg - start,
TRL - start and llm_pg - TRL.  Results go to <work>/<name>/ and the table between `<!-- learning:NAME -->`
markers of --output.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

METRICS = ("rougeL", "bleu", "chrf", "embedding_similarity", "bertscore_f1", "perplexity", "length_words")


def recipe(args):
    from llm_pg.config.schema import load_config

    return load_config(args.config, args.set)


def run_llm_pg(args, out: Path, steps: int) -> tuple[Path, float, int]:
    """`llm-pg train` in a subprocess; at the wall limit SIGTERM (the step finishes and a checkpoint is saved).
    Its result is kept in <work>/llm_pg.json, and a later call with that file reuses it (e.g. after TRL failed)."""
    from llm_pg.runs.checkpoint import latest_checkpoint

    done = out.parent / "llm_pg.json"
    if done.is_file():
        kept = json.loads(done.read_text())
        return Path(kept["model"]), kept["wall_s"], kept["steps"]

    cmd = [sys.executable, "-m", "llm_pg", "train", "--config", args.config, *args.set,
           f"training.output_dir={out}", f"training.max_steps={steps}", "evaluation.before_training=false",
           "evaluation.after_training=false", "evaluation.eval_every=0", f"training.save_every={max(steps, 1)}",
           "--overwrite"]  # after the overrides: argparse ends the list of overrides at the first option
    t0 = time.perf_counter()
    with open(out.parent / "llm_pg.log", "w") as log:
        child = subprocess.Popen(cmd, stdout=log, stderr=log)
        try:
            child.wait(timeout=args.wall_limit)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGTERM)  # finishes the step, saves a checkpoint
            child.wait()
    wall = time.perf_counter() - t0
    if (out / "final" / "config.json").exists():
        model, done_steps = out / "final", steps
    elif (checkpoint := latest_checkpoint(out)) is not None:
        model, done_steps = checkpoint / "model", json.loads((checkpoint / "trainer_state.json").read_text())["step"]
    else:
        raise SystemExit(f"llm_pg ended without a model; see {out.parent / 'llm_pg.log'}")
    done.write_text(json.dumps({"model": str(model), "wall_s": wall, "steps": done_steps}))
    return model, wall, done_steps


def trl_child(args) -> None:
    """In its own process: TRL's RLOOTrainer on llm_pg's rendered prompts; writes <out>/final and trl.json."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from llm_pg.data.prompts import load_examples
    from llm_pg.models.policy import load_policy, load_tokenizer
    from llm_pg.rewards import RewardMix
    from llm_pg.runs.tracking import set_threads

    started, config, out = time.perf_counter(), recipe(args), Path(args.trl_child)
    set_threads(config.training.num_threads, 1)
    tokenizer, model = load_tokenizer(config.model), load_policy(config.model)
    examples = load_examples(config.data, config.data.train_split, tokenizer, config.data.max_train_samples)
    rows = []  # TRL tokenizes the text itself: it gets the text of llm_pg's prompt tokens (left-truncated ones too),
    for e in examples:  # and a prompt whose text does not tokenize back to the same ids is left out
        text = tokenizer.decode(e.prompt_ids)
        if tokenizer(text, add_special_tokens=False)["input_ids"] == e.prompt_ids:
            rows.append({"prompt": text, "references": e.references})
    print(f"TRL gets {len(rows)} of {len(examples)} training prompts (the others do not round-trip)", flush=True)
    assert len(rows) >= 0.95 * len(examples), "prompt tokens differ for more than 5 % of the prompts"
    reward_model, stops = RewardMix.from_config(config.reward), config.generation.stop_strings

    def reward(prompts, completions, references, **_):
        texts = [min((c.split(s)[0] for s in stops), key=len) if stops else c for c in completions]
        return list(reward_model(prompts, texts, references)[0])

    g, t = config.generation, config.training

    class WallLimit(TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):
            control.should_training_stop = control.should_training_stop or \
                time.perf_counter() - started > args.wall_limit

    trl_args = RLOOConfig(
        output_dir=str(out / "trainer"), use_cpu=True, bf16=False, gradient_checkpointing=False,
        per_device_train_batch_size=t.prompts_per_step * g.num_samples, num_generations=g.num_samples,
        gradient_accumulation_steps=1, max_completion_length=g.max_new_tokens, temperature=g.temperature,
        learning_rate=t.learning_rate, beta=config.kl.coef, num_iterations=1, max_steps=args.steps, logging_steps=1,
        save_strategy="no", report_to="none", seed=t.seed, dataloader_num_workers=0, max_grad_norm=t.max_grad_norm,
        lr_scheduler_type="constant", warmup_steps=0, disable_tqdm=True)
    trainer = RLOOTrainer(model=model, reward_funcs=[reward], args=trl_args, processing_class=tokenizer,
                          train_dataset=Dataset.from_list(rows), callbacks=[WallLimit()])
    trainer.train()
    trainer.save_model(str(out / "final"))
    tokenizer.save_pretrained(out / "final")
    (out / "trl.json").write_text(json.dumps({"wall_s": time.perf_counter() - started,
                                              "steps": trainer.state.global_step}))


def run_trl(args, out: Path, steps: int) -> tuple[Path, float, int]:
    """TRL in a child process (its own memory and threads); a finished one (trl.json and final/) is reused."""
    if (out / "trl.json").is_file() and (out / "final").is_dir():
        done = json.loads((out / "trl.json").read_text())
        return out / "final", done["wall_s"], done["steps"]
    cmd = [sys.executable, __file__, "--config", args.config, "--name", args.name, "--trl-child", str(out),
           "--steps", str(steps), "--wall-limit", str(args.wall_limit), *[f"--set={s}" for s in args.set]]
    with open(out.parent / "trl.log", "w") as log:
        subprocess.run(cmd, stdout=log, stderr=log, check=True)
    done = json.loads((out / "trl.json").read_text())
    return out / "final", done["wall_s"], done["steps"]


def evaluate(args, models: dict[str, Path], work: Path) -> dict:
    """Greedy held-out evaluation of every model with llm_pg's evaluation; generations written per system."""
    import dataclasses

    from llm_pg.data.prompts import load_examples
    from llm_pg.evaluation.heldout import evaluate_split, load_generations, raw_reward_mix
    from llm_pg.evaluation.meaning import load_meaning_metrics
    from llm_pg.models.policy import load_policy, load_tokenizer
    from llm_pg.rewards import RewardMix
    from llm_pg.runs.tracking import set_threads

    config = recipe(args)
    set_threads(config.training.num_threads, 1)
    tokenizer, start = load_tokenizer(config.model), load_policy(config.model)
    examples = load_examples(config.data, config.data.test_split, tokenizer, config.data.max_eval_samples)
    reward_model = raw_reward_mix(RewardMix.from_config(config.reward))
    meaning = load_meaning_metrics(config.evaluation.meaning_encoder)
    for name, path in models.items():
        output = work / f"eval_{name}.json"
        if not output.is_file():
            model = start if path is None else load_policy(dataclasses.replace(config.model, name_or_path=str(path),
                                                                               gguf_file=None))
            evaluate_split(config, model, tokenizer, examples, reward_model, start, output, f"eval {name}",
                           meaning)
    return {name: load_generations(work / f"eval_{name}.jsonl") for name in models}


PAIRS = (("start", "llm_pg"), ("start", "trl"), ("trl", "llm_pg"))  # (a, b): b - a


def differences(generations: dict, resamples: int) -> tuple[dict, dict]:
    """(scores per system, paired-bootstrap differences per pair and metric) of one seed's three evaluations."""
    from llm_pg.evaluation.bootstrap import compare_generations
    from llm_pg.evaluation.metrics import corpus_statistics

    diffs = {pair: {d.metric: d for d in compare_generations(generations[pair[0]], generations[pair[1]], resamples)}
             for pair in PAIRS}
    return {name: corpus_statistics(g).scores() for name, g in generations.items()}, diffs


def comparison_table(generations: dict, runs: dict, resamples: int) -> str:
    scores, diffs = differences(generations, resamples)
    head = ["| metric | start | llm_pg | TRL RLOO | llm_pg − start | TRL − start | llm_pg − TRL |",
            "|---|---|---|---|---|---|---|"]
    rows = []
    for m in (m for m in METRICS if m in scores["start"]):
        cells = [f"{scores[s][m]:.4f}" for s in ("start", "llm_pg", "trl")]
        for pair in diffs:
            d = diffs[pair].get(m)
            star = "**" if d is not None and d.p_value < 0.05 else ""
            cells.append(f"{star}{d.difference:+.4f}{star} [{d.ci_low:+.4f}, {d.ci_high:+.4f}]" if d else "–")
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    budget = " · ".join(f"{name}: {r['steps']} steps, {r['wall_s'] / 60:.1f} min" for name, r in runs.items())
    return "\n".join(head + rows + ["", f"Budget used: {budget}."])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--set", action="append", default=[], help="llm_pg override for both systems (repeatable)")
    parser.add_argument("--completions", type=int, default=768, help="sampled completions per system")
    parser.add_argument("--wall-limit", type=float, default=1200.0, help="seconds of training per system")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="run each seed (training.seed) into <work>/<name>/seed-<s>/ (finished systems are "
                             "reused) and write the across-seed table")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--work", default="runs/bench_learning")
    parser.add_argument("--output", default=None)
    parser.add_argument("--trl-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.trl_child:
        return trl_child(args)
    if args.seeds:
        per_seed = [run_seed(argparse.Namespace(**{**vars(args), "set": [*args.set, f"training.seed={seed}"]}),
                             Path(args.work) / args.name / f"seed-{seed}")[1] for seed in args.seeds]
        text = across_seeds_table(args.seeds, [differences(g, args.resamples)[1] for g in per_seed])
    else:
        text = run_seed(args, Path(args.work) / args.name)[0]
    print(text)
    if args.output:
        from sweep import _replace_section

        _replace_section(Path(args.output), args.name, text, tag="learning")


def run_seed(args, work: Path) -> tuple[str, dict]:
    """Both systems trained (or reused) and evaluated in `work`: (the one-seed table, the generations)."""
    config = recipe(args)
    steps = max(1, args.completions // (config.training.prompts_per_step * config.generation.num_samples))
    work.mkdir(parents=True, exist_ok=True)
    runs, models = {}, {"start": None}
    for name, runner in (("llm_pg", run_llm_pg), ("trl", run_trl)):
        model, wall, done = runner(args, work / name, steps)
        runs[name], models[name] = {"wall_s": wall, "steps": done}, model
    generations = evaluate(args, models, work)
    (work / "runs.json").write_text(json.dumps(runs, indent=1))
    text = comparison_table(generations, runs, args.resamples)
    (work / "table.md").write_text(text + "\n")
    return text, generations


def across_seeds_table(seeds: list[int], per_seed: list[dict]) -> str:
    """Each pair's difference per seed (its own paired bootstrap's point value) and the mean over seeds with its
    Student-t 95 % interval (n - 1 degrees of freedom; **bold** when the interval excludes 0)."""
    from llm_pg.evaluation.bootstrap import t_interval

    head = ["| metric | llm_pg − start per seed | mean [95 % t] | TRL − start per seed | mean [95 % t] | "
            "llm_pg − TRL per seed | mean [95 % t] |", "|---|---|---|---|---|---|---|"]
    rows = []
    for m in (m for m in METRICS if all(m in d[PAIRS[0]] for d in per_seed)):
        cells = []
        for pair in PAIRS:
            values = [d[pair][m].difference for d in per_seed]
            mean, low, high = t_interval(values)
            star = "**" if low > 0 or high < 0 else ""  # False for NaN: one seed has no interval
            interval = f"[{low:+.4f}, {high:+.4f}]" if len(values) > 1 else "(one seed: no interval)"
            cells += [" / ".join(f"{v:+.4f}" for v in values), f"{star}{mean:+.4f}{star} {interval}"]
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(head + rows + ["", f"Seeds {' '.join(map(str, seeds))}; each seed's own table (paired bootstrap by "
                                        "prompt): <work>/<name>/seed-<s>/table.md."])


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
