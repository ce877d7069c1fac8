"""Preference pairs: three record formats -> one PreferencePair (prompt messages, chosen answer, rejected answer).

Formats (rm.format, or detected per record with `auto`):
  strings         {prompt: str, chosen: str, rejected: str}; the prompt becomes one user message
  conversational  {prompt: [{role, content}, ...], chosen: answer, rejected: answer}; an answer is a string, an
                  assistant message {role: assistant, content} or a one-message list of it (TRL's layout)
  transcript      {chosen: str, rejected: str}, each a whole Anthropic HH-RLHF dialogue "\\n\\nHuman: ...
                  \\n\\nAssistant: ..." that differs from the other only in the last Assistant turn

Splitting a transcript (`split_transcript`): the prompt is the two transcripts' longest common prefix, cut back to
the last "\\n\\nAssistant:" inside it; the answers are what follows that marker in each. The obvious rule, "split
at each transcript's last \\n\\nAssistant:", is wrong on real data: in 2 of the 1,800 train and 3 of the 250 test
pairs of hh-rlhf-harmless an answer itself contains "\\n\\nAssistant:" (the crowd worker's model wrote a fake turn),
so that rule cuts the two transcripts at different turns and the prompts disagree (TRL's `extract_prompt` uses the
common prefix too). Answers that share their first words are split correctly because the cut goes back to the
marker. Pairs whose answers are identical carry no preference and are dropped with a count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from llm_pg.data.chat import check_messages, is_conversation, render_messages
from llm_pg.errors import DataError

logger = logging.getLogger(__name__)
FORMATS = ("auto", "strings", "conversational", "transcript")
HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
_TURN = re.compile(r"\n\n(Human|Assistant):")


@dataclass(frozen=True)
class PreferencePair:
    """One human judgement: after `prompt`, `chosen` was preferred to `rejected`."""

    prompt: list[dict]  # the conversation so far, [{role, content}], usually ending with a user turn
    chosen: str
    rejected: str
    margin: float = 0.0  # m in -log sigma(r_c - r_r - m): how strongly chosen is preferred (0 = plain BT)
    where: str = ""  # "file line N" / "record N": for error messages


@dataclass(frozen=True)
class PairFields:
    """Which record fields hold what (the rm.* field options)."""

    prompt: str = "prompt"
    chosen: str = "chosen"
    rejected: str = "rejected"
    margin: str | None = None
    format: str = "auto"

    @classmethod
    def of(cls, rm) -> PairFields:
        """The fields an `rm:` section (config.schema.RewardModelConfig) names."""
        return cls(rm.prompt_field, rm.chosen_field, rm.rejected_field, rm.margin_field, rm.format)


def split_transcript(chosen: str, rejected: str, where: str) -> tuple[list[dict], str, str]:
    """(prompt messages, chosen answer, rejected answer) of two HH-RLHF transcripts (see the module docstring)."""
    common = 0
    while common < min(len(chosen), len(rejected)) and chosen[common] == rejected[common]:
        common += 1
    cut = chosen.rfind(ASSISTANT, 0, common)
    if cut < 0:
        raise DataError(f"{where}: the transcripts share no '\\n\\nAssistant:' turn before they differ; a transcript "
                        "pair must be the same dialogue up to its last Assistant turn (or use rm.format=strings)")
    head = len(ASSISTANT)
    return parse_transcript(chosen[:cut], where), chosen[cut + head:].strip(), rejected[cut + head:].strip()


def parse_transcript(text: str, where: str) -> list[dict]:
    """'\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c' -> [user a, assistant b, user c] (contents stripped)."""
    parts = _TURN.split(text)  # [before the first marker, role, content, role, content, ...]
    if parts[0].strip() or len(parts) < 3:
        raise DataError(f"{where}: a transcript must start with '\\n\\nHuman:' (it starts {text[:30]!r}); give HH-RLHF "
                        "dialogues or set rm.format to strings / conversational")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[r], "content": c.strip()} for r, c in zip(parts[1::2], parts[2::2])]


def _answer(value, where: str) -> str:
    """A chosen / rejected answer: a string, an assistant message, or a one-message list of it."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if is_conversation(value):
        messages = check_messages(value, where)
        if len(messages) == 1 and messages[0]["role"] == "assistant":
            return messages[0]["content"]
    raise DataError(f"{where} is {value!r:.60}; give the answer as a string, an assistant message "
                    '{"role": "assistant", "content": "..."} or a list of that one message')


def _detect(record: dict, fields: PairFields) -> str:
    if fields.format != "auto":
        return fields.format
    if fields.prompt not in record:
        return "transcript"
    return "conversational" if isinstance(record[fields.prompt], (list, tuple)) else "strings"


def parse_pair(record: dict, fields: PairFields, where: str) -> PreferencePair:
    """One record -> PreferencePair, or a one-line DataError naming the record, the field and the fix."""
    for name, key in (("chosen", fields.chosen), ("rejected", fields.rejected)):
        if key not in record:
            raise DataError(f"{where}: no field '{key}' (fields: {sorted(record)}); set rm.{name}_field")
    kind = _detect(record, fields)
    if kind == "transcript":
        for key in (fields.chosen, fields.rejected):
            if not isinstance(record[key], str):
                raise DataError(f"{where} field '{key}': a transcript is one string; with a separate prompt set "
                                "rm.prompt_field (or rm.format=conversational)")
        prompt, chosen, rejected = split_transcript(record[fields.chosen], record[fields.rejected], where)
    else:
        if fields.prompt not in record:
            raise DataError(f"{where}: no field '{fields.prompt}' (fields: {sorted(record)}); set rm.prompt_field, or "
                            "rm.format=transcript for whole HH-RLHF dialogues")
        value = record[fields.prompt]
        if kind == "strings" and not isinstance(value, str):
            raise DataError(f"{where} field '{fields.prompt}' is {type(value).__name__}, not text (rm.format=strings)")
        prompt = [{"role": "user", "content": value}] if isinstance(value, str) else check_messages(
            value, f"{where} field '{fields.prompt}'")
        chosen = _answer(record[fields.chosen], f"{where} field '{fields.chosen}'")
        rejected = _answer(record[fields.rejected], f"{where} field '{fields.rejected}'")
    return PreferencePair(prompt, chosen, rejected, _margin(record, fields.margin, where), where)


def _margin(record: dict, key: str | None, where: str) -> float:
    if key is None:
        return 0.0
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise DataError(f"{where} field '{key}' (rm.margin_field) is {value!r:.30}; give every pair a number")
    return float(value)


def _jsonl_records(path: Path) -> list[tuple[str, dict]]:
    """[(where, record)] of a .jsonl file, or a DataError naming the file and line."""
    rows = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            where = f"rm.source: {path} line {line_no}"
            try:
                text = raw.decode("utf-8")
                if not text.strip():
                    continue
                row = json.loads(text)
            except UnicodeDecodeError:
                raise DataError(f"{where} is not UTF-8; save the file as UTF-8") from None
            except json.JSONDecodeError as e:
                raise DataError(f"{where} is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where} is a JSON {type(row).__name__}; write each line as an object "
                                '{"chosen": ..., "rejected": ...}')
            rows.append((where, row))
    return rows


def _records(source: str, split: str, eval_fraction: float, eval_split: str) -> list[tuple[str, dict]]:
    """A folder's <split>.jsonl; or one .jsonl file cut into train / eval by each line's md5 (eval_fraction)."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / f"{split}.jsonl").is_file():
            found = sorted(p.name for p in path.glob("*.jsonl"))
            raise DataError(f"rm.source: {path} has no {split}.jsonl (it has {found}); set rm.train_split / "
                            "rm.eval_split to its files' names")
        return _jsonl_records(path / f"{split}.jsonl")
    if path.suffix != ".jsonl" or not path.is_file():
        raise DataError(f"rm.source: {path} is not a .jsonl file or a folder of <split>.jsonl files")
    rows = _jsonl_records(path)
    if not eval_split:  # no evaluation: every pair trains
        return rows
    held_out = [int(hashlib.md5(json.dumps(r, sort_keys=True).encode()).hexdigest(), 16) / 16**32 < eval_fraction
                for _, r in rows]  # by content, so a pair stays on its side when lines move
    return [r for r, out in zip(rows, held_out) if out == (split == eval_split)]


def load_pairs(source: str, split: str, fields: PairFields, limit: int | None = None, eval_fraction: float = 0.1,
               eval_split: str = "test") -> list[PreferencePair]:
    """The preference pairs of one split (the first `limit`); ties (identical answers) are dropped and counted."""
    return [pair for _, pair in load_pair_records(source, split, fields, limit, eval_fraction, eval_split)]


def load_pair_records(source: str, split: str, fields: PairFields, limit: int | None = None,
                      eval_fraction: float = 0.1, eval_split: str = "test") -> list[tuple[dict, PreferencePair]]:
    """(raw record, its PreferencePair) of one split, as load_pairs keeps them: the pipeline (llm_pg/pipelines/rlhf_data.py)
    writes the raw records of each half back out, so `llm-pg rm` reads them in their own format."""
    if fields.format not in FORMATS:
        raise DataError(f"rm.format: '{fields.format}' is not one of {list(FORMATS)}")
    records = _records(source, split, eval_fraction, eval_split)[:limit]
    pairs = [(record, parse_pair(record, fields, where)) for where, record in records]
    kept = [(r, p) for r, p in pairs if p.chosen.strip() != p.rejected.strip()]
    if len(kept) < len(pairs):
        logger.warning("rm: %d of %d '%s' pairs have identical answers (no preference); dropped",
                       len(pairs) - len(kept), len(pairs), split)
    if not kept:
        raise DataError(f"rm.source: split '{split}' of {source} holds no preference pair with two different answers")
    return kept


@dataclass(frozen=True)
class Rendering:
    """How a conversation becomes the text the reward model reads; saved with the model (rm_settings.json)."""

    use_chat_template: bool = True
    system_prompt: str | None = None

    def prompt_text(self, tokenizer, messages: list[dict]) -> str:
        """The prompt as the policy sees it before it writes: chat template with the generation prompt."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return render_messages(tokenizer, system + list(messages), add_generation_prompt=True,
                               use_chat_template=self.use_chat_template)

    def text(self, tokenizer, messages: list[dict], answer: str) -> str:
        """prompt text + the answer, exactly as a policy's completion continues its prompt (a space after a
        plain 'Assistant:', as HH-RLHF writes it; nothing after a chat template's assistant header)."""
        return join_answer(self.prompt_text(tokenizer, messages), answer)


def join_answer(prompt: str, answer: str) -> str:
    """prompt + answer, with one space after a plain-text 'Assistant:' when the answer does not start with one.
    The reward model trains on this and the reward component scores the policy's prompt and completion with it."""
    return prompt + (" " if prompt.endswith(":") and answer and not answer[0].isspace() else "") + answer
