"""Data: every source, field mapping, templates, splits, truncation, and the demo's stdlib builder."""

import json

import pytest

from helpers import word_tokenizer
from llm_pg.data import demo as demo_data
from llm_pg.config.schema import DataConfig
from llm_pg.data.prompts import PromptSampler, load_examples, load_records
from llm_pg.errors import DataError

ROWS = [{"id": f"r{i}", "text": f"word{i} " * (i % 5 + 1), "ref": f"ref {i}", "refs": [f"a {i}", f"b {i}"]}
        for i in range(40)]


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cfg(source, **kw):
    return DataConfig(source=str(source), prompt_field="text", reference_field="ref", use_chat_template=False, **kw)


def test_single_file_splits_are_disjoint_deterministic_and_complete(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS)
    splits = {s: load_records(cfg(path), s) for s in ("train", "validation", "test")}
    ids = [r["id"] for rows in splits.values() for r in rows]
    assert sorted(ids) == sorted(r["id"] for r in ROWS)  # every row once
    assert len(splits["train"]) > len(splits["test"])
    assert load_records(cfg(path), "test") == splits["test"]


def test_csv_and_parquet_and_split_folder_and_saved_dataset(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([{k: v for k, v in r.items() if k != "refs"} for r in ROWS])
    ds.to_csv(tmp_path / "d.csv")
    ds.to_parquet(tmp_path / "d.parquet")
    for name in ("d.csv", "d.parquet"):
        assert sorted(r["id"] for s in ("train", "validation", "test")
                      for r in load_records(cfg(tmp_path / name), s)) == sorted(r["id"] for r in ROWS)
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", ROWS[:30])
    write_jsonl(folder / "test.jsonl", ROWS[30:])
    assert [r["id"] for r in load_records(cfg(folder), "test")] == [r["id"] for r in ROWS[30:]]
    datasets.DatasetDict({"train": ds.select(range(10)), "test": ds.select(range(10, 15))}).save_to_disk(
        str(tmp_path / "saved"))
    assert [r["id"] for r in load_records(cfg(tmp_path / "saved"), "test")] == [f"r{i}" for i in range(10, 15)]


def test_template_multi_reference_and_left_truncation(tmp_path, tokenizer, caplog):
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "w1 w2 w3 w4 w5 w6", "refs": ["x", "y"]}])
    config = DataConfig(source=str(path), prompt_field="q", reference_field="refs", use_chat_template=False,
                        prompt_template="w9 {q}", max_prompt_tokens=4, split_fractions=[1.0, 0.0, 0.0])
    [example] = load_examples(config, "train", tokenizer)
    assert example.prompt == "w9 w1 w2 w3 w4 w5 w6"
    assert example.prompt_ids == tokenizer.convert_tokens_to_ids(["w3", "w4", "w5", "w6"])  # kept the end
    assert example.references == ["x", "y"]
    assert "1 of 1 'train' prompts were longer" in caplog.text


def test_chat_template_is_applied(tmp_path, tokenizer):
    tokenizer = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer, pad_token="<pad>",
                                    eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}[assistant]"
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "w1", "r": "x"}])
    config = DataConfig(source=str(path), prompt_field="q", reference_field="r", system_prompt="w2",
                        split_fractions=[1.0, 0.0, 0.0])
    assert load_examples(config, "train", tokenizer)[0].prompt == "[system]w2[user]w1[assistant]"


@pytest.mark.parametrize("rows, kw, message", [
    ([{"x": "a", "ref": "b"}], {}, "data.prompt_field: record 0 has no field 'text'"),
    ([{"text": "a"}], {}, "data.reference_field: record 0 has no field 'ref'"),
    ([{"text": "a", "ref": 3}], {}, "must be a string or list of strings"),
    ([{"text": "a", "ref": "b"}], {"prompt_template": "{nope}"}, "placeholder 'nope'"),
])
def test_bad_records(tmp_path, tokenizer, rows, kw, message):
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=message):
        load_examples(cfg(path, split_fractions=[1.0, 0.0, 0.0], **kw), "train", tokenizer)


def test_missing_empty_and_malformed_sources(tmp_path, tokenizer):
    with pytest.raises(DataError, match="file not found"):
        load_records(cfg(tmp_path / "nope.jsonl"), "train")
    with pytest.raises(DataError, match="is empty"):
        load_examples(cfg(write_jsonl(tmp_path / "e.jsonl", [])), "train", tokenizer)
    (tmp_path / "bad.jsonl").write_text('{"text": 1}\nnot json\n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_records(cfg(tmp_path / "bad.jsonl"), "train")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match=r"\.txt files are not supported"):
        load_records(cfg(tmp_path / "x.txt"), "train")


def test_prompt_sampler_covers_each_epoch_and_resumes():
    sampler = PromptSampler(10, seed=3)
    epoch = sampler.next_batch(4) + sampler.next_batch(4)
    third = sampler.next_batch(4)  # crosses into epoch 1
    assert len(set(epoch + third[:2])) == 10
    clone = PromptSampler(10, seed=0)
    clone.load_state_dict(sampler.state_dict())
    assert clone.next_batch(5) == sampler.next_batch(5)
    # two processes split one global batch
    a, b = PromptSampler(10, 1), PromptSampler(10, 1)
    assert a.next_batch(2, 2, 0) + b.next_batch(2, 2, 1) == PromptSampler(10, 1).next_batch(4)


def test_demo_builder_strips_docstrings_and_splits_by_file(tmp_path):
    src = tmp_path / "lib"
    (src / "pkg").mkdir(parents=True)
    (src / "test").mkdir()
    (src / "pkg" / "mod.py").write_text(
        'def add(a, b):\n    """Return the sum of two numbers.\n\n    More text."""\n    return a + b\n\n'
        'def nodoc(x):\n    return x\n\n'
        'def bad(x):\n    """>>> bad(1)"""\n    return x\n')
    (src / "test" / "t.py").write_text('def f():\n    """Tests are skipped here."""\n')
    rows = demo_data.build_rows(str(src))
    assert [(r["id"], r["summary"]) for r in rows] == [("pkg/mod.py:1:add", "Return the sum of two numbers.")]
    assert rows[0]["code"] == "def add(a, b):\n    return a + b" and '"""' not in rows[0]["code"]
    assert rows[0]["split"] == demo_data.split_of("pkg/mod.py")


def test_first_sentence():
    assert demo_data.first_sentence("Return the value.  Then more.") == "Return the value."
    assert demo_data.first_sentence("Split a long\n    line over two lines.\n\nDetails.") == \
        "Split a long line over two lines."
    assert demo_data.first_sentence("Too short.") is None
    assert demo_data.first_sentence("a * b") is None


def test_demo_splits_are_cached_and_disjoint_by_file(tmp_path):
    splits = {s: demo_data.load_split(s, cache_dir=tmp_path) for s in demo_data.SPLITS}
    files = {s: {r["id"].split(":")[0] for r in rows} for s, rows in splits.items()}
    assert not files["train"] & files["test"] and not files["validation"] & files["test"]
    assert len(splits["test"]) > 50 and len(splits["train"]) > 10 * len(splits["test"]) / 2
    assert list(tmp_path.glob("stdlib_docstrings-*.jsonl"))
    assert demo_data.load_split("test", cache_dir=tmp_path) == splits["test"]
    with pytest.raises(ValueError, match="demo dataset has splits"):
        demo_data.load_split("dev", cache_dir=tmp_path)


def test_signature_lines_are_not_summaries():
    assert demo_data.first_sentence("D.pop(k[,d]) -> v, remove specified key and return the value.") is None
    assert demo_data.first_sentence("S.append(value) -- append value to the end of the sequence") is None
    assert demo_data.first_sentence("Return the dict for the current thread.") == "Return the dict for the current thread."


def test_eval_reference_field_and_prompt_field_cut(tmp_path):
    from helpers import build_tokenizer
    from llm_pg.config.schema import DataConfig
    from llm_pg.data.prompts import load_examples

    folder = tmp_path / "emails"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"id": "a", "document": "abcdefghij", "summary": "s1"}\n')
    (folder / "test.jsonl").write_text('{"id": "b", "document": "klmnopqrst", "summary": "s2", '
                                       '"references": ["r1", "r2", "r3"]}\n')
    tokenizer = build_tokenizer()
    config = DataConfig(source=str(folder), prompt_field="document", reference_field="summary",
                        eval_reference_field="references", max_prompt_field_chars=4, prompt_template="[{prompt}]",
                        use_chat_template=False)
    train, test = load_examples(config, "train", tokenizer), load_examples(config, "test", tokenizer)
    assert train[0].references == ["s1"] and test[0].references == ["r1", "r2", "r3"]
    assert train[0].prompt == "[abcd]" and test[0].prompt == "[klmn]"  # the template survives the cut
