"""Runs that cannot learn anything do not finish silently (issue 24).

- Every update of a run has a policy gradient of exactly 0 (every completion cut and masked; dynamic sampling
  drops every group; every reward None, so 0): a warning at the first such step, then exit code 2 with one line
  naming the reason; no final/, the checkpoint and metrics kept.
- final_policy: best with a validation metric that never moves ships the last policy, with a warning, not step 1.
- The reward reaches held-out evaluation: soft_overlong_punishment gets the token counts there as in training.
- A hacking check or pass@k on a metric that is not measured: refused at config load when that is known then
  (a corpus or perplexity success_metric, a reference metric with prompt-only data: the command-line tests at the
  end of this file), else a warning once (an encoder that is missing at run time).
"""

from __future__ import annotations

import json
import logging

import pytest
import yaml
from helpers import assert_one_line_error, cli_main, run_cli, tiny_config, tiny_config_dict

from llm_pg.evaluation.metrics import Generation
from llm_pg.evaluation.heldout import sampled_scores

NONE_REWARD = "def not_applicable(completions, **kwargs):\n    return [None] * len(completions)\n"
CONSTANT_REWARD = "def constant(prompts, completions, references):\n    return [0.7] * len(completions)\n"

# case -> (overrides, words of the one error line)
CANNOT_LEARN = {
    "every completion cut and masked": (
        {"algorithm.mask_truncated_completions": True, "generation.max_new_tokens": 1},
        ["no update of steps 1..3 could change the policy", "every completion was cut at "
         "generation.max_new_tokens=1", "algorithm.mask_truncated_completions"]),
    "dynamic sampling drops every group": (
        {"algorithm.name": "grpo", "algorithm.dynamic_sampling": True,
         "reward.components": [{"name": "c", "function": "const.py:constant"}]},
        ["no update of steps 1..3", "algorithm.dynamic_sampling found no prompt group whose 2 rewards differ in 3 "
                                    "rounds"]),
    "every reward None": (
        {"reward.components": [{"name": "n", "function": "none.py:not_applicable", "signature": "trl"}]},
        ["no update of steps 1..3", "every completion's reward was 0 (a reward function's None counts 0)"]),
}


def _write_config(tmp_path, model_dir, data, **overrides):
    (tmp_path / "none.py").write_text(NONE_REWARD)
    (tmp_path / "const.py").write_text(CONSTANT_REWARD)
    for component in overrides.get("reward.components", []):
        if "function" in component:
            component["function"] = str(tmp_path / component["function"])
    values = tiny_config_dict(model_dir, data, tmp_path / "run", **overrides)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(values))
    return tmp_path / "c.yaml"


@pytest.mark.parametrize("case", list(CANNOT_LEARN))
def test_a_run_that_cannot_learn_ends_with_one_line_and_keeps_its_files(case, tiny_model_dir, tiny_data_file,
                                                                        tmp_path):
    overrides, needles = CANNOT_LEARN[case]
    config = _write_config(tmp_path, tiny_model_dir, tiny_data_file, **json.loads(json.dumps(overrides)))
    done = run_cli("train", "--config", config, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert_one_line_error(done.stderr, *needles, "no final/ was written")
    early = [line for line in done.stderr.splitlines() if "step 1: the update cannot change the policy" in line]
    assert len(early) == 1  # said at the first step, once
    run = tmp_path / "run"
    assert not (run / "final").exists()
    assert (run / "checkpoints" / "step-000003").is_dir()  # nothing lost: the steps' checkpoint and log stay
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps] == [1, 2, 3] and all(m["policy/grad_norm"] == 0.0 for m in steps)


def test_a_run_with_some_signal_still_finishes(tiny_model_dir, tiny_data_file, tmp_path):
    """The same constant reward without a baseline: every advantage is 0.7, the policy moves, the run ends
    normally (a constant reward is not refused; only updates that cannot change the policy are)."""
    from llm_pg.training.rl import train

    (tmp_path / "const.py").write_text(CONSTANT_REWARD)
    result = train(tiny_config(tiny_model_dir, tiny_data_file, tmp_path / "run", **{
        "algorithm.baseline": "none", "reward.components": [{"name": "c", "function": f"{tmp_path}/const.py:constant"}]}))
    assert result["final_step"] == 3 and (tmp_path / "run" / "final" / "model.safetensors").is_file()


# ------------------------------------------------------------------------------ final_policy: best, a flat metric


SPLIT_REWARD = '''
def train_only(prompts, completions, references, split):
    """Scores the training samples; every held-out sample gets 0 (e.g. a column that only the train split fills)."""
    return [float(len(c) % 5) if s == "train" else 0.0 for c, s in zip(completions, split)]
'''


def test_best_policy_by_a_metric_that_never_moves_ships_the_last_policy(tiny_model_dir, tmp_path, caplog):
    """In-process (helpers.cli_main): the policy shipped and the warning are tested, not the process."""
    data = tmp_path / "data"
    data.mkdir()
    words = ["the cat sees", "a dog likes", "the girl finds", "a boy eats", "the bird runs to", "my friend has"]
    for split in ("train", "validation", "test"):
        (data / f"{split}.jsonl").write_text("".join(
            json.dumps({"id": f"{split}{i}", "prompt": w, "reference": "the ball.", "split": split}) + "\n"
            for i, w in enumerate(words)))
    (tmp_path / "r.py").write_text(SPLIT_REWARD)
    values = tiny_config_dict(tiny_model_dir, data, tmp_path / "run", **{
        "reward.components": [{"name": "r", "function": f"{tmp_path / 'r.py'}:train_only"}],
        "evaluation.eval_every": 1, "evaluation.final_policy": "best", "evaluation.reference_model": "none"})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(values))
    assert cli_main("train", "--config", tmp_path / "c.yaml") == 0
    warned = [line for line in caplog.messages if "no policy was better than another" in line]
    assert len(warned) == 1 and "validation reward was 0 at every one of the 3 evaluations" in warned[0]
    selected = json.loads((tmp_path / "run" / "final" / "selected.json").read_text())
    assert selected == {"policy": "last", "step": 3}


def test_the_overlong_punishment_reaches_held_out_evaluation(tiny_model_dir, tiny_data_file, tmp_path):
    """Held-out evaluation knows each completion's token count: the only reward, soft_overlong_punishment, scores
    there exactly as in training (it was 0 for every held-out sample, so best/ was always the first evaluation)."""
    from llm_pg.data.prompts import load_examples
    from llm_pg.evaluation.heldout import evaluate_split, raw_reward_mix
    from llm_pg.models.policy import load_policy, load_tokenizer
    from llm_pg.rewards import RewardMix
    from llm_pg.rewards.shaping import SoftOverlongPunishment

    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path / "run", **{"reward.components": [
        {"name": "overlong", "type": "soft_overlong_punishment", "max_completion_len": 6, "soft_punish_cache": 3}]})
    tokenizer = load_tokenizer(config.model)
    examples = load_examples(config.data, "test", tokenizer)
    reward = raw_reward_mix(RewardMix.from_config(config.reward))
    _, generations = evaluate_split(config, load_policy(config.model), tokenizer, examples, reward)
    expected = [SoftOverlongPunishment(6, 3).value(g.tokens) for g in generations]
    assert [g.metrics["reward_overlong"] for g in generations] == expected
    assert len(set(expected)) > 1  # the tiny policy's completions have several lengths, some on the ramp


# ---------------------------------------------------------------------------------- metrics that are not measured


def test_a_hacking_check_on_an_unmeasured_metric_warns_once_and_never_watches_the_reward(
        tiny_model_dir, tiny_data_file, tmp_path, monkeypatch, caplog):
    """embedding_similarity with the encoder missing at run time (meaning_encoder: auto, wheel absent)."""
    import llm_pg.evaluation.periodic as periodic
    from llm_pg.training.rl import train

    monkeypatch.setattr(periodic, "load_meaning_metrics", lambda *args, **kwargs: None)
    watched = []
    real = periodic.RewardHackingDetector.update
    monkeypatch.setattr(periodic.RewardHackingDetector, "update",
                        lambda self, reward, metric: watched.append(metric) or real(self, reward, metric))
    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path / "run", **{
        "evaluation.eval_every": 1, "evaluation.hacking_metric": "embedding_similarity",
        "evaluation.meaning_encoder": "auto", "evaluation.reference_model": "none"})
    with caplog.at_level(logging.WARNING):
        result = train(config)
    said = [r.message for r in caplog.records if "is not measured on the validation split" in r.message]
    assert len(said) == 1 and "evaluation.hacking_metric: 'embedding_similarity'" in said[0]
    assert watched == []  # the detector never saw the reward (or anything else) in the metric's place
    assert result["evaluator"]["hacking_unmeasured"] is True


def test_pass_at_k_on_a_corpus_metric_is_refused_from_the_command_line(tiny_model_dir, tiny_data_file, tmp_path):
    from helpers import write_config_yaml

    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, tiny_data_file, tmp_path / "run")
    for metric, needles in (("bleu", ["evaluation.success_metric: 'bleu' is a corpus score", "per-sample metric"]),
                            ("perplexity", ["evaluation.success_metric: 'perplexity' is not measured with "
                                            "evaluation.reference_model: none"])):
        done = run_cli("eval", "--model", tiny_model_dir, "--config", config, "--output", tmp_path / "e.json",
                       "evaluation.do_sample=true", "evaluation.num_samples=2", "evaluation.success_threshold=0.5",
                       f"evaluation.success_metric={metric}", "evaluation.reference_model=none", cwd=tmp_path)
        assert done.returncode == 2
        assert_one_line_error(done.stderr, *needles)
        assert not (tmp_path / "e.json").exists() and not (tmp_path / "e.jsonl").exists()


def test_a_hacking_check_on_a_reference_metric_of_prompt_only_data_is_refused_at_load(tiny_model_dir,
                                                                                       tiny_data_file, tmp_path):
    """Prompt-only data has no references, so rougeL is never measured on the validation split: the check would
    watch nothing (it used to watch the reward instead). Known from the config alone, so refused before loading."""
    (tmp_path / "length.py").write_text("def reward(prompts, completions, references, **columns):\n"
                                        "    return [len(c) / 10 for c in completions]\n")
    values = tiny_config_dict(tiny_model_dir, tiny_data_file, tmp_path / "run", **{
        "data.reference_field": None, "evaluation.eval_every": 1, "evaluation.hacking_metric": "rougeL",
        "reward.components": [{"name": "length", "function": f"{tmp_path / 'length.py'}:reward"}]})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(values))
    done = run_cli("train", "--config", tmp_path / "c.yaml", cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert_one_line_error(done.stderr, "data.reference_field: null (prompt-only data), but evaluation.hacking_metric "
                                       "(rougeL) needs references", "set it to reward (or a reward_<name>)")
    assert not (tmp_path / "run").exists()
    # the same check is not on when it is not watched: eval_every 0 (no validation) loads and names no metric
    from llm_pg.config.schema import load_config

    assert load_config(tmp_path / "c.yaml", ["evaluation.eval_every=0"]).evaluation.hacking_metric == "rougeL"


def test_pass_at_k_on_a_metric_the_samples_lack_is_said(tiny_model_dir, tiny_data_file, tmp_path, caplog):
    from llm_pg.data.prompts import load_examples
    from llm_pg.evaluation.heldout import evaluate_split
    from llm_pg.models.policy import load_policy, load_tokenizer

    config = tiny_config(tiny_model_dir, tiny_data_file, tmp_path / "run", **{
        "evaluation.do_sample": True, "evaluation.num_samples": 2, "evaluation.success_threshold": 0.5,
        "evaluation.success_metric": "bertscore_f1", "evaluation.meaning_encoder": "auto"})
    tokenizer = load_tokenizer(config.model)
    examples = load_examples(config.data, "test", tokenizer, 3)
    with caplog.at_level(logging.WARNING):
        scores, _ = evaluate_split(config, load_policy(config.model), tokenizer, examples, meaning=None)
    assert not any(k.startswith("pass@") for k in scores)
    said = [r.message for r in caplog.records if "evaluation.success_metric: 'bertscore_f1' has no value" in r.message]
    assert len(said) == 1 and "on 6 of the 6 samples" in said[0] and "no pass@k" in said[0]


def test_success_on_a_lower_is_better_metric_is_at_or_below_the_threshold():
    """perplexity 2, 5, 9 and 1.5, 12, 30 for two prompts, threshold 6: successes 2 of 3 and 1 of 3."""
    rows = [("a", 2.0), ("a", 5.0), ("a", 9.0), ("b", 1.5), ("b", 12.0), ("b", 30.0)]
    gens = [Generation(p, i % 3, p, [], "c", {"perplexity": v}) for i, (p, v) in enumerate(rows)]
    scores = sampled_scores(gens, "perplexity", threshold=6.0)
    assert scores["pass@1"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert scores["pass@3"] == 1.0
