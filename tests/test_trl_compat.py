"""Reward functions written for TRL run unchanged: the call TRL makes, detection, None, and the CLI end to end.

tests/fixtures/trl_docs_*.py hold three reward functions copied verbatim from TRL's GRPOTrainer documentation.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from helpers import (CAN_LEARN, TINYSTORIES, assert_one_line_error, requires_tinystories, run_cli,
                     tiny_config_dict)

from llm_pg.data.chat import SOURCE_PROMPT_COLUMN
from llm_pg.config.schema import RewardConfig
from llm_pg.errors import ConfigError
from llm_pg.rewards.custom import FunctionReward, detect_signature
from llm_pg.rewards.mix import RewardError, RewardMix
from llm_pg.rewards.spec import parse_component

FIXTURES = Path(__file__).parent / "fixtures"
LENGTH = f"{FIXTURES / 'trl_docs_rewards.py'}:reward_func"
FORMAT = f"{FIXTURES / 'trl_docs_rewards.py'}:format_reward_func"
ACCURACY = f"{FIXTURES / 'trl_docs_accuracy.py'}:reward_func"


def reward(function: str, **options) -> FunctionReward:
    return FunctionReward(function, **options)


# ------------------------------------------------------------------------------------------------ the docs' own checks
def test_the_docs_examples_give_the_docs_values_through_llm_pgs_call():
    """The inputs and outputs printed in TRL's docs, called the way the reward model calls a component."""
    prompts, completions = ["The sky is", "The sun is"], [" blue.", " in the sky."]
    assert reward(LENGTH)(prompts, completions, [[], []]) == [6.0, 12.0]
    conversation = [[{"role": "assistant", "content": "What is the result of (1 + 2) * 4?"}],
                    [{"role": "assistant", "content": "What is the result of (3 + 1) * 2?"}]]
    answers = ["<think>The sum of 1 and 2 is 3, which we multiply by 4 to get 12.</think><answer>(1 + 2) * 4 = 12"
               "</answer>", "The sum of 3 and 1 is 4, which we multiply by 2 to get 8. So (3 + 1) * 2 = 8."]
    # llm_pg hands completions over as text; a conversational prompt makes them assistant messages, as TRL does
    assert reward(FORMAT)(["rendered 1", "rendered 2"], answers, [[], []],
                          **{SOURCE_PROMPT_COLUMN: conversation}) == [1.0, 0.0]
    boxed = ["The answer is \\boxed{42}", "\\boxed{7}", "no box"]
    assert reward(ACCURACY)(["p"] * 3, boxed, [[]] * 3, ground_truth=["42", "8", ""]) == [1.0, 0.0, 1.0]


@pytest.mark.parametrize("source, expected", [
    ("def f(completions, **kwargs): pass", "trl"),  # TRL's docs: llm_pg's 3 positional arguments cannot bind
    ("def f(completions, ground_truth, **kwargs): pass", "trl"),
    # llm_pg's call binds, but its third argument would land in a parameter named as TRL passes it
    ("def f(prompts, completions, completion_ids, ground_truth, solution, **kwargs): pass", "trl"),
    ("def f(prompts, completions, completion_ids, **kwargs): pass", "trl"),
    ("def f(prompts, completions, trainer_state=None, **kwargs): pass", "trl"),
    ("def f(**kwargs): pass", "trl"),
    ("def f(prompts, completions, references): pass", "llm_pg"),
    ("def f(prompts, completions, references, **columns): pass", "llm_pg"),
    ("def f(p, c, r): pass", "llm_pg"),  # today's call binds: kept whatever the names
    ("def f(prompts, completions, refs): pass", "llm_pg"),  # no **kwargs: TRL's keyword call could not bind it
    ("def f(prompts, completions, ground_truth, **kwargs): pass", "ambiguous"),  # both calls bind: refused
    ("def f(prompts, completions, solution, **kwargs): pass", "ambiguous"),
    ("def f(x): pass", "llm_pg"),  # neither call fits: today's error stays
])
def test_detection_switches_only_functions_that_llm_pgs_call_cannot_bind(source, expected):
    namespace: dict = {}
    exec(source, namespace)
    assert detect_signature(namespace["f"]) == expected


SPY = '''
calls = []
def spy(prompts, completions, **kwargs):
    calls.append({"prompts": prompts, "completions": completions, **kwargs})
    return [float(i) for i in range(len(completions))]
def native(prompts, completions, references, **columns):
    calls.append({"prompts": prompts, "references": references, **columns})
    return [0.0] * len(completions)
def ambiguous(prompts, completions, ground_truth, **kwargs):
    calls.append({"prompts": prompts, "completions": completions, "ground_truth": ground_truth, **kwargs})
    return [0.0] * len(completions)
'''


def calls(fn: FunctionReward) -> list[dict]:
    """What the spy module recorded (each FunctionReward imports its own copy of the file)."""
    return fn.fn.__globals__["calls"]


@pytest.fixture
def spy_file(tmp_path):
    path = tmp_path / "spy.py"
    path.write_text(SPY)
    return path


def test_trl_call_gets_source_prompts_assistant_messages_and_columns_but_no_references(spy_file):
    fn = reward(f"{spy_file}:spy")
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    values = fn(["<rendered a>", "<rendered b>"], ["x", "y"], [["ref a"], ["ref b"]],
                **{SOURCE_PROMPT_COLUMN: [conversation, "plain text"], "ground_truth": ["1", "2"]})
    assert values == [0.0, 1.0]
    [call] = calls(fn)
    assert call == {"prompts": [conversation, "plain text"],
                    "completions": [[{"role": "assistant", "content": "x"}], "y"], "ground_truth": ["1", "2"]}


def test_llm_pg_call_is_unchanged_and_never_sees_the_source_prompt_column(spy_file):
    fn = reward(f"{spy_file}:native")
    fn(["p"], ["c"], [["r"]], **{SOURCE_PROMPT_COLUMN: ["raw"], "level": [3]})
    [call] = calls(fn)
    assert call == {"prompts": ["p"], "references": [["r"]], "level": [3]}


def test_an_ambiguous_function_is_refused_until_the_component_says_which_call(spy_file):
    """(prompts, completions, ground_truth, **kwargs): llm_pg's call would hand the references to ground_truth, TRL's
    the records' ground_truth field; auto refuses in one line, signature: llm_pg / trl choose."""
    with pytest.raises(ConfigError, match=r"^reward.function.function: '.*:ambiguous' fits both calls: .* as its "
                                          r"'ground_truth'.*set signature: trl .* or signature: llm_pg"):
        reward(f"{spy_file}:ambiguous")
    llm_pg_fn, trl_fn = (reward(f"{spy_file}:ambiguous", signature=s) for s in ("llm_pg", "trl"))
    llm_pg_fn(["p"], ["c"], [["r"]])
    trl_fn(["p"], ["c"], [["r"]], ground_truth=["g"])
    [positional], [trl] = calls(llm_pg_fn), calls(trl_fn)
    assert positional["ground_truth"] == [["r"]] and positional["completions"] == ["c"]  # asked for: references
    assert trl["ground_truth"] == ["g"] and "references" not in trl


def test_trls_common_signature_with_completion_ids_is_refused_not_fed_the_references(tmp_path):
    """fn(prompts, completions, completion_ids, **kwargs) is a TRL function: requiring completion_ids, which llm_pg
    does not pass, it is refused when it loads (it used to get the references as completion_ids); with a default
    it runs with TRL's keyword call."""
    path = tmp_path / "ids.py"
    path.write_text("def by_ids(prompts, completions, completion_ids, **kwargs):\n"
                    "    return [1.0 for _ in completion_ids]\n"
                    "def optional_ids(prompts, completions, completion_ids=None, **kwargs):\n"
                    "    return [float(completion_ids is None) for _ in completions]\n")
    with pytest.raises(ConfigError, match=r"^reward.function.function: .* requires \['completion_ids'\], which "
                                          "llm_pg does not pass"):
        reward(f"{path}:by_ids")
    assert reward(f"{path}:optional_ids")(["p", "q"], ["c", "d"], [["r"], ["s"]]) == [1.0, 1.0]


def test_a_reference_field_reaches_a_trl_function_by_its_name_as_the_record_holds_it(tmp_path, tiny_model_dir):
    """TRL passes every dataset column but the prompt and `completion`: with data.reference_field: solution, TRL's
    `accuracy(completions, solution, **kwargs)` gets solution = ["42", ...], not the references [["42"], ...]."""
    from transformers import AutoTokenizer

    from llm_pg.config.schema import DataConfig
    from llm_pg.data.prompts import load_examples
    from llm_pg.rewards import reward_inputs

    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "solution": str(40 + i)}) + "\n" for i in range(4)))
    path = tmp_path / "acc.py"
    path.write_text("def accuracy(completions, solution, **kwargs):\n"
                    "    return [float(c == s) for c, s in zip(completions, solution)]\n")
    examples = load_examples(DataConfig(source=str(data), reference_field="solution", use_chat_template=False,
                                        split_fractions=[1.0, 0.0, 0.0]), "train",
                             AutoTokenizer.from_pretrained(tiny_model_dir))
    prompts, references, columns = reward_inputs(examples, 1)
    fn = reward(f"{path}:accuracy")
    assert fn(prompts, ["40", "0", "42", "43"], references, **columns) == [1.0, 0.0, 1.0, 1.0]
    assert references[0] == ["40"]  # llm_pg's references stay lists
    native = tmp_path / "native.py"  # llm_pg's own call still gets the references, and no hidden column
    native.write_text("def f(prompts, completions, references, **columns):\n"
                      "    assert not any(k.startswith('llm_pg:') for k in columns), columns\n"
                      "    return [float(c in r) for c, r in zip(completions, references)]\n")
    assert reward(f"{native}:f")(prompts, ["40", "0", "42", "43"], references, **columns) == [1.0, 0.0, 1.0, 1.0]


def test_signature_option_is_checked_and_required_trl_only_arguments_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"reward.components\[0\].signature: 'hf' is not one of"):
        parse_component(0, {"function": LENGTH, "signature": "hf"})
    assert parse_component(0, {"function": LENGTH}).options["signature"] == "auto"
    path = tmp_path / "ids.py"
    path.write_text("def by_ids(completions, completion_ids, **kwargs):\n    return [len(i) for i in completion_ids]\n")
    with pytest.raises(ConfigError, match=r"requires \['completion_ids'\], which llm_pg does not pass"):
        reward(f"{path}:by_ids")


def test_a_function_reading_completion_ids_from_kwargs_fails_with_one_line(tmp_path):
    path = tmp_path / "ids.py"
    path.write_text("def by_ids(completions, **kwargs):\n"
                    "    return [float(len(i)) for i in kwargs['completion_ids']]\n")
    config = RewardConfig(components=[{"name": "ids", "function": f"{path}:by_ids"}])
    with pytest.raises(RewardError, match=r"^reward 'ids' failed: KeyError: 'completion_ids' \(sample 0;"):
        RewardMix.from_config(config)(["p"], ["c"], [[]])


def test_none_means_not_applicable_and_counts_zero_in_the_weighted_reward(tmp_path):
    """TRL turns None into NaN and sums the weighted functions with nansum: a None adds 0 to R."""
    path = tmp_path / "multi.py"
    path.write_text("def math_only(completions, task, **kwargs):\n"
                    "    assert 'bad' not in task\n"
                    "    return [float(len(c)) if t == 'math' else None for c, t in zip(completions, task)]\n")
    config = RewardConfig(components=[{"name": "math", "function": f"{path}:math_only", "weight": 2.0},
                                      {"name": "length_penalty", "weight": 0.5}])
    model = RewardMix.from_config(config)
    rewards, parts = model(["p", "p"], ["abc", "abcd e"], [[], []], task=["math", "chat"])
    assert parts["math"][0] == 3.0 and math.isnan(parts["math"][1])  # not applicable: NaN among the values
    assert rewards == [2.0 * 3.0 + 0.5 * -1.0, 2.0 * 0.0 + 0.5 * -2.0]  # length_penalty: -(words)
    # one sample at a time (the path that finds the failing sample of a batch) keeps the None too
    model.on_error = "penalty"
    rewards, parts = model(["p"] * 3, ["abc", "ab", "x"], [[]] * 3, task=["math", "chat", "bad"])
    assert parts["math"][0] == 3.0 and math.isnan(parts["math"][1]) and parts["math"][2] == -1.0  # error_penalty
    assert rewards == [2.0 * 3.0 + 0.5 * -1.0, 0.5 * -1.0, 2.0 * -1.0 + 0.5 * -1.0]


def test_the_logged_mean_of_a_component_leaves_out_the_samples_it_does_not_apply_to(tmp_path):
    """TRL logs nanmean(rewards_per_func[:, i]): 'math' applied to 2 of 4 samples with values 3 and 5 logs 4, not 2;
    a step where it applies to none logs no reward/math."""
    import torch

    from llm_pg.rollout.sampling import Rollout
    from llm_pg.training.scoring import ScoredRollout, step_metrics

    def metrics(values: list[float]) -> dict:
        mask = torch.ones(4, 2)
        rollout = Rollout(torch.ones(4, 1, dtype=torch.long), torch.ones(4, 1), torch.ones(4, 2, dtype=torch.long),
                          mask, torch.zeros(4, 2), torch.zeros(4, dtype=torch.bool), ["a"] * 4, torch.arange(4))
        scored = ScoredRollout(rollout, torch.zeros(4), {"math": values, "length": [1.0, 2.0, 3.0, 4.0]},
                               torch.zeros(4, 2), None, torch.zeros(4, 2), torch.zeros(4, 2))
        return step_metrics(scored, {}, 1e-5, {"sample": 1.0, "update": 1.0, "step": 2.0})

    nan = float("nan")
    assert metrics([3.0, nan, 5.0, nan])["reward/math"] == 4.0
    assert "reward/math" not in metrics([nan] * 4) and metrics([nan] * 4)["reward/length"] == 2.5


# ------------------------------------------------------------------------------------------------- the CLI, unchanged
STORIES = ["Once upon a time, there was a little cat", "One day, a boy went to the park", "The sun was big and",
           "Tom and Lily were friends. They", "There was a small dog named Max", "The girl saw a red ball and"]


def write_split_folder(folder: Path, conversational: bool) -> Path:
    """train.jsonl / test.jsonl in TRL's prompt-completion layout (plus a ground_truth column)."""
    folder.mkdir()
    rows = []
    for i, story in enumerate(STORIES):
        prompt = [{"role": "user", "content": story}] if conversational else story
        completion = [{"role": "assistant", "content": "happy."}] if conversational else " happy."
        rows.append({"id": f"s{i}", "prompt": prompt, "completion": completion, "ground_truth": "" if i % 2 else "42"})
    for split, part in (("train", rows), ("test", rows[:4])):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return folder


def train_cli(tmp_path: Path, components: list[dict], conversational: bool) -> Path:
    data = write_split_folder(tmp_path / "data", conversational)
    out = tmp_path / "run"
    values = tiny_config_dict(TINYSTORIES, data, out, **{
        "reward.components": components, "generation.max_new_tokens": 8, "training.max_steps": 2,
        "evaluation.after_training": True, "evaluation.reference_model": "none",
        "evaluation.log_completions_every": 1, "evaluation.batch_size": 4, **CAN_LEARN})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(values))  # written as a user writes it: no signature option anywhere
    result = run_cli("train", "--config", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@requires_tinystories
def test_trl_docs_rewards_train_and_evaluate_unchanged_through_the_cli(tmp_path):
    out = train_cli(tmp_path, [{"name": "length", "function": LENGTH, "weight": 1.0},
                               {"name": "accuracy", "function": ACCURACY, "weight": 10.0}], conversational=False)
    truth = {s: "" if i % 2 else "42" for i, s in enumerate(STORIES)}
    trained = rows(out / "completions.jsonl")
    assert len(trained) == 2 * 2 * 2  # steps x prompts x samples
    for row in trained:  # R = 1 * len(completion) + 10 * [\boxed{} content == ground_truth]
        accuracy = 1.0 if truth[row["prompt"]] == "" and "\\boxed{" not in row["completion"] else 0.0
        assert row["reward"] == pytest.approx(len(row["completion"]) + 10.0 * accuracy, abs=1e-4), row
    evaluated = rows(out / "eval_after.jsonl")
    assert len(evaluated) == 4
    for g in evaluated:  # held-out evaluation calls them the same way (with the ground_truth column)
        assert g["metrics"]["reward_length"] == float(len(g["completion"]))
        assert g["metrics"]["reward_accuracy"] == (1.0 if truth[g["prompt"]] == "" else 0.0)
        assert g["references"] == [" happy."]  # TRL's `completion` column is the reference
    signatures = json.loads((out / "reward_signatures.json").read_text())
    assert signatures["length"].endswith("|signature:trl") and signatures["accuracy"].endswith("|signature:trl")


@requires_tinystories
def test_trl_docs_conversational_format_reward_runs_unchanged_through_the_cli(tmp_path):
    """format_reward_func reads completion[0]["content"]: it fails on text, so the run proves the message form."""
    import re

    out = train_cli(tmp_path, [{"name": "format", "function": FORMAT}], conversational=True)
    trained = rows(out / "completions.jsonl")
    assert trained and all(row["prompt"].startswith("User: ") and row["prompt"].endswith("Assistant:")
                           for row in trained)  # no chat template: chat.render_messages' transcript
    for row in trained:
        expected = 1.0 if re.match(r"^<think>.*?</think><answer>.*?</answer>$", row["completion"]) else 0.0
        assert row["reward"] == expected
    assert all("reward_format" in g["metrics"] for g in rows(out / "eval_after.jsonl"))


@requires_tinystories
def test_a_trl_function_that_breaks_gets_a_one_line_error(tmp_path):
    """Example 3 on conversational completions fails inside the user's code: one line naming the reward."""
    data = write_split_folder(tmp_path / "data", conversational=True)
    values = tiny_config_dict(TINYSTORIES, data, tmp_path / "run", **{
        "reward.components": [{"name": "accuracy", "function": ACCURACY}], "training.max_steps": 1})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(values))
    result = run_cli("train", "--config", config, cwd=tmp_path)
    assert result.returncode != 0
    assert_one_line_error(result.stderr, "reward 'accuracy' failed: TypeError")
