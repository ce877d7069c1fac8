"""The pipeline's last stage: sample both policies on the test prompts, score them, compare, write the report.

    compare/samples_sft.jsonl, samples_rl.jsonl   one line per completion: id, sample, completion, tokens,
    (samples_dpo.jsonl with rlhf.dpo)             truncated (cut at max_new_tokens), proxy, gold (and kl for RL
                                                  and DPO)
    compare/validation_start.json                 the SFT policy's proxy and gold on the validation prompts
    comparison.json                               rlhf_statistics.compare's result (RL vs SFT), and with rlhf.dpo
                                                  under "dpo_vs_sft" the same for DPO vs SFT (its "rl_*" keys are
                                                  then the DPO policy's) and under "rl_vs_dpo" RL against DPO
                                                  (with rlhf.choose, under "rl_choice": rl/choice.json, the
                                                  candidates' validation numbers and the chosen one); under
                                                  "quality" every policy's answer quality (perplexity under the
                                                  starting model, repetition, distinct-2, cut and empty answers)
                                                  beside the human answers' (rlhf_quality.py)
    report.md                                     the stages' numbers, proxy and gold during RL, the comparison
    plots/proxy_vs_gold.png                       proxy and gold mean score against RL steps
    comparison.json "frontier"                    with rlhf.frontier_steps: the policies kept at those steps (and the
    (compare/samples_<method>_step<N>.jsonl)      final ones) scored as above, gold gain against KL, RL - DPO at
                                                  matched KL (rlhf_frontier.py)

The completions are drawn as training draws them (rollout.sample at generation.temperature, K =
rlhf.compare_samples per prompt), so the KL below is an estimate of KL(pi_RL || pi_SFT) and not of greedy text.
Every policy samples from the same seed, so RL's numbers are the same with or without the DPO arm.
The rl stage's choice among candidate settings (rlhf.choose, rlhf_choose.py) samples and scores the validation
prompts with the same functions (evaluation_setup, sample_policy).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import set_seed

from llm_pg.pipelines.rlhf_frontier import final_step, frontier, frontier_line, frontier_markdown, kept_policies
from llm_pg.pipelines.rlhf_statistics import (PolicySamples, choice_markdown, compare, markdown, rl_vs_dpo,
                                             rl_vs_dpo_markdown)

logger = logging.getLogger(__name__)
CHOICE = "choice.json"  # rl/choice.json: the RL settings chosen on the validation prompts (rlhf_choose.py)


@torch.no_grad()
def policy_samples(config, model, tokenizer, examples, reward, reference=None) -> tuple[PolicySamples, list[dict]]:
    """K completions of each example, scored by the proxy and the gold; with a reference, each completion's
    sum_t log pi - log pi_ref (k1, as training's policy/kl). Rows of the arrays: examples; columns: samples."""
    from llm_pg.rewards import reward_inputs
    from llm_pg.rollout.sampling import sample

    K, size = config.rlhf.compare_samples, config.evaluation.batch_size
    proxy, gold, lengths, truncated, kl, rows = [], [], [], [], [], []
    model.eval()
    for start in range(0, len(examples), size):
        batch = examples[start:start + size]
        rollout = sample(model, tokenizer, [e.prompt_ids for e in batch], config.generation, num_samples=K)
        prompts, references, columns = reward_inputs(batch, K)
        scored = reward.reward_batch(prompts, rollout.completions, references, columns, update=False,
                              lengths=rollout.lengths.tolist())
        proxy += scored.components["proxy"]
        gold += scored.components["gold"]
        lengths += rollout.lengths.tolist()
        truncated += rollout.truncated.tolist()
        if reference is not None:
            mask = rollout.completion_mask
            ref = reference.logprobs(rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, mask,
                                     temperature=config.generation.temperature, group_size=K)  # (N, T)
            kl += ((rollout.logprobs - ref) * mask).sum(1).tolist()  # (N,)
        rows += [{"id": batch[j // K].id, "sample": j % K, "completion": text} for j, text in
                 enumerate(rollout.completions)]
    for i, row in enumerate(rows):
        row.update(tokens=lengths[i], truncated=truncated[i], proxy=proxy[i], gold=gold[i],
                   **({"kl": kl[i]} if kl else {}))
    shape = (len(examples), K)
    return PolicySamples(np.reshape(proxy, shape), np.reshape(gold, shape), np.reshape(lengths, shape),
                         np.reshape(kl, shape) if kl else None), rows


def validation_at_start(rl_config, model, tokenizer, reward) -> dict:
    """The SFT policy on the validation prompts, evaluated as the periodic validation evaluates the RL policy (the
    same prompts, decoding and raw reward): step 0 of the proxy-vs-gold curve."""
    from llm_pg.evaluation.heldout import evaluate_split
    from llm_pg.evaluation.periodic import validation_examples

    examples = validation_examples(rl_config, tokenizer)
    scores, _ = evaluate_split(rl_config, model, tokenizer, examples, reward, desc="validation@0")
    return {f"eval/{k}": scores[k] for k in ("reward_proxy", "reward_gold")}


def evaluation_setup(config, rl_config) -> tuple:
    """(tokenizer, reward, SFT policy) of an evaluation of policies: the SFT policy's tokenizer (RL saves the same
    one), the pipeline's reward models with no shaping (raw_reward_mix), on config's threads."""
    from llm_pg.evaluation.heldout import raw_reward_mix
    from llm_pg.models.policy import load_policy, load_tokenizer
    from llm_pg.rewards import RewardMix
    from llm_pg.runs.tracking import set_threads

    set_threads(config.training.num_threads, 1)
    return (load_tokenizer(rl_config.model), raw_reward_mix(RewardMix.from_config(rl_config.reward)),
            load_policy(rl_config.model))


def sample_policy(config, rl_config, name: str, model, tokenizer, examples, reward, reference, folder: Path):
    """policy_samples of one policy from training.seed (the same sampling noise for every policy, so that sample k
    of two policies is paired), its rows written to folder/samples_<name>.jsonl."""
    set_seed(config.training.seed)
    samples, rows = policy_samples(rl_config, model, tokenizer, examples, reward, reference)
    (folder / f"samples_{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                                   encoding="utf-8")
    return samples


def run_comparison(config, rl_config, out: Path) -> dict:
    """The compare stage (see the module docstring); returns the comparison."""
    from llm_pg.data.prompts import load_examples
    from llm_pg.pipelines.rlhf_quality import judge_answers

    tokenizer, reward, sft_model = evaluation_setup(config, rl_config)
    examples = load_examples(rl_config.data, "test", tokenizer, rl_config.data.max_eval_samples)
    models = {"sft": sft_model, **trained_policies(config, rl_config, out)}
    start = validation_at_start(rl_config, sft_model, tokenizer, reward)
    (out / "compare" / "validation_start.json").write_text(json.dumps(start, indent=1) + "\n")
    samples = sample_policies(config, rl_config, out, models, tokenizer, examples, reward)
    kept = sample_frontier(config, rl_config, out, sft_model, tokenizer, examples, reward) \
        if config.rlhf.frontier_steps else None
    del sft_model, models  # the policies go before the quality judge (the starting model) comes: one at a time
    result = compare(samples["sft"], samples["rl"], config.evaluation.bootstrap_resamples)
    if result["warning"]:
        logger.warning("rlhf comparison: %s", result["warning"])
    if "dpo" in samples:
        result["dpo_vs_sft"] = compare(samples["sft"], samples["dpo"], config.evaluation.bootstrap_resamples)
        result["rl_vs_dpo"] = rl_vs_dpo(samples["dpo"], samples["rl"], config.evaluation.bootstrap_resamples)
    if (out / "rl" / CHOICE).is_file():  # rlhf.choose: which RL settings were chosen, on the validation prompts
        result["rl_choice"] = json.loads((out / "rl" / CHOICE).read_text())
    if kept is not None:
        result["frontier"] = frontier_result(config, out, samples, *kept)
    result["quality"] = judge_answers(config, rl_config.data, out / "compare", tuple(samples))
    (out / "comparison.json").write_text(json.dumps(result, indent=1) + "\n")
    write_rlhf_report(out, result)
    return {**_summary(result), **({f"dpo_{k}": v for k, v in _summary(result["dpo_vs_sft"]).items()}
                                   if "dpo_vs_sft" in result else {}),
            **({"frontier": frontier_line(result["frontier"])} if "frontier" in result else {}),
            "perplexity": {name: row["perplexity"] for name, row in
                           {"human": result["quality"]["human"], **result["quality"]["policies"]}.items()}}


def frontier_result(config, out: Path, samples: dict, kept: dict, missing: dict) -> dict:
    """comparison.json's "frontier" (rlhf_frontier.py): per method its kept policies' points, then its final one."""
    curves = {method: {**{f"step {step}": (step, s) for step, s in by_step.items()},
                       "final": (final_step(config, out, method), samples[method])} for method, by_step in kept.items()}
    return frontier(samples["sft"], curves, sorted(set(config.rlhf.frontier_steps)), missing,
                    config.evaluation.bootstrap_resamples)


def trained_policies(config, rl_config, out: Path) -> dict:
    """{name: model} of the RL policy (and with rlhf.dpo the DPO one) from their stages' final/."""
    from llm_pg.models.policy import load_policy

    trained = ("rl", "dpo") if config.rlhf.dpo else ("rl",)
    return {name: load_policy(dataclasses.replace(rl_config.model, name_or_path=str(out / name / "final")))
            for name in trained}


def sample_policies(config, rl_config, out: Path, models: dict, tokenizer, examples, reward) -> dict:
    """{name: PolicySamples} of every model ("sft" first: the others' KL reference) on the examples, each written
    to compare/samples_<name>.jsonl."""
    from llm_pg.rollout.reference import Reference

    return {name: sample_policy(config, rl_config, name, model, tokenizer, examples, reward,
                                None if name == "sft" else Reference(models["sft"]), out / "compare")
            for name, model in models.items()}


def _summary(result: dict) -> dict:
    return {"gold_gain": result["gold"]["gain"], "gold_gain_ci": result["gold"]["gain_ci"],
            "gold_win_rate": result["gold"]["win_rate"], "kl_to_sft": result["kl_to_sft"]}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def _rm_line(out: Path, half: str) -> str:
    path = out / f"rm_{half}" / "eval.json"
    if not path.is_file():
        return f"- {half} reward model: no held-out evaluation"
    r = json.loads(path.read_text())
    return (f"- {half} reward model: held-out pairwise accuracy {r['accuracy']:.3f} [95 % CI {r['ci'][0]:.3f}, "
            f"{r['ci'][1]:.3f}] on {r['pairs']} test pairs (longer answer wins: "
            f"{r['baselines']['longer']['accuracy']:.3f})")


def write_rlhf_report(out: Path, result: dict) -> Path:
    """report.md: the split, the two reward models, proxy vs gold during RL (plot), the comparison, the answers'
    quality."""
    from llm_pg.reporting import plots
    counts = json.loads((out / "data" / "split.json").read_text())["counts"]
    start = json.loads((out / "compare" / "validation_start.json").read_text())
    rows = [{"step": 0, **start}] + _read_jsonl(out / "rl" / "metrics.jsonl")  # step 0: the SFT policy
    (out / "plots").mkdir(exist_ok=True)
    figure = plots.plot_lines(rows, {"eval/reward_proxy": "proxy, validation prompts",
                                     "eval/reward_gold": "gold, validation prompts",
                                     "reward/proxy": "proxy, training samples", "reward/gold": "gold, training samples"},
                              "Proxy and gold reward model during RL", "score (each RM normalized)", out / "plots" / "proxy_vs_gold.png")
    lines = ["# RLHF pipeline report", "",
             f"Training pairs: {counts['train_pairs']} ({counts['validation']} set aside as validation prompts, "
             f"{counts['proxy']} for the proxy reward model, {counts['gold']} for the gold one, disjoint); test "
             f"pairs: {counts['test']}.", "", _rm_line(out, "proxy"), _rm_line(out, "gold"), "",
             "## Proxy and gold reward during RL", "",
             "RL maximizes the proxy; the gold reward model, trained on the other half of the pairs, is only "
             "measured. Over-optimization (Gao et al. 2022) shows as the proxy rising while the gold falls. Step 0 "
             "of the validation curves is the SFT policy, evaluated the same way.", ""]
    lines += [f"![proxy vs gold]({figure.relative_to(out)})" if figure else "No curve: RL logged no proxy or gold "
              "score (set evaluation.eval_every for the validation curve)."]
    if "rl_choice" in result:
        lines += ["", "## RL settings chosen on the validation prompts (rlhf.choose)", "",
                  choice_markdown(result["rl_choice"])]
    lines += ["", "## RL policy vs SFT policy (test prompts)", "", markdown(result)]
    if "dpo_vs_sft" in result:
        lines += ["", "## DPO policy vs SFT policy (test prompts)", "",
                  "DPO (the dpo section) learns from the proxy reward model's half of the pairs directly, with the "
                  "SFT policy as its reference; evaluated exactly as RL is, on the same prompts and sampling seed.", "",
                  markdown(result["dpo_vs_sft"], policy="DPO"), "## RL vs DPO (test prompts)", "",
                  "The two policies' completions of the same prompts, paired as above: RL's gain over DPO, raw and "
                  "at equal length (the regression's c, llm_pg/evaluation/length_control.py), and RL's win rate.", "",
                  rl_vs_dpo_markdown(result["rl_vs_dpo"])]
    if "frontier" in result:
        lines += ["", "## Gold gain against KL to SFT: the frontier (rlhf.frontier_steps)", "",
                  "A policy further from SFT can score more just by moving further, so RL and DPO are compared at "
                  "matched KL (Gao et al. 2022; Rafailov et al. 2023, fig. 2): the policies kept along each run, "
                  "scored as the final ones (docs/reward_model.md, \"The frontier\").", "",
                  frontier_markdown(result["frontier"])]
    if "quality" in result:
        from llm_pg.pipelines.rlhf_quality import quality_markdown

        lines += ["", "## Answer quality (test prompts)", "",
                  "Is the text coherent? The SFT policy's answers beside what people wrote (a perplexity far above "
                  "the human answers' means SFT has not learned to write yet: more sft.max_steps), and whether RL "
                  "(or DPO) made them less fluent, more repetitive, or cut or empty more often (docs/reward_model.md, "
                  "\"Answer quality\").", "", quality_markdown(result["quality"])]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def sample_frontier(config, rl_config, out: Path, sft_model, tokenizer, examples, reward) -> tuple[dict, dict]:
    """Every kept policy sampled and scored as the final ones are (rlhf_evaluate.sample_policy into
    compare/samples_<method>_step<N>.jsonl), one in memory at a time: ({method: {step: PolicySamples}}, missing)."""
    from llm_pg.models.policy import load_policy
    from llm_pg.rollout.reference import Reference

    kept, missing = kept_policies(config, out)
    samples = {}
    for method, folders in kept.items():
        samples[method] = {}
        for step, folder in folders.items():
            model = load_policy(dataclasses.replace(rl_config.model, name_or_path=str(folder)))
            samples[method][step] = sample_policy(config, rl_config, f"{method}_step{step}", model, tokenizer,
                                                  examples, reward, Reference(sft_model), out / "compare")
            del model
    return samples, missing
