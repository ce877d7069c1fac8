"""Reward functions get private copies of their inputs (issue 24): a function that edits prompts, completions,
references or columns in place changes neither what the next component sees nor the loaded records."""

from __future__ import annotations

import json

import yaml
from helpers import cli_main, tiny_config_dict

from llm_pg.data.chat import SOURCE_PROMPT_COLUMN
from llm_pg.config.schema import RewardConfig
from llm_pg.rewards import RewardMix

EDITOR = '''
def edit(prompts, completions, meta, **kwargs):
    """Written for TRL: edits everything it is given, in place."""
    for p in prompts:
        p.append({"role": "user", "content": "EDIT"})
    for c in completions:
        c[0]["content"] += "EDIT"
    for m in meta:
        m["seen"] = m.get("seen", 0) + 1
    meta.append("extra")
    return [float(len(c[0]["content"]) % 3) for c in completions]


def edit_references(prompts, completions, references, **columns):
    """llm_pg's call: edits the references and the columns."""
    for r in references:
        r.append("EDIT")
    for values in columns.values():
        values.clear()
    return [0.0] * len(completions)
'''
SPY = '''
import json, os

def spy(prompts, completions, meta, **kwargs):
    with open(os.environ["SPY_LOG"], "a") as f:
        f.write(json.dumps({"prompts": prompts, "completions": completions, "meta": meta}) + "\\n")
    return [0.0] * len(completions)
'''


def test_an_editing_function_changes_neither_the_next_component_nor_the_callers_inputs(tmp_path):
    (tmp_path / "editor.py").write_text(EDITOR)
    seen = []

    def record(prompts, completions, references, **columns):
        seen.append({"references": references, **columns})
        return [0.0] * len(completions)

    model = RewardMix.from_config(RewardConfig(components=[
        {"name": "edit", "function": f"{tmp_path / 'editor.py'}:edit", "signature": "trl"},
        {"name": "refs", "function": f"{tmp_path / 'editor.py'}:edit_references"}]))
    model.components.append(type(model.components[0])("record", 1.0, record))
    conversation = [{"role": "user", "content": "hi"}]
    prompts, completions, references = ["<rendered>"], ["text"], [["ref"]]
    columns = {SOURCE_PROMPT_COLUMN: [conversation], "meta": [{"level": 1}]}
    for _ in range(3):  # as a record sampled in three steps
        model(prompts, completions, references, **columns)
    assert conversation == [{"role": "user", "content": "hi"}]  # the record's own conversation
    assert columns == {SOURCE_PROMPT_COLUMN: [[{"role": "user", "content": "hi"}]], "meta": [{"level": 1}]}
    assert prompts == ["<rendered>"] and completions == ["text"] and references == [["ref"]]
    assert len(seen) == 3 and all(s == {"references": [["ref"]], "meta": [{"level": 1}],
                                        SOURCE_PROMPT_COLUMN: [[{"role": "user", "content": "hi"}]]} for s in seen)


def test_edits_do_not_accumulate_in_the_records_over_a_training_run(tiny_model_dir, tmp_path, monkeypatch):
    """The issue's run: 8 steps over 4 conversational records; the second reward logs what it saw every step. Run
    through helpers.cli_main (`llm-pg train` in this process: the records are what is tested, not the process)."""
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"id": f"r{i}", "prompt": [{"role": "user", "content": text}], "reference": "the ball.",
             "meta": {"level": i}} for i, text in enumerate(["the cat sees", "a dog likes", "the girl finds",
                                                             "a boy eats"])]
    for split in ("train", "test"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "editor.py").write_text(EDITOR)
    (tmp_path / "spy.py").write_text(SPY)
    values = tiny_config_dict(tiny_model_dir, data, tmp_path / "run", **{
        "reward.components": [{"name": "edit", "function": f"{tmp_path / 'editor.py'}:edit", "signature": "trl"},
                              {"name": "spy", "function": f"{tmp_path / 'spy.py'}:spy", "weight": 0.0,
                               "signature": "trl"}],
        "training.max_steps": 8, "evaluation.after_training": True, "evaluation.reference_model": "none"})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(values))
    monkeypatch.setenv("SPY_LOG", str(tmp_path / "spy.jsonl"))  # read by the spy when it runs
    assert cli_main("train", "--config", tmp_path / "c.yaml") == 0
    calls = [json.loads(line) for line in (tmp_path / "spy.jsonl").read_text().splitlines()]
    assert len(calls) == 8 + 1  # every training step, then the test split after training
    originals = {r["prompt"][0]["content"]: r["meta"] for r in rows}
    for call in calls:
        for prompt, completion, meta in zip(call["prompts"], call["completions"], call["meta"]):
            assert len(prompt) == 1 and meta == originals[prompt[0]["content"]], call  # no edit carried over
            assert "EDIT" not in completion[0]["content"]
        assert len(call["meta"]) == len(call["completions"])
    evaluated = [json.loads(line) for line in (tmp_path / "run" / "eval_after.jsonl").read_text().splitlines()]
    assert all("EDIT" not in g["prompt"] and "EDIT" not in g["completion"] for g in evaluated)
