"""Is the RLHF recipe's SFT long enough? Longer SFT runs against the pipeline's own, on its test prompts.

    python scripts/sft_length.py --config configs/dialogue_rlhf.yaml --pipeline runs/dialogue_rlhf \
        --out runs/sft_length --steps 120

From a finished `llm-pg rlhf` folder (its data/, reward models, sft/ and compare/samples_sft.jsonl): SFT for each
step count into OUT/sft<N> (the pipeline's SFT settings with sft.max_steps = N), sampled on the test prompts
exactly as the compare stage samples its policies (rlhf_evaluate.sample_policy: the same prompts, K, seed and
scoring by both reward models), each compared with the pipeline's SFT policy (rlhf_statistics.compare: gold and
proxy gains with their paired-bootstrap intervals, lengths), and the answer quality of all of them beside the
human answers (rlhf_quality.judge_answers: perplexity under the starting model, repetition, distinct-2, cut,
empty). Two more rows: the pipeline's SFT policy sampled again ("sftcopy": its samples must equal the compare
stage's, or the script does not sample as the pipeline does) and the starting model itself ("start": what
sampling at the same temperature gives before any SFT). Writes OUT/sft_length.json and prints it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np

from llm_pg.config.schema import load_config
from llm_pg.data.prompts import load_examples
from llm_pg.models.policy import load_policy
from llm_pg.pipelines.rlhf_configs import rl_config, sft_config
from llm_pg.pipelines.rlhf_evaluate import evaluation_setup, sample_policy
from llm_pg.pipelines.rlhf_quality import judge_answers
from llm_pg.pipelines.rlhf_statistics import PolicySamples, compare
from llm_pg.training.sft import train_sft


def read_samples(path: Path, k: int) -> PolicySamples:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    shape = (len(rows) // k, k)
    return PolicySamples(*(np.reshape([r[key] for r in rows], shape) for key in ("proxy", "gold", "tokens")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the pipeline's config")
    parser.add_argument("--pipeline", required=True, type=Path, help="the finished pipeline folder (rlhf.output_dir)")
    parser.add_argument("--out", required=True, type=Path, help="where the SFT runs and samples go")
    parser.add_argument("--steps", type=int, nargs="+", required=True, help="sft.max_steps of each longer SFT")
    parser.add_argument("overrides", nargs="*", help="dotted overrides of the config, as the pipeline was run")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    rl = rl_config(config, args.pipeline)
    folder, k = args.out / "compare", config.rlhf.compare_samples
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(args.pipeline / "compare" / "samples_sft.jsonl", folder / "samples_sft.jsonl")
    tokenizer, reward, _ = evaluation_setup(config, rl)
    examples = load_examples(rl.data, "test", tokenizer, rl.data.max_eval_samples)
    sft_samples, results = read_samples(folder / "samples_sft.jsonl", k), {}

    def sample_and_compare(name: str, model) -> None:
        samples = sample_policy(config, rl, name, model, tokenizer, examples, reward, None, folder)
        c = compare(sft_samples, samples, config.evaluation.bootstrap_resamples)
        results[name] = {key: c[key] for key in ("gold", "proxy", "length")}

    sample_and_compare("sftcopy", load_policy(dataclasses.replace(rl.model, name_or_path=str(
        args.pipeline / "sft" / "final"))))
    if (folder / "samples_sftcopy.jsonl").read_bytes() != (folder / "samples_sft.jsonl").read_bytes():
        raise SystemExit("the pipeline's SFT policy sampled here differs from its compare stage's samples")
    sample_and_compare("start", load_policy(config.model))
    for steps in args.steps:
        sft = sft_config(config, args.pipeline)
        sft = dataclasses.replace(sft, sft=dataclasses.replace(sft.sft, max_steps=steps))
        run = args.out / f"sft{steps}"
        if not (run / "final" / "config.json").exists():
            run.mkdir(parents=True, exist_ok=True)
            train_sft(sft, run)
        sample_and_compare(f"sft{steps}", load_policy(dataclasses.replace(rl.model, name_or_path=str(run / "final"))))
    names = ("sft", "sftcopy", "start", *(f"sft{steps}" for steps in args.steps))
    results["quality"] = judge_answers(config, rl.data, folder, names)
    (args.out / "sft_length.json").write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
