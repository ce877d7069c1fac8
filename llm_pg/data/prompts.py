"""Data: records from a file, a saved dataset, the Hub or the demo -> tokenized prompts with their references."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from llm_pg.config.schema import DataConfig
from llm_pg.data import demo as demo_data
from llm_pg.data.tasks import is_task_source, load_task_split
from llm_pg.data.chat import (
    SOURCE_PROMPT_COLUMN,
    SOURCE_REFERENCE_PREFIX,
    check_messages,
    completion_text,
    is_conversation,
    render_messages,
    split_last_answer,
)
from llm_pg.errors import DataError

logger = logging.getLogger(__name__)
FILE_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
# The demo's prompt fields, used when data.source is 'demo' and the user kept the generic defaults.
DEMO_FIELDS = {"prompt_field": "code", "reference_field": "summary"}


@dataclass
class Example:
    """One prompt, ready for the policy."""

    id: str
    prompt: str  # the rendered text (template and chat template applied)
    prompt_ids: list[int]  # tokenized and left-truncated to data.max_prompt_tokens
    references: list[str]  # one or more references; [] for prompt-only data (data.reference_field: null)
    # the record's other fields, passed to rewards as **columns, and the prompt as given (chat.SOURCE_PROMPT_COLUMN)
    columns: dict = field(default_factory=dict)


def _read_file(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        rows = []
        with open(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                rows += _jsonl_row(path, line_no, raw)
        return rows
    import datasets

    try:
        return list(datasets.load_dataset(FILE_FORMATS[path.suffix], data_files=str(path), split="train"))
    except Exception as e:  # pyarrow and datasets raise many types for a damaged or empty file
        if _not_the_file(e):
            raise
        raise DataError(f"data.source: {path} cannot be read as {FILE_FORMATS[path.suffix]} ({_first_line(e)}); "
                        "fix the file or convert it to JSONL") from None


def _not_the_file(error: Exception) -> bool:
    """Errors that say nothing about the file: no memory, a full disk or quota (the datasets cache)."""
    return isinstance(error, MemoryError) or (isinstance(error, OSError) and error.errno in (errno.ENOSPC,
                                                                                           errno.EDQUOT))


def _first_line(error: Exception) -> str:
    """The innermost cause's first line (datasets wraps the parser's error in DatasetGenerationError)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _jsonl_row(path: Path, line_no: int, raw: bytes) -> list[dict]:
    """[the record on this line] ([] for a blank line), or a DataError naming the file, line and fix."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"data.source: {path} line {line_no} is not UTF-8 (byte {e.start} of the line is "
                        f"{raw[e.start]:#04x}); save the file as UTF-8") from None
    if not line.strip():
        return []
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"data.source: {path} line {line_no} is not valid JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise DataError(f"data.source: {path} line {line_no} is a JSON {type(row).__name__}, not an object; write "
                        'each line as {"prompt": ..., "reference": ...}')
    return [row]


def _split_rows(rows: list[dict], split: str, fractions: list[float], names: list[str]) -> list[dict]:
    """A deterministic split of one file's rows: each row's bucket comes from the md5 of its position and text."""
    cut_train, cut_val = fractions[0], fractions[0] + fractions[1]
    chosen = []
    for i, row in enumerate(rows):
        u = int(hashlib.md5(f"{i}:{json.dumps(row, sort_keys=True, default=str)}".encode()).hexdigest(), 16) / 16**32
        bucket = names[0] if u < cut_train else names[1] if u < cut_val else names[2]
        if bucket == split:
            chosen.append(row)
    return chosen


def load_records(config: DataConfig, split: str) -> list[dict]:
    """Raw records of one split from the configured source."""
    if config.source == "demo":
        return demo_data.load_split(split)
    if is_task_source(config.source):
        return load_task_split(config, split)
    path = Path(config.source).expanduser()
    names = [config.train_split, config.validation_split, config.test_split]
    if path.is_file():
        if path.suffix not in FILE_FORMATS:
            raise DataError(f"data.source: {path.suffix} files are not supported; use one of {sorted(FILE_FORMATS)}")
        if split not in names:  # one file is cut into these three by data.split_fractions
            raise DataError(f"data: split '{split}' is not one of {names}, the splits that data.split_fractions cuts "
                            f"{path.name} into")
        return _split_rows(_read_file(path), split, config.split_fractions, names)
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
            import datasets

            try:
                loaded = datasets.load_from_disk(str(path))
            except Exception as e:  # a damaged dataset_info.json or state.json, missing arrow files, ...
                if _not_the_file(e):
                    raise
                raise DataError(f"data.source: {path} is not a readable saved dataset ({_first_line(e)}); save it "
                                "again with save_to_disk, or give JSONL files") from None
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"data: split '{split}' not in {path} (it has {list(loaded)})")
                return list(loaded[split])
            return _split_rows(list(loaded), split, config.split_fractions, names)
        for suffix in FILE_FORMATS:
            if (path / f"{split}{suffix}").exists():
                return _read_file(path / f"{split}{suffix}")
        raise DataError(f"data.source: {path} has no {split}.jsonl/.csv/.parquet and is not a saved dataset")
    if path.suffix in FILE_FORMATS or config.source.startswith((".", "/", "~")) or config.source.count("/") > 1:
        raise DataError(f"data.source: file not found: {path}")
    return _load_hub(config, split)  # anything else is a Hub dataset id ('owner/name' or 'name')


def _load_hub(config: DataConfig, split: str) -> list[dict]:
    import datasets

    try:
        return list(datasets.load_dataset(config.source, config.hub_config, split=split))
    except Exception as e:  # the datasets library raises many types for a missing id or split
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise DataError(f"data.source: cannot load Hub dataset '{config.source}' split '{split}'{offline}: "
                        f"{first}") from None


def _field_names(config: DataConfig, records: list[dict]) -> tuple[str, str | None]:
    """(prompt_field, reference_field or None for prompt-only data): the configured fields, except where the generic
    defaults were kept and the records use other well-known names: the demo's, TRL's `messages` (no 'prompt' in
    any record), TRL's `completion` (no 'reference' in any record), and GSM8K's and reasoning_gym's `question` /
    `answer` (neither 'prompt' nor 'messages' / neither 'reference' nor 'completion' in any record).  Only a
    layout that would otherwise be a missing-field error is renamed, so data that loads today loads the same way."""
    prompt_field, reference_field = config.prompt_field, config.reference_field
    if config.source == "demo":
        prompt_field = DEMO_FIELDS["prompt_field"] if prompt_field == "prompt" else prompt_field
        reference_field = DEMO_FIELDS["reference_field"] if reference_field == "reference" else reference_field
    names = {name for r in records for name in r}
    if prompt_field == "prompt" and "prompt" not in names and "messages" in names:
        prompt_field = "messages"
    if reference_field == "reference" and "reference" not in names and "completion" in names:
        reference_field = "completion"
    if prompt_field == "prompt" and not names & {"prompt", "messages"} and "question" in names:  # GSM8K layout
        prompt_field = "question"
    if reference_field == "reference" and not names & {"reference", "completion"} and "answer" in names:
        reference_field = "answer"
    return prompt_field, reference_field


def source_prompt(record: dict, prompt_field: str, index: int) -> tuple[str | list[dict], str | None]:
    """(the prompt as the record gives it: text, or a checked conversation, answer): a conversation that ends with
    the assistant's turn (a `messages` record) gives that turn as the answer and the turns before it as the prompt."""
    value, where = record[prompt_field], f"data.prompt_field: record {index} field '{prompt_field}'"
    if isinstance(value, (list, tuple)):
        return split_last_answer(check_messages(value, where))
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise DataError(f"{where} is {value!r:.40}, not text or a list of {{role, content}} messages; give every "
                        "record a prompt (or drop the record)")
    return value, None


def render_prompt(record: dict, config: DataConfig, tokenizer: PreTrainedTokenizerBase,
                  prompt: str | list[dict] | None = None) -> str:
    """The text the policy reads: a text prompt fills data.prompt_template ({prompt} is the prompt) and becomes the
    user turn; a conversation is used as it is.  Both are rendered by chat.render_messages (the chat template, with
    data.system_prompt first unless the conversation has its own system turn); a text prompt without a chat
    template is the filled template itself."""
    if prompt is None:
        prompt = source_prompt(record, _field_names(config, [record])[0], 0)[0]
    has_template = config.use_chat_template and getattr(tokenizer, "chat_template", None)
    if isinstance(prompt, list):
        if config.prompt_template != "{prompt}":
            raise DataError("data.prompt_template: fills text prompts only, and this prompt is a conversation; leave "
                            "it at '{prompt}' (write the instructions into a system or user turn)")
        system = config.system_prompt and prompt[0]["role"] != "system"
        messages = ([{"role": "system", "content": config.system_prompt}] if system else []) + prompt
        return render_messages(tokenizer, messages, add_generation_prompt=True,
                               use_chat_template=config.use_chat_template)
    try:
        text = config.prompt_template.format_map({"prompt": prompt, **record})
    except KeyError as e:
        raise DataError(f"data.prompt_template: placeholder {e} is not a field of the records "
                        f"(fields: {sorted(record)})") from None
    except (ValueError, IndexError, AttributeError, TypeError) as e:  # a bad format spec, index or attribute
        raise DataError(f"data.prompt_template: cannot fill {config.prompt_template!r} ({e}); write a literal brace "
                        "as {{ or }}") from None
    if has_template:
        messages = ([{"role": "system", "content": config.system_prompt}] if config.system_prompt else []) + [
            {"role": "user", "content": text}]
        return render_messages(tokenizer, messages, add_generation_prompt=True)
    return text


PROMPT_ONLY_FIX = "or set data.reference_field: null for prompt-only data (rewards and metrics that need no reference)"


def _references(record: dict, field: str | None, index: int, answer: str | None) -> list[str]:
    """The record's references: [] for prompt-only data (field None); the field's text, list of texts or TRL
    conversational completion; else a conversation's final assistant turn."""
    if field is None:
        return []
    if field not in record:
        if answer is not None:
            return [answer]
        raise DataError(f"data.reference_field: record {index} has no field '{field}' (fields: {sorted(record)}); "
                        f"name the field that holds the reference, {PROMPT_ONLY_FIX}")
    if answer is not None:
        raise DataError(f"data.reference_field: record {index} has a field '{field}' and its conversation also ends "
                        "with an assistant turn; keep one reference (drop the field, or end the prompt with a user "
                        "turn)")
    value, where = record[field], f"data.reference_field: record {index} field '{field}'"
    if isinstance(value, (list, tuple)) and is_conversation(value):
        return [completion_text(value, where)]
    refs = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []
    if not refs or not all(isinstance(r, str) for r in refs):
        raise DataError(f"{where} must be a string or list of strings (or one assistant message)")
    return refs


def encode_prompt(text: str, config: DataConfig, tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], bool]:
    """(the rendered prompt's token ids as the policy reads them, whether they were cut): the tokenizer's special
    tokens (BOS) only without a chat template (a template writes its own), then the last data.max_prompt_tokens."""
    add_special = not (config.use_chat_template and getattr(tokenizer, "chat_template", None))
    ids = tokenizer(text, add_special_tokens=add_special)["input_ids"]
    if len(ids) > config.max_prompt_tokens:
        return ids[-config.max_prompt_tokens:], True
    return ids, False


def load_examples(config: DataConfig, split: str, tokenizer: PreTrainedTokenizerBase,
                  limit: int | None = None) -> list[Example]:
    """Tokenized examples of one split; prompts over max_prompt_tokens keep their last tokens."""
    records = load_records(config, split)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise DataError(f"data: split '{split}' of '{config.source}' is empty")
    prompt_field, reference_field = _field_names(config, records)
    if split != config.train_split and config.eval_reference_field:
        reference_field = config.eval_reference_field
    examples, truncated = [], 0
    add_special = not (config.use_chat_template and getattr(tokenizer, "chat_template", None))
    for i, record in enumerate(records):
        if prompt_field not in record:
            raise DataError(f"data.prompt_field: record {i} has no field '{prompt_field}' (fields: {sorted(record)})")
        prompt, answer = source_prompt(record, prompt_field, i)
        if config.max_prompt_field_chars is not None and not isinstance(prompt, list):
            prompt = str(prompt)[:config.max_prompt_field_chars]
            record = {**record, prompt_field: prompt}
        text = render_prompt(record, config, tokenizer, prompt)
        ids, cut = encode_prompt(text, config, tokenizer)
        truncated += cut
        columns = {k: v for k, v in record.items() if k not in (prompt_field, reference_field)}
        columns[SOURCE_PROMPT_COLUMN] = prompt
        if reference_field is not None and reference_field in record:  # for TRL-style rewards, by its own name
            columns[SOURCE_REFERENCE_PREFIX + reference_field] = record[reference_field]
        examples.append(Example(str(record.get("id", i)), text, ids, _references(record, reference_field, i, answer),
                                columns))
    _check_not_all_empty(examples, records, prompt_field, reference_field, split, config.source)
    if config.system_prompt and add_special and any(isinstance(r.get(prompt_field), str) for r in records):
        _warn_unused_system_prompt(config)
    if truncated:
        logger.warning("data: %d of %d '%s' prompts were longer than data.max_prompt_tokens=%d and were truncated "
                       "from the left", truncated, len(examples), split, config.max_prompt_tokens)
    return examples


_SAID: set[str] = set()  # warnings said once per process (load_examples runs for every split)


def _warn_unused_system_prompt(config: DataConfig) -> None:
    """A text prompt without a chat template is the filled data.prompt_template alone: the system prompt has no
    place in it. Warned, not refused: one config may serve models with and without a chat template."""
    why = "data.use_chat_template is false" if not config.use_chat_template else "the tokenizer has no chat template"
    message = (f"data.system_prompt is not used: {why}, so a text prompt is data.prompt_template filled alone; write "
               "the instruction into data.prompt_template, or remove data.system_prompt")
    if message not in _SAID:
        _SAID.add(message)
        logger.warning(message)


def _check_not_all_empty(examples: list[Example], records: list[dict], prompt_field: str,
                         reference_field: str | None, split: str, source: str) -> None:
    """A split whose prompts are all empty has no task to learn: refuse it.  All references empty is legal for
    rewards that ignore them (a classifier, a function), so it is a warning: BLEU/ROUGE/chrF would score 0."""
    if not any(str(r[prompt_field]).strip() for r in records):
        raise DataError(f"data.prompt_field: every '{prompt_field}' in split '{split}' of '{source}' is empty; check "
                        "data.prompt_field and the file")
    if reference_field is not None and not any(ref.strip() for e in examples for ref in e.references):
        logger.warning("data.reference_field: every '%s' in split '%s' of '%s' is empty: rewards that compare with "
                       "the reference (bleu, chrf, rouge) will be 0 for every completion", reference_field, split,
                       source)


class PromptSampler:
    """Batches of examples in a seeded random order, epoch after epoch; its position is checkpointed.

    With several processes, each global batch is cut into one slice per process.
    """

    def __init__(self, num_examples: int, seed: int, epoch: int = 0, position: int = 0):
        self.num_examples, self.seed, self.epoch, self.position = num_examples, seed, epoch, position

    def _order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_examples, generator=g).tolist()

    def next_batch(self, batch_size: int, num_processes: int = 1, process_index: int = 0) -> list[int]:
        indices: list[int] = []
        while len(indices) < batch_size * num_processes:
            order = self._order()
            take = order[self.position:self.position + batch_size * num_processes - len(indices)]
            indices += take
            self.position += len(take)
            if self.position >= self.num_examples:
                self.epoch, self.position = self.epoch + 1, 0
        return indices[process_index * batch_size:(process_index + 1) * batch_size]

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
