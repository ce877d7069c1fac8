"""Preference pairs: the three formats, HH-RLHF transcript splitting on real rows, rendering, and bad data as one
line through the CLI."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import SHARED, assert_one_line_error, run_cli

from llm_pg.errors import DataError
from llm_pg.data.preferences import (ASSISTANT, PairFields, Rendering, join_answer, load_pairs, parse_pair,
                                    split_transcript)

HH = SHARED / "data" / "hh-rlhf-harmless"
requires_hh = pytest.mark.skipif(not (HH / "train.jsonl").exists(), reason="../shared/data/hh-rlhf-harmless is absent")


def hh_rows(split: str) -> list[dict]:
    return [json.loads(line) for line in (HH / f"{split}.jsonl").read_text().splitlines()]


def naive_prompt(transcript: str) -> str:
    return transcript[:transcript.rindex(ASSISTANT)]


@requires_hh
def test_multi_turn_row_splits_into_history_and_last_answers():
    row = hh_rows("train")[0]  # "what are some pranks with a pen i can do?" ... three Human turns
    prompt, chosen, rejected = split_transcript(row["chosen"], row["rejected"], "train line 1")
    assert [m["role"] for m in prompt] == ["user", "assistant", "user", "assistant", "user"]
    assert prompt[0]["content"] == "what are some pranks with a pen i can do?"
    assert prompt[2]["content"] == "yep"
    assert prompt[-1]["content"] == "okay some of these do not have anything to do with pens"
    assert chosen.startswith("No, sorry!  All of these involve a pen") and row["chosen"].endswith(chosen)
    assert row["rejected"].endswith(rejected) and chosen != rejected


@requires_hh
def test_answers_that_share_a_prefix_split_at_the_turn_not_where_they_differ():
    row = hh_rows("train")[366]  # both answers begin "The John Birch Society is a "
    prompt, chosen, rejected = split_transcript(row["chosen"], row["rejected"], "train line 367")
    assert chosen.startswith("The John Birch Society is a far-right")
    assert rejected.startswith("The John Birch Society is a political group")
    assert prompt[-1]["role"] == "user" and naive_prompt(row["chosen"]) == naive_prompt(row["rejected"])


@requires_hh
def test_an_answer_that_contains_a_fake_turn_stays_whole():
    """train line 1255: the chosen answer itself writes '  Human: ...' and a later '\\n\\nAssistant:', so splitting
    each transcript at its own last marker would give the two answers different prompts."""
    row = hh_rows("train")[1254]
    assert naive_prompt(row["chosen"]) != naive_prompt(row["rejected"])
    prompt, chosen, rejected = split_transcript(row["chosen"], row["rejected"], "train line 1255")
    assert prompt[-1] == {"role": "user", "content": "Isn't that drag kings?"}
    assert chosen.startswith("No. Men who impersonate") and ASSISTANT in chosen
    assert rejected.startswith("A drag king is the opposite of a drag queen")


@requires_hh
@pytest.mark.parametrize("split, rows, naive_disagrees, multi_turn, empty, same_role_twice",
                         [("train", 1800, 2, 1276, 4, 3), ("test", 250, 3, 180, 0, 1)])
def test_every_real_pair_splits_and_only_the_known_rows_defeat_the_naive_rule(split, rows, naive_disagrees,
                                                                              multi_turn, empty, same_role_twice):
    """The counts docs/reward_model.md quotes."""
    pairs = load_pairs(str(HH), split, PairFields(format="transcript"))
    assert len(pairs) == rows
    assert all(p.prompt[-1]["role"] == "user" and p.chosen != p.rejected for p in pairs)
    assert sum(len(p.prompt) > 1 for p in pairs) == multi_turn
    assert sum(not p.chosen or not p.rejected for p in pairs) == empty
    assert sum(any(a["role"] == b["role"] for a, b in zip(p.prompt, p.prompt[1:])) for p in pairs) == same_role_twice
    raw = hh_rows(split)
    assert sum(naive_prompt(r["chosen"]) != naive_prompt(r["rejected"]) for r in raw) == naive_disagrees
    for pair, row in zip(pairs, raw):  # every answer is the tail of its own transcript
        assert row["chosen"].rstrip().endswith(pair.chosen) and row["rejected"].rstrip().endswith(pair.rejected)


def test_the_three_formats_give_the_same_pair():
    fields = PairFields()
    strings = parse_pair({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}, fields, "r0")
    conversational = parse_pair({"prompt": [{"role": "user", "content": "Hi?"}],
                                 "chosen": [{"role": "assistant", "content": "Hello."}],
                                 "rejected": {"role": "assistant", "content": "Go away."}}, fields, "r1")
    transcript = parse_pair({"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.",
                             "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away."}, fields, "r2")
    for pair in (strings, conversational, transcript):
        assert (pair.prompt, pair.chosen, pair.rejected) == ([{"role": "user", "content": "Hi?"}], "Hello.",
                                                            "Go away.")


def test_margin_field_is_read_per_pair():
    pair = parse_pair({"prompt": "q", "chosen": "a", "rejected": "b", "gap": 2}, PairFields(margin="gap"), "r0")
    assert pair.margin == 2.0
    with pytest.raises(DataError, match="r0 field 'gap' .rm.margin_field."):
        parse_pair({"prompt": "q", "chosen": "a", "rejected": "b"}, PairFields(margin="gap"), "r0")


def test_rendering_plain_and_with_a_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # no chat template: plain "User: ..." text
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}]
    assert Rendering().text(tokenizer, messages, "d") == "User: a\n\nAssistant: b\n\nUser: c\n\nAssistant: d"
    assert Rendering(system_prompt="s").prompt_text(tokenizer, messages[:1]) == "System: s\n\nUser: a\n\nAssistant:"
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}" \
                              "{% if add_generation_prompt %}<assistant>{% endif %}"
    assert Rendering().text(tokenizer, messages, "d") == "<user>a<assistant>b<user>c<assistant>d"
    assert Rendering(use_chat_template=False).text(tokenizer, messages[:1], " d") == "User: a\n\nAssistant: d"
    assert join_answer("Assistant:", "x") == "Assistant: x" and join_answer("<a>", "x") == "<a>x"


def test_identical_answers_are_dropped(tmp_path):
    rows = [{"prompt": "q", "chosen": "a", "rejected": "a"}, {"prompt": "q", "chosen": "a", "rejected": "b"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [p.rejected for p in load_pairs(str(tmp_path), "train", PairFields())] == ["b"]


BAD = [
    ('{"prompt": "q", "chosen": "a"}\n', "line 1: no field 'rejected'", "rm.rejected_field"),
    ('{"prompt": "q", "chosen": "a", "rejected": "b"}\n{"prompt": \n', "line 2 is not valid JSON", "train.jsonl"),
    ('{"prompt": [{"role": "robot", "content": "q"}], "chosen": "a", "rejected": "b"}\n', "line 1 field 'prompt'",
     "role 'robot'"),
    ('{"prompt": "q", "chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}], '
     '"rejected": "b"}\n', "line 1 field 'chosen'", "a list of that one message"),
    ('{"chosen": "Human: hi Assistant: a", "rejected": "Human: hi Assistant: b"}\n', "line 1",
     "share no '\\n\\nAssistant:' turn"),
    ('{"chosen": "hello\\n\\nAssistant: a", "rejected": "hello\\n\\nAssistant: b"}\n', "line 1",
     "must start with '\\n\\nHuman:'"),
    ('[1, 2]\n', "line 1 is a JSON list", "write each line as an object"),
]


@pytest.mark.parametrize("content, where, fix", BAD)
def test_bad_preference_data_is_one_line_through_the_cli(tmp_path, tiny_model_dir, content, where, fix):
    data = tmp_path / "pairs"
    data.mkdir()
    (data / "train.jsonl").write_text(content)
    config = tmp_path / "rm.yaml"
    rm = {"source": str(data), "eval_split": "", "output_dir": str(tmp_path / "o")}
    config.write_text(yaml.safe_dump({"model": {"name_or_path": str(tiny_model_dir)}, "rm": rm}))
    done = run_cli("rm", "--config", config, cwd=tmp_path)
    assert done.returncode == 2
    assert_one_line_error(done.stderr, "rm.source", str(data / "train.jsonl"), where, fix)
    assert not (tmp_path / "o").exists()  # a run that failed on its data leaves no folder behind
