"""`llm-pg` command line: train, sft, rm, dpo, rlhf, compare, demo, eval, report and push.  Bad input prints one line
and exits with code 2."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from importlib import resources
from pathlib import Path

from llm_pg.errors import LlmPgError

DEMO_CONFIG = "demo.yaml"
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES)


def demo_config_path() -> Path:
    """configs/demo.yaml: beside the package in a source checkout, inside it (llm_pg/configs) in a wheel."""
    source_tree = Path(__file__).resolve().parent.parent / "configs" / DEMO_CONFIG
    if source_tree.exists():
        return source_tree
    return Path(str(resources.files("llm_pg.configs") / DEMO_CONFIG))


class _OneLineParser(argparse.ArgumentParser):
    """argparse's usage errors in one line, as every other refusal (its default prints the whole usage first);
    the subcommands' parsers are of this class too."""

    def error(self, message: str):
        command = self.prog.removeprefix("llm-pg").strip()  # a subcommand's parser: its name
        self.exit(2, f"llm-pg: error: {command + ': ' if command else ''}{message}; see `{self.prog} --help`\n")


def _parser() -> argparse.ArgumentParser:
    p = _OneLineParser(prog="llm-pg", description="Fine-tune causal LMs with policy-gradient RL.")
    p.add_argument("--debug", action="store_true", help="Show full tracebacks for errors.")
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="Train with a YAML config and dotted overrides.")
    train.add_argument("--config", required=True, help="YAML config file.")
    train.add_argument("--resume", action="store_true", help="Continue from the latest checkpoint in output_dir.")
    train.add_argument("--overwrite", action="store_true", help="Replace the run in output_dir (deleted when this "
                       "run ends).")
    train.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. training.max_steps=10")
    sft = sub.add_parser("sft", help="Supervised warm start on the references (writes <sft.output_dir>/final).")
    sft.add_argument("--config", required=True, help="YAML config (model, data and the sft section).")
    sft.add_argument("--overwrite", action="store_true", help="Replace the model in sft.output_dir.")
    sft.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. sft.max_steps=50")
    rm = sub.add_parser("rm", help="Train a Bradley-Terry reward model on preference pairs (writes <rm.output_dir>/"
                                   "final, eval.json and report.md).")
    rm.add_argument("--config", required=True, help="YAML config with the rm section (docs/reward_model.md).")
    rm.add_argument("--resume", action="store_true", help="Continue from the latest checkpoint in rm.output_dir.")
    rm.add_argument("--overwrite", action="store_true", help="Replace the run in rm.output_dir.")
    rm.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. rm.max_steps=50")
    dpo = sub.add_parser("dpo", help="Direct preference optimization of the policy on preference pairs (rm.source; "
                                     "writes <dpo.output_dir>/final).")
    dpo.add_argument("--config", required=True, help="YAML config (model, data, the rm section's pairs, dpo).")
    dpo.add_argument("--overwrite", action="store_true", help="Replace the run in dpo.output_dir.")
    dpo.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. dpo.beta=0.1")
    _add_rlhf(sub)
    _add_evaluation(sub)
    return p


def _add_evaluation(sub) -> None:
    """demo, eval, report, push: the commands that run the demo or read a finished run."""
    demo = sub.add_parser("demo", help="The offline demo: SmolLM2 learns to write docstring summaries.")
    demo.add_argument("--resume", action="store_true", help="Continue an interrupted demo run.")
    demo.add_argument("--overwrite", action="store_true", help="Replace the previous demo run.")
    demo.add_argument("overrides", nargs="*", help="Overrides of configs/demo.yaml.")
    ev = sub.add_parser("eval", help="Evaluate a model on a split (BLEU, chrF, ROUGE, reward, perplexity, ...), "
                                     "or compare two evaluations (--compare A B).")
    ev.add_argument("--model", help="Model folder or Hub id (e.g. RUN_DIR/final or RUN_DIR/best).")
    ev.add_argument("--config", help="YAML config naming the data, reward and evaluation settings (a run's "
                                     "config.yaml works).")
    ev.add_argument("--split", default=None, help="Split to evaluate (default: data.test_split).")
    ev.add_argument("--output", default=None, help="Scores JSON (default eval.json); the generations go to the "
                                                   "same name with .jsonl. With --compare: the comparison JSON.")
    ev.add_argument("--compare", nargs=2, metavar=("A", "B"), help="Two eval .json/.jsonl files of the same "
                    "prompts: each metric's B - A with a paired-bootstrap 95%% CI and the p-value of a paired "
                    "randomization test over prompts.")
    ev.add_argument("--overwrite", action="store_true", help="Replace an earlier `llm-pg eval` output (or "
                    "comparison) of the same name (files of other commands and --compare's inputs never are).")
    ev.add_argument("--resamples", type=int, default=1000, help="With --compare: bootstrap resamples, and random "
                                                                 "trades of the randomization test (1000 is usual).")
    ev.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. evaluation.do_sample=true.")
    report = sub.add_parser("report", help="Rebuild RUN_DIR/report.md, report.html and plots/ from the run's files.")
    report.add_argument("run_dir", help="The run folder (training.output_dir).")
    push = sub.add_parser("push", help="Upload a run's policy, tokenizer, config, report and model card to the Hub.")
    push.add_argument("run_dir", help="The run folder (training.output_dir).")
    push.add_argument("--repo-id", default=None, help="user/name (default: the run's hub.repo_id).")
    visibility = push.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="private", action="store_true", default=None,
                            help="Create the repository as private (default: the run's hub.private).")
    visibility.add_argument("--public", dest="private", action="store_false", help="Create it as public.")
    push.add_argument("--revision", default=None, help="Branch to push to (default: the run's hub.revision, main).")
    push.add_argument("--folder", choices=["final", "best"], default=None, help="Which policy to push "
                                                                                "(default: the run's hub.folder).")


def _add_rlhf(sub) -> None:
    cmp = sub.add_parser("compare", help="Arms of one config (the config, control arms with the reward replaced, your "
                                         "variants) over several seeds, one run at a time; each arm's held-out "
                                         "change vs the start and vs each control (docs/compare.md).")
    cmp.add_argument("--config", required=True, help="YAML config every arm starts from.")
    cmp.add_argument("--output-dir", required=True, help="The comparison's folder: <arm>/seed-<s>/ run folders, "
                                                         "compare.json, report.md, report.html.")
    cmp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training.seed of each repetition "
                                                                              "(default 0 1 2).")
    cmp.add_argument("--controls", nargs="*", default=["random_reward", "shuffled_reward"],
                     help="Control arms: random_reward, shuffled_reward (default both); none or nothing for none.")
    cmp.add_argument("--arm", nargs="+", action="append", default=[], metavar="NAME KEY=VALUE",
                     help="An arm of your own: its name, then its settings up to the next option, e.g. --arm grpo "
                          "algorithm.name=grpo (repeat --arm for more).")
    cmp.add_argument("--resamples", type=int, default=1000, help="Paired-bootstrap resamples within a seed.")
    cmp.add_argument("--jobs", type=int, default=1, help="Runs trained at once (default 1); with more, set "
                                                         "training.num_threads so that jobs x threads <= cores; "
                                                         "each run's messages go to <output-dir>/logs/.")
    cmp.add_argument("overrides", nargs="*", help="section.key=value for every arm; put them right after --config "
                                                  "(after --arm they would be that arm's)")
    rlhf = sub.add_parser("rlhf", help="The pipeline: preference pairs -> SFT -> proxy and gold reward models -> RL "
                                       "-> comparison (writes <rlhf.output_dir>; docs/reward_model.md).")
    rlhf.add_argument("--config", required=True, help="YAML config (model, data, sft, rm, training, kl, rlhf, ...).")
    rlhf.add_argument("--resume", action="store_true", help="Continue an interrupted reward-model or RL stage from "
                                                            "its latest checkpoint (finished stages are always "
                                                            "skipped).")
    rlhf.add_argument("--overwrite", action="store_true", help="Replace the pipeline folder's earlier stages "
                                                               "(a changed input refuses to reuse them).")
    rlhf.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. training.max_steps=10")


def _compare(args) -> None:
    from llm_pg.pipelines.compare import make_plan, run_compare

    controls = [] if args.controls in ([], ["none"]) else args.controls
    plan = make_plan(args.config, args.overrides, args.seeds, controls, args.arm)
    summary = run_compare(plan, args.output_dir, args.resamples, args.jobs)
    for arm, entry in summary["arms"].items():  # the held-out reward here; every metric in the report
        against = {**entry["vs_control"], **({"config": entry["vs_config"]} if "vs_config" in entry else {})}
        for other, table in against.items():
            if "reward" in table:
                s = table["reward"]
                print(f"{arm} vs {other}, held-out reward: {s['mean']:+.4f}; {s['verdict']}")
    print(f"comparison: {Path(args.output_dir) / 'report.md'} (compare.json, report.html)")


# Each command reads its config before it imports its trainer (transformers, accelerate, the model code): a config
# error answers without loading them.


def _train(config_path, overrides, resume: bool, overwrite: bool, command: str = "train") -> dict:
    from llm_pg.config.schema import load_config

    if resume and overwrite:  # before the config is read
        raise LlmPgError(f"{command}: --resume continues the run in training.output_dir and --overwrite deletes it; "
                         "give one of them")
    config = load_config(config_path, overrides)
    from llm_pg.runs.folder import open_run

    with open_run(config, command, resume, overwrite):  # as llm_pg.train holds it: a refusal answers before the import
        from llm_pg.training.rl import train_in_folder

        return train_in_folder(config, resume)


def _sft(args) -> None:
    from llm_pg.config.schema import load_config

    config = load_config(args.config, args.overrides)
    from llm_pg.runs.folder import open_run

    out = Path(config.sft.output_dir)
    with open_run(config, "sft", overwrite=args.overwrite, folder=out):  # as train_sft holds it, before the import
        from llm_pg.training.sft import train_sft_in_folder

        final = train_sft_in_folder(config, out)
    print(f"SFT model: {final}")


def _dpo(args) -> None:
    from llm_pg.config.schema import load_config

    config = load_config(args.config, args.overrides)
    from llm_pg.checks import check_dpo
    from llm_pg.runs.folder import open_run

    check_dpo(config)
    out = Path(config.dpo.output_dir)
    with open_run(config, "dpo", overwrite=args.overwrite):  # as train_dpo holds it, before the import
        from llm_pg.training.dpo import train_dpo_in_folder

        final = train_dpo_in_folder(config, out)
    print(f"DPO policy: {final}")


def _rm(args) -> None:
    from llm_pg.config.schema import load_config

    if args.resume and args.overwrite:
        raise LlmPgError("rm: --resume continues the run in rm.output_dir and --overwrite deletes it; give one of them")
    config = load_config(args.config, args.overrides)
    from llm_pg.checks.reward_model import check_rm_config
    from llm_pg.runs.folder import open_run

    check_rm_config(config.rm)  # as train_reward_model checks and holds it: a refusal answers before the import
    with open_run(config, "rm", args.resume, args.overwrite):
        from llm_pg.training.reward_model import train_reward_model_in_folder

        result = train_reward_model_in_folder(config, args.resume)
    if "accuracy" in result:
        lo, hi = result["ci"]
        print(f"held-out pairwise accuracy {result['accuracy']:.3f} [95 % CI {lo:.3f}, {hi:.3f}] on {result['pairs']} "
              f"pairs (longer answer wins: {result['baselines']['longer']['accuracy']:.3f})")
    print(f"reward model: {result['final']}")


def _rlhf(args) -> None:
    from llm_pg.config.schema import load_config
    from llm_pg.pipelines.rlhf import run_pipeline

    if args.resume and args.overwrite:
        raise LlmPgError("rlhf: --resume continues the interrupted stage and --overwrite deletes the whole pipeline; "
                         "give one of them")
    config = load_config(args.config, args.overrides)
    results = run_pipeline(config, resume=args.resume, overwrite=args.overwrite)
    done = results.get("compare")
    if done:
        lo, hi = done["gold_gain_ci"]
        print(f"gold reward model: RL - SFT = {done['gold_gain']:+.3f} [95 % CI {lo:+.3f}, {hi:+.3f}], win rate "
              f"{done['gold_win_rate']:.3f}, KL to SFT {done['kl_to_sft']:.3f}")
        if "dpo_gold_gain" in done:
            lo, hi = done["dpo_gold_gain_ci"]
            print(f"gold reward model: DPO - SFT = {done['dpo_gold_gain']:+.3f} [95 % CI {lo:+.3f}, {hi:+.3f}], win "
                  f"rate {done['dpo_gold_win_rate']:.3f}, KL to SFT {done['dpo_kl_to_sft']:.3f}")
        if "frontier" in done:  # rlhf.frontier_steps
            print(done["frontier"])
        if "perplexity" in done:  # a compare stage done before answer quality existed has none
            print("answer perplexity under the starting model: " + ", ".join(
                f"{name if name == 'human' else name.upper()} {ppl:.2f}" for name, ppl in done["perplexity"].items()))
    print(f"pipeline folder: {config.rlhf.output_dir} (report.md, comparison.json)")


def _print_demo_summary(results: dict) -> None:
    before, after = results.get("eval_before"), results.get("eval_after")
    if not (before and after):
        return
    print(f"\nHeld-out test split ({after['num_samples']} functions, greedy decoding):")
    print(f"{'metric':<20} {'before':>8} {'after':>8} {'change':>8}")
    keys = ("rougeL", "bleu", "rouge1", "rouge2", "embedding_similarity", "bertscore_f1", "perplexity", "length_words")
    for key in (k for k in keys if k in before and k in after):  # meaning metrics need the MiniLM wheel
        print(f"{key:<20} {before[key]:>8.4f} {after[key]:>8.4f} {after[key] - before[key]:>+8.4f}")
    print(f"Run folder: {results['run_dir']} (report.html, report.md, eval_before/after.json, metrics.jsonl, final/)")


def _eval(args) -> None:
    from llm_pg.evaluation.commands import compare, evaluate

    if args.compare:
        if args.resamples < 1:
            raise LlmPgError(f"eval --resamples: must be >= 1 (1000 is usual), got {args.resamples}")
        compare(*args.compare, output=args.output, resamples=args.resamples, overwrite=args.overwrite)
    elif args.model and args.config:
        evaluate(args.model, args.config, args.split, args.output or "eval.json", args.overrides, args.overwrite)
    else:
        raise LlmPgError("eval: give --model and --config to evaluate, or --compare A.json B.json to compare")


def _report(args) -> None:
    from llm_pg.reporting.report import write_run_report

    paths = write_run_report(args.run_dir)
    print(f"wrote {paths['markdown']}, {paths['html']} and {len(paths['plots'])} plots")


def _push(args) -> None:
    import dataclasses

    from llm_pg.config.schema import load_config
    from llm_pg.reporting.hub import HubError, push_run

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise HubError(f"push: {run_dir} is not a run folder (no config.yaml)")
    hub = load_config(run_dir / "config.yaml").hub
    chosen = {"repo_id": args.repo_id, "private": args.private, "revision": args.revision, "folder": args.folder}
    hub = dataclasses.replace(hub, **{k: v for k, v in chosen.items() if v is not None})
    print(f"pushed: {push_run(run_dir, hub)}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "absl", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if args.command == "train":
            _train(args.config, args.overrides, args.resume, args.overwrite)
        elif args.command == "sft":
            _sft(args)
        elif args.command == "rm":
            _rm(args)
        elif args.command == "dpo":
            _dpo(args)
        elif args.command == "rlhf":
            _rlhf(args)
        elif args.command == "compare":
            _compare(args)
        elif args.command == "demo":
            _print_demo_summary(_train(demo_config_path(), args.overrides, args.resume, args.overwrite, "demo"))
        elif args.command == "eval":
            _eval(args)
        elif args.command == "report":
            _report(args)
        elif args.command == "push":
            _push(args)
    except LlmPgError as e:
        if args.debug or os.environ.get("LLM_PG_DEBUG"):
            raise
        print(f"llm-pg: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk or a read-only file system while writing a log, a report, an eval file
        if args.debug or os.environ.get("LLM_PG_DEBUG") or e.errno not in WRITE_ERRORS:
            raise
        print(f"llm-pg: error: {e.filename or 'a file'}: {e.strerror}; free some space or choose a writable "
              "output folder (a training run continues with --resume)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
