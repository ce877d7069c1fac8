"""`llm-pg` command line: train, sft, demo and eval.  Bad input prints one line and exits with code 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from importlib import resources
from pathlib import Path

from llm_pg.errors import LlmPgError

DEMO_CONFIG = "demo.yaml"


def demo_config_path() -> Path:
    """configs/demo.yaml: beside the package in a source checkout, inside it (llm_pg/configs) in a wheel."""
    source_tree = Path(__file__).resolve().parent.parent / "configs" / DEMO_CONFIG
    if source_tree.exists():
        return source_tree
    return Path(str(resources.files("llm_pg.configs") / DEMO_CONFIG))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llm-pg", description="Fine-tune causal LMs with policy-gradient RL.")
    p.add_argument("--debug", action="store_true", help="Show full tracebacks for errors.")
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="Train with a YAML config and dotted overrides.")
    train.add_argument("--config", required=True, help="YAML config file.")
    train.add_argument("--resume", action="store_true", help="Continue from the latest checkpoint in output_dir.")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. training.max_steps=10")
    sft = sub.add_parser("sft", help="Supervised warm start on the references (writes <sft.output_dir>/final).")
    sft.add_argument("--config", required=True, help="YAML config (model, data and the sft section).")
    sft.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. sft.max_steps=50")
    demo = sub.add_parser("demo", help="The offline demo: SmolLM2 learns to write docstring summaries.")
    demo.add_argument("--resume", action="store_true", help="Continue an interrupted demo run.")
    demo.add_argument("overrides", nargs="*", help="Overrides of configs/demo.yaml.")
    ev = sub.add_parser("eval", help="Greedy evaluation of a model on a split (corpus BLEU, ROUGE).")
    ev.add_argument("--model", required=True, help="Model folder or Hub id (e.g. RUN_DIR/final).")
    ev.add_argument("--config", required=True, help="YAML config naming the data.")
    ev.add_argument("--split", default=None, help="Split to evaluate (default: data.test_split).")
    ev.add_argument("--output", default="eval.json", help="Where to write the scores and generations.")
    ev.add_argument("overrides", nargs="*", help="section.key=value overrides.")
    return p


def _train(config_path, overrides, resume) -> dict:
    from llm_pg.config import load_config
    from llm_pg.trainer import train

    return train(load_config(config_path, overrides), resume=resume)


def _print_demo_summary(results: dict) -> None:
    before, after = results.get("eval_before"), results.get("eval_after")
    if not (before and after):
        return
    print(f"\nHeld-out test split ({after['num_samples']} functions, greedy decoding):")
    print(f"{'metric':<8} {'before':>8} {'after':>8} {'change':>8}")
    for key in ("rougeL", "bleu", "rouge1", "rouge2"):
        print(f"{key:<8} {before[key]:>8.4f} {after[key]:>8.4f} {after[key] - before[key]:>+8.4f}")
    print(f"Run folder: {results['run_dir']} (eval_before.json, eval_after.json, metrics.jsonl, final/)")


def _eval(args) -> None:
    import dataclasses

    from llm_pg.config import load_config
    from llm_pg.data import load_examples
    from llm_pg.evaluation import evaluate_examples
    from llm_pg.policy import load_policy, load_tokenizer
    from llm_pg.tracking import set_threads

    config = load_config(args.config, [f"model.name_or_path={args.model}", *args.overrides])
    set_threads(config.training.num_threads, 1)
    model_cfg = dataclasses.replace(config.model, gguf_file=config.model.gguf_file)
    tokenizer, model = load_tokenizer(model_cfg), load_policy(model_cfg)
    examples = load_examples(config.data, args.split or config.data.test_split, tokenizer,
                             config.data.max_eval_samples)
    scores = evaluate_examples(model, tokenizer, examples, config.generation, config.evaluation.batch_size,
                               config.evaluation.max_new_tokens, output=args.output)
    print(json.dumps(scores, indent=1))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if args.command == "train":
            _train(args.config, args.overrides, args.resume)
        elif args.command == "sft":
            from llm_pg.config import load_config
            from llm_pg.sft import train_sft

            print(f"SFT model: {train_sft(load_config(args.config, args.overrides))}")
        elif args.command == "demo":
            _print_demo_summary(_train(demo_config_path(), args.overrides, args.resume))
        elif args.command == "eval":
            _eval(args)
    except LlmPgError as e:
        if args.debug or os.environ.get("LLM_PG_DEBUG"):
            raise
        print(f"llm-pg: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
