"""Data formats: TRL's prompt/completion, conversational prompts, `messages` records and prompt-only data.

One place (llm_pg/data/chat.py) turns a conversation into text; these tests check that load_examples, SFT and
evaluation read each layout the same way, and that a reference metric without references is a one-line error.
"""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import assert_one_line_error, run_cli, tiny_config, tiny_config_dict, word_tokenizer

from llm_pg.data.chat import SOURCE_PROMPT_COLUMN, end_of_answer_ids, render_messages
from llm_pg.config.schema import DataConfig
from llm_pg.data.prompts import load_examples
from llm_pg.data.chat import SOURCE_REFERENCE_PREFIX
from llm_pg.errors import ConfigError, DataError
from llm_pg.evaluation.metrics import Generation, corpus_statistics, text_metrics
from llm_pg.evaluation.heldout import score_generations, summarize
from llm_pg.training.sft import sft_pairs

TEMPLATE = ("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
            "{% if add_generation_prompt %}[assistant]{% endif %}")


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


@pytest.fixture(scope="module")
def chat_tokenizer(tokenizer):
    chat = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, pad_token="<pad>", eos_token="</s>",
                               unk_token="<unk>")
    chat.chat_template = TEMPLATE
    return chat


def load(tmp_path, rows, tokenizer, **kw):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_examples(DataConfig(source=str(path), split_fractions=[1.0, 0.0, 0.0], **kw), "train", tokenizer)


USER = {"role": "user", "content": "w1 w2"}
ANSWER = {"role": "assistant", "content": "w3"}
HISTORY = [{"role": "system", "content": "w9"}, USER, ANSWER, {"role": "user", "content": "w4"}]


# ------------------------------------------------------------------------------------------ TRL's prompt / completion
def test_trl_prompt_completion_columns_completion_is_the_reference(tmp_path, tokenizer):
    rows = [{"prompt": "w1 w2", "completion": "w3 w4", "level": 2},
            {"prompt": "w5", "completion": [{"role": "assistant", "content": "w6"}], "level": 3}]
    a, b = load(tmp_path, rows, tokenizer, use_chat_template=False)
    assert (a.prompt, a.references, b.references) == ("w1 w2", ["w3 w4"], ["w6"])
    # neither prompt nor completion is a column of its own; the reference travels as the record holds it under
    # SOURCE_REFERENCE_PREFIX + its field, for TRL-style rewards (which leave out TRL's `completion`)
    assert a.columns == {"level": 2, SOURCE_PROMPT_COLUMN: "w1 w2", SOURCE_REFERENCE_PREFIX + "completion": "w3 w4"}


def test_an_explicit_reference_field_wins_over_trls_completion(tmp_path, tokenizer):
    rows = [{"prompt": "w1", "completion": "w2", "reference": "w3"}]
    [e] = load(tmp_path, rows, tokenizer, use_chat_template=False)
    assert e.references == ["w3"] and e.columns["completion"] == "w2"


def test_a_conversational_completion_must_be_one_assistant_message(tmp_path, tokenizer):
    rows = [{"prompt": "w1", "completion": [ANSWER, {"role": "user", "content": "w2"}]}]
    with pytest.raises(DataError, match=r"record 0 field 'completion': a conversational completion is one "
                                        r"assistant message"):
        load(tmp_path, rows, tokenizer)


# --------------------------------------------------------------------------------------------- conversational prompts
def test_conversational_prompt_uses_the_chat_template_with_its_whole_history(tmp_path, chat_tokenizer):
    [e] = load(tmp_path, [{"prompt": HISTORY, "completion": "w5"}], chat_tokenizer, system_prompt="w8")
    # the conversation's own system turn is kept (data.system_prompt only fills in when there is none)
    assert e.prompt == "[system]w9[user]w1 w2[assistant]w3[user]w4[assistant]"
    assert e.prompt == render_messages(chat_tokenizer, HISTORY, add_generation_prompt=True)
    assert e.prompt_ids == chat_tokenizer(e.prompt, add_special_tokens=False)["input_ids"]
    assert e.columns[SOURCE_PROMPT_COLUMN] == HISTORY and e.references == ["w5"]
    [e] = load(tmp_path, [{"prompt": [USER], "completion": "w5"}], chat_tokenizer, system_prompt="w8")
    assert e.prompt == "[system]w8[user]w1 w2[assistant]"


def test_text_prompts_render_exactly_as_before(tmp_path, chat_tokenizer, tokenizer):
    [e] = load(tmp_path, [{"prompt": "w1", "reference": "w2"}], chat_tokenizer, system_prompt="w8",
               prompt_template="w7 {prompt}")
    assert e.prompt == chat_tokenizer.apply_chat_template(
        [{"role": "system", "content": "w8"}, {"role": "user", "content": "w7 w1"}], add_generation_prompt=True,
        tokenize=False)
    [e] = load(tmp_path, [{"prompt": "w1", "reference": "w2"}], tokenizer, prompt_template="w7 {prompt}")
    assert e.prompt == "w7 w1"  # no chat template: the filled template itself


def test_conversation_without_chat_template_is_a_role_transcript(tmp_path, tokenizer):
    [e] = load(tmp_path, [{"prompt": HISTORY[1:], "reference": "w5"}], tokenizer)
    assert e.prompt == "User: w1 w2\n\nAssistant: w3\n\nUser: w4\n\nAssistant:"


@pytest.mark.parametrize("prompt, kw, message", [
    ([{"role": "robot", "content": "w1"}], {}, r"message 0 has role 'robot'"),
    ([{"content": "w1"}], {}, r"record 0 field 'prompt': message 0 is"),
    ([], {}, r"must be a non-empty list"),
    ([USER], {"prompt_template": "w7 {prompt}"}, r"data.prompt_template: fills text prompts only"),
])
def test_bad_conversations_are_one_line_data_errors(tmp_path, tokenizer, prompt, kw, message):
    with pytest.raises(DataError, match=message):
        load(tmp_path, [{"prompt": prompt, "reference": "w2"}], tokenizer, **kw)


# ------------------------------------------------------------------------------------------------- `messages` records
def test_messages_record_last_assistant_turn_is_the_reference(tmp_path, chat_tokenizer):
    conversation = HISTORY + [{"role": "assistant", "content": "w5 w6"}]
    [e] = load(tmp_path, [{"messages": conversation, "topic": "w7"}], chat_tokenizer)
    assert e.references == ["w5 w6"]
    assert e.prompt == "[system]w9[user]w1 w2[assistant]w3[user]w4[assistant]"  # the history, multi-turn
    assert e.columns == {"topic": "w7", SOURCE_PROMPT_COLUMN: HISTORY}


def test_messages_record_ending_with_the_user_needs_a_reference_or_prompt_only(tmp_path, tokenizer):
    with pytest.raises(DataError, match=r"data.reference_field: record 0 has no field 'reference' .*or set "
                                        r"data.reference_field: null for prompt-only data"):
        load(tmp_path, [{"messages": HISTORY}], tokenizer)
    [e] = load(tmp_path, [{"messages": HISTORY}], tokenizer, reference_field=None)
    assert e.references == [] and e.columns[SOURCE_PROMPT_COLUMN] == HISTORY


def test_a_reference_twice_is_refused(tmp_path, tokenizer):
    with pytest.raises(DataError, match="also ends with an assistant turn; keep one reference"):
        load(tmp_path, [{"prompt": [USER, ANSWER], "reference": "w2"}], tokenizer)


def test_sft_learns_the_last_assistant_turn_after_the_rendered_history(tmp_path, chat_tokenizer):
    conversation = HISTORY + [{"role": "assistant", "content": "w5 w6"}]
    examples = load(tmp_path, [{"messages": conversation}], chat_tokenizer)
    [(prompt_ids, target)] = sft_pairs(examples, chat_tokenizer)
    assert prompt_ids == examples[0].prompt_ids
    assert target == chat_tokenizer.convert_tokens_to_ids(["w5", "w6"]) + [chat_tokenizer.eos_token_id]


# Templates as the model families write them (abridged to the turn structure), each with its end-of-turn token
END_OF_TURN_TEMPLATES = {
    "gemma": ("{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
              "{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
              "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}", "<end_of_turn>"),
    "chatml": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", "<|im_end|>"),
    "llama3": ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
               "{{ m['content'] | trim }}<|eot_id|>{% endfor %}", "<|eot_id|>"),
}


@pytest.mark.parametrize("family", list(END_OF_TURN_TEMPLATES))
def test_sft_targets_end_with_the_templates_end_of_turn_not_eos(family, tmp_path, chat_tokenizer):
    """Gemma ends a turn with <end_of_turn>, not its <eos>: an SFT target must end the way the template ends an
    assistant turn (issue 23), up to the first special token (the newline after it is the template's layout)."""
    template, end = END_OF_TURN_TEMPLATES[family]
    specials = ["<start_of_turn>", "<end_of_turn>", "<|im_start|>", "<|im_end|>", "<|start_header_id|>",
                "<|end_header_id|>", "<|eot_id|>"]
    tok = chat_tokenizer.__class__(tokenizer_object=chat_tokenizer.backend_tokenizer, pad_token="<pad>",
                                   eos_token="</s>", unk_token="<unk>")
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = template
    end_id = tok.convert_tokens_to_ids(end)
    assert end_id != tok.eos_token_id
    assert end_of_answer_ids(tok) == [end_id]
    assert end_of_answer_ids(tok, use_chat_template=False) == [tok.eos_token_id]
    examples = load(tmp_path, [{"messages": [USER, {"role": "assistant", "content": "w5 w6"}]}], tok)
    [(_, target)] = sft_pairs(examples, tok, end_of_answer_ids(tok))
    assert target == tok.convert_tokens_to_ids(["w5", "w6"]) + [end_id]


def test_a_template_with_no_special_token_after_the_answer_ends_with_eos(chat_tokenizer, tokenizer):
    assert end_of_answer_ids(chat_tokenizer) == [chat_tokenizer.eos_token_id]  # [role]content, nothing after
    assert end_of_answer_ids(tokenizer) == [tokenizer.eos_token_id]  # no template at all


# ------------------------------------------------------------------------------------------------------- prompt-only
def test_prompt_only_records_need_no_reference_field(tmp_path, tokenizer):
    examples = load(tmp_path, [{"prompt": "w1"}, {"prompt": "w2", "reference": "ignored"}], tokenizer,
                    reference_field=None)
    assert [e.references for e in examples] == [[], []]


def test_reference_metric_with_prompt_only_data_is_a_config_error(tmp_path):
    base = {"model_dir": tmp_path, "data_file": tmp_path / "d.jsonl", "output_dir": tmp_path / "o"}
    with pytest.raises(ConfigError, match=r"^data.reference_field: null \(prompt-only data\), but "
                                          r"reward.components\[0\] \(bleu\) compares completions with a reference"):
        tiny_config(**base, **{"data.reference_field": None, "reward.components": [{"name": "bleu"}]})
    with pytest.raises(ConfigError, match=r"reward.components\[1\] \(embedding\)"):
        tiny_config(**base, **{"data.reference_field": None, "reward.components": [
            {"name": "length_penalty"}, {"name": "embedding"}]})
    with pytest.raises(ConfigError, match=r"but evaluation.metric \(rougeL\) needs references"):
        tiny_config(**base, **{"data.reference_field": None, "reward.components": [{"name": "length_penalty"}],
                               "evaluation.metric": "rougeL"})
    ok = tiny_config(**base, **{"data.reference_field": None, "reward.components": [{"name": "length_penalty"}]})
    assert ok.data.reference_field is None
    assert tiny_config(**base, **{"data.reference_field": None, "data.eval_reference_field": "r",
                                  "reward.components": [{"name": "length_penalty"}], "evaluation.metric": "rougeL"})


def test_evaluation_without_references_reports_reward_based_metrics_only():
    class Reward:  # the reward model's call: (R, components)
        def __call__(self, prompts, completions, references, **columns):
            assert references == [[], []] and columns == {"level": [1, 2]}
            return [1.0, 0.5], {"len": [2.0, 1.0]}

    generations = [Generation("a", 0, "p", [], "w1 w2", columns={"level": 1}),
                   Generation("b", 0, "p", [], "w1", columns={"level": 2})]
    score_generations(generations, Reward())
    scores = summarize(generations)
    assert scores["reward"] == 0.75 and scores["reward_len"] == 1.5 and scores["length_words"] == 1.5
    for name in ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert name not in scores
    assert set(text_metrics("w1", [])) == {"length_words", "repeated_3gram_rate"}
    assert "bleu" in corpus_statistics([Generation("a", 0, "p", ["w1"], "w1")]).statistics  # with references: kept


# ---------------------------------------------------------------------------------------------------------- the CLI
def write_messages(path, with_answers: bool):
    subjects = ["the cat", "a dog", "the girl", "a boy", "the bird", "my friend"]
    rows = []
    for i, s in enumerate(subjects * 2):
        messages = [{"role": "user", "content": f"{s} sees"}]
        if i % 3 == 0:  # multi-turn history in a third of the records
            messages = [{"role": "user", "content": "a dog runs"}, {"role": "assistant", "content": "to the river."}]\
                + messages
        if with_answers:
            messages.append({"role": "assistant", "content": "the ball."})
        rows.append({"id": f"m{i}", "messages": messages})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_trains_and_evaluates_on_prompt_only_conversations(tmp_path, tiny_model_dir):
    data = write_messages(tmp_path / "chats.jsonl", with_answers=False)
    reward_file = tmp_path / "r.py"
    reward_file.write_text("def words(prompts, completions, references):\n"  # llm_pg's call: text completions
                           "    assert references == [[]] * len(completions)\n"
                           "    return [float(len(c.split())) for c in completions]\n")
    values = tiny_config_dict(tiny_model_dir, data, tmp_path / "run", **{
        "data.reference_field": None, "data.split_fractions": [0.5, 0.0, 0.5],
        "reward.components": [{"name": "words", "function": f"{reward_file}:words"}],
        "evaluation.after_training": True, "evaluation.reference_model": "none",
        # report.py's samples table reads references[0]; until it shows prompt-only rows, leave the table out
        "evaluation.report_samples": 0})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(values))
    result = run_cli("train", "--config", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads((tmp_path / "run" / "eval_after.json").read_text())["scores"]
    assert "reward_words" in scores and "rougeL" not in scores and "bleu" not in scores
    for g in map(json.loads, (tmp_path / "run" / "eval_after.jsonl").read_text().splitlines()):
        assert g["references"] == [] and g["prompt"].startswith("User: ")
        assert g["metrics"]["reward_words"] == float(len(g["completion"].split()))


def test_cli_reference_metric_on_prompt_only_data_is_one_line(tmp_path, tiny_model_dir):
    data = write_messages(tmp_path / "chats.jsonl", with_answers=False)
    values = tiny_config_dict(tiny_model_dir, data, tmp_path / "run", **{"data.reference_field": None})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(values))
    result = run_cli("train", "--config", config, cwd=tmp_path)
    assert result.returncode != 0
    assert_one_line_error(result.stderr, "data.reference_field: null", "reward.components[0] (rougeL)")


def test_cli_missing_reference_names_the_field_and_the_prompt_only_fix(tmp_path, tiny_model_dir):
    data = write_messages(tmp_path / "chats.jsonl", with_answers=False)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tiny_model_dir, data, tmp_path / "run")))
    result = run_cli("train", "--config", config, cwd=tmp_path)
    assert_one_line_error(result.stderr, "data.reference_field: record 0 has no field 'reference'",
                          "data.reference_field: null")


def test_cli_sft_on_messages_records(tmp_path, tiny_model_dir):
    data = write_messages(tmp_path / "chats.jsonl", with_answers=True)
    values = tiny_config_dict(tiny_model_dir, data, tmp_path / "run", **{
        "sft.output_dir": str(tmp_path / "sft"), "sft.max_steps": 2, "sft.batch_size": 2})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(values))
    result = run_cli("sft", "--config", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [json.loads(line)["sft/loss"] for line in (tmp_path / "sft" / "sft_metrics.jsonl").read_text().splitlines()
              if line.strip()]
    assert len(losses) == 2 and all(v > 0 for v in losses)
    assert (tmp_path / "sft" / "final" / "config.json").is_file()


# ------------------------------------------------------------------------------------------ damaged data files
def _damaged(tmp_path, kind):
    """A data.source that exists but cannot be read; returns (path, words the one line names)."""
    if kind == "json that is not JSON":
        (tmp_path / "d.json").write_text("{this is not json")
        return tmp_path / "d.json", ["cannot be read as json"]
    if kind == "an empty csv":
        (tmp_path / "d.csv").write_text("")
        return tmp_path / "d.csv", ["cannot be read as csv"]
    if kind == "a parquet that is not parquet":
        (tmp_path / "d.parquet").write_bytes(b"not parquet at all")
        return tmp_path / "d.parquet", ["cannot be read as parquet"]
    (tmp_path / "saved").mkdir()  # a saved-dataset folder whose dataset_info.json is garbage
    (tmp_path / "saved" / "dataset_info.json").write_text("garbage")
    return tmp_path / "saved", ["is not a readable saved dataset", "save_to_disk"]


@pytest.mark.parametrize("kind", ["json that is not JSON", "an empty csv", "a parquet that is not parquet",
                                  "a saved dataset with a garbage dataset_info.json"])
def test_a_damaged_data_file_is_one_line(kind, tmp_path, tokenizer):
    path, words = _damaged(tmp_path, kind)
    with pytest.raises(DataError) as refused:
        load_examples(DataConfig(source=str(path), split_fractions=[1.0, 0.0, 0.0]), "train", tokenizer)
    assert_one_line_error(f"llm-pg: error: {refused.value}", "data.source", str(path), *words)
