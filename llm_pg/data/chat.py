"""Conversations: check a list of {role, content} messages and render it to the text a model reads.

One place decides how a conversation becomes text, so that SFT, RL, evaluation and the reward model read the same
dialogue the same way: the tokenizer's chat template when it has one, else a plain "Role: content" transcript.
"""

from __future__ import annotations

from llm_pg.errors import DataError

ROLES = ("system", "user", "assistant")


def check_messages(value, where: str) -> list[dict]:
    """`value` as a list of {"role", "content"} dicts with known roles and text content, or a one-line DataError.

    where: what to name in the error, e.g. "data.prompt_field: record 3 field 'prompt'".
    """
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(f"{where} must be a non-empty list of {{'role', 'content'}} messages")
    messages = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: message {i} is {m!r:.60}; write each message as "
                            '{"role": "user", "content": "..."}')
        if m["role"] not in ROLES:
            raise DataError(f"{where}: message {i} has role {m['role']!r}; use one of {list(ROLES)}")
        if not isinstance(m["content"], str):
            raise DataError(f"{where}: message {i} content is {type(m['content']).__name__}, not text")
        messages.append({"role": m["role"], "content": m["content"]})
    return messages


def is_conversation(value) -> bool:
    """A list of dicts with a 'role' key: the conversational form of a prompt or completion (TRL's layout)."""
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(m, dict) and "role" in m
                                                                    for m in value)


def render_messages(tokenizer, messages: list[dict], add_generation_prompt: bool,
                    use_chat_template: bool = True) -> str:
    """The text of a conversation: the tokenizer's chat template (when it has one and use_chat_template), else
    "User: ...\\n\\nAssistant: ..." with a trailing "Assistant:" when a reply is to be generated."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    text = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)
    return text + "\n\nAssistant:" if add_generation_prompt else text


# The record's prompt as the data gave it (text before the template, or the conversation's messages) travels to the
# rewards as this column: a reward written for TRL gets it as `prompts`, as TRL would pass it.  The name cannot be a
# Python parameter name, so it never collides with a field a function asks for by name.
SOURCE_PROMPT_COLUMN = "llm_pg:prompt"
# The record's reference field as the data gave it, under this column followed by the field's name (e.g.
# "llm_pg:reference:solution"): a reward written for TRL gets it by that name, as TRL passes every dataset column
# but the prompt and TRL's `completion` (llm_pg's own call gets the references instead).
SOURCE_REFERENCE_PREFIX = "llm_pg:reference:"


ANSWER_MARK = "LlmPgAnswerMark"  # plain letters: a template that trims or escapes the content keeps them


def end_of_answer_ids(tokenizer, use_chat_template: bool = True) -> list[int]:
    """The tokens that end an assistant's answer: what the chat template writes after an assistant message, up to
    and including its first special token (ChatML's <|im_end|>, Gemma's <end_of_turn>, Llama 3's <|eot_id|>);
    without a template, or one that writes no special token there, the tokenizer's EOS.

    A model tuned on a template ends its turn with that token, which need not be its EOS (Gemma's is <eos>): an SFT
    target ending in EOS would teach it a turn end its own template never writes."""
    eos = [tokenizer.eos_token_id]
    if not (use_chat_template and getattr(tokenizer, "chat_template", None)):
        return eos
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"},
                                              {"role": "assistant", "content": ANSWER_MARK}], tokenize=False)
    except Exception:  # a template that refuses this conversation (any error of the template's own code)
        return eos
    if ANSWER_MARK not in text:
        return eos
    suffix = tokenizer(text.split(ANSWER_MARK)[-1], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids)
    ends = [i for i, token in enumerate(suffix) if token in special]
    return suffix[:ends[0] + 1] if ends else eos


def split_last_answer(messages: list[dict]) -> tuple[list[dict], str | None]:
    """(the conversation before its last turn, that turn's content) when the last turn is the assistant's, else
    (messages, None): in a `messages` record the final assistant turn is the answer to learn or compare with, and
    what precedes it (multi-turn history included) is the prompt."""
    if len(messages) > 1 and messages[-1]["role"] == "assistant":
        return messages[:-1], messages[-1]["content"]
    return messages, None


def completion_text(value, where: str) -> str:
    """A completion as text: a string, or TRL's conversational completion [{"role": "assistant", "content": ...}]."""
    if isinstance(value, str):
        return value
    messages = check_messages(value, where)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise DataError(f"{where}: a conversational completion is one assistant message, "
                        '[{"role": "assistant", "content": "..."}]; got ' f"{[m['role'] for m in messages]}")
    return messages[0]["content"]


def as_assistant_messages(completions: list[str]) -> list[list[dict]]:
    """Completions in TRL's conversational form: each a one-message list [{"role": "assistant", "content": text}]."""
    return [[{"role": "assistant", "content": c}] for c in completions]
