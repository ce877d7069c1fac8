"""Task data made offline (issue 27, part 2): `data.source: reasoning_gym:<task>` generates train / validation /
test from disjoint seed ranges with no question shared between splits, and GSM8K-style JSONL (`question`,
`answer`) loads with the default fields; both reach the verifier reward."""

from __future__ import annotations

import json
import socket
import sys

import pytest
from helpers import assert_one_line_error, run_cli, word_tokenizer, write_config_yaml

import llm_pg.data.tasks as tasks
from llm_pg.config.schema import DataConfig, RewardConfig, config_from_dict
from llm_pg.data.prompts import load_examples, load_records
from llm_pg.errors import ConfigError, DataError
from llm_pg.rewards import RewardMix, reward_inputs

# sums of two numbers 0..10: 121 questions, so seed ranges of a few dozen items collide
TINY = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1, "operators": ["+"],
        "allow_parentheses": False, "allow_negation": False}


@pytest.fixture
def rg():
    tasks._generate.cache_clear()
    yield pytest.importorskip("reasoning_gym", reason="reasoning-gym is the optional extra llm_pg[reason]")
    tasks._generate.cache_clear()


def raw_questions(rg, seed: int, n: int, options=TINY) -> list[str]:
    dataset = rg.create_dataset("basic_arithmetic", seed=seed, size=n, **options)
    return [dataset[i]["question"] for i in range(n)]


def test_splits_share_no_question_although_their_raw_seed_ranges_do(rg):
    train, validation, test = tasks.generate_splits("basic_arithmetic", [60, 15, 15], seed=3, options=TINY)
    assert (len(train), len(validation), len(test)) == (60, 15, 15)
    questions = [{r["question"] for r in split} for split in (train, validation, test)]
    assert [len(q) for q in questions] == [60, 15, 15]  # no repeats inside a split
    assert not questions[0] & questions[1] and not questions[0] & questions[2] and not questions[1] & questions[2]
    # the check is needed: drawn without it, train's seed range repeats held-out questions of this small task
    assert set(raw_questions(rg, 3, 60)) & set(raw_questions(rg, 3 + 2 * tasks.SPLIT_STRIDE, 15))


def test_each_split_comes_from_its_own_seed_range(rg):
    """Item i of split k is reasoning_gym's item i of seed task_seed + k * 10**8: the held-out questions come from
    seeds that training never used."""
    options = {"min_terms": 2, "max_terms": 3}
    splits = tasks.generate_splits("basic_arithmetic", [30, 8, 8], seed=11, options=options)
    for k, split in enumerate(splits):
        seed = 11 + k * tasks.SPLIT_STRIDE
        indices = [int(r["id"].rsplit("-", 1)[1]) for r in split]
        expected = raw_questions(rg, seed, max(indices) + 1, options)
        assert [r["question"] for r in split] == [expected[i] for i in indices]
        assert indices == sorted(indices) and indices[0] == 0
    ranges = [range(11 + k * tasks.SPLIT_STRIDE, 11 + k * tasks.SPLIT_STRIDE + 10 * 30 + 100) for k in range(3)]
    assert max(ranges[0]) < min(ranges[1]) and max(ranges[1]) < min(ranges[2])  # every seed train may draw


def test_held_out_splits_are_fixed_by_seed_and_do_not_move_with_the_train_size(rg):
    small = tasks.generate_splits("basic_arithmetic", [20, 10, 10], seed=5, options=TINY)
    tasks._generate.cache_clear()
    large = tasks.generate_splits("basic_arithmetic", [50, 10, 10], seed=5, options=TINY)
    assert small[1:] == large[1:] and small[0] == large[0][:20]  # a longer train only adds questions
    other_seed = tasks.generate_splits("basic_arithmetic", [20, 10, 10], seed=6, options=TINY)
    assert other_seed[2] != small[2]


def test_a_task_too_small_for_the_sizes_is_a_one_line_data_error(rg):
    with pytest.raises(DataError, match=r"data.task_sizes: reasoning_gym task 'basic_arithmetic' gave only \d+ "
                                        r"distinct train questions") as info:
        tasks.generate_splits("basic_arithmetic", [110, 10, 10], seed=0, options=TINY)  # 121 exist in all
    assert "\n" not in str(info.value)


def test_unknown_task_and_bad_options_are_data_errors(rg):
    with pytest.raises(DataError, match="data.source: 'arithmetics' is not a reasoning_gym task; choose one of"):
        tasks.generate_splits("arithmetics", [5, 5, 5], seed=0)
    with pytest.raises(DataError, match="data.task_options: reasoning_gym task 'basic_arithmetic' refused "
                                        r"\{'digits': 3\}: TypeError"):
        tasks.generate_splits("basic_arithmetic", [5, 5, 5], seed=0, options={"digits": 3})


def test_without_reasoning_gym_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import reasoning_gym raises ImportError
    tasks._generate.cache_clear()
    config = DataConfig(source="reasoning_gym:chain_sum")
    with pytest.raises(DataError, match=r"needs the reasoning-gym package: pip install 'llm_pg\[reason\]'"):
        load_records(config, "train")


@pytest.mark.parametrize("data, needle", [
    ({"task_sizes": [10, 10]}, "data.task_sizes: give three sizes (train, validation, test)"),
    ({"task_sizes": [10, 0, 10]}, "data.task_sizes: give three sizes"),
    ({"task_seed": -1}, "data.task_seed: must lie in [0, "),
    ({"task_seed": 2**32}, "data.task_seed: must lie in [0, "),
    ({"source": "reasoning_gym:"}, "data.source: name the task after 'reasoning_gym:'"),
])
def test_bad_task_settings_are_config_errors(data, needle):
    values = {"model": {"name_or_path": "tiny/model"}, "data": {"source": "reasoning_gym:chain_sum", **data}}
    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        config_from_dict(values)


def test_generation_needs_no_network(rg, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("reasoning_gym tried to open a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for task in ("basic_arithmetic", "chain_sum", "gsm_symbolic", "leg_counting"):
        train, validation, test = tasks.generate_splits(task, [6, 3, 3], seed=0)
        assert len(train) == 6 and all(r["question"] and r["answer"] for r in train + validation + test)


def verifier_values(examples, completions):
    model = RewardMix.from_config(RewardConfig(components=[{"name": "verifier"}]))
    prompts, references, columns = reward_inputs(examples, 1)
    return model(prompts, completions, references, **columns)[1]["verifier"]


def test_reasoning_gym_records_reach_the_verifier_with_their_answers(rg):
    config = DataConfig(source="reasoning_gym:basic_arithmetic", task_sizes=[4, 3, 3], use_chat_template=False,
                        prompt_template="{prompt} Answer in <answer></answer>.")
    examples = load_examples(config, "test", word_tokenizer())
    records = load_records(config, "test")
    assert [e.prompt for e in examples] == [f"{r['question']} Answer in <answer></answer>." for r in records]
    assert [e.references for e in examples] == [[r["answer"]] for r in records]
    right = [f"<answer>{r['answer']}</answer>" for r in records]
    assert verifier_values(examples, right) == [1.0, 1.0, 1.0]
    assert verifier_values(examples, ["<answer>0.5</answer>", "no answer", ""]) == [0.0, 0.0, 0.0]
    # reasoning_gym's own verifier agrees on the answers it generated
    dataset = rg.create_dataset("basic_arithmetic", seed=2 * tasks.SPLIT_STRIDE, size=3)
    assert all(dataset.score_answer(r["answer"], dataset[i]) == 1.0 for i, r in enumerate(records))


def test_gsm8k_style_jsonl_loads_question_and_answer_with_the_default_fields(tmp_path):
    rows = [{"question": "Janet has 3 eggs and buys 15. How many?", "answer": "3 + 15 = 18\n#### 18"},
            {"question": "A shirt costs $1,200 after a $34 discount. The price before?", "answer": "#### 1,234"}]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples = load_examples(DataConfig(source=str(tmp_path), use_chat_template=False), "train", word_tokenizer())
    assert [e.prompt for e in examples] == [r["question"] for r in rows]
    assert [e.references for e in examples] == [[r["answer"]] for r in rows]
    assert verifier_values(examples, ["so 18 eggs", "<answer>$1234</answer>"]) == [1.0, 1.0]
    assert verifier_values(examples, ["15", "<answer>34</answer> 1,234"]) == [0.0, 0.0]


def test_eval_cli_reports_strict_and_lenient_accuracy_on_generated_test_questions(rg, tiny_model_dir, tmp_path):
    """`llm-pg eval` on reasoning_gym test questions: reward_strict / reward_lenient / reward_format are the
    verifier's values on the written completions."""
    components = [{"name": "strict", "type": "verifier", "require_format": True},
                  {"name": "lenient", "type": "verifier", "weight": 0.0}, {"name": "format", "weight": 0.0}]
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, "unused", tmp_path / "run", **{
        "data.source": "reasoning_gym:basic_arithmetic", "data.task_sizes": [4, 3, 5], "data.task_seed": 7,
        "reward.components": components, "generation.max_new_tokens": 4})
    output = tmp_path / "eval.json"
    result = run_cli("eval", "--model", str(tiny_model_dir), "--config", str(config), "--output", str(output),
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    scores = json.loads(output.read_text())["scores"]
    rows = [json.loads(line) for line in output.with_suffix(".jsonl").read_text().splitlines()]
    model = RewardMix.from_config(RewardConfig(components=components))
    _, parts = model([r["prompt"] for r in rows], [r["completion"] for r in rows], [r["references"] for r in rows])
    assert len(rows) == 5 and [r["references"] for r in rows] == [[r["answer"]] for r in
                                                                   tasks.generate_splits(
                                                                       "basic_arithmetic", [4, 3, 5], 7)[2]]
    for name in ("strict", "lenient", "format"):
        assert [r["metrics"][f"reward_{name}"] for r in rows] == parts[name]
        assert scores[f"reward_{name}"] == pytest.approx(sum(parts[name]) / 5)


@pytest.mark.parametrize("task", ["basic_arithmetic", "spell_backward", "family_relationships"])
def test_compare_reasoning_gym_scores_with_the_tasks_own_verifier(rg, task):
    config = DataConfig(source=f"reasoning_gym:{task}", task_sizes=[2, 2, 3], use_chat_template=False)
    examples = load_examples(config, "test", word_tokenizer())
    model = RewardMix.from_config(RewardConfig(components=[
        {"name": "task", "type": "verifier", "compare": "reasoning_gym", "require_format": True}]))
    prompts, references, columns = reward_inputs(examples, 1)
    right = [f"<answer>{refs[0]}</answer>" for refs in references]
    assert model(prompts, right, references, **columns)[1]["task"] == [1.0, 1.0, 1.0]
    wrong = ["<answer>zzz</answer>", f"untagged {references[1][0]}", ""]
    assert model(prompts, wrong, references, **columns)[1]["task"] == [0.0, 0.0, 0.0]


def test_a_task_without_one_right_answer_is_scored_by_its_own_verifier(rg):
    """propositional_logic has no oracle answer (reasoning_gym's None): the reference is empty, and the task's
    scorer checks the conclusion against the premises (any well-formed wrong one still earns its 0.05)."""
    config = DataConfig(source="reasoning_gym:propositional_logic", task_sizes=[2, 2, 2], use_chat_template=False)
    examples = load_examples(config, "test", word_tokenizer())
    assert [e.references for e in examples] == [[""], [""]]
    prompts, references, columns = reward_inputs(examples, 1)
    model = RewardMix.from_config(RewardConfig(components=[{"name": "task", "type": "verifier",
                                                              "compare": "reasoning_gym"}]))
    premises = [m["premises"] for m in columns["metadata"]]
    completions = [f"<answer>{p[0]}</answer>" for p in premises]  # a premise follows from the premises
    scorer = rg.get_score_answer_fn("propositional_logic")
    expected = [scorer(p[0], {"answer": None, "metadata": m}) for p, m in zip(premises, columns["metadata"])]
    assert model(prompts, completions, references, **columns)[1]["task"] == expected and max(expected) > 0.05


def test_compare_reasoning_gym_needs_records_of_a_reasoning_gym_source(rg):
    model = RewardMix.from_config(RewardConfig(components=[{"name": "task", "type": "verifier",
                                                              "compare": "reasoning_gym"}]))
    with pytest.raises(Exception, match="compare: reasoning_gym scores with the task's own verifier, which needs "
                                        "records of a 'reasoning_gym:<task>' data source"):
        model(["q"], ["<answer>1</answer>"], [["1"]])


def test_bad_task_data_and_verifier_options_are_one_line_errors_on_the_command_line(rg, tiny_model_dir, tmp_path):
    config = write_config_yaml(tmp_path / "c.yaml", tiny_model_dir, "unused", tmp_path / "run", **{
        "data.source": "reasoning_gym:basic_arithmetic", "reward.components": [{"name": "verifier"}]})
    result = run_cli("eval", "--model", str(tiny_model_dir), "--config", str(config), "data.source=reasoning_gym:nope",
                     cwd=tmp_path)
    assert result.returncode != 0
    assert_one_line_error(result.stderr, "data.source: 'nope' is not a reasoning_gym task; choose one of")
    result = run_cli("eval", "--model", str(tiny_model_dir), "--config", str(config),
                     "reward.components=[{name: verifier, extract: xml}]", cwd=tmp_path)
    assert result.returncode != 0
    assert_one_line_error(result.stderr, "reward.components[0].extract: 'xml' is not one of")
